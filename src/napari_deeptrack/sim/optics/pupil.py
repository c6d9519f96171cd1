"""The objective's pupil: circular aperture, defocus, Zernike aberrations and engineered phase masks.

Conventions (see ``docs/physics.md``)
-------------------------------------
- Spatial frequencies are in cycles per micrometre in the sample plane, in ``torch.fft.fftfreq``
  order; ``fy`` runs along image rows (y, down), ``fx`` along columns (x, right).
- The pupil transmits ``|f| <= NA / wavelength_um`` (the coherent cutoff).
- ``rho = |f| / (NA / wavelength_um)`` is the pupil radius normalised to 1 at the cutoff and
  ``theta = atan2(fy, fx)`` the pupil angle (from +x towards +y).
- Defocus is the angular-spectrum propagation phase ``2 pi z sqrt((n / lambda)^2 - |f|^2)`` with z in
  micrometres. **Positive z is away from the objective** (beyond the focal plane): the light of such an
  emitter propagates forward by z to reach the focal plane.
- Sample-plane pixel: ``pixel_size_um`` or ``camera_pixel_um / magnification`` (give exactly one).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass, field

import torch

from ..params import ParamLike, check_range, sample, support
from ..serialize import register
from .zernike import Zernike, zernike_polynomial

PSF_CORE_RADIUS = 1.25  # PSF core radius in units of wavelength / NA

#: Largest oversampling factor chosen automatically by the renderers (``oversample=None``).
AUTO_OVERSAMPLE_LIMIT = 8


def frequency_grid(
    shape: tuple[int, int], pixel_size_um: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (cycles/um) of an ``(H, W)`` grid with pixels of ``pixel_size_um``.

    Returns ``(fy, fx)`` float32 tensors of shapes ``[H, 1]`` and ``[1, W]`` in ``fftfreq`` order.
    """
    h, w = int(shape[0]), int(shape[1])
    check_range("pixel_size_um", pixel_size_um, 0.0, None, low_inclusive=False)
    fy = torch.fft.fftfreq(h, d=float(pixel_size_um), device=device, dtype=torch.float32)[:, None]
    fx = torch.fft.fftfreq(w, d=float(pixel_size_um), device=device, dtype=torch.float32)[None, :]
    return fy, fx


def axial_wavenumber(
    fy: torch.Tensor, fx: torch.Tensor, wavelength_um: float, refractive_index_medium: float = 1.33
) -> torch.Tensor:
    """``sqrt((n / lambda)^2 - f^2)`` in cycles/um, set to 0 for evanescent frequencies."""
    k2 = (refractive_index_medium / wavelength_um) ** 2 - (fy**2 + fx**2)
    return torch.sqrt(torch.clamp(k2, min=0.0))


def defocus_phase(
    fy: torch.Tensor,
    fx: torch.Tensor,
    z_um: float | torch.Tensor,
    wavelength_um: float,
    refractive_index_medium: float = 1.33,
) -> torch.Tensor:
    """Angular-spectrum defocus phase ``2 pi z sqrt((n / lambda)^2 - f^2)`` in radians.

    Parameters
    ----------
    fy, fx : Tensor
        Spatial frequencies in cycles/um (broadcastable, e.g. from :func:`frequency_grid`).
    z_um : float or Tensor
        Distance from the focal plane in um, positive away from the objective. A tensor of shape
        ``S`` gives a phase of shape ``S + broadcast(fy, fx).shape``.
    wavelength_um, refractive_index_medium : float
        Vacuum wavelength and refractive index of the medium around the emitter.

    Notes
    -----
    Multiplying a pupil by ``exp(1j * defocus_phase(...))`` propagates the field forward by ``z_um``.
    Evanescent frequencies (``|f| > n / lambda``) get phase 0; the pupil cuts them anyway since
    NA <= n.
    """
    kz = axial_wavenumber(fy, fx, wavelength_um, refractive_index_medium)
    if isinstance(z_um, torch.Tensor):
        z = z_um.to(kz.dtype).reshape(*z_um.shape, *([1] * kz.dim()))
        return 2 * math.pi * z * kz
    return 2 * math.pi * float(z_um) * kz


