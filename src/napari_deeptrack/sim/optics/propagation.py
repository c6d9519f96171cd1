"""Angular-spectrum propagation of scalar fields, numerical refocusing and focus metrics.

Conventions (see ``docs/physics.md``)
-------------------------------------
- Fields are complex tensors ``[..., H, W]`` sampled on pixels of ``pixel_size_um`` (sample plane).
- Time dependence ``exp(-i omega t)``: a plane wave travelling along the light's direction of travel is
  ``exp(+i 2 pi kz z)`` with ``kz = sqrt((n / lambda)^2 - f^2)`` (cycles/um).
- :func:`propagate` moves a field **forward along the light** by ``z_um`` (negative: backwards).
  In a transmission microscope the light travels from the illumination towards the objective, so a particle
  at scene depth ``z`` (positive away from the objective, the scene convention) sends its field *forward*
  by ``z`` to reach the focal plane.
- :func:`refocus` uses the **scene convention**: ``refocus(image, z_um)`` is the field in the plane at depth
  ``z_um`` (positive away from the objective), i.e. ``propagate(image, -z_um)``. Refocusing a hologram of a
  particle at depth ``z`` to ``z`` brings the particle into focus.
- Evanescent components (``f > n / lambda``): ``evanescent="decay"`` damps them as
  ``exp(-2 pi |kz| z)`` for forward propagation and removes them for backward propagation (the growing
  solution cannot be recovered); ``"drop"`` removes them always.

The transfer functions are cached per (shape, pixel size, wavelength, medium, device).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..params import check_range
from .pupil import frequency_grid

__all__ = [
    "FOCUS_METRICS",
    "find_focus",
    "focus_metric",
    "focus_scan",
    "propagate",
    "refocus",
    "transfer_function",
]


@lru_cache(maxsize=32)
def _kz_grid(shape, pixel_size_um, wavelength_um, n_medium, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``2 pi kz`` for propagating and ``2 pi |kz|`` for evanescent frequencies, and the propagating mask."""
    fy, fx = frequency_grid(shape, pixel_size_um, device=device)
    fy, fx = fy.double(), fx.double()
    k2 = (n_medium / wavelength_um) ** 2 - (fy**2 + fx**2)
    return (2 * math.pi * torch.sqrt(k2.abs())).float(), k2 >= 0


def _check(wavelength_um, pixel_size_um, refractive_index_medium) -> None:
    check_range("wavelength_um", float(wavelength_um), 0, None, low_inclusive=False)
    check_range("pixel_size_um", float(pixel_size_um), 0, None, low_inclusive=False)
    check_range("refractive_index_medium", float(refractive_index_medium), 0, None, low_inclusive=False)


def _z_tensor(z_um, lead_dims: int, device) -> torch.Tensor:
    """z as a tensor broadcastable to ``[*lead, H, W]`` (left-aligned with the leading dimensions)."""
    z = torch.as_tensor(z_um, dtype=torch.float32, device=device)
    if z.dim() > lead_dims and lead_dims > 0:
        raise ValueError(
            f"z_um has shape {tuple(z.shape)} but the field has only {lead_dims} leading dimension(s); "
            "give one z per leading index (left-aligned), or a [Z] tensor with a single [H, W] field"
        )
    return z.reshape(*z.shape, *([1] * max(lead_dims - z.dim(), 0)), 1, 1)


def transfer_function(
    shape: tuple[int, int],
    z_um: float | torch.Tensor,
    wavelength_um: float,
    pixel_size_um: float,
    refractive_index_medium: float = 1.33,
    evanescent: str = "decay",
    device: torch.device | str | None = None,
    lead_dims: int = 0,
) -> torch.Tensor:
    """Angular-spectrum transfer function ``exp(i 2 pi kz z)`` on an ``(H, W)`` fftfreq grid.

    ``z_um`` (forward along the light) may be a tensor; it is left-aligned with ``lead_dims`` leading
    dimensions. Returns complex64 ``[*z_shape, H, W]``.
    """
    if evanescent not in ("decay", "drop"):
        raise ValueError(f"evanescent must be 'decay' or 'drop', got {evanescent!r}")
    _check(wavelength_um, pixel_size_um, refractive_index_medium)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    kz, prop = _kz_grid(
        (int(shape[0]), int(shape[1])),
        float(pixel_size_um),
        float(wavelength_um),
        float(refractive_index_medium),
        dev,
    )
    z = _z_tensor(z_um, lead_dims, dev)
    phase = torch.where(prop, kz * z, torch.zeros((), device=dev))
    if evanescent == "decay":
        amp = torch.where(prop, torch.ones((), device=dev), torch.exp(-kz * z.clamp(min=0)) * (z >= 0))
    else:
        amp = prop.to(torch.float32).expand_as(phase)
    return torch.polar(amp.expand_as(phase).contiguous(), phase)


