"""The napari reader: files it cannot read go back to napari (None); a claimed file that then fails to
read becomes one clear error notification, never a raw exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from napari_deeptrack._napari import _reader


def _huge_claim_tiff(path):
    """A valid-looking small TIFF whose header claims 300000 x 300000 pixels."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones((16, 16), np.uint16))
    raw = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tif:
        tags = tif.pages[0].tags
        fields = [(tags[k].valueoffset, tags[k].dtype) for k in ("ImageWidth", "ImageLength")]
    for off, dtype in fields:
        n = 4 if dtype == 4 else 2
        raw[off : off + n] = (300000 if n == 4 else 65000).to_bytes(n, "little")
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def notes(monkeypatch):
    from napari.utils import notifications

    shown = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(msg))
    return shown


@pytest.mark.parametrize(
    "name, content",
    [
        ("garbage.tif", b"not a tiff at all" * 10),
        ("empty.tiff", b""),
        ("plain.csv", b"a,b\n1,2\n"),
        ("other.xml", b"<root/>"),
        ("image.png", b"\x89PNG\r\n\x1a\n"),
    ],
)
def test_files_we_cannot_read_go_back_to_napari(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert _reader.get_reader(str(path)) is None
    assert _reader.get_reader(str(tmp_path / "missing.tif")) is None


def test_claimed_file_that_fails_becomes_one_notification(tmp_path, notes):
    path = _huge_claim_tiff(tmp_path / "huge.tif")
    read = _reader.get_reader(str(path))
    assert read is not None  # the header is a TIFF's: claimed
    assert read(str(path)) == _reader.NO_LAYERS
    assert len(notes) == 1
    assert notes[0].startswith(f"Cannot open {path}:") and "Traceback" not in notes[0]
    assert "bug" not in notes[0]  # an expected failure, described, not logged as a bug


def test_unexpected_reader_failure_is_reported_as_a_bug(tmp_path, notes, monkeypatch):
    monkeypatch.setenv("NAPARI_DEEPTRACK_LOG_DIR", str(tmp_path / "logs"))
    path = tmp_path / "ok.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint16))

    def broken(_path):
        raise KeyError("surprise")

    monkeypatch.setattr("napari_deeptrack.io.tiff.read_tiff", broken)
    assert _reader.get_reader(str(path))(str(path)) == _reader.NO_LAYERS
    assert len(notes) == 1 and "bug" in notes[0] and "KeyError" in notes[0]


def test_viewer_open_of_a_failing_file_adds_nothing_and_raises_nothing(make_napari_viewer, tmp_path, notes):
    viewer = make_napari_viewer()
    path = _huge_claim_tiff(tmp_path / "huge.tif")
    assert viewer.open(str(path), plugin="napari-deeptrack") == []
    assert len(viewer.layers) == 0 and len(notes) == 1
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.ones((8, 8), np.uint16))
    assert len(viewer.open(str(good), plugin="napari-deeptrack")) == 1


def test_header_check_keeps_tifffile_quiet(tmp_path, caplog):
    import logging
    import struct

    path = tmp_path / "tag.tif"
    tifffile.imwrite(
        path, np.ones((2, 8, 8), np.float32), photometric="minisblack",
        extratags=[(65000, "s", 0, "a private tag, long enough", True)],
    )  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        at = tif.pages[0].tags[65000].offset
    raw = bytearray(path.read_bytes())
    raw[at + 2 : at + 4] = struct.pack("<H", 99)  # an invalid tag type: tifffile logs an error
    path.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING, logger="tifffile")
    assert _reader.get_reader(str(path)) is not None  # still a readable TIFF
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
