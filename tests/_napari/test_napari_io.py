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
    assert open(path).readline().startswith("# napari-deeptrack scale=")  # scale/units header line
    assert len(pd.read_csv(path, skiprows=1)) == 2


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
    assert widgets == {"Simulate", "Train", "Apply", "Review", "Diffusion (MSD)"}
    menus = m.contributions.menus
    for menu in ("napari/layers/segment", "napari/layers/track", "napari/layers/measure"):
        assert menu in menus
    from napari._app_model.constants import MenuId

    assert set(menus) <= {str(x) for x in MenuId.contributables()}
    assert {w.layer_types[0] for w in m.contributions.writers} == {"points", "labels", "tracks", "image"}
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


# ---------------------------------------------------------------------------- samples the user's way
def _world_um(layer) -> float:
    from napari_deeptrack._napari._layers import layer_pixel_size_um

    return layer_pixel_size_um(layer)


def _open(viewer, key):
    from napari.layers import Image

    layers = viewer.open_sample("napari-deeptrack", key)
    assert len(layers) == 2 and all(lyr in viewer.layers for lyr in layers)
    image, truth = layers
    assert isinstance(image, Image) and image.metadata["simulated"] is True
    return image, truth


def test_open_sample_particle_movie(make_napari_viewer):
    from napari.layers import Points

    viewer = make_napari_viewer()
    image, truth = _open(viewer, "particle_movie")
    assert isinstance(truth, Points)
    assert image.data.shape == (20, 128, 128) and truth.data.shape[1] == 3 and len(truth.data) > 0
    assert tuple(image.scale) == tuple(truth.scale) == pytest.approx((1.0, 0.1, 0.1))
    assert (
        [str(u) for u in image.units][-2:]
        == ["micrometer", "micrometer"]
        == [str(u) for u in truth.units][-2:]
    )
    assert _world_um(image) == _world_um(truth) == pytest.approx(0.1)
    assert {"track_id", "z_um", "visible"} <= set(truth.features.columns)
    # the movie runs along the slider and every frame has its truth
    assert viewer.dims.ndim == 3 and viewer.dims.range[0].stop == 19
    t, y, x = np.round(truth.data).astype(int).T
    assert set(t) == set(range(20))
    # the truth sits on the particles: bright pixels under the points, same place in world units
    img = np.asarray(image.data)
    on = img[t, np.clip(y, 0, 127), np.clip(x, 0, 127)]
    assert np.median(on) > 3 * np.median(img)
    np.testing.assert_allclose(truth.data_to_world(truth.data[0]), image.data_to_world(truth.data[0]))


def test_open_sample_cells(make_napari_viewer):
    from napari.layers import Labels

    viewer = make_napari_viewer()
    image, labels = _open(viewer, "cells")
    assert isinstance(labels, Labels)
    assert image.data.shape == labels.data.shape == (192, 192)
    assert np.issubdtype(labels.data.dtype, np.integer)
    assert tuple(image.scale) == tuple(labels.scale) == pytest.approx((0.325, 0.325))
    assert _world_um(image) == _world_um(labels) == pytest.approx(0.325)
    lab, img = np.asarray(labels.data), np.asarray(image.data)
    ids = np.unique(lab[lab > 0])
    assert 8 <= len(ids) <= 12  # count=IntUniform(8, 12), all kept apart by min_distance_px
    # each labelled cell stands out of the background by more than 4 Poisson standard deviations
    from scipy import ndimage

    bg = np.median(img[lab == 0])
    mean_in = ndimage.mean(img, lab, ids)
    assert (mean_in > bg + 4 * np.sqrt(bg)).all()
    # and the labels cover the bright pixels: almost no very bright pixel lies outside a cell
    bright = img > np.percentile(img, 99)
    assert (lab[bright] > 0).mean() > 0.95


def test_open_sample_hologram(make_napari_viewer):
    from napari.layers import Points

    viewer = make_napari_viewer()
    image, truth = _open(viewer, "hologram")
    assert isinstance(truth, Points)
    assert image.data.shape == (128, 128) and truth.data.shape == (3, 3)
    assert image.metadata["wavelength_um"] == pytest.approx(0.532)
    assert _world_um(image) == _world_um(truth) == pytest.approx(0.1)
    feats = truth.features
    assert {"z_um", "radius_um", "refractive_index"} <= set(feats.columns)
    assert feats["z_um"].between(5.0, 15.0).all() and feats["radius_um"].between(0.4, 0.8).all()
    # 3D truth: world z (um) is the feature z_um; world y, x coincide with the image pixel under it
    world = np.array([truth.data_to_world(p) for p in truth.data])
    np.testing.assert_allclose(world[:, 0], feats["z_um"], rtol=1e-5)
    pix = np.array([image.world_to_data(w[1:]) for w in world])
    np.testing.assert_allclose(pix, truth.data[:, 1:], atol=1e-4)
    # each sphere's fringe pattern is centred on its truth point: strong local contrast there, and the
    # pattern is point-symmetric about the truth but not about a point 4 px away
    img = np.asarray(image.data)
    bg = np.median(img)
    yy, xx = np.mgrid[:128, :128]
    d = np.stack([np.hypot(yy - y, xx - x) for y, x in truth.data[:, 1:]])
    far = np.abs(img - bg)[d.min(0) > 25].mean()

    def symmetry(y, x, r=12):
        w = img[round(y) - r : round(y) + r + 1, round(x) - r : round(x) + r + 1]
        return np.corrcoef(w.ravel(), w[::-1, ::-1].ravel())[0, 1]

    for near in d < 4:
        assert np.abs(img - bg)[near].mean() > 2 * far
    sym_at = np.array([symmetry(y, x) for y, x in truth.data[:, 1:]])
    sym_off = np.array([symmetry(y + 4, x) for y, x in truth.data[:, 1:]])
    assert (sym_at > sym_off).all() and sym_at.max() > 0.5


