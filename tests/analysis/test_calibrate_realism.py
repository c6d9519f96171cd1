"""The per-component sim-vs-real distance (analysis.realism) on images with a known answer (NumPy only)."""

import numpy as np
import pytest

from napari_deeptrack.analysis.realism import THRESHOLDS, sim_real_distance


def blobs(n=20, sigma=1.8, background=100.0, amplitude=60.0, shape=(128, 128), frames=2, seed=0, dark=False,
          ring=False):  # fmt: skip
    """Gaussian spots (or a bright centre with a dark ring) on a flat background with Poisson noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(frames):
        g = int(np.ceil(np.sqrt(n)))
        cells = rng.permutation(g * g)[:n]
        cy = (cells // g + 0.5) * h / g + rng.uniform(-2, 2, n)
        cx = (cells % g + 0.5) * w / g + rng.uniform(-2, 2, n)
        img = np.full(shape, background, float)
        for y, x in zip(cy, cx):
            r2 = (yy - y) ** 2 + (xx - x) ** 2
            spot = np.exp(-r2 / (2 * sigma**2))
            if ring:
                spot = spot - 0.6 * np.exp(-((np.sqrt(r2) - 3 * sigma) ** 2) / (2 * (0.6 * sigma) ** 2))
            img += (-1 if dark else 1) * amplitude * spot
        out.append(rng.poisson(np.clip(img, 0, None)))
    return np.asarray(out, np.float32)


def test_identical_statistics_are_covered():
    d = sim_real_distance(blobs(seed=1), blobs(seed=2))
    assert d["verdict"] == "covered", d["components"]
    assert all(v <= THRESHOLDS[k] for k, v in d["components"].items())


def test_polarity_mismatch_is_never_close():
    d = sim_real_distance(blobs(seed=1), blobs(seed=2, dark=True))
    assert d["components"]["polarity"] == 1.0 and d["verdict"] == "not covered"
    assert d["real"]["polarity"] == "dark" and d["sim"]["polarity"] == "bright"
    assert any("re-match polarity" in r for r in d["reasons"])


def test_size_density_ring_and_snr_mismatches_are_named():
    real = blobs(seed=2)
    big = sim_real_distance(blobs(sigma=3.6, seed=1), real)
    assert big["components"]["object_size"] == pytest.approx(np.log(2), abs=0.25)
    assert not big["ok"]["object_size"] and big["verdict"] == "not covered"
    sparse = sim_real_distance(blobs(n=3, seed=1), real)
    assert not sparse["ok"]["density"]
    rings = sim_real_distance(blobs(ring=True, seed=1), real)
    assert rings["components"]["ring_profile"] > THRESHOLDS["ring_profile"]
    dim = sim_real_distance(blobs(amplitude=12.0, seed=1), real)
    assert not dim["ok"]["snr"]
    same = sim_real_distance(blobs(seed=1), real)
    for d in (big, sparse, rings, dim):  # every mismatch ranks behind the matching simulation
        assert d["distance"] > same["distance"]
