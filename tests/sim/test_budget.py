"""Memory estimates before allocating (sim/budget.py) and the refusal messages."""

import pytest
import torch

from napari_deeptrack.errors import ConfigError, DeepTrackError, MemoryBudgetError
from napari_deeptrack.sim import budget
from napari_deeptrack.sim.movie import Movie
from napari_deeptrack.sim.optics.coherent import Brightfield
from napari_deeptrack.sim.optics.fluorescence import Fluorescence
from napari_deeptrack.sim.params import Uniform
from napari_deeptrack.sim.pipeline import Particles, Pipeline
from napari_deeptrack.sim.scatterers import PointParticle, Sphere


def _fluo(count=850, shape=(424, 640), na=0.1):
    return Pipeline(
        shape,
        [Particles(PointParticle(), count=count, z_um=Uniform(-2, 2))],
        Fluorescence(NA=na, wavelength_um=0.6, pixel_size_um=0.1),
    )


def test_refusal_names_the_parameters_and_allocates_nothing():
    with pytest.raises(MemoryBudgetError) as info:
        _fluo()(32, seed=0)
    msg = str(info.value)
    assert "`count` (850)" in msg and "424x640" in msg and "`batch_size` (32)" in msg
    assert "GB budget" in msg
    assert info.value.need_bytes > info.value.budget_bytes
    # documented types: a MemoryError, a ValueError (old ``except ValueError``) and our base class
    assert isinstance(info.value, MemoryError | ValueError | DeepTrackError)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DeepTrackError)


def _work(pipeline, batch_size):
    """The estimate less the constant first-use overhead (what scales with the scene)."""
    return budget.estimate_render(pipeline, batch_size).bytes - budget.RUNTIME_BYTES


def test_estimate_grows_with_count_batch_and_patch():
    small = _work(_fluo(count=10, shape=(64, 64), na=0.8), 4)
    assert _work(_fluo(count=100, shape=(64, 64), na=0.8), 4) > 5 * small
    assert _work(_fluo(count=10, shape=(64, 64), na=0.8), 40) > 5 * small
    assert _work(_fluo(count=10, shape=(64, 64), na=0.2), 4) > 1.5 * small


def test_small_pipelines_fit_and_render(one_torch_thread):
    p = _fluo(count=5, shape=(32, 32), na=0.9)
    est = budget.check_render(p, 2)
    assert budget.RUNTIME_BYTES < est.bytes < budget.RUNTIME_BYTES + 50 * 1024**2
    assert p(2, seed=0).image.shape == (2, 1, 32, 32)


def test_coherent_estimate_scales_with_padded_grid():
    def bf(shape):
        return Pipeline(shape, [Particles(Sphere(radius_um=0.5), count=3)], Brightfield(pixel_size_um=0.1))

    a = budget.estimate_render(bf((64, 64)), 2)
    assert a.detail["grid"][0] >= 64 and _work(bf((256, 256)), 2) > 8 * _work(bf((64, 64)), 2)


def test_movie_frames_checked_before_sampling():
    movie = Movie(pipeline=_fluo(count=2, shape=(64, 64), na=0.8), n_frames=100_000_000)
    with pytest.raises(MemoryBudgetError, match="100000000 frames"):
        movie(1, seed=0)


def test_explicit_budget_and_env_cap(monkeypatch):
    est = budget.Estimate(10 * 1024**2, "thing", ["`x` (3)"])
    est.check(budget=20 * 1024**2)
    with pytest.raises(MemoryBudgetError, match=r"thing would need 10.0 MB .* lower `x` \(3\)"):
        est.check(budget=5 * 1024**2)
    monkeypatch.setenv(budget.ENV_CAP, "0.5")
    assert budget.memory_budget() <= 0.5 * 1024**3


def test_model_parameters_counted_without_allocating():
    n = budget.count_parameters({"type": "UNet", "base_channels": 1_000_000, "max_channels": 10**7})
    assert n > 10**12  # terabytes of weights, counted on meta tensors in milliseconds
    with pytest.raises(MemoryBudgetError, match="base_channels"):
        budget.estimate_model({"type": "UNet", "base_channels": 1_000_000, "max_channels": 10**7}).check()
    with pytest.raises(ConfigError, match="depth"):
        budget.count_parameters({"type": "UNet", "depth": 100})
    with pytest.raises(ConfigError):
        budget.count_parameters({"type": "NoSuchNet"})
    small = budget.count_parameters({"type": "CNN", "channels": [4], "dense": [8]})
    from napari_deeptrack.nn.registry import build_model

    real = build_model({"type": "CNN", "channels": [4], "dense": [8]})
    assert small == sum(p.numel() for p in real.parameters())


def test_training_and_apply_estimates():
    cfg = {"type": "UNet", "depth": 2, "base_channels": 8}
    t1 = budget.estimate_training(cfg, (4, 1, 64, 64))
    t2 = budget.estimate_training(cfg, (16, 1, 64, 64))
    assert t2.bytes > 3 * t1.bytes - 4 * 4 * t1.detail["parameters"] * 3
    a = budget.estimate_apply(cfg, (1, 128, 128), n_frames=1000, chunk=8)
    b = budget.estimate_apply(cfg, (1, 128, 128), n_frames=1000, chunk=64)
    assert b.bytes > a.bytes
    assert 1 <= budget.frames_per_chunk(cfg, (1, 128, 128), budget=256 * 1024**2) <= 64
    model = torch.nn.Conv2d(1, 1, 3)
    assert budget.estimate_apply(model, (1, 32, 32), 10).detail["parameters"] == 10
