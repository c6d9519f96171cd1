"""Lorenz-Mie scattering by homogeneous and core-shell spheres, vectorised in torch.

Conventions (Bohren & Huffman, *Absorption and Scattering of Light by Small Particles*, 1983):

- time dependence ``exp(-i omega t)``; a refractive index ``n + i k`` with ``k >= 0`` absorbs;
- ``m`` is the index relative to the medium (``n_particle / n_medium``) and ``x = 2 pi n_medium a / lambda``
  the size parameter (``lambda`` the vacuum wavelength, ``a`` the radius);
- the series is summed to ``L = x + 4 x^(1/3) + 2`` terms (Wiscombe's criterion), per particle;
- ``S1`` (perpendicular) and ``S2`` (parallel) are B&H's amplitude functions: the far field scattered by an
  x-polarised plane wave travelling along +z is
  ``E_theta = exp(ikr)/(-ikr) cos(phi) S2``, ``E_phi = -exp(ikr)/(-ikr) sin(phi) S1``, and
  ``Qext = 4 / x^2 Re S(0)`` (the optical theorem). These are miepython's ``norm="wiscombe"`` amplitudes.

Everything is batched: ``m`` and ``x`` may have any (common, broadcastable) shape, for example ``[B, N]``
particles of a scene batch. Coefficients are computed in float64 / complex128 (they are tiny tensors) and
returned zero-padded to the largest number of terms, with a mask of the valid terms. The loops in this
module run over multipole orders ``n`` (tens of iterations), never over particles.

The logarithmic derivative ``D_n(mx)`` is computed by downward recurrence (stable for absorbing and large
spheres); ``psi_n(x)`` (Riccati-Bessel, first kind) by a Miller downward recurrence (stable for n > x) and
``chi_n(x)`` upward (the growing solution).

:class:`MieSphere` and :class:`CoreShellSphere` are the scatterers used by the coherent optics
(:mod:`napari_deeptrack.sim.optics.coherent`); they write ``radius_um`` and ``refractive_index`` (and, for
core-shell spheres, ``core_radius_um`` and ``core_index`` attributes) into the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .params import ParamLike, check_range, sample, support
from .pipeline import Scatterer
from .scene import Scene
from .serialize import register

__all__ = [
    "CoreShellSphere",
    "angular_spectrum_x",
    "MieSphere",
    "check_refractive_index",
    "coreshell_coefficients",
    "mie_coefficients",
    "mie_efficiencies",
    "n_terms",
    "pi_tau",
    "scattering_amplitudes",
    "size_parameter",
]

_C128 = torch.complex128
_F64 = torch.float64


def n_terms(x: torch.Tensor | float) -> torch.Tensor:
    """Number of multipole terms ``L = x + 4 x^(1/3) + 2`` (rounded down, at least 1)."""
    x = torch.as_tensor(x, dtype=_F64)
    return torch.clamp(torch.floor(x + 4.0 * x.clamp(min=0) ** (1.0 / 3.0) + 2.0), min=1).long()


def size_parameter(radius_um, wavelength_um: float, refractive_index_medium: float) -> torch.Tensor:
    """``x = 2 pi n_medium radius / wavelength`` (vacuum wavelength)."""
    r = torch.as_tensor(radius_um, dtype=_F64)
    return 2.0 * math.pi * float(refractive_index_medium) * r / float(wavelength_um)


def _as_complex(m) -> torch.Tensor:
    m = torch.as_tensor(m)
    if not m.is_complex():
        m = m.to(_F64)
    return m.to(_C128)


def _check_inputs(m: torch.Tensor, x: torch.Tensor) -> None:
    if bool((x <= 0).any()):
        raise ValueError(f"size parameter x (radius) must be > 0, got min {float(x.min()):g}")
    if bool((m.imag < 0).any()):
        raise ValueError(
            "refractive index imaginary part must be >= 0 (n + ik, k >= 0 absorbs), got "
            f"min {float(m.imag.min()):g}"
        )
    if bool((m.real <= 0).any()):
        raise ValueError(f"refractive index real part must be > 0, got min {float(m.real.min()):g}")


def _log_derivative(z: torch.Tensor, n_max: int) -> torch.Tensor:
    """``D_n(z) = psi_n'(z) / psi_n(z)`` for n = 0..n_max by downward recurrence; shape [..., n_max+1]."""
    n_start = int(max(n_max, float(z.abs().max())) + 16)
    d = torch.zeros_like(z)
    out = [None] * (n_max + 1)
    for n in range(n_start, 0, -1):
        nz = n / z
        d = nz - 1.0 / (d + nz)  # D_{n-1}
        if n - 1 <= n_max:
            out[n - 1] = d
    return torch.stack(out, dim=-1)


