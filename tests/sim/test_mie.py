"""Lorenz-Mie coefficients, efficiencies and amplitude functions against miepython (independent code)."""

from __future__ import annotations

import miepython  # noqa: E402  (test dependency, the "testing" extra)
import numpy as np
import pytest
import torch

from napari_deeptrack.sim import Particles, Pipeline, from_json, to_json
from napari_deeptrack.sim.mie import (
    CoreShellSphere,
    MieSphere,
    coreshell_coefficients,
    mie_coefficients,
    mie_efficiencies,
    n_terms,
    pi_tau,
    scattering_amplitudes,
)
from napari_deeptrack.sim.params import Uniform

SIZES = [0.1, 0.3, 1.0, 2.5, 5.0, 10.0, 20.0, 35.0, 50.0]
# relative indices n + ik (k >= 0 absorbs), incl. weakly and strongly absorbing and metal-like
INDICES = [1.05, 1.2, 1.5, 1.59 / 1.33, 2.0, 1.5 + 0.001j, 1.5 + 0.1j, 1.33 + 0.5j, 2.0 + 1.0j, 0.2 + 3.0j]


def _grid():
    m = torch.tensor([[mm for _ in SIZES] for mm in INDICES], dtype=torch.complex128)
    x = torch.tensor([SIZES for _ in INDICES], dtype=torch.float64)
    return m, x


def test_efficiencies_match_miepython():
    m, x = _grid()
    a, b, valid = mie_coefficients(m, x)  # one batched call for the whole grid
    q = mie_efficiencies(a, b, x)
    for i, mm in enumerate(INDICES):
        for j, xx in enumerate(SIZES):
            qext, qsca, qback, g = miepython.efficiencies_mx(mm, xx)
            assert q["qext"][i, j].item() == pytest.approx(qext, rel=1e-6), (mm, xx)
            assert q["qsca"][i, j].item() == pytest.approx(qsca, rel=1e-6), (mm, xx)
            assert q["qback"][i, j].item() == pytest.approx(qback, rel=1e-6, abs=1e-12), (mm, xx)
            assert q["g"][i, j].item() == pytest.approx(g, abs=1e-6), (mm, xx)
    # per-particle number of terms (Wiscombe): zero-padded beyond each sphere's own L
    assert valid.sum(-1).equal(n_terms(x))
    assert (a[~valid] == 0).all()


def test_non_absorbing_sphere_conserves_energy():
    a, b, _ = mie_coefficients(
        torch.tensor([1.5, 1.1, 2.0], dtype=torch.complex128), torch.tensor([0.7, 12.0, 40.0])
    )
    q = mie_efficiencies(a, b, torch.tensor([0.7, 12.0, 40.0], dtype=torch.float64))
    assert torch.allclose(q["qext"], q["qsca"], rtol=1e-10)
    # Rayleigh limit of a1 (B&H 5.? ): a1 ~ -i 2x^3/3 (m^2-1)/(m^2+2)
    m, x = 1.5, 0.01
    a, _, _ = mie_coefficients(torch.tensor(m), torch.tensor(x))
    assert a[0].item() == pytest.approx(-2j * x**3 / 3 * (m**2 - 1) / (m**2 + 2), rel=1e-3)


def test_amplitude_functions_match_miepython():
    m, x = _grid()
    a, b, _ = mie_coefficients(m, x)
    mu = torch.linspace(-1, 1, 121, dtype=torch.float64)
    pi, tau = pi_tau(mu, a.shape[-1])
    s1, s2 = scattering_amplitudes(a, b, pi, tau)  # [I, J, 121]
    for i, mm in enumerate(INDICES):
        for j, xx in enumerate(SIZES):
            # miepython's norm="wiscombe" is B&H's S1, S2 but for the exp(+i omega t), n - ik convention:
            # the complex conjugate of B&H's exp(-i omega t) amplitudes used here.
            r1, r2 = miepython.S1_S2(mm, xx, mu.numpy(), norm="wiscombe")
            r1, r2 = np.conj(r1), np.conj(r2)
            scale = max(np.abs(r1).max(), np.abs(r2).max())
            assert np.abs(s1[i, j].numpy() - r1).max() / scale < 1e-5, (mm, xx)
            assert np.abs(s2[i, j].numpy() - r2).max() / scale < 1e-5, (mm, xx)
    # optical theorem: Qext = 4 / x^2 Re S(0)
    q = mie_efficiencies(a, b, x)
    assert torch.allclose(4 / x**2 * s1[..., -1].real, q["qext"], rtol=1e-9)


