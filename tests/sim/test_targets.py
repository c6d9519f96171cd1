"""Targets computed from the scene: disk masks, density maps, z-binned volumes, labels, vectors."""

import math

import numpy as np
import pytest
import torch

from napari_deeptrack.sim import Scene, from_json, to_json
from napari_deeptrack.sim.targets import (
    ClassLabel,
    Counts,
    DensityMap,
    DiskMask,
    InstanceLabels,
    RegressionVector,
    ZBinnedVolume,
    bin_to_z,
    z_to_bin,
)


def make_scene(yx_per_image, shape=(40, 48), z=None):
    """Scene with the given (y, x) lists per image; slots beyond an image's list are absent."""
    b = len(yx_per_image)
    n = max(len(p) for p in yx_per_image)
    s = Scene.empty(b, n, shape)
    for i, pts in enumerate(yx_per_image):
        for j, (y, x) in enumerate(pts):
            s.position[i, j, 0] = y
            s.position[i, j, 1] = x
            s.present[i, j] = True
    if z is not None:
        s.position[..., 2] = torch.as_tensor(z, dtype=torch.float32)
    return s


def random_points(gen, n, shape, margin):
    h, w = shape
    y = margin + (h - 1 - 2 * margin) * torch.rand(n, generator=gen)
    x = margin + (w - 1 - 2 * margin) * torch.rand(n, generator=gen)
    return list(zip(y.tolist(), x.tolist()))


def separated_points(gen, n, shape, margin, min_dist):
    pts = []
    while len(pts) < n:
        (y, x), = random_points(gen, 1, shape, margin)
        if all(math.hypot(y - a, x - b) >= min_dist for a, b in pts):
            pts.append((y, x))
    return pts


# ---------------------------------------------------------------------------- DiskMask
def test_disk_mask_is_exactly_the_pixels_within_radius():
    g = torch.Generator().manual_seed(0)
    pts = [random_points(g, 5, (40, 48), -1.0), random_points(g, 2, (40, 48), 3.0)]
    scene = make_scene(pts)
    mask = DiskMask(radius_px=3.3)(scene)
    assert mask.shape == (2, 1, 40, 48) and mask.dtype == torch.float32
    ii, jj = np.mgrid[0:40, 0:48]
    for b, p in enumerate(pts):
        ref = np.zeros((40, 48), bool)
        for y, x in p:
            ref |= (ii - y) ** 2 + (jj - x) ** 2 <= 3.3**2
        assert np.array_equal(mask[b, 0].numpy() == 1, ref)
        assert set(np.unique(mask[b, 0].numpy())) <= {0.0, 1.0}


def test_antialiased_disk_centroid_on_the_particle():
    g = torch.Generator().manual_seed(1)
    shape = (64, 64)
    pts = [separated_points(g, 6, shape, 6, 12) for _ in range(4)]
    scene = make_scene(pts, shape)
    for radius, tol in ((3.0, 0.05), (5.0, 0.05)):
        soft = DiskMask(radius_px=radius, antialias=True)(scene)
        hard = DiskMask(radius_px=radius)(scene)
        ii, jj = np.mgrid[0:64, 0:64]
        worst_soft = worst_hard = 0.0
        for b, p in enumerate(pts):
            for y, x in p:
                win = (ii - y) ** 2 + (jj - x) ** 2 <= (radius + 2) ** 2
                for m, name in ((soft, "soft"), (hard, "hard")):
                    v = m[b, 0].numpy() * win
                    cy, cx = (v * ii).sum() / v.sum(), (v * jj).sum() / v.sum()
                    err = max(abs(cy - y), abs(cx - x))
                    if name == "soft":
                        worst_soft = max(worst_soft, err)
                    else:
                        worst_hard = max(worst_hard, err)
                # area of the antialiased disk is pi r^2
                assert abs(soft[b, 0].numpy()[win].sum() - math.pi * radius**2) < 0.03 * math.pi * radius**2
        assert worst_soft < tol
        # binary disks are quantised: their centroid is off by up to ~0.26 px (not better in general)
        assert worst_hard < 0.3


def test_disk_mask_z_range_and_absent_slots():
    scene = make_scene([[(10, 10), (20, 30)], [(5, 5)]], z=[[0.0, 2.0], [0.0, 0.0]])
    scene.position[1, 1, :2] = float("nan")  # garbage in an absent slot must be ignored
    m = DiskMask(radius_px=2, z_range_um=[-1.0, 1.0])(scene)
    assert m[0, 0, 10, 10] == 1 and m[0, 0, 20, 30] == 0
    assert m[1].sum() == 13  # one disk of radius 2: 13 pixels
    with pytest.raises(ValueError, match="radius_px"):
        DiskMask(radius_px=0)
    with pytest.raises(ValueError, match="z_range_um"):
        DiskMask(z_range_um=[1.0, -1.0])


