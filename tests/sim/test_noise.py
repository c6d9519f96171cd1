"""Background, shot noise, read noise, camera and normalisation transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_deeptrack.sim import (
    Background,
    Camera,
    Fluorescence,
    Normalize,
    Particles,
    Pipeline,
    PointParticle,
    Poisson,
    ReadNoise,
    Scene,
    SimBatch,
    Uniform,
    from_json,
    normalize_images,
    to_json,
)


def flat_batch(value: float, b: int = 8, shape=(64, 64), channels: int = 1) -> SimBatch:
    scene = Scene.empty(b, 1, shape)
    image = torch.full((b, channels, *shape), float(value))
    return SimBatch(image=image, scene=scene, targets={"mask": torch.ones(b, 1, *shape)})


def fluorescence_pipeline(transforms):
    optics = Fluorescence(NA=0.8, wavelength_um=0.68, camera_pixel_um=1.0, magnification=10)
    pops = [Particles(PointParticle(), count=5, z_um=Uniform(-1.0, 1.0), intensity=100.0)]
    return Pipeline((48, 48), pops, optics, transforms=transforms)


def test_poisson_variance_equals_mean():
    g = torch.Generator().manual_seed(0)
    for mean in (0.5, 7.0, 80.0):
        out = Poisson()(flat_batch(mean, b=16), g).image
        assert float(out.mean()) == pytest.approx(mean, rel=0.01)
        assert float(out.var()) == pytest.approx(mean, rel=0.03)
        assert torch.equal(out, out.round()) and float(out.min()) >= 0


def test_same_seed_same_images_different_seed_different():
    pipe = fluorescence_pipeline(
        [Background(10.0, Uniform(0.0, 0.5)), Poisson(), ReadNoise(1.5), Camera(2.0, 100.0)]
    )
    a, b, c = pipe(4, seed=1), pipe(4, seed=1), pipe(4, seed=2)
    assert torch.equal(a.image, b.image)
    assert not torch.equal(a.image, c.image)
    assert torch.equal(
        a.scene.image_params["background_angle_rad"], b.scene.image_params["background_angle_rad"]
    )


def test_background_level_and_gradient():
    g = torch.Generator().manual_seed(3)
    batch = Background(level=Uniform(5.0, 50.0), gradient=0.4)(flat_batch(0.0, b=6, shape=(40, 60)), g)
    img, p = batch.image[:, 0].double(), batch.scene.image_params
    level, angle = p["background_level"].double(), p["background_angle_rad"].double()
    assert torch.allclose(img.mean((1, 2)), level, rtol=1e-4)
    # extremes sit at opposite corners: level * (1 -+ gradient)
    assert torch.allclose(img.amax((1, 2)), level * 1.4, rtol=1e-4)
    assert torch.allclose(img.amin((1, 2)), level * 0.6, rtol=1e-4)
    # the gradient points along the stored angle (x = cos, y = sin)
    gy = (img[:, -1, :] - img[:, 0, :]).mean(1) / 39  # per-pixel slopes
    gx = (img[:, :, -1] - img[:, :, 0]).mean(1) / 59
    assert torch.allclose(torch.atan2(gy, gx) % (2 * math.pi), angle % (2 * math.pi), atol=1e-3)
    with pytest.raises(ValueError, match="gradient"):
        Background(10.0, gradient=1.5)
    with pytest.raises(ValueError, match="level"):
        Background(-1.0)


def test_read_noise_and_camera():
    g = torch.Generator().manual_seed(0)
    batch = ReadNoise(sigma=Uniform(1.0, 3.0))(flat_batch(100.0, b=4), g)
    sigma = batch.scene.image_params["read_noise_e"]
    assert torch.allclose(batch.image.std((1, 2, 3)), sigma, rtol=0.05)
    batch = Camera(gain=2.5, offset=100.0)(flat_batch(10.0), g)
    assert torch.allclose(batch.image, torch.full_like(batch.image, 125.0))
    batch = Camera(gain=10.0, offset=100.0, bit_depth=8)(flat_batch(30.0), g)
    assert float(batch.image.max()) == 255.0  # clipped to 8 bits
    with pytest.raises(ValueError, match="gain"):
        Camera(gain=0.0)
    with pytest.raises(ValueError, match="sigma"):
        ReadNoise(sigma=-1.0)


def test_transforms_change_image_only():
    g = torch.Generator().manual_seed(0)
    batch = flat_batch(5.0)
    targets = {k: v.clone() for k, v in batch.targets.items()}
    for t in (Background(3.0, 0.2), Poisson(), ReadNoise(1.0), Camera(2.0, 10.0), Normalize()):
        batch = t(batch, g)
    assert torch.equal(batch.targets["mask"], targets["mask"])


def test_normalize_images_matches_numpy_per_image_and_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 20, 30, generator=g) * torch.tensor([1.0, 50.0])[None, :, None, None]
    out = normalize_images(x, "percentile", 1.0, 99.8)
    xn = x.numpy()
    for i in range(3):
        for c in range(2):
            lo, hi = np.percentile(xn[i, c], [1.0, 99.8])
            np.testing.assert_allclose(out[i, c].numpy(), (xn[i, c] - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
    mm = normalize_images(x, "minmax")
    assert torch.allclose(mm.amin((2, 3)), torch.zeros(3, 2), atol=1e-6)
    assert torch.allclose(mm.amax((2, 3)), torch.ones(3, 2), atol=1e-6)
    z = normalize_images(xn, "zscore")  # numpy input works too
    assert isinstance(z, torch.Tensor)
    assert torch.allclose(z.mean((2, 3)), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(z.std((2, 3), unbiased=False), torch.ones(3, 2), atol=1e-4)
    assert torch.equal(normalize_images(x, "none"), x)
    const = normalize_images(torch.ones(1, 1, 8, 8), "minmax")  # no division by zero
    assert torch.isfinite(const).all()
    with pytest.raises(ValueError, match="mode"):
        normalize_images(x, "max")
    with pytest.raises(ValueError, match="low"):
        normalize_images(x, "percentile", low=50.0, high=10.0)


def test_normalize_transform_equals_function_and_round_trips():
    transforms = [
        Background(10.0, 0.3),
        Poisson(),
        ReadNoise(1.2),
        Camera(1.5, 100.0, 16),
        Normalize("percentile"),
    ]
    pipe = fluorescence_pipeline(transforms)
    again = from_json(to_json(pipe))
    assert again == pipe
    a, b = pipe(2, seed=4), again(2, seed=4)
    assert torch.equal(a.image, b.image)
    raw = fluorescence_pipeline(transforms[:-1])(2, seed=4).image
    assert torch.allclose(a.image, normalize_images(raw, "percentile"), atol=1e-6)


def test_normalize_robust_maps_background_to_zero_and_noise_to_one_whatever_the_particle_count():
    # (added with the robust mode used by the particles-2d preset)
    g = torch.Generator().manual_seed(0)
    bg = 100.0 + 5.0 * torch.randn(2, 1, 128, 128, generator=g)
    sparse, dense = bg.clone(), bg.clone()
    sparse[1, 0, 10, 10] += 1000.0  # one bright particle
    idx = torch.randint(0, 128, (2, 400), generator=g)
    dense[1, 0, idx[0], idx[1]] += 1000.0  # ~2.5 % of the pixels bright
    for x in (sparse, dense):
        out = normalize_images(x, "robust")
        med = out.flatten(1).median(1).values
        assert torch.allclose(med, torch.zeros(2), atol=0.06), med
        sd = 1.4826 * (out - med[:, None, None, None]).abs().flatten(1).median(1).values
        assert torch.allclose(sd, torch.ones(2), atol=0.03), sd
    # the background pixels read the same with 1 or 400 bright pixels (percentile mode differs)
    keep = (dense[1, 0] == bg[1, 0]) & (sparse[1, 0] == bg[1, 0])
    rs, rd = normalize_images(sparse, "robust")[1, 0], normalize_images(dense, "robust")[1, 0]
    assert (rs - rd)[keep].abs().max() < 0.2  # vs ~4 sigma of spread: a 2.5 % contamination
    ps, pd_ = normalize_images(sparse, "percentile")[1, 0], normalize_images(dense, "percentile")[1, 0]
    assert (ps - pd_)[keep].abs().max() > 0.5
    # integer counts at very low background: MAD can be 0, the result stays finite and scaled
    low = torch.zeros(1, 1, 32, 32)
    low[0, 0, :3] = 1.0
    out = normalize_images(low, "robust")
    assert torch.isfinite(out).all() and out.max() > 1.0