@pytest.mark.parametrize(
    "m_core, m_shell, x_core, x_shell, reference",
    [
        (1.5 + 0.01j, 1.5 + 0.01j, 2.0, 6.0, "shell"),  # same material: a homogeneous sphere
        (1.6, 1.0, 3.0, 6.0, "core"),  # shell index = medium: only the core scatters
        (2.0 + 1.0j, 1.4, 1e-4, 8.0, "shell"),  # vanishing core
    ],
)
def test_core_shell_limits(m_core, m_shell, x_core, x_shell, reference):
    a, b, _ = coreshell_coefficients(
        torch.tensor(m_core), torch.tensor(m_shell), torch.tensor(x_core), torch.tensor(x_shell)
    )
    q = mie_efficiencies(a, b, torch.tensor(x_shell, dtype=torch.float64))
    if reference == "shell":
        qext, qsca, *_ = miepython.efficiencies_mx(m_shell, x_shell)
        scale = 1.0
    else:
        qext, qsca, *_ = miepython.efficiencies_mx(m_core, x_core)
        scale = (x_core / x_shell) ** 2  # efficiencies refer to the outer cross-section
    assert q["qext"].item() == pytest.approx(qext * scale, rel=1e-6)
    assert q["qsca"].item() == pytest.approx(qsca * scale, rel=1e-6)


def test_core_shell_differs_from_homogeneous_and_is_batched():
    mc = torch.tensor([1.45, 1.45], dtype=torch.complex128)
    ms = torch.tensor([1.59 / 1.33, 1.59 / 1.33], dtype=torch.complex128)
    a, b, _ = coreshell_coefficients(mc / 1.33, ms, torch.tensor([2.0, 4.0]), torch.tensor([5.0, 5.0]))
    q = mie_efficiencies(a, b, torch.tensor([5.0, 5.0], dtype=torch.float64))
    assert not torch.allclose(q["qsca"][0], q["qsca"][1], rtol=1e-3)
    assert torch.allclose(q["qext"], q["qsca"], rtol=1e-9)  # lossless


def test_bad_input_raises():
    with pytest.raises(ValueError, match="radius_um"):
        MieSphere(radius_um=0.0)
    with pytest.raises(ValueError, match="radius_um"):
        MieSphere(radius_um=Uniform(-0.1, 0.5))
    with pytest.raises(ValueError, match="imaginary"):
        MieSphere(refractive_index=1.5 - 0.01j)
    with pytest.raises(ValueError, match="core_radius_um"):
        CoreShellSphere(core_radius_um=1.0, shell_radius_um=0.5)
    with pytest.raises(ValueError, match="imaginary"):
        mie_coefficients(torch.tensor(1.5 - 0.1j), torch.tensor(1.0))
    with pytest.raises(ValueError, match="size parameter"):
        mie_coefficients(torch.tensor(1.5), torch.tensor(0.0))


def test_scatterers_sample_and_serialise():
    from napari_deeptrack.sim.optics.coherent import Holography

    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[
            Particles(MieSphere(Uniform(0.2, 0.6), 1.5 + 0.01j), count=2, z_um=Uniform(-1, 1)),
            Particles(CoreShellSphere(0.2, Uniform(0.3, 0.5), 1.4, 1.6), count=1),
        ],
        optics=Holography(NA=1.0, wavelength_um=0.633, pixel_size_um=0.1),
    )
    again = from_json(to_json(pipe))
    b1, b2 = pipe(4, seed=3), again(4, seed=3)
    assert torch.equal(b1.image, b2.image)
    sc = b1.scene
    assert ((sc.radius_um[:, :2] >= 0.2) & (sc.radius_um[:, :2] <= 0.6)).all()
    assert torch.allclose(sc.refractive_index[:, :2].imag, torch.full((4, 2), 0.01))
    assert (sc.attributes["core_radius_um"][:, 2] <= sc.radius_um[:, 2]).all()
