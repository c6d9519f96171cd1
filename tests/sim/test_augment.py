"""Geometric augmentations move positions exactly as they move pixels; labels warp with the image."""

import math
from dataclasses import dataclass

import pytest
import torch

from napari_deeptrack.sim import (
    Constant,
    Optics,
    Particles,
    Pipeline,
    Scatterer,
    Scene,
    SimBatch,
    Uniform,
    from_json,
    register,
    to_json,
)
from napari_deeptrack.sim.augment import Affine, ElasticDeformation, FlipRotate
from napari_deeptrack.sim.targets import Counts, DensityMap, DiskMask, InstanceLabels, RegressionVector


@register
@dataclass
class SpotsForAugmentTests(Optics):
    """Test-only optics: a Gaussian spot of ``sigma_px`` per present particle (peak = intensity)."""

    sigma_px: float = 1.5

    def render(self, scene, scatterers, generator):
        h, w = scene.image_shape
        yy = torch.arange(h, dtype=torch.float32)[:, None]
        xx = torch.arange(w, dtype=torch.float32)[None, :]
        y = scene.position[..., 0, None, None]
        x = scene.position[..., 1, None, None]
        spots = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * self.sigma_px**2))
        amp = (scene.intensity * scene.present)[..., None, None]
        return (amp * spots).sum(dim=1, keepdim=True)


@register
@dataclass
class DotForAugmentTests(Scatterer):
    pass


OPTICS = SpotsForAugmentTests(1.5)


def scene_in_disk(b, n, shape, radius, seed, min_dist=8.0):
    """Well separated particles within ``radius`` of the image centre (they stay in any rotation)."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    s = Scene.empty(b, n, shape)
    c = torch.tensor([(h - 1) / 2, (w - 1) / 2])
    for i in range(b):
        pts = []
        while len(pts) < n:
            r = radius * torch.rand(1, generator=g).sqrt()
            a = 2 * math.pi * torch.rand(1, generator=g)
            p = c + torch.cat([r * torch.sin(a), r * torch.cos(a)])
            if all((p - q).norm() >= min_dist for q in pts):
                pts.append(p)
        s.position[i, :, :2] = torch.stack(pts)
    s.present[:] = True
    s.present[0, -1] = False  # an absent slot
    s.intensity[:] = 1.0
    s.radius_um[:] = 0.3
    return s


def make_batch(scene):
    image = OPTICS.render(scene, [], None)
    targets = {
        "mask": DiskMask(radius_px=3)(scene),
        "labels": InstanceLabels(pixel_size_um=0.1)(scene),
        "density": DensityMap(sigma_px=1.5)(scene),
        "vector": RegressionVector(["x"])(scene),
    }
    return SimBatch(image, scene, targets)


def local_centroids(image, scene, half=4):
    """Intensity centroid of each present particle's spot in a window centred on its claimed position."""
    out = torch.full(scene.position[..., :2].shape, float("nan"))
    h, w = image.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for b, n in zip(*torch.nonzero(scene.present, as_tuple=True)):
        y, x = scene.position[b, n, :2]
        win = ((yy - y) ** 2 + (xx - x) ** 2 <= half**2).float() * image[b, 0]
        out[b, n] = torch.stack([(win * yy).sum(), (win * xx).sum()]) / win.sum()
    return out


def centroid_error(image, scene):
    """Distance between spot centroids in ``image`` and in a fresh render of ``scene`` (same windows)."""
    return (local_centroids(image, scene) - local_centroids(make_batch(scene).image, scene)).norm(dim=-1)


# ---------------------------------------------------------------------------- flips and rot90
@pytest.mark.parametrize("shape", [(48, 48), (40, 56)])
def test_flip_rotate_is_exact_for_image_positions_and_labels(shape):
    scene = scene_in_disk(16, 5, shape, 14, seed=0)
    batch = make_batch(scene)
    out = FlipRotate(p_flip=0.5, rot90=True)(batch, torch.Generator().manual_seed(3))
    new = out.scene
    fresh = make_batch(new)
    assert torch.allclose(out.image, fresh.image, atol=1e-5)
    assert torch.equal(out.targets["mask"], fresh.targets["mask"])
    assert torch.equal(out.targets["labels"], fresh.targets["labels"])
    assert torch.allclose(out.targets["density"], fresh.targets["density"], atol=1e-6)
    assert torch.equal(new.present, scene.present)
    k = new.image_params["rot90_k"]
    assert set(k.tolist()) <= ({0.0, 1.0, 2.0, 3.0} if shape[0] == shape[1] else {0.0, 2.0})
    assert len(set(k.tolist())) > 1 and 0 < new.image_params["flip_x"].mean() < 1
    # a pure left-right flip is the mirror image
    one = FlipRotate(p_flip=1.0, rot90=False)(batch, torch.Generator().manual_seed(0))
    assert torch.equal(one.image, batch.image.flip(-1).flip(-2))
    assert torch.allclose(one.scene.position[..., 1], shape[1] - 1 - scene.position[..., 1])


