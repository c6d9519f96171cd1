"""The Cramer-Rao lower bound against analytic results (analysis/crlb.py)."""

import math

import numpy as np
import pytest
import torch

from napari_deeptrack.analysis.baselines import integrated_gaussian
from napari_deeptrack.analysis.crlb import crlb, crlb_for_optics, fisher_information


def _gaussian_image(sigma_px, photons, shape=(41, 41)):
    def render(p: torch.Tensor) -> torch.Tensor:
        k = p.shape[0]
        full = torch.stack(
            [
                p[:, 0],
                p[:, 1],
                torch.full((k,), photons, dtype=p.dtype),
                torch.zeros(k, dtype=p.dtype),
                torch.full((k,), sigma_px, dtype=p.dtype),
            ],
            1,
        )
        return integrated_gaussian(full, shape)

    return render


@pytest.mark.parametrize("photons", [100.0, 1000.0, 10000.0])
@pytest.mark.parametrize("nuisance", [False, True])
def test_gaussian_psf_zero_background_gives_sigma_over_sqrt_n(photons, nuisance):
    sigma = 2.5
    info = fisher_information(
        _gaussian_image(sigma, photons),
        [20.3, 19.6],
        [1e-3, 1e-3],
        background=0.0,
        nuisance_photons=photons if nuisance else None,
        include_background=False,
    )
    bound = crlb(info, 2)
    expected = sigma / math.sqrt(photons)
    assert np.allclose(bound, expected, rtol=0.02)
    # the remaining difference is the pixelation term: sigma_a^2 = sigma^2 + a^2 / 12
    assert np.allclose(bound, math.sqrt((sigma**2 + 1 / 12) / photons), rtol=2e-3)


def test_background_matches_mortensen_mle_variance():
    """Mortensen et al., Nat. Methods 7, 377 (2010), Eq. 6: the MLE variance of a pixelated Gaussian
    spot with Poisson background b per pixel is sigma_a^2 / N / F(tau), with sigma_a^2 = sigma^2 + a^2/12,
    tau = 2 pi sigma_a^2 b / (N a^2) and F = 1 + int_0^1 ln t / (1 + t / tau) dt."""
    from scipy.integrate import quad

    sigma, n = 1.5, 500.0
    sa2 = sigma**2 + 1 / 12
    b0 = crlb(
        fisher_information(
            _gaussian_image(sigma, n, (25, 25)), [12, 12], [1e-3, 1e-3], 0.0, include_background=False
        ),
        2,
    )[0]
    previous = b0
    for b in (1.0, 10.0, 50.0):
        bound = crlb(fisher_information(_gaussian_image(sigma, n, (25, 25)), [12, 12], [1e-3, 1e-3], b), 2)[0]
        tau = 2 * math.pi * sa2 * b / n
        f = 1 + quad(lambda t, tau=tau: math.log(t) / (1 + t / tau), 0, 1)[0]
        assert bound == pytest.approx(math.sqrt(sa2 / n / f), rel=0.01)
        assert bound > previous
        previous = bound


def test_fisher_information_input_checks():
    f = _gaussian_image(2.0, 100.0)
    with pytest.raises(ValueError, match="steps"):
        fisher_information(f, [20, 20], [0.0, 1e-3])
    with pytest.raises(ValueError, match="background"):
        fisher_information(f, [20, 20], [1e-3, 1e-3], background=-1)


def test_crlb_of_pupil_fluorescence_psf_near_the_fundamental_limit():
    from napari_deeptrack.sim import Fluorescence, PointParticle

    optics = Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1)
    r1 = crlb_for_optics(optics, PointParticle(), (32, 32), 1000.0, 1e-6, nuisance=False)
    r2 = crlb_for_optics(optics, PointParticle(), (32, 32), 4000.0, 1e-6, nuisance=False)
    # zero background: the Fisher information is proportional to N
    assert r1["crlb_x_px"] / r2["crlb_x_px"] == pytest.approx(2.0, rel=1e-3)
    # Ober et al. 2004: an in-focus Airy PSF (no pixels, no background) cannot beat
    # lambda / (2 pi NA sqrt(N)); 0.1 um pixels cost only a little
    ober_px = 0.6 / (2 * math.pi * 1.2 * math.sqrt(1000.0)) / 0.1
    assert ober_px < r1["crlb_x_px"] < 1.25 * ober_px
    assert r1["crlb_y_px"] == pytest.approx(r1["crlb_x_px"], rel=1e-3)
    # smooth in the sub-pixel position (also across half a pixel)
    rs = [
        crlb_for_optics(optics, PointParticle(), (32, 32), 1000.0, 10.0, position=(16.0, 15.0 + f))[
            "crlb_x_px"
        ]
        for f in (0.3, 0.5, 0.7)
    ]
    assert max(rs) / min(rs) < 1.1
    r3d = crlb_for_optics(optics, PointParticle(), (32, 32), 1000.0, 10.0, z_um=0.4)
    assert r3d["crlb_z_um"] > 0 and math.isfinite(r3d["crlb_z_um"])