# ---------------------------------------------------------------------------- round trips (issue 11.6)
def test_points_csv_round_trips_scale_and_units_through_napari(make_napari_viewer, tmp_path):
    """A Points CSV of a um-scaled image re-opened at scale 1 (2.85x off); now the header keeps it."""
    viewer = make_napari_viewer()
    pts = viewer.add_points(
        [[0, 10.0, 20.0], [1, 30.0, 5.0]],
        scale=(1.0, 0.351, 0.351),
        translate=(0.0, 2.0, 3.0),
        units=("second", "um", "um"),
        features={"probability": [0.9, 0.8]},
    )
    path = str(tmp_path / "det.csv")
    data, meta, _ = pts.as_layer_data_tuple()
    (written,) = write_points(path, data, meta)
    (back,) = viewer.open(written, plugin="napari-deeptrack")
    assert type(back).__name__ == "Points"
    np.testing.assert_allclose(back.data, pts.data)
    assert tuple(back.scale) == pytest.approx((1.0, 0.351, 0.351))
    assert tuple(back.translate) == pytest.approx((0.0, 2.0, 3.0))
    assert [str(u) for u in back.units][-2:] == ["micrometer", "micrometer"]
    np.testing.assert_allclose(back.features["probability"], [0.9, 0.8])
    # same place in the world: a point lands on the same um position
    np.testing.assert_allclose(back.data_to_world(back.data[0]), pts.data_to_world(pts.data[0]))


def test_labels_tiff_reopens_as_labels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    lab = np.zeros((2, 24, 24), np.int32)
    lab[0, 2:6, 3:9] = 1
    lab[1, 10:20, 10:12] = 7
    layer = viewer.add_labels(lab, scale=(1.0, 0.2, 0.2), units=("pixel", "um", "um"))
    data, meta, _ = layer.as_layer_data_tuple()
    (path,) = write_labels(str(tmp_path / "labels.tif"), data, meta)
    (back,) = viewer.open(path, plugin="napari-deeptrack")
    assert type(back).__name__ == "Labels"  # was re-opened as an Image layer
    np.testing.assert_array_equal(np.asarray(back.data), lab)
    assert tuple(back.scale)[-2:] == pytest.approx((0.2, 0.2))


def test_tracks_round_trip_through_trackmate_xml(make_napari_viewer, tmp_path):
    from napari_deeptrack._napari._writer import write_tracks_trackmate

    viewer = make_napari_viewer()
    tracks = np.array([[0, 0, 10.0, 10.0], [0, 1, 11.0, 10.5], [1, 0, 30.0, 5.0], [1, 1, 31.0, 6.0]])
    layer = viewer.add_tracks(tracks, scale=(0.5, 0.2, 0.2), units=("second", "um", "um"))
    data, meta, _ = layer.as_layer_data_tuple()
    (path,) = write_tracks_trackmate(str(tmp_path / "tracks.xml"), data, meta)
    back = [lyr for lyr in viewer.open(path, plugin="napari-deeptrack") if type(lyr).__name__ == "Tracks"]
    assert len(back) == 1
    got = np.asarray(back[0].data)
    assert len(got) == 4 and len(np.unique(got[:, 0])) == 2
    np.testing.assert_allclose(np.sort(got[:, 2]), np.sort(tracks[:, 2]), atol=1e-6)
    assert tuple(back[0].scale)[-2:] == pytest.approx((0.2, 0.2))


def test_reader_declines_files_it_cannot_read(tmp_path):
    """napari then tries its other readers instead of showing our error."""
    bad = tmp_path / "not_a_tiff.tif"
    bad.write_bytes(b"this is not a TIFF file at all")
    assert get_reader(str(bad)) is None
    weird = tmp_path / "weird.csv"
    weird.write_bytes(b"\x00\x01\x02")
    assert get_reader(str(weird)) is None