def test_flip_rotate_same_parameters_for_all_frames_of_a_movie():
    scene = scene_in_disk(12, 3, (32, 32), 10, seed=1)
    scene.attributes["movie"] = torch.arange(4).repeat_interleave(3)
    out = FlipRotate()(make_batch(scene), torch.Generator().manual_seed(0))
    for key in ("rot90_k", "flip_x", "flip_y"):
        v = out.scene.image_params[key].reshape(4, 3)
        assert (v == v[:, :1]).all()


# ---------------------------------------------------------------------------- affine
def test_rigid_affine_matches_a_fresh_render():
    scene = scene_in_disk(8, 5, (48, 48), 14, seed=2)
    batch = make_batch(scene)
    aff = Affine(rotation_deg=Uniform(-180, 180), scale=1.0, shear_deg=0.0, translate_px=Uniform(-3, 3))
    out = aff(batch, torch.Generator().manual_seed(1))
    fresh = make_batch(out.scene)
    # bilinear interpolation of a sigma = 1.5 px spot: error up to ~10 % of the peak (half-pixel shifts)
    assert (out.image - fresh.image).abs().max() < 0.12
    err = (local_centroids(out.image, out.scene) - local_centroids(fresh.image, out.scene)).norm(dim=-1)
    assert err[out.scene.present].max() < 0.03
    # masks warp with the image (nearest neighbour keeps them binary)
    m_out, m_new = out.targets["mask"] > 0.5, fresh.targets["mask"] > 0.5
    assert set(out.targets["mask"].unique().tolist()) <= {0.0, 1.0}
    iou = (m_out & m_new).sum() / (m_out | m_new).sum()
    assert iou > 0.8, iou
    assert out.targets["labels"].dtype == torch.int64
    assert set(out.targets["labels"].unique().tolist()) == set(batch.targets["labels"].unique().tolist())
    assert torch.equal(out.targets["vector"], batch.targets["vector"])  # non-spatial: untouched here
    assert out.scene.image_params["affine_rotation_deg"].std() > 30


def test_affine_quarter_turn_and_integer_shift_are_exact():
    scene = scene_in_disk(4, 5, (40, 40), 12, seed=7)
    batch = make_batch(scene)
    aff = Affine(rotation_deg=90.0, scale=1.0, shear_deg=0.0, translate_px=2.0)
    out = aff(batch, torch.Generator().manual_seed(0))
    fresh = make_batch(out.scene)
    assert torch.allclose(out.image, fresh.image, atol=1e-5)
    assert torch.equal(out.targets["mask"], fresh.targets["mask"])
    assert torch.equal(out.targets["labels"], fresh.targets["labels"])
    # same rotation sense as FlipRotate: (y, x) - c -> (-(x - c), y - c)
    c = 19.5
    p = scene.position[..., :2] - c
    expected = torch.stack([-p[..., 1], p[..., 0]], dim=-1) + c + 2.0
    assert torch.allclose(out.scene.position[..., :2], expected, atol=1e-5)


def test_affine_with_scale_and_shear_moves_spots_with_positions():
    scene = scene_in_disk(8, 4, (48, 48), 12, seed=3, min_dist=10)
    batch = make_batch(scene)
    aff = Affine(rotation_deg=Uniform(-30, 30), scale=Uniform(0.85, 1.15), shear_deg=Uniform(-8, 8),
                 translate_px=Uniform(-2, 2))
    out = aff(batch, torch.Generator().manual_seed(5))
    fresh = make_batch(out.scene)
    err = (local_centroids(out.image, out.scene) - local_centroids(fresh.image, out.scene)).norm(dim=-1)
    assert err[out.scene.present].max() < 0.05
    # a wrong position map would be caught: shift the claimed positions by 0.3 px
    wrong = Scene(**{**out.scene.__dict__, "position": out.scene.position + torch.tensor([0.3, 0.0, 0.0])})
    assert centroid_error(out.image, wrong)[out.scene.present].min() > 0.1


def test_affine_preserve_integral_and_particles_leaving_the_frame():
    scene = scene_in_disk(4, 4, (64, 64), 10, seed=4)
    batch = make_batch(scene)
    g = torch.Generator().manual_seed(0)
    zoom = Affine(rotation_deg=0.0, scale=1.3, shear_deg=0.0, translate_px=0.0, preserve_integral=["density"])
    out = zoom(batch, g)
    before = batch.targets["density"].sum(dim=(1, 2, 3))
    assert torch.allclose(out.targets["density"].sum(dim=(1, 2, 3)), before, rtol=0.01)
    plain = Affine(rotation_deg=0.0, scale=1.3, shear_deg=0.0, translate_px=0.0)(batch, g)
    assert torch.allclose(plain.targets["density"].sum(dim=(1, 2, 3)), before * 1.3**2, rtol=0.02)
    away = Affine(rotation_deg=0.0, scale=1.0, shear_deg=0.0, translate_px=100.0)(batch, g)
    assert not away.scene.present.any()
    assert away.image.abs().max() == 0


