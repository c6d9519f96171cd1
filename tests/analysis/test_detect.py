"""Network-output maps to measurements: detections, counts, peaks, 3D positions (analysis/)."""

import numpy as np
import pytest
import torch

from napari_deeptrack.analysis.density import counts_from_density, peaks_from_density
from napari_deeptrack.analysis.detect import detect_from_map
from napari_deeptrack.analysis.metrics import match_points
from napari_deeptrack.analysis.volume3d import positions_from_volume, z_from_volume
from napari_deeptrack.sim.scene import Scene
from napari_deeptrack.sim.targets import DensityMap, DiskMask, ZBinnedVolume, z_to_bin


def _grid_scene(batch, rows, cols, spacing, shape, jitter, seed, z=None):
    """Particles on a jittered grid (no overlaps) at sub-pixel positions."""
    rng = np.random.default_rng(seed)
    gy, gx = np.meshgrid(
        np.arange(rows) * spacing + spacing / 2, np.arange(cols) * spacing + spacing / 2, indexing="ij"
    )
    base = np.stack([gy.ravel(), gx.ravel()], 1)
    n = len(base)
    pos = base[None] + rng.uniform(-jitter, jitter, (batch, n, 2))
    sc = Scene.empty(batch, n, shape)
    sc.present[:] = True
    sc.position[..., :2] = torch.tensor(pos, dtype=torch.float32)
    if z is not None:
        sc.position[..., 2] = torch.tensor(z, dtype=torch.float32)
    return sc, sc.position[..., :2].double().numpy()


def _errors(df, truth):
    errs = []
    for f in range(truth.shape[0]):
        d = df[df.frame == f][["y", "x"]].to_numpy()
        a, b, dist = match_points(d, truth[f], 1.0)
        assert len(a) == truth.shape[1] == len(d), f"frame {f}: {len(d)} detections for {truth.shape[1]}"
        errs.append(dist)
    return np.concatenate(errs)


@pytest.mark.parametrize("method", ["components", "maxima"])
@pytest.mark.parametrize("radius", [2.0, 3.0, 4.5])
def test_detections_from_rendered_disks_within_0p05_px(method, radius):
    scene, truth = _grid_scene(3, 4, 5, 18, (72, 90), 3.0, seed=int(radius * 10))
    maps = DiskMask(radius_px=radius, antialias=True)(scene)[:, 0].numpy()
    df = detect_from_map(maps, 0.5, method=method, min_distance_px=radius + 1)
    err = _errors(df, truth)
    assert err.max() < 0.05, err.max()
    assert list(df.columns) == ["frame", "y", "x", "probability", "area"]
    assert np.all(df.probability == 1.0)
    # area: pixels above threshold, about pi r^2
    assert np.allclose(df.area.mean(), np.pi * radius**2, rtol=0.15)


def test_binary_disks_are_quantised_but_unbiased_on_average():
    scene, truth = _grid_scene(4, 4, 4, 16, (64, 64), 3.0, seed=3)
    maps = DiskMask(radius_px=3.0)(scene)[:, 0].numpy()
    df = detect_from_map(maps, 0.5)
    err = _errors(df, truth)
    assert err.max() < 0.36  # binary disks: quantised centroid
    d = np.concatenate([df[df.frame == f][["y", "x"]].to_numpy() for f in range(4)])
    assert np.abs(d.mean(0) - truth.reshape(-1, 2).mean(0)).max() < 0.05


def test_maxima_split_touching_disks_that_components_merge():
    scene = Scene.empty(1, 2, (32, 40))
    scene.present[:] = True
    scene.position[0, :, :2] = torch.tensor([[15.3, 14.2], [15.8, 21.6]])  # 7.4 px apart, radius 4 disks
    maps = DiskMask(radius_px=4.0, antialias=True)(scene)[:, 0].numpy()
    # soft "network-like" output: blur so each disk has a single peak
    from scipy.ndimage import gaussian_filter

    soft = gaussian_filter(maps, 1.5)
    assert len(detect_from_map(soft, 0.5, method="components")) == 1
    df = detect_from_map(soft, 0.5, method="maxima", min_distance_px=4.0)
    assert len(df) == 2
    assert np.allclose(np.sort(df.x.to_numpy()), [14.2, 21.6], atol=0.6)


