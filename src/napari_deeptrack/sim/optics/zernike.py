"""Zernike polynomials and Zernike aberrations of the pupil.

Conventions
-----------
- Polynomials use the Noll normalisation: every ``Z_n^m`` has unit root-mean-square over the unit
  disc, so a :class:`Zernike` ``coefficient`` is the **rms wavefront error in radians** of pupil
  phase (1 wave rms = 2*pi rad; ``lambda/14`` rms, the Marechal limit, is about 0.45 rad).
- ``rho`` is the pupil radius normalised to 1 at the NA cutoff, ``theta = atan2(f_y, f_x)`` the pupil
  angle, measured from +x towards +y (y points down the image rows).
- ``m >= 0`` uses ``cos(m theta)``, ``m < 0`` uses ``sin(|m| theta)``.

Named aberrations (``Zernike.named``): ``defocus`` (2, 0), ``astigmatism`` / ``astigmatism_0``
(2, 2), ``astigmatism_45`` (2, -2), ``coma_x`` (3, 1), ``coma_y`` (3, -1), ``trefoil_x`` (3, 3),
``trefoil_y`` (3, -3), ``spherical`` (4, 0), ``secondary_astigmatism`` (4, 2).
Tip and tilt (n = 1) only move the image and would make the ground truth wrong, so they are not named
(they remain available by index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..params import Distribution, ParamLike, sample
from ..serialize import register

NAMED_ZERNIKE: dict[str, tuple[int, int]] = {
    "defocus": (2, 0),
    "astigmatism": (2, 2),
    "astigmatism_0": (2, 2),
    "astigmatism_45": (2, -2),
    "coma_x": (3, 1),
    "coma_y": (3, -1),
    "trefoil_x": (3, 3),
    "trefoil_y": (3, -3),
    "spherical": (4, 0),
    "secondary_astigmatism": (4, 2),
}


def _check_nm(n: int, m: int) -> None:
    if int(n) != n or int(m) != m:
        raise ValueError(f"Zernike indices must be integers, got n={n}, m={m}")
    if n < 0:
        raise ValueError(f"Zernike radial order n must be >= 0, got n={n}")
    if abs(m) > n or (n - abs(m)) % 2:
        raise ValueError(
            f"Zernike azimuthal order m must satisfy |m| <= n and n - |m| even; got n={n}, m={m}"
        )


def noll_to_nm(j: int) -> tuple[int, int]:
    """Convert a Noll index ``j >= 1`` to ``(n, m)`` (Noll 1976, J. Opt. Soc. Am. 66, 207)."""
    if int(j) != j or j < 1:
        raise ValueError(f"Noll index j must be an integer >= 1, got {j}")
    j = int(j)
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    k = j - n * (n + 1) // 2 - 1  # position within order n: 0..n
    # |m| values in order n, in increasing order, each (except 0) appearing twice
    ms = [m for m in range(n % 2, n + 1, 2) for _ in ((0,) if m == 0 else (0, 1))]
    m_abs = ms[k]
    if m_abs == 0:
        return n, 0
    return n, (m_abs if j % 2 == 0 else -m_abs)


def zernike_radial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    """Radial polynomial ``R_n^|m|(rho)`` (unnormalised)."""
    _check_nm(n, m)
    m = abs(m)
    out = torch.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        c = (
            (-1) ** k
            * math.factorial(n - k)
            / (math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k))
        )
        out = out + c * rho ** (n - 2 * k)
    return out


def zernike_polynomial(n: int, m: int, rho: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Noll-normalised Zernike polynomial ``Z_n^m(rho, theta)`` (unit rms over the unit disc).

    Parameters
    ----------
    n, m : int
        Radial and azimuthal orders (``|m| <= n``, ``n - |m|`` even).
    rho : Tensor
        Pupil radius normalised to 1 at the edge of the pupil. Values outside the disc are evaluated
        as polynomials (mask them yourself).
    theta : Tensor
        Pupil angle in radians (from +x towards +y).
    """
    _check_nm(n, m)
    norm = math.sqrt(2.0 * (n + 1)) if m != 0 else math.sqrt(n + 1.0)
    radial = zernike_radial(n, m, rho)
    if m > 0:
        return norm * radial * torch.cos(m * theta)
    if m < 0:
        return norm * radial * torch.sin(-m * theta)
    return norm * radial


@register
@dataclass
class Zernike:
    """One Zernike aberration term of the pupil phase.

    Parameters
    ----------
    n, m : int
        Radial and azimuthal orders (Noll normalisation, see the module docstring).
    coefficient : float or Distribution
        Rms wavefront error in **radians**; a Distribution is sampled once per image and the value is
        stored in ``scene.image_params["zernike_<name>"]``.
    name : str
        Label used for the stored value; defaults to the named aberration or ``"n<n>_m<m>"``.

    Examples
    --------
    >>> Zernike.named("coma_x", 0.5).key
    'zernike_coma_x'
    >>> Zernike.noll(11, 0.3).n, Zernike.noll(11, 0.3).m
    (4, 0)
    """

    n: int = 2
    m: int = 0
    coefficient: ParamLike = 0.0
    name: str = ""

    def __post_init__(self):
        _check_nm(self.n, self.m)
        self.n, self.m = int(self.n), int(self.m)
        if not isinstance(self.coefficient, Distribution | int | float) or isinstance(self.coefficient, bool):
            raise ValueError(
                f"Zernike coefficient must be a number or a Distribution, got {self.coefficient!r}"
            )
        if not self.name:
            named = [k for k, v in NAMED_ZERNIKE.items() if v == (self.n, self.m)]
            self.name = named[0] if named else f"n{self.n}_m{self.m}"

    @classmethod
    def named(cls, name: str, coefficient: ParamLike = 0.0) -> Zernike:
        """A named aberration: one of ``NAMED_ZERNIKE`` (e.g. ``"coma_x"``, ``"spherical"``)."""
        if name not in NAMED_ZERNIKE:
            raise ValueError(f"unknown aberration name {name!r}; valid names: {sorted(NAMED_ZERNIKE)}")
        n, m = NAMED_ZERNIKE[name]
        return cls(n=n, m=m, coefficient=coefficient, name=name)

    @classmethod
    def noll(cls, j: int, coefficient: ParamLike = 0.0) -> Zernike:
        """The aberration with Noll index ``j`` (1 = piston, 4 = defocus, 11 = spherical...)."""
        n, m = noll_to_nm(j)
        return cls(n=n, m=m, coefficient=coefficient)

    @property
    def key(self) -> str:
        """Name under which the sampled coefficient is stored in ``scene.image_params``."""
        return f"zernike_{self.name}"

    def sample_coefficient(
        self, batch_size: int, generator: torch.Generator | None, device=None
    ) -> torch.Tensor:
        """Coefficient for each image, [B] float32 (radians rms)."""
        return sample(self.coefficient, (batch_size,), generator, device=device)

    def polynomial(self, rho: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``Z_n^m(rho, theta)`` (unit rms)."""
        return zernike_polynomial(self.n, self.m, rho, theta)


__all__ = ["NAMED_ZERNIKE", "Zernike", "noll_to_nm", "zernike_polynomial", "zernike_radial"]