class PhaseMask:
    """Base class for engineered pupil phase masks (astigmatic lens, double helix, tetrapod...).

    Subclasses are ``@register``-ed dataclasses implementing :meth:`phase`.
    """

    def phase(
        self,
        rho: torch.Tensor,
        theta: torch.Tensor,
        generator: torch.Generator | None,
        batch_shape: tuple[int, ...],
    ) -> torch.Tensor:
        """Phase in radians added to the pupil.

        Parameters
        ----------
        rho : Tensor
            Pupil radius normalised to 1 at the NA cutoff (any shape ``S``).
        theta : Tensor
            Pupil angle (same shape), from +x towards +y.
        generator : torch.Generator or None
            For masks with random parameters (sampled once per image).
        batch_shape : tuple
            Leading shape of the result, usually ``(B,)``.

        Returns
        -------
        Tensor of shape ``batch_shape + S`` or broadcastable to it (e.g. ``S`` for a fixed mask).
        """
        raise NotImplementedError

    def blur_radius_um(self, NA: float, wavelength_um: float) -> float:
        """How far (um) the mask spreads light beyond the in-focus PSF core; used to size render patches.

        The default is a generous ``2 wavelength / NA``; masks should override it.
        """
        return 2 * wavelength_um / NA


@register
@dataclass
class Astigmatism(PhaseMask):
    """Astigmatic PSF for 3D localisation (a weak cylindrical lens in the detection path).

    The phase is ``coefficient * Z_2^2(rho, theta)`` (Noll normalised, ``cos 2 theta``). With a
    positive coefficient the PSF is elongated along x for emitters above focus (z > 0) and along y
    below focus (z < 0), and round in focus. Typical coefficients are 0.5-1.5 rad rms.

    Parameters
    ----------
    coefficient : float or Distribution
        Rms astigmatism in radians (sampled per image if a Distribution).
    """

    coefficient: ParamLike = 1.0

    def phase(self, rho, theta, generator, batch_shape):
        # -Z_2^2 makes the x-elongation appear above focus with our z sign (see tests).
        c = sample(self.coefficient, tuple(batch_shape), generator, device=rho.device)
        z22 = zernike_polynomial(2, 2, rho, theta)
        return -c.reshape(*c.shape, *([1] * rho.dim())) * z22

    def blur_radius_um(self, NA, wavelength_um):
        c = max(abs(v) for v in support(self.coefficient))
        return wavelength_um / (2 * math.pi * NA) * c * _max_slope(2, 2)