def test_detect_accepts_2d_and_torch_and_rejects_bad_input():
    m = np.zeros((20, 20))
    m[5:8, 5:8] = 0.9
    df = detect_from_map(torch.tensor(m), 0.5)
    assert len(df) == 1 and df.frame.iloc[0] == 0
    assert np.allclose(df[["y", "x"]].to_numpy(), [[6.0, 6.0]])
    assert len(detect_from_map(np.zeros((2, 8, 8)), 0.5)) == 0
    with pytest.raises(ValueError, match="threshold"):
        detect_from_map(m, 1.5)
    with pytest.raises(ValueError, match="method"):
        detect_from_map(m, 0.5, method="blobs")
    with pytest.raises(ValueError, match="prob_map"):
        detect_from_map(np.zeros((2, 2, 2, 2)), 0.5)


def test_density_counts_equal_truth_and_peaks_find_particles():
    rng = np.random.default_rng(5)
    scene, truth = _grid_scene(4, 3, 3, 20, (60, 60), 3.0, seed=4)
    counts_true = rng.integers(0, 10, 4)
    for b, c in enumerate(counts_true):
        scene.present[b, c:] = False
    dens = DensityMap(sigma_px=2.0)(scene)[:, 0].numpy()
    counts = counts_from_density(dens)
    assert np.allclose(counts, counts_true, atol=1e-3)
    assert np.array_equal(np.round(counts).astype(int), counts_true)
    peaks = peaks_from_density(dens, sigma_px=2.0)
    for b, c in enumerate(counts_true):
        p = peaks[peaks.frame == b][["y", "x"]].to_numpy()
        assert len(p) == c
        a, _, dist = match_points(p, truth[b, :c], 0.5)
        assert len(a) == c and (dist.max() if c else 0) < 0.01  # 3-point Gaussian fit is exact
    assert np.allclose(peaks.mass, 0.86, atol=0.05)


def _volume_scene(seed):
    rng = np.random.default_rng(seed)
    z_min, z_max, nb = -1.0, 1.0, 16
    # half the particles within 1.5 bins of either end of the z range (or slightly outside it)
    z_edge = np.concatenate(
        [rng.uniform(z_min - 0.05, z_min + 0.2, 8), rng.uniform(z_max - 0.2, z_max + 0.05, 8)]
    )
    z = np.concatenate([z_edge, rng.uniform(z_min, z_max, 16)]).reshape(2, 16)
    scene, truth = _grid_scene(2, 4, 4, 15, (60, 60), 1.5, seed=seed, z=z)
    u_true = z_to_bin(torch.tensor(z), z_min, z_max, nb).numpy()
    return scene, truth, z, u_true, (z_min, z_max, nb)


@pytest.mark.parametrize("antialias", [True, False])
def test_z_from_volume_has_no_edge_bias(antialias):
    scene, truth, z, u_true, (z_min, z_max, nb) = _volume_scene(11)
    vol = ZBinnedVolume(z_min, z_max, nb, radius_px=3.0, antialias=antialias)(scene).numpy()
    df = positions_from_volume(vol, z_min, z_max, 3.0, method="fit")
    cen = z_from_volume(vol, df, 3.0, method="centroid")
    err_fit, err_cen, xy = [], [], []
    for f in range(2):
        sel = (df.frame == f).to_numpy()
        a, b, dist = match_points(df[sel][["y", "x"]].to_numpy(), truth[f], 1.0)
        assert len(a) == 16
        err_fit.append(df[sel].z_bin.to_numpy()[a] - u_true[f, b])
        err_cen.append(cen[sel][a] - u_true[f, b])
        xy.append(dist)
    err_fit, err_cen = np.concatenate(err_fit), np.concatenate(err_cen)
    u = np.concatenate([u_true[f] for f in range(2)])
    low, high = u < 1.5, u > nb - 2.5
    assert low.sum() >= 4 and high.sum() >= 4
    # the paper's centroid is pulled inwards at both ends of the range ...
    assert err_cen[low].mean() > 0.5 and err_cen[high].mean() < -0.3
    # ... the ball fit is not
    tol = 0.01 if antialias else 0.15
    assert abs(err_fit[low].mean()) < tol and abs(err_fit[high].mean()) < tol
    assert np.abs(err_fit).max() < (0.01 if antialias else 0.3)  # binary balls are quantised
    assert np.concatenate(xy).max() < 0.05 if antialias else True
    # z in micrometres follows from the bin coordinate
    dz = (z_max - z_min) / nb
    assert np.allclose(df.z_um, z_min + (df.z_bin + 0.5) * dz)


