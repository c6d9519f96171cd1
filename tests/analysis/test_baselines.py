"""Classical localisation baselines: radial symmetry, Gaussian MLE, trackpy (analysis/baselines.py)."""

import math

import numpy as np
import pytest
import torch

from napari_deeptrack.analysis.baselines import (
    extract_patches,
    gaussian_mle,
    integrated_gaussian,
    locate_trackpy,
    radial_center,
)
from napari_deeptrack.analysis.crlb import crlb, fisher_information


def _spots(n, photons, background, sigma, seed, shape=(15, 15), spread=1.0):
    rng = np.random.default_rng(seed)
    c = (shape[0] - 1) / 2
    truth = np.stack(
        [
            c + rng.uniform(-spread, spread, n),
            c + rng.uniform(-spread, spread, n),
            np.full(n, photons),
            np.full(n, background),
            np.full(n, sigma),
        ],
        1,
    )
    return integrated_gaussian(torch.tensor(truth), shape).numpy(), truth


def test_radial_center_is_unbiased_on_noise_free_symmetric_spots():
    img, truth = _spots(100, 1000.0, 10.0, 1.5, seed=0)
    rc = radial_center(img)
    assert np.abs(rc - truth[:, :2]).max() < 0.01
    # other radially symmetric profiles, bright or dark, with a ring
    rng = np.random.default_rng(1)
    c = 7 + rng.uniform(-1, 1, (40, 2))
    yy, xx = np.mgrid[0:15, 0:15]
    r = np.sqrt((yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2)
    for profile in (1 / (1 + r**2), np.exp(-((r - 3) ** 2)), 1 - np.exp(-(r**2) / 4)):
        assert np.abs(radial_center(profile) - c).max() < 0.01


def test_gaussian_mle_is_exact_on_noise_free_spots():
    img, truth = _spots(50, 800.0, 5.0, 1.4, seed=2)
    fit = gaussian_mle(img, sigma_px=1.0)
    assert np.abs(fit[["y", "x"]].to_numpy() - truth[:, :2]).max() < 1e-3
    assert np.allclose(fit.photons, 800.0, rtol=1e-3)
    assert np.allclose(fit.background, 5.0, rtol=1e-3)
    assert np.allclose(fit.sigma_px, 1.4, rtol=1e-3)
    fixed = gaussian_mle(img, sigma_px=1.4, fit_sigma=False)
    assert np.allclose(fixed.sigma_px, 1.4) and np.abs(fixed.x - truth[:, 1]).max() < 1e-3


def test_gaussian_mle_reaches_the_crlb_on_poisson_data():
    n_spots, photons, bg, sigma = 400, 1000.0, 10.0, 1.3
    img, truth = _spots(n_spots, photons, bg, sigma, seed=3, spread=0.5)
    noisy = np.random.default_rng(4).poisson(img).astype(np.float64)
    fit = gaussian_mle(noisy, sigma_px=1.0)
    err = fit[["y", "x"]].to_numpy() - truth[:, :2]
    rmse = np.sqrt((err**2).mean())

    def render(p):
        k = p.shape[0]
        full = torch.stack(
            [
                p[:, 0],
                p[:, 1],
                torch.full((k,), photons, dtype=p.dtype),
                torch.zeros(k, dtype=p.dtype),
                torch.full((k,), sigma, dtype=p.dtype),
            ],
            1,
        )
        return integrated_gaussian(full, (15, 15))

    bound = crlb(fisher_information(render, [7.0, 7.0], [1e-3, 1e-3], bg, nuisance_photons=photons), 2)[0]
    # the MLE is efficient: within sampling error (400 spots x 2 axes: ~5%) of the bound; with the
    # width fitted too it loses a little
    assert 0.9 * bound < rmse < 1.15 * bound
    assert abs(err.mean()) < 3 * bound / math.sqrt(err.size)
    # radial symmetry is less precise than the MLE on the same data
    rc = radial_center(noisy)
    assert np.sqrt(((rc - truth[:, :2]) ** 2).mean()) > rmse


def test_locate_trackpy_finds_spots_in_the_detection_layout():
    shape = (64, 64)
    params = torch.tensor(
        [[15.3, 20.7, 2000.0, 0.0, 1.5], [40.6, 45.2, 2000.0, 0.0, 1.5], [50.1, 10.4, 2000.0, 0.0, 1.5]],
        dtype=torch.float64,
    )
    img = integrated_gaussian(params, shape).sum(0) + 5.0
    stack = np.stack([img.numpy(), img.numpy()])
    df = locate_trackpy(stack, diameter=7, minmass=100)
    assert list(df.columns[:5]) == ["frame", "y", "x", "probability", "area"]
    assert len(df) == 6 and set(df.frame) == {0, 1}
    got = df[df.frame == 0][["y", "x"]].to_numpy()
    want = params[:, :2].numpy()
    d = np.sqrt(((got[:, None] - want[None]) ** 2).sum(-1)).min(1)
    assert d.max() < 0.15
    with pytest.raises(ValueError, match="diameter"):
        locate_trackpy(stack, diameter=6)


def test_extract_patches_and_input_checks():
    img = np.arange(100.0).reshape(10, 10)
    patches, corners = extract_patches(img, [[5.2, 4.8], [0.0, 9.0]], 1)
    assert patches.shape == (2, 3, 3)
    assert np.array_equal(patches[0], img[4:7, 4:7]) and np.array_equal(corners[0], [4, 4])
    assert patches[1, 0, 0] == img[0, 8]  # edge repeated
    with pytest.raises(ValueError, match="at least 3x3"):
        radial_center(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="sigma_px"):
        gaussian_mle(np.ones((5, 5)), sigma_px=0)