@register
@dataclass
class Pupil:
    """Circular pupil of an objective, with defocus, aberrations and an optional phase mask.

    Parameters
    ----------
    NA : float
        Numerical aperture, ``0 < NA <= refractive_index_medium``.
    wavelength_um : float
        Vacuum wavelength (fluorescence: emission wavelength) in um, > 0.
    pixel_size_um : float, optional
        Pixel size in the sample plane (um). Give either this or both ``camera_pixel_um`` and
        ``magnification``.
    camera_pixel_um, magnification : float, optional
        Camera pixel pitch (um) and total magnification; the sample-plane pixel is their ratio.
    refractive_index_medium : float
        Refractive index of the medium around the sample (water 1.33, oil 1.515), >= 1.
    aberrations : list of Zernike
        Zernike terms added to the pupil phase (coefficients in radians rms, sampled per image).
    phase_mask : PhaseMask, optional
        Engineered phase (``Astigmatism()``, double helix, tetrapod...).
    warn_aliasing : bool
        Warn when the rendering grid samples the PSF below the Nyquist rate. Set False to record that
        a coarse rendering (e.g. ``oversample=1`` for objects much larger than the PSF) is deliberate.
    """

    NA: float = 0.8
    wavelength_um: float = 0.6
    pixel_size_um: float | None = None
    camera_pixel_um: float | None = None
    magnification: float | None = None
    refractive_index_medium: float = 1.33
    aberrations: list[Zernike] = field(default_factory=list)
    phase_mask: PhaseMask | None = None
    warn_aliasing: bool = True

    def __post_init__(self):
        check_range(
            "wavelength_um", _number("wavelength_um", self.wavelength_um), 0.0, None, low_inclusive=False
        )
        check_range(
            "refractive_index_medium", _number("refractive_index_medium", self.refractive_index_medium), 1.0
        )
        check_range(
            "NA", _number("NA", self.NA), 0.0, float(self.refractive_index_medium), low_inclusive=False
        )
        by_pixel = self.pixel_size_um is not None
        by_camera = self.camera_pixel_um is not None or self.magnification is not None
        if by_pixel == by_camera or (
            by_camera and (self.camera_pixel_um is None or self.magnification is None)
        ):
            raise ValueError(
                "give the sample-plane pixel size either as pixel_size_um, or as camera_pixel_um together "
                f"with magnification (exactly one way); got pixel_size_um={self.pixel_size_um}, "
                f"camera_pixel_um={self.camera_pixel_um}, magnification={self.magnification}"
            )
        if by_pixel:
            check_range(
                "pixel_size_um", _number("pixel_size_um", self.pixel_size_um), 0.0, None, low_inclusive=False
            )
        else:
            check_range(
                "camera_pixel_um",
                _number("camera_pixel_um", self.camera_pixel_um),
                0.0,
                None,
                low_inclusive=False,
            )
            check_range(
                "magnification", _number("magnification", self.magnification), 0.0, None, low_inclusive=False
            )
        if isinstance(self.aberrations, Zernike):
            self.aberrations = [self.aberrations]
        for a in self.aberrations:
            if not isinstance(a, Zernike):
                raise ValueError(f"aberrations must be a list of Zernike terms, got {a!r}")
        if self.phase_mask is not None and not isinstance(self.phase_mask, PhaseMask):
            raise ValueError(f"phase_mask must be a PhaseMask or None, got {self.phase_mask!r}")
        # The camera may undersample the PSF (that is physics, and is simulated by integrating over
        # oversampled pixels). Warn only when the *rendering* grid would alias: an explicit
        # ``oversample`` too small for the pixel, or pixels beyond what automatic oversampling covers.
        os_ = getattr(self, "oversample", None)
        factor = os_ if isinstance(os_, int) and os_ >= 1 else AUTO_OVERSAMPLE_LIMIT
        render_px = self.sample_pixel_um / factor
        if self.warn_aliasing and render_px > self.nyquist_pixel_um * (1 + 1e-6):
            need = math.ceil(self.sample_pixel_um / self.nyquist_pixel_um - 1e-6)
            warnings.warn(
                f"pixel size {self.sample_pixel_um:.4g} um (sample plane) with oversample={os_} renders "
                "the PSF on a grid coarser than the Nyquist limit wavelength / (4 NA) = "
                f"{self.nyquist_pixel_um:.4g} um: the simulated PSF aliases. Use oversample >= {need} "
                "(or None for automatic).",
                stacklevel=_caller_stacklevel(),
            )

    # ------------------------------------------------------------------ derived numbers
    @property
    def sample_pixel_um(self) -> float:
        """Pixel size in the sample plane (um)."""
        if self.pixel_size_um is not None:
            return float(self.pixel_size_um)
        return float(self.camera_pixel_um) / float(self.magnification)

    @property
    def cutoff_per_um(self) -> float:
        """Coherent cutoff frequency ``NA / wavelength`` (cycles/um)."""
        return float(self.NA) / float(self.wavelength_um)

    @property
    def nyquist_pixel_um(self) -> float:
        """Largest pixel that samples the intensity PSF without aliasing, ``wavelength / (4 NA)``."""
        return float(self.wavelength_um) / (4.0 * float(self.NA))

    @property
    def max_angle_tan(self) -> float:
        """``tan`` of the largest collection angle in the medium (sets the defocus blur radius)."""
        s = min(float(self.NA) / float(self.refractive_index_medium), 0.999)
        return s / math.sqrt(1 - s * s)

    def psf_radius_um(self, z_max_um: float = 0.0) -> float:
        """Radius holding the PSF: core, geometric defocus blur and aberration blur (um).

        ``PSF_CORE_RADIUS * wavelength / NA`` (past the second dark ring of the Airy pattern, about 92%
        of the light in focus) plus ``|z| tan(theta_max)`` plus the transverse ray aberration of the
        Zernike terms and the phase mask (``wavelength / (2 pi NA) * max |dW / d rho|``).
        """
        lam, na = float(self.wavelength_um), float(self.NA)
        r = PSF_CORE_RADIUS * lam / na + abs(float(z_max_um)) * self.max_angle_tan
        for ab in self.aberrations:
            c = max(abs(v) for v in support(ab.coefficient))
            r += lam / (2 * math.pi * na) * c * _max_slope(ab.n, ab.m)
        if self.phase_mask is not None:
            extra = getattr(self.phase_mask, "blur_radius_um", None)
            r += extra(na, lam) if extra is not None else 2 * lam / na
        return r

    def psf_support_px(self, z_max_um: float = 0.0) -> int:
        """Diameter (pixels) of the diffraction-limited PSF, ``2 (wavelength / NA + |z| tan theta_max)``.

        The in-focus value is the smallest image the optics accept.
        """
        r = float(self.wavelength_um) / float(self.NA) + abs(float(z_max_um)) * self.max_angle_tan
        return int(math.ceil(2 * r / self.sample_pixel_um - 1e-6))

    # ------------------------------------------------------------------ pupil phase
    def polar(self, fy: torch.Tensor, fx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised pupil radius ``rho`` and angle ``theta`` of the frequencies ``(fy, fx)``."""
        fy, fx = torch.broadcast_tensors(fy, fx)
        rho = torch.sqrt(fy**2 + fx**2) / self.cutoff_per_um
        theta = torch.atan2(fy, fx)
        return rho, theta

    def sample_phase(
        self,
        rho: torch.Tensor,
        theta: torch.Tensor,
        batch_size: int,
        generator: torch.Generator | None,
        image_params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """Aberration + phase-mask phase (radians) per image, ``[B, *rho.shape]``; None if there is none.

        Zernike coefficients are sampled once per image and written to ``image_params`` (e.g.
        ``image_params["zernike_coma_x"]``) when a dict is given.
        """
        out = None
        for ab in self.aberrations:
            c = ab.sample_coefficient(batch_size, generator, device=rho.device)
            if image_params is not None:
                image_params[ab.key] = c
            term = c.reshape(batch_size, *([1] * rho.dim())) * ab.polynomial(rho, theta)
            out = term if out is None else out + term
        if self.phase_mask is not None:
            mask = self.phase_mask.phase(rho, theta, generator, (batch_size,))
            mask = torch.broadcast_to(mask, (batch_size, *rho.shape))
            out = mask if out is None else out + mask
        return out

    def pupil_function(
        self,
        shape: tuple[int, int],
        z_um: float | torch.Tensor = 0.0,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        image_params: dict[str, torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        pixel_size_um: float | None = None,
    ) -> torch.Tensor:
        """Complex pupil on an ``(H, W)`` frequency grid (fftfreq order), ``[B, H, W]`` complex64.

        ``P(f) exp(i defocus(z)) exp(i aberrations) exp(i mask)`` with ``P`` the circular aperture.
        ``z_um`` is a number or a ``[B]`` tensor. The amplitude PSF is ``ifft2`` of this.
        """
        if device is None and generator is not None:
            device = generator.device
        dx = self.sample_pixel_um if pixel_size_um is None else float(pixel_size_um)
        fy, fx = frequency_grid(shape, dx, device=device)
        rho, theta = self.polar(fy, fx)
        inside = (rho <= 1.0).to(torch.float32)
        if isinstance(z_um, torch.Tensor):
            z = z_um.to(device=rho.device, dtype=torch.float32).reshape(-1)
            z = torch.broadcast_to(z, (batch_size,)) if z.numel() == 1 else z
        else:
            z = torch.full((batch_size,), float(z_um), device=rho.device)
        phase = defocus_phase(fy, fx, z, self.wavelength_um, self.refractive_index_medium)
        extra = self.sample_phase(rho, theta, batch_size, generator, image_params)
        if extra is not None:
            phase = phase + extra
        return torch.polar(torch.broadcast_to(inside, phase.shape).contiguous(), phase)


def _max_slope(n: int, m: int) -> float:
    """Twice the rms gradient ``|grad Z|`` of a Noll-normalised Zernike polynomial over the unit disc.

    Sets the transverse ray aberration that most of the light sees (the maximum, at the pupil edge,
    carries little light).
    """
    t = torch.linspace(-1, 1, 101, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    z = zernike_polynomial(n, m, torch.sqrt(x**2 + y**2), torch.atan2(y, x))
    gy, gx = torch.gradient(z, spacing=(t, t))
    inside = x**2 + y**2 <= 1
    return 2 * float(torch.sqrt((gy**2 + gx**2)[inside].mean()))


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside this package and dataclass ``__init__`` (for warnings)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename == "<string>"
        or f"{os.sep}napari_deeptrack{os.sep}sim{os.sep}" in frame.f_code.co_filename
    ):
        frame, level = frame.f_back, level + 1
    return level


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


__all__ = [
    "Astigmatism",
    "PhaseMask",
    "Pupil",
    "axial_wavenumber",
    "defocus_phase",
    "frequency_grid",
]