def test_volume_input_validation():
    with pytest.raises(ValueError, match="volume"):
        positions_from_volume(np.zeros((4, 4)), -1, 1, 3.0)
    with pytest.raises(ValueError, match="z_min_um"):
        positions_from_volume(np.zeros((4, 8, 8)), 1, -1, 3.0)
    df = positions_from_volume(np.zeros((4, 8, 8)), -1, 1, 3.0)
    assert len(df) == 0 and "z_um" in df.columns


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_brightness_filters_drop_faint_and_small_detections():
    """min_signal (integrated image around a detection) and min_mass (summed probability)."""
    shape = (48, 60)
    bright = [(0, 10, 10), (0, 30, 40), (1, 12, 45), (1, 36, 14)]  # (frame, y, x)
    faint = [(0, 35, 15), (1, 10, 20)]  # "noise clusters": flagged by the map, little signal
    prob = np.zeros((2, *shape))
    image = np.random.default_rng(0).normal(0.0, 1e-3, (2, *shape))  # tiny noise around a 0 background
    for f, y, x in bright:
        prob[f][_disk(shape, y, x, 3.0)] = 1.0
        image[f, y - 4 : y + 5, x - 4 : x + 5] += 2.0
    for f, y, x in faint:
        prob[f, y - 1 : y + 2, x - 1 : x + 2] = 0.9  # small, weaker blob
        image[f, y - 4 : y + 5, x - 4 : x + 5] += 0.5
    n_disk = int(_disk((7, 7), 3, 3, 3.0).sum())  # 29 pixels within 3 px of a pixel centre
    df = detect_from_map(prob, 0.5)
    assert len(df) == 6 and list(df.columns) == ["frame", "y", "x", "probability", "area"]
    # signal: the sum of the image over the radius-3 disk around the detection
    df = detect_from_map(prob, 0.5, image=image)
    assert len(df) == 6 and "signal" in df.columns
    is_bright = df.area > 20
    assert np.allclose(df.signal[is_bright], 2.0 * n_disk, atol=0.05)
    assert np.allclose(df.signal[~is_bright], 0.5 * n_disk, atol=0.05)
    kept = detect_from_map(prob, 0.5, image=image, min_signal=30.0)
    assert sorted(zip(kept.frame, kept.y.round(), kept.x.round(), strict=True)) == sorted(bright)
    small = detect_from_map(prob, 0.5, image=image, signal_radius_px=1.0)  # 5-pixel cross
    assert np.allclose(np.sort(small.signal), [2.5, 2.5, 10.0, 10.0, 10.0, 10.0], atol=0.01)
    # mass: summed probability over the support (29 for a unit disk, 9 x 0.9 for the small blobs)
    df = detect_from_map(prob, 0.5, min_mass=0.0)
    assert np.allclose(np.sort(df["mass"]), [8.1, 8.1] + [n_disk] * 4)
    kept = detect_from_map(prob, 0.5, min_mass=15.0)
    assert sorted(zip(kept.frame, kept.y.round(), kept.x.round(), strict=True)) == sorted(bright)
    empty = detect_from_map(np.zeros_like(prob), 0.5, image=image, min_mass=0.0)
    assert len(empty) == 0 and list(empty.columns)[-2:] == ["mass", "signal"]
    with pytest.raises(ValueError, match="min_signal needs image"):
        detect_from_map(prob, 0.5, min_signal=1.0)
    with pytest.raises(ValueError, match="image must have the shape"):
        detect_from_map(prob, 0.5, image=image[:1])
    with pytest.raises(ValueError, match="min_mass"):
        detect_from_map(prob, 0.5, min_mass=-1.0)