# ---------------------------------------------------------------------------- DensityMap
def test_density_integral_equals_count_including_border_particles():
    g = torch.Generator().manual_seed(2)
    shape = (32, 40)
    border = [(0.0, 0.0), (-0.4, 20.0), (31.4, 39.4), (15.0, -0.49), (12.3, 39.2)]
    pts = [border, random_points(g, 17, shape, -0.49), random_points(g, 1, shape, 5), border[:1]]
    scene = make_scene(pts, shape)
    for sigma in (1.0, 2.5, 4.0):
        d = DensityMap(sigma_px=sigma)(scene)
        assert d.shape == (4, 1, 32, 40)
        integral = d.sum(dim=(1, 2, 3)).double()
        counts = torch.tensor([float(len(p)) for p in pts], dtype=torch.float64)
        assert torch.allclose(integral, counts, atol=1e-3), (sigma, integral, counts)
        assert torch.allclose(integral.float(), Counts()(scene), atol=1e-3)


def test_density_plane_normalisation_counts_visible_fraction():
    shape = (30, 30)
    scene = make_scene([[(0.0, 0.0)], [(0.0, 15.0)], [(15.0, 15.0)], [(-3.0, 15.0)]], shape)
    sigma = 2.0
    d = DensityMap(sigma_px=sigma, normalize="plane")(scene).sum(dim=(1, 2, 3))
    k = np.arange(-40, 41)
    g1 = np.exp(-(k**2) / (2 * sigma**2))
    half = g1[k >= 0].sum() / g1.sum()  # 1D fraction on the pixel row/column >= 0
    above3 = g1[k >= 3].sum() / g1.sum()  # centre 3 px outside the frame
    expected = torch.tensor([half * half, half, 1.0, above3], dtype=torch.float32)
    assert torch.allclose(d, expected, atol=1e-4)
    # default rule: centred in the frame -> 1; centred outside -> the visible fraction
    d_frame = DensityMap(sigma_px=sigma)(scene).sum(dim=(1, 2, 3))
    assert torch.allclose(d_frame, torch.tensor([1.0, 1.0, 1.0, above3], dtype=torch.float32), atol=1e-4)


def test_density_peak_and_centroid_at_particle():
    scene = make_scene([[(12.3, 20.7)]], (32, 40))
    d = DensityMap(sigma_px=1.5)(scene)[0, 0].double()
    ii, jj = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")
    cy, cx = (d * ii).sum() / d.sum(), (d * jj).sum() / d.sum()
    assert abs(cy - 12.3) < 1e-3 and abs(cx - 20.7) < 1e-3
    assert d.argmax() == 12 * 40 + 21


# ---------------------------------------------------------------------------- ZBinnedVolume
def test_z_binned_volume_balls_and_bin_mapping():
    zb = ZBinnedVolume(z_min_um=-2.0, z_max_um=2.0, n_bins=8, radius_px=2.5)
    centres = zb.bin_centers_um()
    assert torch.allclose(centres, torch.linspace(-1.75, 1.75, 8))
    z = torch.tensor([-1.9, -0.3, 0.77, 1.99])
    assert torch.allclose(bin_to_z(z_to_bin(z, -2, 2, 8), -2, 2, 8), z, atol=1e-6)
    assert torch.allclose(z_to_bin(centres, -2, 2, 8), torch.arange(8.0), atol=1e-5)

    scene = make_scene([[(10.2, 12.6), (20.0, 30.0)]], (32, 40), z=[[-0.25, 1.6]])
    vol = zb(scene)
    assert vol.shape == (1, 8, 32, 40)
    kk, ii, jj = np.mgrid[0:8, 0:32, 0:40]
    ref = np.zeros((8, 32, 40), bool)
    for (y, x), zz in (((10.2, 12.6), -0.25), ((20.0, 30.0), 1.6)):
        u = (zz + 2.0) / 0.5 - 0.5
        ref |= (kk - u) ** 2 + (ii - y) ** 2 + (jj - x) ** 2 <= 2.5**2
    assert np.array_equal(vol[0].numpy() == 1, ref)
    # the particle at z = -0.25 um (a bin centre) is centred on bin 3: symmetric profile
    prof = vol[0, :, 5:16, 7:19].sum(dim=(1, 2))
    assert prof.argmax() == 3 and prof[2] == prof[4] and prof[1] == prof[5]
    with pytest.raises(ValueError, match="z_min_um"):
        ZBinnedVolume(z_min_um=1.0, z_max_um=1.0)


# ---------------------------------------------------------------------------- InstanceLabels
def test_instance_labels_disks_overlap_and_slots():
    scene = make_scene([[(10.0, 10.0), (10.0, 14.0), (25.0, 30.0)], [(20.0, 20.0)]], (40, 48))
    scene.radius_um[:] = 0.4  # 4 px at 0.1 um/px
    scene.present[0, 2] = False
    lab = InstanceLabels(pixel_size_um=0.1)(scene)
    assert lab.shape == (2, 1, 40, 48) and lab.dtype == torch.int64
    assert set(lab[0].unique().tolist()) == {0, 1, 2}
    assert lab[0, 0, 10, 12] == 2  # overlap: the later slot is on top
    assert lab[0, 0, 10, 7] == 1 and lab[0, 0, 25, 30] == 0
    area = (lab[1] == 1).sum().item()
    assert abs(area - math.pi * 16) < 0.1 * math.pi * 16


