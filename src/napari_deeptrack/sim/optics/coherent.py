"""Coherent microscopes: brightfield and holography (in-line intensity or off-axis complex field).

The model (see ``docs/physics.md``)
-----------------------------------
An x-polarised plane wave of unit amplitude (``illumination_intensity``) travels along the optical axis
from the illumination side towards the objective. Each particle scatters a field; the fields add
(single scattering). The field in the focal plane is written as its angular spectrum on the FFT grid:

``G(f) = N^2 delta(f) + sum_p A_p(f) exp(-2 pi i f . r_p) exp(2 pi i (kz(f) - n / lambda) z_p)``

- ``A_p`` is the particle's scattered field spectrum with the origin at its centre.
  Lorenz-Mie (``MieSphere``, ``CoreShellSphere`` of :mod:`napari_deeptrack.sim.mie`): the far-field
  amplitudes ``S1``, ``S2`` mapped onto the pupil, each pupil frequency being one scattering
  direction (``sin theta = lambda f / n``); thin objects (``Sphere``, ``Ellipsoid``): the FFT of the
  projection-approximation transmission ``t - 1``, ``t = exp(i 2 pi / lambda (n_p - n_m) thickness)``.
- ``exp(2 pi i kz z_p)`` propagates the particle's field forward by ``z_p`` to the focal plane; ``z_p`` is
  the scene depth, **positive away from the objective** (the particle sits upstream of the focal plane;
  negative: between focal plane and objective, imaged as the extrapolated virtual field). The
  ``- n / lambda`` term is the phase of the illumination at the particle relative to the focal plane.
- The objective's pupil multiplies ``G`` (circular NA cutoff, Zernike aberrations with per-image random
  strengths recorded in ``scene.image_params``), including the unscattered light at ``f = 0``.
- ``E = ifft2(G)`` is computed on a zero-padded grid (no wrap-around of the wide fringes of distant
  particles) and, when pixels are too coarse, an oversampled grid, then cropped and integrated over the
  camera pixels.

Outputs: ``"intensity"`` -> in-line hologram / brightfield image ``|E|^2`` [B, 1, H, W] (background =
``illumination_intensity``); ``"complex"`` -> the complex field as two channels (real, imaginary), as
reconstructed by off-axis holography; ``"amplitude_phase"`` -> ``|E|`` and ``arg E``.

Only multiple scattering between particles and the polarisation components other than x are neglected.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from .. import mie
from ..params import check_range
from ..pipeline import Optics, Scatterer
from ..scatterers import Ellipsoid, Sphere
from ..scene import Scene
from ..serialize import register
from .propagation import fft_size
from .pupil import Pupil, frequency_grid
from .zernike import Zernike

__all__ = ["Brightfield", "Holography", "COHERENT_OUTPUTS"]

COHERENT_OUTPUTS = ("intensity", "complex", "amplitude_phase")


class _Grid:
    """Frequency grid of one render (padded, oversampled), with the pupil points and Mie angle tables."""

    def __init__(self, shape, pixel_um, wavelength_um, n_medium, na, device):
        self.shape = shape
        self.pixel_um = pixel_um
        fy, fx = frequency_grid(shape, pixel_um, device=device)
        fy, fx = torch.broadcast_tensors(fy, fx)
        f2 = (fy.double() ** 2 + fx.double() ** 2).reshape(-1)
        cutoff = na / wavelength_um
        self.inside = torch.nonzero(f2 <= cutoff**2 * (1 + 1e-9)).reshape(-1)
        self.fy = fy.reshape(-1)[self.inside]
        self.fx = fx.reshape(-1)[self.inside]
        f2i = f2[self.inside]
        k_med = n_medium / wavelength_um  # cycles/um
        sin2 = (f2i / k_med**2).clamp(max=1.0)
        self.mu = torch.sqrt(1 - sin2)  # cos(theta), float64
        self.cos2_phi = torch.where(
            f2i > 0, fx.reshape(-1)[self.inside].double() ** 2 / f2i.clamp(min=1e-30), 1.0
        )
        self.rho = torch.sqrt(f2i).float() / cutoff
        self.theta = torch.atan2(self.fy, self.fx)
        kz = torch.sqrt((k_med**2 - f2i).clamp(min=0))
        self.kz_minus_k = (2 * math.pi * (kz - k_med)).float()  # rad/um
        self._pi = self._tau = None

    def pi_tau(self, n_max: int):
        if self._pi is None or self._pi.shape[0] < n_max:
            n = max(n_max, 8 if self._pi is None else 2 * self._pi.shape[0])
            self._pi, self._tau = mie.pi_tau(self.mu, n)
        return self._pi, self._tau


_GRIDS: dict = {}


def _grid(shape, pixel_um, wavelength_um, n_medium, na, device) -> _Grid:
    key = (tuple(shape), float(pixel_um), float(wavelength_um), float(n_medium), float(na), str(device))
    g = _GRIDS.get(key)
    if g is None:
        if len(_GRIDS) > 16:
            _GRIDS.clear()
        g = _GRIDS[key] = _Grid(shape, pixel_um, wavelength_um, n_medium, na, device)
    return g


@register
@dataclass
class Brightfield(Optics):
    """Coherent brightfield microscope (plane-wave illumination), output ``|E|^2`` by default.

    Parameters
    ----------
    NA : float
        Numerical aperture of the objective, ``0 < NA <= refractive_index_medium``.
    wavelength_um : float
        Vacuum wavelength of the illumination (um).
    pixel_size_um : float, optional
        Sample-plane pixel size (um); or give ``camera_pixel_um`` and ``magnification``.
    camera_pixel_um, magnification : float, optional
        Camera pixel pitch (um) and magnification.
    refractive_index_medium : float
        Refractive index of the medium around the particles (water 1.33).
    aberrations : list of Zernike
        Pupil aberrations; coefficients (rad rms) may be Distributions, sampled per image, e.g.
        ``[Zernike.named("coma_x", Uniform(-1, 1)), Zernike.named("coma_y", Uniform(-1, 1)),
        Zernike.named("spherical", Uniform(-1, 1))]`` (values in ``scene.image_params``).
    output : {"intensity", "complex", "amplitude_phase"}
        ``|E|^2`` [B, 1, H, W]; real and imaginary parts [B, 2, H, W]; or amplitude and phase.
    illumination_intensity : float
        Intensity of the illumination (the image background).
    padding_px : int, optional
        Zero padding around the image for the FFTs (default: half the image size), so that fringes of
        particles far from focus do not wrap around.
    oversample : int, optional
        Sub-pixels per camera pixel for the field (None: automatic, enough to sample the output without
        aliasing: ``pixel <= lambda / (4 NA)`` for intensity, ``lambda / (2 NA)`` for the field).
    """

    is_coherent = True

    NA: float = 0.7
    wavelength_um: float = 0.633
    pixel_size_um: float | None = None
    camera_pixel_um: float | None = None
    magnification: float | None = None
    refractive_index_medium: float = 1.33
    aberrations: list[Zernike] = field(default_factory=list)
    output: str = "intensity"
    illumination_intensity: float = 1.0
    padding_px: int | None = None
    oversample: int | None = None

    def __post_init__(self):
        if self.output not in COHERENT_OUTPUTS:
            raise ValueError(f"output must be one of {COHERENT_OUTPUTS}, got {self.output!r}")
        check_range("illumination_intensity", self.illumination_intensity, 0, None, low_inclusive=False)
        if self.padding_px is not None and int(self.padding_px) < 0:
            raise ValueError(f"padding_px must be >= 0 or None, got {self.padding_px}")
        if self.oversample is not None:
            check_range("oversample", self.oversample, 1, 16)
            self.oversample = int(self.oversample)
        if isinstance(self.aberrations, Zernike):
            self.aberrations = [self.aberrations]
        with warnings.catch_warnings():  # the fluorescence Nyquist warning; handled by oversampling here
            warnings.simplefilter("ignore")
            self._pupil = Pupil(
                NA=self.NA,
                wavelength_um=self.wavelength_um,
                pixel_size_um=self.pixel_size_um,
                camera_pixel_um=self.camera_pixel_um,
                magnification=self.magnification,
                refractive_index_medium=self.refractive_index_medium,
                aberrations=list(self.aberrations),
            )

    # ------------------------------------------------------------------ numbers
    @property
    def sample_pixel_um(self) -> float:
        """Pixel size in the sample plane (um)."""
        return self._pupil.sample_pixel_um

    @property
    def n_channels(self) -> int:
        return 1 if self.output == "intensity" else 2

    def _oversample(self) -> int:
        if self.oversample is not None:
            return int(self.oversample)
        limit = self.wavelength_um / ((4.0 if self.output == "intensity" else 2.0) * self.NA)
        return max(1, math.ceil(self.sample_pixel_um / limit - 1e-9))

    # ------------------------------------------------------------------ rendering
    def complex_field(
        self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator | None
    ) -> torch.Tensor:
        """Complex field in the camera plane [B, H, W] complex64 (illumination ``sqrt(intensity)``)."""
        e, s = self._field(scene, scatterers, generator)
        if s > 1:
            e = torch.complex(
                torch.nn.functional.avg_pool2d(e.real[:, None], s),
                torch.nn.functional.avg_pool2d(e.imag[:, None], s),
            )[:, 0]
        return e

    def _field(self, scene, scatterers, generator) -> tuple[torch.Tensor, int]:
        """Field on the oversampled camera grid [B, H*s, W*s] and the oversampling factor s."""
        dev = scene.device
        B = scene.batch_size
        H, W = scene.image_shape
        s = self._oversample()
        pad = max(H, W) // 2 if self.padding_px is None else int(self.padding_px)
        # padded sizes rounded up to FFT-friendly numbers (factors 2, 3, 5, 7); image at offset (py, px)
        Hp, Wp = fft_size(H + 2 * pad), fft_size(W + 2 * pad)
        py, px = (Hp - H) // 2, (Wp - W) // 2
        Hg, Wg = Hp * s, Wp * s
        dxg = self.sample_pixel_um / s
        grid = _grid((Hg, Wg), dxg, self.wavelength_um, self.refractive_index_medium, self.NA, dev)
        M = grid.inside.numel()
        spec = torch.zeros(B, M, dtype=torch.complex64, device=dev)
        for k, sc in enumerate(scatterers):
            sel = scene.present & (scene.kind == k)
            if not bool(sel.any()):
                continue
            b_idx, n_idx = torch.nonzero(sel, as_tuple=True)
            a_p = self._particle_spectrum(sc, scene, b_idx, n_idx, grid)  # [P, M], origin at particle
            # position: pixel (y, x) of the camera -> um on the padded, oversampled grid
            y_um = ((scene.position[b_idx, n_idx, 0] + py) * s + (s - 1) / 2) * dxg
            x_um = ((scene.position[b_idx, n_idx, 1] + px) * s + (s - 1) / 2) * dxg
            z_um = scene.position[b_idx, n_idx, 2]
            phase = (
                -2 * math.pi * (y_um[:, None] * grid.fy[None, :] + x_um[:, None] * grid.fx[None, :])
                + z_um[:, None] * grid.kz_minus_k[None, :]
            )
            contrib = a_p * torch.polar(torch.ones_like(phase), phase)
            spec.index_add_(0, b_idx, contrib)
        # unscattered illumination: a constant field 1 is N^2 at f = 0 (first pupil point)
        spec[:, 0] += float(Hg * Wg)
        pupil_phase = self._pupil.sample_phase(grid.rho, grid.theta, B, generator, scene.image_params)
        if pupil_phase is not None:
            spec = spec * torch.polar(torch.ones_like(pupil_phase), pupil_phase)
        full = torch.zeros(B, Hg * Wg, dtype=torch.complex64, device=dev)
        full[:, grid.inside] = spec
        e = torch.fft.ifft2(full.reshape(B, Hg, Wg))
        e = e[:, py * s : (py + H) * s, px * s : (px + W) * s]
        return e * math.sqrt(float(self.illumination_intensity)), s

    def render(self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator) -> torch.Tensor:
        """Images [B, C, H, W] float32 (see ``output``)."""
        e, s = self._field(scene, scatterers, generator)
        B, H, W = e.shape[0], scene.image_shape[0], scene.image_shape[1]
        if self.output == "intensity":
            img = (e.real**2 + e.imag**2)[:, None]
        else:
            img = torch.stack([e.real, e.imag], dim=1)
        if s > 1:
            img = torch.nn.functional.avg_pool2d(img, s)
        if self.output == "amplitude_phase":
            c = torch.complex(img[:, 0], img[:, 1])
            img = torch.stack([c.abs(), c.angle()], dim=1)
        return img.reshape(B, self.n_channels, H, W).float()

    # ------------------------------------------------------------------ scatterers
    def _particle_spectrum(self, sc: Scatterer, scene: Scene, b, n, grid: _Grid) -> torch.Tensor:
        """Scattered-field spectrum ``G`` units ([P, M] complex64) with the origin at the particle."""
        lam, n_m = float(self.wavelength_um), float(self.refractive_index_medium)
        k = 2 * math.pi * n_m / lam
        to_grid = (2 * math.pi / grid.pixel_um) ** 2  # continuous spectrum (per rad^2/um^2) -> DFT units
        if isinstance(sc, mie.MieSphere | mie.CoreShellSphere):
            m = scene.refractive_index[b, n].to(torch.complex128) / n_m
            x = mie.size_parameter(scene.radius_um[b, n], lam, n_m).to(m.device)
            if isinstance(sc, mie.CoreShellSphere):
                mc = scene.attributes["core_index"][b, n].to(torch.complex128) / n_m
                xc = mie.size_parameter(scene.attributes["core_radius_um"][b, n], lam, n_m).to(m.device)
                a, bb, _ = mie.coreshell_coefficients(mc, m, xc, x)
            else:
                a, bb, _ = mie.mie_coefficients(m, x)
            pi, tau = grid.pi_tau(a.shape[-1])
            a, bb = a.to(torch.complex64), bb.to(torch.complex64)
            amp = mie.angular_spectrum_x(
                a, bb, pi.float(), tau.float(), grid.mu.float(), grid.cos2_phi.float(), k
            )
            return amp * to_grid
        if hasattr(sc, "coherent_spectrum"):  # extension point for user scatterers
            return sc.coherent_spectrum(scene, b, n, grid, self)
        if isinstance(sc, Sphere | Ellipsoid):
            return self._thin_object_spectrum(scene, b, n, grid)
        raise ValueError(
            f"{type(sc).__name__} cannot be imaged by coherent optics; use MieSphere, CoreShellSphere, "
            "Sphere or Ellipsoid"
        )

    def _thin_object_spectrum(self, scene: Scene, b, n, grid: _Grid) -> torch.Tensor:
        """Projection approximation: FFT of ``exp(i k0 (n_p - n_m) T(y, x)) - 1`` centred at the origin."""
        Hg, Wg = grid.shape
        dev = scene.device
        dx = grid.pixel_um
        axes = scene.attributes.get("axes_um")
        if axes is not None and bool((axes[b, n, 2] > 0).all()) and "rotation_rad" in scene.attributes:
            ay, ax, az = axes[b, n, 0], axes[b, n, 1], axes[b, n, 2]
            rot = scene.attributes["rotation_rad"][b, n]
        else:
            r = scene.radius_um[b, n]
            ay = ax = az = r
            rot = torch.zeros_like(r)
        # the object is non-zero only near the origin: evaluate it on a small patch of wrapped coordinates
        half = int(math.ceil(float(torch.maximum(ay, ax).max()) / dx)) + 1
        half = min(half, (min(Hg, Wg) - 1) // 2)
        offs = torch.arange(-half, half + 1, device=dev)
        yy = (offs.float() * dx)[:, None]
        xx = (offs.float() * dx)[None, :]
        c, s = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
        u = xx * c + yy * s
        v = -xx * s + yy * c
        q = 1 - (u / ax[:, None, None]) ** 2 - (v / ay[:, None, None]) ** 2
        thickness = 2 * az[:, None, None] * torch.sqrt(q.clamp(min=0))
        k0 = 2 * math.pi / float(self.wavelength_um)
        dn = (scene.refractive_index[b, n] - float(self.refractive_index_medium)).to(torch.complex64)
        t = torch.exp(1j * k0 * dn[:, None, None] * thickness) - 1
        full = torch.zeros(t.shape[0], Hg, Wg, dtype=torch.complex64, device=dev)
        full[:, (offs % Hg)[:, None], (offs % Wg)[None, :]] = t
        return torch.fft.fft2(full).reshape(t.shape[0], -1)[:, grid.inside]


@register
@dataclass
class Holography(Brightfield):
    """Holographic microscope: same physics as :class:`Brightfield`, complex-field output by default.

    ``output="complex"`` gives the field reconstructed by off-axis holography as two channels (real,
    imaginary; the illumination is 1 + 0i); ``output="intensity"`` gives the in-line hologram ``|E|^2``;
    ``output="amplitude_phase"`` gives ``|E|`` and ``arg E``. Typical use: Mie spheres from in focus to
    tens of micrometres away (``Particles(MieSphere(...), z_um=Uniform(2, 30))``).
    """

    output: str = "complex"