def propagate(
    field: torch.Tensor,
    z_um: float | torch.Tensor,
    wavelength_um: float,
    pixel_size_um: float,
    refractive_index_medium: float = 1.33,
    evanescent: str = "decay",
    padding_px: int = 0,
) -> torch.Tensor:
    """Propagate a complex field ``[..., H, W]`` forward along the light by ``z_um`` micrometres.

    Parameters
    ----------
    field : Tensor [..., H, W]
        Complex (or real) scalar field in the sample plane.
    z_um : float or Tensor
        Propagation distance (um), forward along the light's direction of travel; negative goes back.
        A tensor gives one distance per leading index (left-aligned: ``[B]`` for a ``[B, C, H, W]``
        field); for a single ``[H, W]`` field a ``[Z]`` tensor returns the stack ``[Z, H, W]``.
    wavelength_um : float
        Vacuum wavelength (um).
    pixel_size_um : float
        Sample-plane pixel size (um).
    refractive_index_medium : float
        Refractive index of the medium the light travels through.
    evanescent : {"decay", "drop"}
        Handling of evanescent frequencies (see module docstring).
    padding_px : int
        Zero-padding on each side before the FFT (avoids wrap-around of fields leaving the frame); the
        result is cropped back to ``H x W``. 0 keeps the periodic FFT (exactly composable).

    Returns
    -------
    complex64 Tensor, same shape as ``field`` (or ``[Z, H, W]``).
    """
    if not field.is_complex():
        field = field.to(torch.complex64)
    field = field.to(torch.complex64)
    h, w = field.shape[-2:]
    p = int(padding_px)
    if p < 0:
        raise ValueError(f"padding_px must be >= 0, got {padding_px}")
    if p:
        field = torch.nn.functional.pad(field, (p, p, p, p))
    tf = transfer_function(
        field.shape[-2:],
        z_um,
        wavelength_um,
        pixel_size_um,
        refractive_index_medium,
        evanescent,
        field.device,
        lead_dims=field.dim() - 2,
    )
    out = torch.fft.ifft2(torch.fft.fft2(field) * tf)
    if p:
        out = out[..., p : p + h, p : p + w]
    return out


def _contrast(image: torch.Tensor, background) -> torch.Tensor:
    """Field contrast ``u = image / background - 1`` (complex) from a hologram or a complex field."""
    if image.is_complex():
        bg = image.mean(dim=(-2, -1), keepdim=True) if background is None else background
        return (image / bg - 1).to(torch.complex64)
    img = image.to(torch.float32)
    bg = img.mean(dim=(-2, -1), keepdim=True) if background is None else background
    return (img / bg - 1).to(torch.complex64)


def refocus(
    field_or_hologram: torch.Tensor,
    z_um: float | torch.Tensor,
    wavelength_um: float,
    pixel_size_um: float,
    refractive_index_medium: float = 1.33,
    background: float | torch.Tensor | None = None,
    padding_px: int | None = None,
    evanescent: str = "drop",
) -> torch.Tensor:
    """Numerically refocus a measured or simulated image to the plane at depth ``z_um``.

    Parameters
    ----------
    field_or_hologram : Tensor [..., H, W]
        A complex field (off-axis holography) or a real in-line hologram (intensity).
    z_um : float or Tensor
        Depth of the plane to refocus to, in the **scene convention**: micrometres from the focal plane,
        positive away from the objective. ``refocus(hologram, z_particle)`` brings a particle at depth
        ``z_particle`` into focus.
    wavelength_um, pixel_size_um, refractive_index_medium : float
        Vacuum wavelength, sample-plane pixel size, medium index.
    background : float or Tensor, optional
        Background (illumination) level; the mean of the image if omitted. The image is normalised by it,
        and the contrast ``image / background - 1`` is propagated with zero padding. For an in-line
        hologram this contrast is ``2 Re(E_s) + |E_s|^2``: the particle refocuses together with a
        defocused twin image (the usual in-line limitation).
    padding_px : int, optional
        Zero padding of the contrast on each side (default: half the image size).

    Returns
    -------
    complex64 Tensor: the normalised field ``1 + u(z)`` at the refocused plane (same shape, or
    ``[Z, H, W]`` for a single image and a ``[Z]`` tensor of depths).
    """
    u = _contrast(field_or_hologram, background)
    if padding_px is None:
        padding_px = max(u.shape[-2:]) // 2
    z = torch.as_tensor(z_um, dtype=torch.float32)
    return 1 + propagate(u, -z, wavelength_um, pixel_size_um, refractive_index_medium, evanescent, padding_px)


