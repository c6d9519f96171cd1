"""The lazy TIFF reader keeps the in-memory reader's policies: truncated files refused, NaN/Inf pixels
replaced by their frame's median (and reported), complex pixels refused, a corrupt page one clear error,
and tifffile's log noise silenced."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import tifffile

from napari_deeptrack.errors import ImageReadError
from napari_deeptrack.io.images import read_images
from napari_deeptrack.io.lazy import open_lazy


def test_truncated_stack_is_refused_like_the_in_memory_reader(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((8, 32, 32), np.uint16), imagej=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageReadError, match="truncated"):
        read_images(path)
    with pytest.raises(ImageReadError, match="truncated") as info:
        open_lazy(path)
    assert str(path) in str(info.value) and "--allow-partial" in str(info.value)


def test_nan_pixels_replaced_as_in_memory_and_reported(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(10, 1, (4, 24, 20)).astype(np.float32)
    data[2, 3:13, 4:14] = np.nan
    data[3, 0, 0] = np.inf
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    stack, _ = open_lazy(path)
    with pytest.warns(UserWarning, match=r"frame 2: 100") as record:
        lazy = stack.compute()
    assert any("frame 3: 1" in str(w.message) for w in record)
    eager, meta = read_images(path)
    assert meta["nonfinite"] == {2: 100, 3: 1}
    assert np.isfinite(lazy).all()
    np.testing.assert_allclose(lazy, eager)
    assert lazy[2, 5, 5] == pytest.approx(np.median(data[2][np.isfinite(data[2])]))


def test_complex_pixels_refused(tmp_path):
    path = tmp_path / "complex.tif"
    tifffile.imwrite(path, np.ones((2, 8, 8), np.complex64), photometric="minisblack")
    with pytest.raises(ImageReadError, match="complex"):
        open_lazy(path)


def test_corrupt_page_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.tif"
    data = (np.arange(6 * 32 * 32) % 200).reshape(6, 32, 32).astype(np.uint16)
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        page = list(tif.pages)[2]
        off, n = page.dataoffsets[0], page.databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[off : off + n] = b"\x00" * n
    path.write_bytes(bytes(raw))
    stack, _ = open_lazy(path)
    np.testing.assert_array_equal(stack[:2].compute(), data[:2])
    with pytest.raises(ImageReadError, match="cannot read frames"):
        stack[2].compute()


def test_tifffile_log_noise_is_silenced(tmp_path, caplog):
    path = tmp_path / "tag.tif"
    tifffile.imwrite(
        path, np.ones((3, 16, 16), np.float32), photometric="minisblack",
        extratags=[(65000, "s", 0, "a private tag, long enough", True)],
    )  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        at = tif.pages[0].tags[65000].offset
    raw = bytearray(path.read_bytes())
    raw[at + 2 : at + 4] = struct.pack("<H", 99)  # an invalid data type: tifffile logs it
    path.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING, logger="tifffile")
    with tifffile.TiffFile(path) as tif:  # the noise exists (stderr when logging is not configured)...
        tif.asarray()
    assert any("invalid data type" in r.getMessage() for r in caplog.records)
    caplog.clear()
    stack, _ = open_lazy(path)  # ...and the lazy reader keeps it out, on open and on reading chunks
    assert stack.compute().shape == (3, 16, 16)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    with tifffile.TiffFile(path) as tif:  # silenced only while reading: tifffile logs again after
        tif.asarray()
    assert caplog.records
