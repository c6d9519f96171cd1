"""Engineered point-spread functions for 3D fluorescence localisation: double-helix and tetrapod masks.

Both are :class:`~napari_deeptrack.sim.optics.pupil.PhaseMask` s: a phase added to the pupil of
:class:`~napari_deeptrack.sim.optics.pupil.Pupil` (``Fluorescence(..., phase_mask=DoubleHelix())``).
``rho`` is the pupil radius normalised to 1 at the NA cutoff, ``theta`` the pupil angle from +x towards +y.
(See the review papers/dl_single_molecule_microscopy_review.txt: astigmatic ~0.8 um, double-helix ~2 um,
tetrapod 4-6 um axial ranges.)

- :class:`DoubleHelix`: a rotating two-lobe PSF built from Fresnel zones (Prasad, Opt. Lett. 38, 585
  (2013); the Gauss-Laguerre double helix of Pavani et al., PNAS 106, 2995 (2009) behaves alike): zone
  ``j = 1..L`` (equal areas in ``rho^2``) carries a vortex ``exp(i (2j - 1) theta)``. The zones' defocus
  phases differ by ``2 pi z NA^2 / (2 n lambda L)`` (paraxially), so the two lobes turn by half of that
  per micrometre: the angle of the lobe pair encodes z over about ``L lambda n / NA^2`` (one half-turn).
- :class:`Tetrapod`: a saddle-shaped phase ``amplitude * rho^order * cos(2 (theta - angle))``, the
  dominant, astigmatism-like component of the Fisher-information-optimised tetrapod masks (Shechtman et
  al., PRL 113, 133902 (2014); Nano Lett. 15, 4194 (2015)). Above focus the PSF splits into two lobes
  along one axis, below focus along the perpendicular axis, and the lobe separation grows with ``|z|``
  over several micrometres. This is a parametric approximation, not the numerically optimised mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..params import ParamLike, check_range, sample
from ..serialize import register
from .pupil import PhaseMask

__all__ = ["DoubleHelix", "Tetrapod"]


@register
@dataclass
class DoubleHelix(PhaseMask):
    """Double-helix phase mask: two lobes rotating with depth.

    Parameters
    ----------
    n_zones : int
        Number of Fresnel zones (>= 2). More zones: slower rotation, longer axial range
        (about ``n_zones * wavelength * n / NA^2`` for a half-turn).
    rotation_rad : float
        Extra rotation of the whole pattern (orientation of the lobes in focus).
    """

    n_zones: int = 6
    rotation_rad: float = 0.0

    def __post_init__(self):
        if int(self.n_zones) != self.n_zones or self.n_zones < 2:
            raise ValueError(f"n_zones must be an integer >= 2, got {self.n_zones}")
        self.n_zones = int(self.n_zones)

    def phase(self, rho, theta, generator, batch_shape):
        zone = torch.clamp(torch.ceil(rho.clamp(min=0) ** 2 * self.n_zones), 1, self.n_zones)
        return (2 * zone - 1) * (theta - float(self.rotation_rad))


@register
@dataclass
class Tetrapod(PhaseMask):
    """Tetrapod-like saddle phase mask ``amplitude * rho^order * cos(2 (theta - angle_rad))``.

    Parameters
    ----------
    amplitude_rad : float or Distribution
        Peak phase at the pupil edge in radians (> 0; ~6-12 rad for a 4-6 um range). A Distribution is
        sampled per image.
    order : int
        Radial power (even, >= 2): 2 is plain astigmatism; higher orders concentrate the saddle at the
        pupil rim and split the PSF into two lobes (the tetrapod).
    angle_rad : float
        Orientation of the saddle.
    """

    amplitude_rad: ParamLike = 8.0
    order: int = 6
    angle_rad: float = math.pi / 4

    def __post_init__(self):
        check_range("amplitude_rad", self.amplitude_rad, 0, None, low_inclusive=False)
        if int(self.order) != self.order or self.order < 2 or self.order % 2:
            raise ValueError(f"order must be an even integer >= 2, got {self.order}")
        self.order = int(self.order)

    def phase(self, rho, theta, generator, batch_shape):
        a = sample(self.amplitude_rad, tuple(batch_shape), generator, device=rho.device)
        shape = rho.clamp(max=1.0) ** self.order * torch.cos(2 * (theta - float(self.angle_rad)))
        return a.reshape(*a.shape, *([1] * rho.dim())) * shape