def test_pipeline_recomputes_per_image_targets_after_augmentation():
    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[Particles(DotForAugmentTests(), count=1, margin_px=4)],
        optics=OPTICS,
        transforms=[FlipRotate(), Affine(translate_px=Constant(0.5))],
        targets={"xy": RegressionVector(["y", "x"]), "n": Counts(), "mask": DiskMask(2.0)},
    )
    batch = pipe(16, seed=0)
    c = (32 - 1) / 2
    expected = batch.scene.position[:, 0, :2] - c
    assert torch.allclose(batch.targets["xy"], expected, atol=1e-5)
    assert torch.equal(batch.targets["n"], Counts()(batch.scene))


# ---------------------------------------------------------------------------- elastic
def test_elastic_deformation_moves_spots_with_positions():
    scene = scene_in_disk(8, 5, (64, 64), 20, seed=5, min_dist=10)
    batch = make_batch(scene)
    el = ElasticDeformation(alpha_px=1.5, sigma_px=16.0)
    out = el(batch, torch.Generator().manual_seed(2))
    p, p_new = scene.position[..., :2], out.scene.position[..., :2]
    moved = (p_new - p).norm(dim=-1)[scene.present]
    assert moved.mean() > 0.8  # particles really moved
    assert 1.1 < out.scene.image_params["elastic_alpha_px"].mean() < 1.9  # rms displacement ~ alpha_px
    # inverse consistency: output(p') = input(p' + d(p')), so p' + d(p') is the old position
    d = el.displacement(8, 64, 64, torch.Generator().manual_seed(2))  # same draws as the transform
    grid = torch.stack([p_new[..., 1] / 63 * 2 - 1, p_new[..., 0] / 63 * 2 - 1], dim=-1)[:, :, None]
    d_at = torch.nn.functional.grid_sample(d, grid, align_corners=True)[..., 0].transpose(1, 2)
    assert torch.allclose(p_new + d_at, p, atol=1e-3)
    # and the spots in the warped image sit where the particles are said to be (up to the spot's
    # distortion by the curved map, a second-order effect ~ alpha * sigma_spot^2 / sigma^2)
    fresh = make_batch(out.scene)
    err = (local_centroids(out.image, out.scene) - local_centroids(fresh.image, out.scene)).norm(dim=-1)
    assert err[out.scene.present].max() < 0.08 and err[out.scene.present].mean() < 0.03
    # moving particles the other way (p + d) would be caught
    other_way = torch.cat([2 * p - p_new, scene.position[..., 2:]], -1)
    wrong = Scene(**{**out.scene.__dict__, "position": other_way})
    assert centroid_error(out.image, wrong)[out.scene.present].mean() > 5 * err[out.scene.present].mean()
    m_out, m_new = out.targets["mask"] > 0.5, fresh.targets["mask"] > 0.5
    assert (m_out & m_new).sum() / (m_out | m_new).sum() > 0.8


def test_augmentation_parameters_validated_and_serialisable():
    with pytest.raises(ValueError, match="p_flip"):
        FlipRotate(p_flip=1.5)
    with pytest.raises(ValueError, match="scale"):
        Affine(scale=Uniform(-1, 1))
    with pytest.raises(ValueError, match="alpha_px"):
        ElasticDeformation(alpha_px=10, sigma_px=4)
    with pytest.raises(ValueError, match="padding_mode"):
        Affine(padding_mode="wrap")
    for t in (FlipRotate(0.3, False), Affine(Uniform(-10, 10), 1.1, 0.0, Uniform(-1, 1), "border", ["d"]),
              ElasticDeformation(1.0, 5.0)):
        assert from_json(to_json(t)) == t


def test_flip_rotate_with_real_fluorescence_is_exact():
    from napari_deeptrack.sim import PointParticle
    from napari_deeptrack.sim.optics.fluorescence import Fluorescence

    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[Particles(PointParticle(), count=4, margin_px=3, intensity=1000.0)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"mask": DiskMask(3.0)},
    )
    g = torch.Generator().manual_seed(0)
    scene = pipe.sample_scene(6, g)
    batch = SimBatch(pipe.render(scene, g), scene, {"mask": DiskMask(3.0)(scene)})
    out = FlipRotate()(batch, g)
    fresh = pipe.render(out.scene, g)
    assert torch.allclose(out.image, fresh, atol=1e-3 * float(fresh.max()))
    assert torch.equal(out.targets["mask"], DiskMask(3.0)(out.scene))
