"""OME-TIFF and OME-Zarr round trips: equal pixels, axes, pixel size, z step, frame interval, channel
names; foreign units converted; bad axes refused."""

import numpy as np
import pytest

from napari_deeptrack.io.ome import read_ome, read_ome_tiff, write_ome_tiff, write_ome_zarr


def _data(shape=(3, 2, 16, 20), dtype=np.uint16):
    return np.random.default_rng(0).integers(0, 4000, size=shape).astype(dtype)


@pytest.mark.parametrize("writer, name", [(write_ome_tiff, "a.ome.tif"), (write_ome_zarr, "a.zarr")])
def test_round_trip_tzyx(tmp_path, writer, name):
    data = _data()
    path = writer(tmp_path / name, data, "TZYX", pixel_size_um=0.065, z_step_um=0.25, frame_interval_s=0.5)
    back, meta = read_ome(path)
    np.testing.assert_array_equal(back, data)
    assert back.dtype == data.dtype
    assert meta["axes"] == "TZYX"
    assert meta["pixel_size_um"] == pytest.approx(0.065) and meta["pixel_size_y_um"] == pytest.approx(0.065)
    assert meta["z_step_um"] == pytest.approx(0.25) and meta["frame_interval_s"] == pytest.approx(0.5)


def test_ome_tiff_channels_and_labels(tmp_path):
    data = _data((4, 2, 8, 9))
    write_ome_tiff(tmp_path / "c.ome.tif", data, "TCYX", 0.1, channel_names=["GFP", "mCherry"])
    back, meta = read_ome_tiff(tmp_path / "c.ome.tif")
    np.testing.assert_array_equal(back, data)
    assert (
        meta["axes"] == "TCYX" and meta["channel_names"] == ["GFP", "mCherry"] and meta["z_step_um"] is None
    )
    labels = np.zeros((12, 10), np.int64)
    labels[2:5, 3:6] = 7
    write_ome_tiff(tmp_path / "l.ome.tif", labels, pixel_size_um=0.2)
    back, meta = read_ome_tiff(tmp_path / "l.ome.tif")
    assert back.dtype == np.uint16 and back[3, 4] == 7 and meta["axes"] == "YX"
    assert meta["pixel_size_um"] == pytest.approx(0.2)
    # the same file read by the plain TIFF reader of the package gives the pixel size too
    from napari_deeptrack.io.tiff import read_tiff

    assert read_tiff(tmp_path / "l.ome.tif")[1]["pixel_size_um"] == pytest.approx(0.2)


def test_foreign_units_converted(tmp_path):
    import tifffile

    md = {
        "axes": "TYX",
        "PhysicalSizeX": 130.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 130.0,
        "PhysicalSizeYUnit": "nm",
        "TimeIncrement": 20.0,
        "TimeIncrementUnit": "ms",
    }
    tifffile.imwrite(tmp_path / "f.ome.tif", _data((2, 6, 7)), ome=True, metadata=md)
    _, meta = read_ome_tiff(tmp_path / "f.ome.tif")
    assert meta["pixel_size_um"] == pytest.approx(0.13) and meta["frame_interval_s"] == pytest.approx(0.02)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="axes"):
        write_ome_tiff(tmp_path / "x.ome.tif", _data((2, 6, 7)), "YXT")
    with pytest.raises(ValueError, match="pixel_size_um"):
        write_ome_zarr(tmp_path / "x.zarr", _data((6, 7)), pixel_size_um=-1)
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", _data((6, 7)))
    with pytest.raises(ValueError, match="without OME"):
        read_ome_tiff(tmp_path / "plain.tif")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match="Zarr"):
        read_ome(tmp_path / "empty.zarr")
    assert not (tmp_path / "x.ome.tif").exists() and not (tmp_path / "x.zarr").exists()
