"""napari contributions without widgets: reader (pixel size -> scale), writers (round trips), sample data,
manifest menus."""

from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_deeptrack._napari._reader import get_reader
from napari_deeptrack._napari._writer import write_labels, write_points
from napari_deeptrack.io.tiff import write_tiff


def test_reader_sets_scale_from_imagej_pixel_size(tmp_path):
    data = np.arange(3 * 32 * 40, dtype=np.uint16).reshape(3, 32, 40)
    path = write_tiff(tmp_path / "stack.tif", data, pixel_size_um=0.13)
    reader = get_reader(str(path))
    assert reader is not None
    ((out, kwargs, kind),) = reader(str(path))
    assert kind == "image"
    np.testing.assert_array_equal(out, data)
    assert kwargs["scale"] == pytest.approx((1.0, 0.13, 0.13))
    assert kwargs["units"][-2:] == ("um", "um")


def test_reader_sets_scale_from_ome_in_nanometres(tmp_path):
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((16, 16), np.uint16),
        ome=True,
        metadata={
            "axes": "YX",
            "PhysicalSizeX": 65.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 65.0,
            "PhysicalSizeYUnit": "nm",
        },
    )
    ((_, kwargs, _),) = get_reader(str(path))(str(path))
    assert kwargs["scale"] == pytest.approx((0.065, 0.065))


def test_reader_without_pixel_size_and_other_files(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    ((_, kwargs, _),) = get_reader(str(path))(str(path))
    assert "scale" not in kwargs
    assert get_reader(str(tmp_path / "image.png")) is None
    other = tmp_path / "table.csv"
    other.write_text("a,b\n1,2\n")
    assert get_reader(str(other)) is None  # not a points table


def test_points_writer_round_trips_features(tmp_path):
    from napari.layers import Points

    coords = np.array([[0, 10.5, 20.25], [1, 3.0, 4.0], [1, 30.0, 5.5]])
    feats = pd.DataFrame({"probability": [0.9, 0.4, 0.75], "z_um": [0.1, -0.2, 0.3], "track_id": [0, 1, 1]})
    layer = Points(coords, features=feats, scale=(1, 0.1, 0.1))
    data, meta, _ = layer.as_layer_data_tuple()
    (path,) = write_points(str(tmp_path / "det.csv"), data, meta)
    ((back, kwargs, kind),) = get_reader(path)(path)
    assert kind == "points"
    np.testing.assert_allclose(back, coords)
    pd.testing.assert_frame_equal(kwargs["features"], feats, check_dtype=False)
    # hidden points (below a threshold) are not written
    layer.shown = feats["probability"].to_numpy() > 0.5
    data, meta, _ = layer.as_layer_data_tuple()
    (path,) = write_points(str(tmp_path / "shown.csv"), data, meta)
    assert len(pd.read_csv(path)) == 2


def test_labels_writer_keeps_pixel_size(tmp_path):
    from napari.layers import Labels

    lab = np.zeros((24, 24), np.int32)
    lab[2:6, 3:9] = 1
    lab[10:20, 10:12] = 7
    layer = Labels(lab, scale=(0.2, 0.2), units=("um", "um"))
    data, meta, _ = layer.as_layer_data_tuple()
    (path,) = write_labels(str(tmp_path / "labels"), data, meta)
    assert path.endswith(".tif")
    ((back, kwargs, _),) = get_reader(path)(path)
    np.testing.assert_array_equal(back, lab)
    assert kwargs["scale"] == pytest.approx((0.2, 0.2))


def test_manifest_widgets_menus_writers_samples():
    import npe2

    m = npe2.PluginManifest.from_file(str(files("napari_deeptrack") / "napari.yaml"))
    widgets = {w.display_name for w in m.contributions.widgets}
    assert widgets == {"Simulate", "Train", "Apply", "Review"}
    menus = m.contributions.menus
    for menu in ("napari/layers/segment", "napari/layers/track", "napari/layers/measure"):
        assert menu in menus
    from napari._app_model.constants import MenuId

    assert set(menus) <= {str(x) for x in MenuId.contributables()}
    assert {w.layer_types[0] for w in m.contributions.writers} == {"points", "labels"}
    assert len(m.contributions.sample_data) == 3


def test_sample_particle_movie_truth_on_particles():
    from napari_deeptrack._napari._sample_data import particle_movie

    (img, ik, _), (pts, pk, kind) = particle_movie(n_frames=3, shape=(48, 48))
    assert kind == "points" and img.shape == (3, 48, 48)
    assert ik["scale"] == pk["scale"] == (1.0, 0.1, 0.1)
    t, y, x = np.round(pts).astype(int).T
    y, x = np.clip(y, 0, 47), np.clip(x, 0, 47)
    assert np.median(img[t, y, x]) > 3 * np.median(img)  # truth sits on bright spots
    assert {"track_id", "z_um"} <= set(pk["features"].columns)


@pytest.mark.slow
def test_sample_cells_and_hologram():
    from napari_deeptrack._napari._sample_data import cells, hologram

    (img, _, _), (lab, lk, kind) = cells(shape=(96, 96))
    assert kind == "labels" and lab.shape == img.shape and lab.max() > 0
    assert img[lab > 0].mean() > img[lab == 0].mean()
    (holo, hk, _), (pts, pk, _) = hologram(shape=(64, 64))
    assert holo.shape == (64, 64) and pts.shape[1] == 3
    assert (pk["features"]["z_um"] > 0).all()
    assert holo.std() > 0