def _psi_chi(x: torch.Tensor, n_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Riccati-Bessel ``psi_n(x) = x j_n(x)`` and ``chi_n(x) = -x y_n(x)`` for n = 0..n_max (real x).

    psi: Miller's downward recurrence, normalised with psi_0 = sin x or psi_1 = sin x / x - cos x
    (whichever is larger, so that x near a multiple of pi stays accurate). chi: upward recurrence.
    """
    n_start = int(max(n_max, float(x.max())) + 16 + 2 * math.sqrt(float(x.max()) + 1))
    p_next = torch.zeros_like(x)
    p = torch.full_like(x, 1e-300)
    vals = [None] * (n_max + 2)
    for n in range(n_start, 0, -1):
        # psi_{n-1} = (2n+1)/x psi_n - psi_{n+1}
        p_prev = (2 * n + 1) / x * p - p_next
        p_next, p = p, p_prev
        big = p.abs() > 1e200
        if bool(big.any()):  # rescale (rare) to avoid overflow; stored values scaled alike
            scale = torch.where(big, p.abs(), torch.ones_like(p))
            p, p_next = p / scale, p_next / scale
            vals = [v / scale if v is not None else None for v in vals]
        if n - 1 <= n_max:
            vals[n - 1] = p
    raw = torch.stack(vals[: n_max + 1], dim=-1)  # raw[..., n] ~ c * psi_n
    s, c = torch.sin(x), torch.cos(x)
    psi0 = s
    psi1 = s / x - c
    use1 = psi1.abs() > psi0.abs()
    norm = torch.where(use1, psi1 / raw[..., 1], psi0 / raw[..., 0]) if n_max >= 1 else psi0 / raw[..., 0]
    psi = raw * norm[..., None]
    chis = [c, c / x + s]
    for n in range(1, n_max):
        chis.append((2 * n + 1) / x * chis[n] - chis[n - 1])
    chi = torch.stack(chis[: n_max + 1], dim=-1)
    return psi, chi


def mie_coefficients(m, x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mie coefficients ``a_n``, ``b_n`` of homogeneous spheres (Bohren & Huffman eq. 4.88).

    Parameters
    ----------
    m : complex tensor or number, shape S
        Refractive index relative to the medium, ``n + ik`` with ``k >= 0``.
    x : float tensor or number, broadcastable to S
        Size parameter ``2 pi n_medium a / lambda`` (> 0).

    Returns
    -------
    a, b : complex128 tensors [*S, L_max]
        Coefficients for n = 1..L_max; zero beyond each sphere's own ``L = x + 4 x^(1/3) + 2``.
    valid : bool tensor [*S, L_max]
        Which entries are within each sphere's ``L``.
    """
    m = _as_complex(m)
    x = torch.as_tensor(x, dtype=_F64, device=m.device)
    m, x = torch.broadcast_tensors(m, x)
    _check_inputs(m, x)
    nt = n_terms(x)
    L = int(nt.max()) if nt.numel() else 1
    n = torch.arange(1, L + 1, dtype=_F64, device=x.device)
    d = _log_derivative(m * x, L)[..., 1:]  # D_n(mx), n = 1..L
    psi, chi = _psi_chi(x, L)
    xi = psi.to(_C128) - 1j * chi.to(_C128)  # B&H: xi_n = psi_n - i chi_n
    xe = x[..., None]
    me = m[..., None]
    t_a = d / me + n / xe
    t_b = d * me + n / xe
    a = (t_a * psi[..., 1:] - psi[..., :-1]) / (t_a * xi[..., 1:] - xi[..., :-1])
    b = (t_b * psi[..., 1:] - psi[..., :-1]) / (t_b * xi[..., 1:] - xi[..., :-1])
    valid = n[(None,) * x.dim()] <= nt[..., None]
    zero = torch.zeros((), dtype=_C128, device=x.device)
    return torch.where(valid, a, zero), torch.where(valid, b, zero), valid


def coreshell_coefficients(
    m_core, m_shell, x_core, x_shell
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mie coefficients of concentric core-shell spheres (Bohren & Huffman, BHCOAT, Appendix B).

    ``m_core``, ``m_shell``: indices relative to the medium; ``x_core < = x_shell``: size parameters of the
    core and outer radius. The logarithmic derivatives use downward recurrence (more stable than
    BHCOAT's upward one). Returns ``a, b, valid`` like :func:`mie_coefficients` (L from ``x_shell``).
    """
    m1 = _as_complex(m_core)
    m2 = _as_complex(m_shell).to(m1.device)
    x = torch.as_tensor(x_core, dtype=_F64, device=m1.device)
    y = torch.as_tensor(x_shell, dtype=_F64, device=m1.device)
    m1, m2, x, y = torch.broadcast_tensors(m1, m2, x, y)
    _check_inputs(m1, x)
    _check_inputs(m2, y)
    if bool((x > y).any()):
        raise ValueError("core radius must be <= shell radius")
    nt = n_terms(y)
    L = int(nt.max())
    n = torch.arange(1, L + 1, dtype=_F64, device=x.device)
    x1, x2, y2 = m1 * x, m2 * x, m2 * y
    d1x1 = _log_derivative(x1, L)[..., 1:]
    d1x2 = _log_derivative(x2, L)[..., 1:]
    d1y2 = _log_derivative(y2, L)[..., 1:]

    def chi_upward(z):  # chi_n(z) = -z y_n(z), n = 0..L, complex z (growing solution)
        ch = [torch.cos(z), torch.cos(z) / z + torch.sin(z)]
        for k in range(1, L):
            ch.append((2 * k + 1) / z * ch[k] - ch[k - 1])
        return torch.stack(ch, dim=-1)

    cx2 = chi_upward(x2)
    cy2 = chi_upward(y2)
    chix2, chiy2 = cx2[..., 1:], cy2[..., 1:]
    chipx2 = cx2[..., :-1] - n * chix2 / x2[..., None]
    chipy2 = cy2[..., :-1] - n * chiy2 / y2[..., None]
    refrel = (m2 / m1)[..., None]
    ancap = (refrel * d1x1 - d1x2) / (refrel * d1x1 * chix2 - chipx2) / (chix2 * d1x2 - chipx2)
    bncap = (refrel * d1x2 - d1x1) / (refrel * chipx2 - d1x1 * chix2) / (chix2 * d1x2 - chipx2)
    brack = ancap * (chiy2 * d1y2 - chipy2)
    crack = bncap * (chiy2 * d1y2 - chipy2)
    # B&H: once these products are negligible (core far inside evanescent orders) they stay so;
    # dropping them avoids overflow of chi for high orders.
    small = (
        ((brack * chipy2).abs() <= 1e-8 * d1y2.abs())
        & ((brack * chiy2).abs() <= 1e-8)
        & ((crack * chipy2).abs() <= 1e-8 * d1y2.abs())
        & ((crack * chiy2).abs() <= 1e-8)
    )
    small = torch.cummax(small.to(torch.uint8), dim=-1).values.bool()
    bad = ~torch.isfinite(brack) | ~torch.isfinite(crack)
    zero = torch.zeros((), dtype=_C128, device=x.device)
    drop = small | bad
    brack = torch.where(drop, zero, brack)
    crack = torch.where(drop, zero, crack)
    chipy2 = torch.where(drop, zero, chipy2)
    chiy2 = torch.where(drop, zero, chiy2)
    dnbar = (d1y2 - brack * chipy2) / (1 - brack * chiy2)
    gnbar = (d1y2 - crack * chipy2) / (1 - crack * chiy2)
    psi, chi = _psi_chi(y, L)
    xi = psi.to(_C128) - 1j * chi.to(_C128)
    ye = y[..., None]
    m2e = m2[..., None]
    ta = dnbar / m2e + n / ye
    tb = gnbar * m2e + n / ye
    a = (ta * psi[..., 1:] - psi[..., :-1]) / (ta * xi[..., 1:] - xi[..., :-1])
    b = (tb * psi[..., 1:] - psi[..., :-1]) / (tb * xi[..., 1:] - xi[..., :-1])
    valid = n[(None,) * y.dim()] <= nt[..., None]
    return torch.where(valid, a, zero), torch.where(valid, b, zero), valid


def mie_efficiencies(a: torch.Tensor, b: torch.Tensor, x) -> dict[str, torch.Tensor]:
    """Extinction, scattering, absorption and backscattering efficiencies and asymmetry parameter ``g``.

    ``a``, ``b`` from :func:`mie_coefficients` ([..., L]), ``x`` the size parameter (outer radius).
    """
    x = torch.as_tensor(x, dtype=_F64, device=a.device)
    L = a.shape[-1]
    n = torch.arange(1, L + 1, dtype=_F64, device=a.device)
    w = 2 * n + 1
    x2 = x**2
    qext = 2 / x2 * (w * (a + b).real).sum(-1)
    qsca = 2 / x2 * (w * (a.abs() ** 2 + b.abs() ** 2)).sum(-1)
    sign = (-1.0) ** n
    qback = (w * sign * (a - b)).sum(-1).abs() ** 2 / x2
    # g Qsca = 4/x^2 [ sum n(n+2)/(n+1) Re(a_n a*_{n+1} + b_n b*_{n+1}) + sum (2n+1)/(n(n+1)) Re(a_n b*_n) ]
    an1 = torch.nn.functional.pad(a[..., 1:], (0, 1))
    bn1 = torch.nn.functional.pad(b[..., 1:], (0, 1))
    g1 = (n * (n + 2) / (n + 1) * (a * an1.conj() + b * bn1.conj()).real).sum(-1)
    g2 = (w / (n * (n + 1)) * (a * b.conj()).real).sum(-1)
    g = 4 / x2 * (g1 + g2) / qsca
    return {"qext": qext, "qsca": qsca, "qabs": qext - qsca, "qback": qback, "g": g}


def pi_tau(mu: torch.Tensor, n_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular functions ``pi_n(mu)``, ``tau_n(mu)`` for n = 1..n_max; shape [n_max, *mu.shape].

    ``mu = cos(theta)``. Upward recurrence (B&H eq. 4.47), stable.
    """
    mu = torch.as_tensor(mu)
    pis = [torch.zeros_like(mu), torch.ones_like(mu)]  # pi_0, pi_1
    taus = [mu.clone()]  # tau_1
    for k in range(2, n_max + 1):
        pis.append((2 * k - 1) / (k - 1) * mu * pis[k - 1] - k / (k - 1) * pis[k - 2])
        taus.append(k * mu * pis[k] - (k + 1) * pis[k - 1])
    return torch.stack(pis[1 : n_max + 1]), torch.stack(taus)


def scattering_amplitudes(
    a: torch.Tensor, b: torch.Tensor, pi: torch.Tensor, tau: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """B&H amplitude functions ``S1``, ``S2`` for particles ``[..., L]`` at angles ``[L, M]`` -> [..., M].

    ``S1 = sum (2n+1)/(n(n+1)) (a_n pi_n + b_n tau_n)``, ``S2 = sum (2n+1)/(n(n+1)) (a_n tau_n + b_n pi_n)``.
    The sum over n is a matrix product, so all particles and angles are done at once. ``pi``, ``tau``
    may hold more orders than ``a``, ``b`` (extra ones are ignored).
    """
    L = a.shape[-1]
    n = torch.arange(1, L + 1, dtype=a.real.dtype, device=a.device)
    c = ((2 * n + 1) / (n * (n + 1))).to(a.dtype)
    ca, cb = a * c, b * c
    p = pi[:L].to(a.dtype)
    t = tau[:L].to(a.dtype)
    return ca @ p + cb @ t, ca @ t + cb @ p


def check_refractive_index(name: str, value) -> None:
    """Raise ``ValueError`` if a refractive index (number, complex or Distribution) is unphysical."""
    if isinstance(value, complex):
        if value.imag < 0:
            raise ValueError(
                f"{name} must have imaginary part >= 0 (n + ik with absorption k >= 0), got {value}"
            )
        check_range(name + " (real part)", value.real, 0, None, low_inclusive=False)
        return
    check_range(name, value, 0, None, low_inclusive=False)


def _sample_index(value, shape, generator) -> torch.Tensor:
    if isinstance(value, complex):
        re = sample(value.real, shape, generator)
        return torch.complex(re, torch.full_like(re, value.imag))
    return sample(value, shape, generator).to(torch.complex64)


@register
@dataclass
class MieSphere(Scatterer):
    """A homogeneous sphere imaged with exact Lorenz-Mie theory (coherent optics).

    Parameters
    ----------
    radius_um : float or Distribution
        Radius in micrometres (> 0).
    refractive_index : float, complex or Distribution
        Absolute refractive index of the sphere, ``n + ik`` (``k >= 0`` absorbs), e.g. 1.59 for
        polystyrene or ``1.45 + 0.02j``. A Distribution samples the real part.
    """

    radius_um: ParamLike = 0.5
    refractive_index: ParamLike | complex = 1.59

    def __post_init__(self):
        check_range("radius_um", self.radius_um, 0, None, low_inclusive=False)
        check_refractive_index("refractive_index", self.refractive_index)

    def sample_into(self, scene: Scene, slots, generator: torch.Generator) -> None:
        shape = tuple(scene.radius_um[:, slots].shape)
        scene.radius_um[:, slots] = sample(self.radius_um, shape, generator)
        scene.refractive_index[:, slots] = _sample_index(self.refractive_index, shape, generator)

    def max_radius_um(self) -> float:
        return support(self.radius_um)[1]


@register
@dataclass
class CoreShellSphere(Scatterer):
    """A concentric core-shell sphere (e.g. a coated bead or a vesicle), Lorenz-Mie theory.

    ``scene.radius_um`` and ``scene.refractive_index`` hold the outer (shell) radius and shell index;
    the core is stored in ``scene.attributes["core_radius_um"]`` and ``["core_index"]``.
    """

    core_radius_um: ParamLike = 0.3
    shell_radius_um: ParamLike = 0.5
    core_index: ParamLike | complex = 1.45
    shell_index: ParamLike | complex = 1.59

    def __post_init__(self):
        check_range("core_radius_um", self.core_radius_um, 0, None, low_inclusive=False)
        check_range("shell_radius_um", self.shell_radius_um, 0, None, low_inclusive=False)
        if support(self.core_radius_um)[0] > support(self.shell_radius_um)[1]:
            raise ValueError("core_radius_um must be <= shell_radius_um")
        check_refractive_index("core_index", self.core_index)
        check_refractive_index("shell_index", self.shell_index)

    def sample_into(self, scene: Scene, slots, generator: torch.Generator) -> None:
        shape = tuple(scene.radius_um[:, slots].shape)
        b, nmax = scene.radius_um.shape
        shell = sample(self.shell_radius_um, shape, generator)
        core = torch.minimum(sample(self.core_radius_um, shape, generator), shell)
        scene.radius_um[:, slots] = shell
        scene.refractive_index[:, slots] = _sample_index(self.shell_index, shape, generator)
        attrs = scene.attributes
        if "core_radius_um" not in attrs:
            attrs["core_radius_um"] = torch.zeros(b, nmax, device=scene.device)
            attrs["core_index"] = torch.ones(b, nmax, dtype=torch.complex64, device=scene.device)
        attrs["core_radius_um"][:, slots] = core
        attrs["core_index"][:, slots] = _sample_index(self.core_index, shape, generator)

    def max_radius_um(self) -> float:
        return support(self.shell_radius_um)[1]


def angular_spectrum_x(
    a: torch.Tensor,
    b: torch.Tensor,
    pi: torch.Tensor,
    tau: torch.Tensor,
    mu: torch.Tensor,
    cos2_phi: torch.Tensor,
    wavenumber_per_um: float,
) -> torch.Tensor:
    """Angular spectrum of the x-component of the field scattered by spheres under x-polarised light.

    The plane-wave amplitude per unit transverse wavevector (field x um^2) of the scattered field, with
    the origin at the sphere centre and unit incident amplitude there: by stationary phase, the far field
    ``exp(ikr)/(-ikr) S`` of B&H corresponds to ``A = -S / (2 pi k^2 cos(theta))``; the x-component
    of the transverse field is ``S2 cos(theta) cos^2(phi) + S1 sin^2(phi)``. Summing
    ``A exp(i k_perp . r_perp + i kz z)`` over the propagating waves gives the scattered field in any
    plane beyond the sphere (exactly, up to evanescent waves), and a microscope images this extrapolated
    field also in planes that cut the sphere.

    Parameters
    ----------
    a, b : [P, L] coefficients; pi, tau : [L', M] angular functions at ``mu = cos(theta)`` [M];
    cos2_phi : [M] ``cos^2`` of the azimuth of each direction (from +x, the polarisation);
    wavenumber_per_um : ``k = 2 pi n_medium / lambda``.

    Returns
    -------
    [P, M] complex tensor (dtype of ``a``).
    """
    s1, s2 = scattering_amplitudes(a, b, pi, tau)
    mu = mu.to(a.real.dtype)
    c2 = cos2_phi.to(a.real.dtype)
    sx = s2 * (mu * c2) + s1 * (1 - c2)
    return -sx / (2 * math.pi * wavenumber_per_um**2 * mu.clamp(min=1e-3))
