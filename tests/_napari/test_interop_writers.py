"""npe2 writers added for interop: Tracks -> TrackMate XML, Image / Labels -> OME-TIFF, with the
layer's physical scale; registered in the manifest."""

import numpy as np
import pytest

from napari_deeptrack._napari._writer import (
    write_image_ome_tiff,
    write_labels_ome_tiff,
    write_tracks_trackmate,
)
from napari_deeptrack.io.ome import read_ome_tiff
from napari_deeptrack.io.trackmate import check_trackmate_structure, read_trackmate


def test_manifest_declares_the_writers():
    from importlib.resources import files

    from npe2 import PluginManifest

    m = PluginManifest.from_file(str(files("napari_deeptrack") / "napari.yaml"))
    writers = {w.command: (w.layer_types, w.filename_extensions) for w in m.contributions.writers}
    assert writers["napari-deeptrack.write_tracks_trackmate"] == (["tracks"], [".xml"])
    assert ".ome.tif" in writers["napari-deeptrack.write_image_ome_tiff"][1]
    assert ".ome.tif" in writers["napari-deeptrack.write_labels_ome_tiff"][1]


def test_tracks_layer_to_trackmate(tmp_path):
    data = np.array([[0, 0, 5.0, 6.0], [0, 1, 5.5, 6.5], [1, 0, 20.0, 21.0], [1, 1, 21.0, 21.0]])
    meta = {"scale": [0.5, 0.1, 0.1], "units": ["second", "micrometer", "micrometer"],
            "features": {"probability": [0.9, 0.8, 0.7, 0.6]}}  # fmt: skip
    (path,) = write_tracks_trackmate(str(tmp_path / "tracks"), data, meta)
    assert path.endswith(".xml") and check_trackmate_structure(path) == []
    df, info = read_trackmate(path)
    assert info["pixel_size_um"] == pytest.approx(0.1) and info["frame_interval_s"] == pytest.approx(0.5)
    np.testing.assert_allclose(df[["track_id", "frame", "y", "x"]].to_numpy(), data)
    np.testing.assert_allclose(df["probability"], [0.9, 0.8, 0.7, 0.6])
    with pytest.raises(ValueError, match="Tracks data"):
        write_tracks_trackmate(str(tmp_path / "bad.xml"), np.zeros((3, 2)), {})


def test_image_and_labels_to_ome_tiff(tmp_path):
    img = np.random.default_rng(0).random((3, 12, 14)).astype(np.float32)
    meta = {"scale": [2.0, 0.065, 0.065], "units": ["second", "micrometer", "micrometer"],
            "axis_labels": ["t", "y", "x"]}  # fmt: skip
    (path,) = write_image_ome_tiff(str(tmp_path / "img"), img, meta)
    back, info = read_ome_tiff(path)
    np.testing.assert_array_equal(back, img)
    assert info["axes"] == "TYX" and info["pixel_size_um"] == pytest.approx(0.065)
    assert info["frame_interval_s"] == pytest.approx(2.0)
    labels = np.zeros((10, 11), np.int32)
    labels[2:4, 3:5] = 3
    (path,) = write_labels_ome_tiff(
        str(tmp_path / "lab.ome.tif"), labels, {"scale": [0.2, 0.2], "units": None}
    )
    back, info = read_ome_tiff(path)
    assert back.dtype == np.uint16 and back[3, 4] == 3 and info["pixel_size_um"] == pytest.approx(0.2)


def test_trackmate_xml_opens_as_tracks_and_points(tmp_path):
    from napari_deeptrack._napari._reader import get_reader

    data = np.array([[0, 0, 5.0, 6.0], [0, 1, 5.5, 6.5], [1, 0, 20.0, 21.0], [1, 1, 21.0, 21.0]])
    meta = {"scale": [0.5, 0.1, 0.1], "units": ["second", "micrometer", "micrometer"]}
    (path,) = write_tracks_trackmate(str(tmp_path / "t.xml"), data, meta)
    (tracks, tk, tkind), (pts, pk, pkind) = get_reader(path)(path)
    assert (tkind, pkind) == ("tracks", "points") and tk["scale"] == pytest.approx((0.5, 0.1, 0.1))
    np.testing.assert_allclose(tracks, data)
    np.testing.assert_allclose(pts, data[:, 1:])
    assert list(pk["features"]["track_id"]) == [0, 0, 1, 1]
    (tmp_path / "other.xml").write_text("<root/>")
    assert get_reader(str(tmp_path / "other.xml")) is None