FOCUS_METRICS = ("concentration", "amplitude_variance", "gradient", "tamura")


def focus_metric(field: torch.Tensor, metric: str = "concentration") -> torch.Tensor:
    """Sharpness of refocused fields ``[..., H, W]`` (normalised, background 1) -> ``[...]``.

    - ``"concentration"`` (default): ``sum |u|^4 / (sum |u|^2)^2`` of the scattered field ``u = field - 1``,
      largest where the scattered light is most concentrated, i.e. in the particle's plane. Works for any
      scatterer (phase or amplitude) because ``sum |u|^2`` is conserved by propagation.
    - ``"amplitude_variance"``: variance of ``|field|`` (largest in focus for absorbing objects, smallest
      for pure phase objects).
    - ``"gradient"``: mean squared gradient of ``|field|``.
    - ``"tamura"``: ``sqrt(std / mean)`` of ``|field|`` (Tamura coefficient).
    """
    if metric == "concentration":
        u2 = (field - 1).abs() ** 2
        return (u2**2).sum(dim=(-2, -1)) / u2.sum(dim=(-2, -1)).clamp(min=1e-30) ** 2
    amp = field.abs() if field.is_complex() else field
    if metric == "amplitude_variance":
        return amp.var(dim=(-2, -1))
    if metric == "gradient":
        gy = amp[..., 1:, :] - amp[..., :-1, :]
        gx = amp[..., :, 1:] - amp[..., :, :-1]
        return (gy**2).mean(dim=(-2, -1)) + (gx**2).mean(dim=(-2, -1))
    if metric == "tamura":
        return torch.sqrt(amp.std(dim=(-2, -1)) / amp.mean(dim=(-2, -1)).clamp(min=1e-30))
    raise ValueError(f"metric must be one of {FOCUS_METRICS}, got {metric!r}")


def focus_scan(
    field_or_hologram: torch.Tensor,
    z_values_um: torch.Tensor | list[float],
    wavelength_um: float,
    pixel_size_um: float,
    refractive_index_medium: float = 1.33,
    metric: str = "concentration",
    background: float | torch.Tensor | None = None,
    padding_px: int | None = None,
) -> torch.Tensor:
    """Focus metric of one image ``[H, W]`` refocused to each depth in ``z_values_um`` -> ``[Z]``.

    The scan is batched (one FFT stack). The metric is evaluated on the padded plane so that light
    leaving the field of view does not bias it.
    """
    if field_or_hologram.dim() != 2:
        raise ValueError(f"focus_scan expects one [H, W] image, got shape {tuple(field_or_hologram.shape)}")
    u = _contrast(field_or_hologram, background)
    if padding_px is None:
        padding_px = max(u.shape[-2:]) // 2
    p = int(padding_px)
    u = torch.nn.functional.pad(u, (p, p, p, p))
    z = torch.as_tensor(z_values_um, dtype=torch.float32).reshape(-1)
    fields = 1 + propagate(u, -z, wavelength_um, pixel_size_um, refractive_index_medium, "drop", 0)
    return focus_metric(fields, metric)


def find_focus(
    field_or_hologram: torch.Tensor,
    z_values_um: torch.Tensor | list[float],
    wavelength_um: float,
    pixel_size_um: float,
    refractive_index_medium: float = 1.33,
    metric: str = "concentration",
    mode: str = "max",
    **kwargs,
) -> float:
    """Depth (um, scene convention) in ``z_values_um`` where ``metric`` is largest (``mode="max"``) or
    smallest (``"min"``). See :func:`focus_scan`."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    z = torch.as_tensor(z_values_um, dtype=torch.float32).reshape(-1)
    vals = focus_scan(
        field_or_hologram, z, wavelength_um, pixel_size_um, refractive_index_medium, metric, **kwargs
    )
    i = int(torch.argmax(vals) if mode == "max" else torch.argmin(vals))
    return float(z[i])


def fft_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3, 5 or 7 (fast FFT sizes)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1