def test_instance_labels_rotated_ellipse():
    scene = make_scene([[(20.0, 20.0)], [(20.0, 20.0)]], (40, 40))
    scene.attributes["axes_um"] = torch.tensor([[[0.8, 0.3, 0.3]], [[0.8, 0.3, 0.3]]])
    scene.attributes["rotation_rad"] = torch.tensor([[0.0], [math.pi / 2]])
    lab = InstanceLabels(pixel_size_um=0.1)(scene)
    a, b = lab[0, 0] > 0, lab[1, 0] > 0
    assert a[20 + 7, 20] and not a[20, 20 + 7]  # long axis along y
    assert torch.equal(a, b.T)  # rotated by 90 degrees = transposed


def test_instance_labels_match_cellbody_renderer():
    """Labels of CellBody particles follow the scatterer's own outline and hold the rendered cell."""
    from napari_deeptrack.sim import CellBody, Particles, Pipeline
    from napari_deeptrack.sim.optics.fluorescence import Fluorescence

    px = 0.25
    cell = CellBody(radius_um=2.0, irregularity=0.3, texture=0.0)
    pipe = Pipeline(
        image_shape=(96, 96),
        particles=[Particles(cell, count=3, margin_px=14, intensity=1e4)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.5, pixel_size_um=px),
        targets={"labels": InstanceLabels(pixel_size_um=px)},
        min_distance_px=30,
    )
    batch = pipe(2, seed=0)
    lab, img, scene = batch.targets["labels"][:, 0], batch.image[:, 0], batch.scene
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    for b, n in zip(*torch.nonzero(scene.present, as_tuple=True)):
        dy, dx = yy - scene.position[b, n, 0], xx - scene.position[b, n, 1]
        edge = cell.outline_radius_um(scene, b.view(1), n.view(1), torch.atan2(dy, dx))[0]
        inside = torch.sqrt(dy**2 + dx**2) * px <= edge
        mine = lab[b] == n + 1
        assert (inside != mine).sum() <= 2, int((inside != mine).sum())
        assert inside.sum() > 100
    inside_light = img[lab > 0].sum() / img.sum()
    assert inside_light > 0.7, inside_light  # most of the (blurred) cell's light is inside its label


# ---------------------------------------------------------------------------- per-image targets
def test_regression_vector_class_label_counts():
    pts = [[(0, 0), (10.0, 14.0)], [(3.0, 4.0)], [(1.0, 1.0)]]
    scene = make_scene(pts, (21, 31), z=[[0.0, 0.7], [-0.2, 0.0], [0.0, 0.0]])
    scene.present[0, 0] = False  # the first present particle of image 0 is slot 1
    scene.present[2, 0] = False  # image 2 is empty
    scene.radius_um[:] = torch.tensor([[0.1, 0.5], [0.3, 0.0], [0.0, 0.0]])
    scene.refractive_index[:] = torch.tensor([[1.4, 1.6], [1.45, 1.0], [1.0, 1.0]]) + 0.01j
    scene.class_id[:] = torch.tensor([[3, 2], [1, 0], [0, 0]])
    rv = RegressionVector(fields=["y", "x", "z_um", "radius_um", "n_real"], offset=[0, 0, 0, 0.5, 1.5],
                          scale=[10, 10, 1, 0.1, 0.1])
    v = rv(scene)
    assert v.shape == (3, 5)
    expected0 = torch.tensor([(10 - 10) / 10, (14 - 15) / 10, 0.7, 0.0, 1.0])
    expected1 = torch.tensor([(3 - 10) / 10, (4 - 15) / 10, -0.2, -2.0, -0.5])
    assert torch.allclose(v[0], expected0, atol=1e-5) and torch.allclose(v[1], expected1, atol=1e-5)
    assert torch.isnan(v[2]).all()
    assert torch.allclose(rv.unscale(v[:2])[:, 3], torch.tensor([0.5, 0.3]), atol=1e-6)
    raw = RegressionVector(fields=["y", "x"], relative_to_center=False)(scene)
    assert torch.allclose(raw[1], torch.tensor([3.0, 4.0]))
    assert ClassLabel()(scene).tolist() == [2, 1, -1]
    assert Counts()(scene).tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="unknown field"):
        RegressionVector(fields=["colour"])(scene)
    with pytest.raises(ValueError, match="scale"):
        RegressionVector(fields=["y"], scale=[1.0, 2.0])


@pytest.mark.parametrize(
    "target",
    [DiskMask(2.0, [-1.0, 1.0], True), DensityMap(1.5, "plane"), ZBinnedVolume(-1, 2, 4, 2.0),
     InstanceLabels(0.2), RegressionVector(["z_um"], False, [1.0], [2.0]), ClassLabel(), Counts()],
)
def test_targets_round_trip_json(target):
    assert from_json(to_json(target)) == target
