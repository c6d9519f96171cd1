"""Background, shot noise, camera and normalisation: what happens to an image after the optics.

The chain for a fluorescence camera, in order::

    [Background(level, gradient), Poisson(), ReadNoise(sigma), Camera(gain, offset), Normalize()]

- ``Background`` adds expected photons per pixel (constant plus a linear illumination gradient);
- ``Poisson`` draws the detected photo-electrons (shot noise; quantum efficiency folded into the
  photon numbers);
- ``ReadNoise`` adds Gaussian read noise in electrons;
- ``Camera`` converts electrons to ADU (``gain`` ADU per electron, plus ``offset``), optionally
  rounding and clipping to the bit depth;
- ``Normalize`` rescales each image and channel like :func:`normalize_images`, the same function that
  prepares real images for a network.

These transforms change ``SimBatch.image`` only, never the targets. Every per-image number they draw is
stored in ``scene.image_params``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .params import ParamLike, check_range, sample
from .pipeline import SimBatch, Transform
from .serialize import register

NORMALIZE_MODES = ("percentile", "minmax", "zscore", "robust", "none")


def _per_image(value: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor to broadcast over an image [B, ...]."""
    return value.reshape(-1, *([1] * (image.dim() - 1)))


@register
@dataclass
class Background(Transform):
    """Background light: a constant plus a linear gradient in a random direction (per image).

    Parameters
    ----------
    level : float or Distribution
        Mean background in expected photons per pixel (>= 0).
    gradient : float or Distribution
        Relative gradient in [0, 1]: the background goes from ``level * (1 - gradient)`` to
        ``level * (1 + gradient)`` across the image, along a direction drawn uniformly per image.

    Stores ``background_level``, ``background_gradient`` and ``background_angle_rad`` in
    ``scene.image_params``.
    """

    kind = "background"

    level: ParamLike = 10.0
    gradient: ParamLike = 0.0

    def __post_init__(self):
        check_range("level", self.level, 0.0, None)
        check_range("gradient", self.gradient, 0.0, 1.0)

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        img = batch.image
        b, (h, w) = img.shape[0], img.shape[-2:]
        dev = img.device
        level = sample(self.level, (b,), generator, device=dev)
        grad = sample(self.gradient, (b,), generator, device=dev)
        angle = 2 * math.pi * torch.rand(b, generator=generator, device=dev)
        p = batch.scene.image_params
        p["background_level"], p["background_gradient"], p["background_angle_rad"] = level, grad, angle
        y = torch.arange(h, device=dev, dtype=torch.float32) - (h - 1) / 2
        x = torch.arange(w, device=dev, dtype=torch.float32) - (w - 1) / 2
        c, s = torch.cos(angle), torch.sin(angle)
        half = ((w - 1) / 2 * c.abs() + (h - 1) / 2 * s.abs()).clamp(min=1e-6)  # |u| <= 1 in the image
        # level * (1 + grad * (x cos + y sin) / half), as a row term plus a column term (separable)
        slope = level * grad / half
        rows = level[:, None] + (slope * s)[:, None] * y  # [B, H]
        cols = (slope * c)[:, None] * x  # [B, W]
        lead = [1] * (img.dim() - 3)
        out = img + rows.reshape(b, *lead, h, 1)
        batch.image = out.add_(cols.reshape(b, *lead, 1, w))
        return batch


@register
@dataclass
class Poisson(Transform):
    """Shot noise: replaces expected photons by Poisson-distributed counts (photo-electrons)."""

    kind = "noise"

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        batch.image = torch.poisson(batch.image.clamp(min=0.0), generator=generator)
        return batch


@register
@dataclass
class ReadNoise(Transform):
    """Gaussian camera read noise.

    Parameters
    ----------
    sigma : float or Distribution
        Read noise in electrons rms (>= 0), drawn per image; stored as ``read_noise_e``.
    """

    kind = "noise"

    sigma: ParamLike = 1.5

    def __post_init__(self):
        check_range("sigma", self.sigma, 0.0, None)

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        img = batch.image
        sigma = sample(self.sigma, (img.shape[0],), generator, device=img.device)
        batch.scene.image_params["read_noise_e"] = sigma
        noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
        batch.image = img + _per_image(sigma, img) * noise
        return batch


@register
@dataclass
class Camera(Transform):
    """Analog-to-digital conversion: ``ADU = gain * electrons + offset``.

    Parameters
    ----------
    gain : float or Distribution
        ADU per electron (> 0); stored as ``camera_gain``.
    offset : float or Distribution
        Baseline in ADU (>= 0); stored as ``camera_offset``.
    bit_depth : int, optional
        If given, round to integers and clip to ``[0, 2**bit_depth - 1]``.
    """

    kind = "camera"

    gain: ParamLike = 1.0
    offset: ParamLike = 100.0
    bit_depth: int | None = None

    def __post_init__(self):
        check_range("gain", self.gain, 0.0, None, low_inclusive=False)
        check_range("offset", self.offset, 0.0, None)
        if self.bit_depth is not None:
            check_range("bit_depth", self.bit_depth, 1, 32)

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        img = batch.image
        gain = sample(self.gain, (img.shape[0],), generator, device=img.device)
        offset = sample(self.offset, (img.shape[0],), generator, device=img.device)
        batch.scene.image_params["camera_gain"], batch.scene.image_params["camera_offset"] = gain, offset
        out = img * _per_image(gain, img) + _per_image(offset, img)
        if self.bit_depth is not None:
            out = torch.round(out).clamp(0, 2 ** int(self.bit_depth) - 1)
        batch.image = out
        return batch


def _quantile_last(x: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolated quantile (numpy's default) along the last dim, keepdim. ``q`` in [0, 1]."""
    n = x.shape[-1]
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    frac = pos - lo
    v_lo = torch.kthvalue(x, lo + 1, dim=-1, keepdim=True).values
    if frac == 0 or lo + 1 >= n:
        return v_lo
    v_hi = torch.kthvalue(x, lo + 2, dim=-1, keepdim=True).values
    return v_lo + frac * (v_hi - v_lo)


def normalize_images(
    image,
    mode: str = "percentile",
    low: float = 1.0,
    high: float = 99.8,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Rescale each image and channel independently (over its last two dims, H and W).

    Used identically for simulated training images and real images, so a network sees the same
    numbers in both.

    Parameters
    ----------
    image : Tensor or array, [..., H, W] (typically [B, C, H, W])
    mode : {"percentile", "minmax", "zscore", "robust", "none"}
        ``percentile``: the ``low`` and ``high`` percentiles go to 0 and 1; ``minmax``: min and max
        go to 0 and 1; ``zscore``: zero mean and unit standard deviation; ``robust``: the median
        (the background, for sparse objects) goes to 0 and the noise standard deviation estimated
        from the median absolute deviation (``1.4826 * MAD``) to 1, so the result does not depend on
        how many or how bright the objects are (a particle's peak reads as its signal-to-noise
        ratio); ``none``: unchanged.
    low, high : float
        Percentiles for ``percentile`` mode, ``0 <= low < high <= 100``.
    eps : float
        Floor of the denominator, so constant images do not divide by zero.

    Returns
    -------
    Tensor float32 of the same shape.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"mode must be one of {NORMALIZE_MODES}, got {mode!r}")
    x = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    if x.dim() < 2:
        raise ValueError(f"image must have at least 2 dimensions (H, W), got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    if mode == "none":
        return x
    shape = x.shape
    flat = x.reshape(-1, shape[-2] * shape[-1])
    if mode == "percentile":
        check_range("low", low, 0.0, 100.0)
        check_range("high", high, 0.0, 100.0)
        if not low < high:
            raise ValueError(f"low ({low}) must be < high ({high})")
        lo, hi = _quantile_last(flat, low / 100), _quantile_last(flat, high / 100)
        out = (flat - lo) / (hi - lo).clamp(min=eps)
    elif mode == "minmax":
        lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        out = (flat - lo) / (hi - lo).clamp(min=eps)
    elif mode == "robust":
        # robust z-score (added for the particles-2d preset): median / MAD are insensitive to sparse
        # bright objects; with integer counts the MAD can be 0 (very low background), then the mean
        # absolute deviation from the median (x 1.2533, also sigma for Gaussian noise) is used.
        med = flat.median(-1, keepdim=True).values
        dev = (flat - med).abs()
        sigma = 1.4826 * dev.median(-1, keepdim=True).values
        sigma = torch.where(sigma > 0, sigma, 1.2533 * dev.mean(-1, keepdim=True))
        out = (flat - med) / sigma.clamp(min=eps)
    else:
        mean = flat.mean(-1, keepdim=True)
        std = flat.std(-1, keepdim=True, unbiased=False) if flat.shape[-1] > 1 else torch.zeros_like(mean)
        out = (flat - mean) / std.clamp(min=eps)
    return out.reshape(shape)



def normalize_input(images: torch.Tensor, spec: dict | None) -> torch.Tensor:
    """Normalise network input ``[B, C, H, W]`` as a task's ``input_normalization`` says.

    ``spec`` holds :func:`normalize_images` keyword arguments (``mode``, ``low``, ``high``); ``None``,
    ``{}`` or ``{"mode": "none"}`` leave the images unchanged. The one normaliser used for simulated
    training batches and for real images at prediction.
    """
    spec = dict(spec or {})
    if not spec or spec.get("mode", "percentile") == "none":
        return images
    return normalize_images(images, **spec)

@register
@dataclass
class Normalize(Transform):
    """Rescale each image and channel with :func:`normalize_images` (same parameters)."""

    kind = "normalization"

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self):
        if self.mode not in NORMALIZE_MODES:
            raise ValueError(f"mode must be one of {NORMALIZE_MODES}, got {self.mode!r}")
        if self.mode == "percentile":
            check_range("low", self.low, 0.0, 100.0)
            check_range("high", self.high, 0.0, 100.0)
            if not self.low < self.high:
                raise ValueError(f"low ({self.low}) must be < high ({self.high})")

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        batch.image = normalize_images(batch.image, self.mode, self.low, self.high)
        return batch


@register
@dataclass
class IlluminationPhotons(Transform):
    """Scale a coherent image (1 = the illumination) to photons: ``N`` photons per pixel of illumination.

    Parameters
    ----------
    photons_per_px : float or Distribution
        Detected illumination photons per camera pixel (> 0), drawn per image and stored as
        ``illumination_photons`` in ``scene.image_params``. Follow it with ``Poisson()``.
    """

    kind = "signal"

    photons_per_px: ParamLike = 100.0

    def __post_init__(self):
        check_range("photons_per_px", self.photons_per_px, 0.0, None, low_inclusive=False)

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        img = batch.image
        n = sample(self.photons_per_px, (img.shape[0],), generator, device=img.device)
        batch.scene.image_params["illumination_photons"] = n
        batch.image = img * n.reshape(-1, *([1] * (img.dim() - 1)))
        return batch


@register
@dataclass
class NormalizeWithTarget(Transform):
    """Percentile-normalise the image and divide a target by the same per-image factor.

    ``image -> (image - p_low) / (p_high - p_low)`` per image and channel, exactly
    :func:`~napari_deeptrack.sim.normalize_images` (so the same as the task's input normalisation at
    inference), and ``target -> target / (p_high - p_low)``: a noise-free, background-free target in
    photons ends up in the units of the normalised input. Put it last in the transforms.

    Parameters
    ----------
    target : str
        Key of the pipeline target to rescale.
    low, high : float
        Percentiles (``0 <= low < high <= 100``), as for ``normalize_images``.
    """

    kind = "normalization"

    target: str = "clean"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self):
        check_range("low", self.low, 0.0, 100.0)
        check_range("high", self.high, 0.0, 100.0)
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        if self.target not in batch.targets:
            raise ValueError(
                f"NormalizeWithTarget: no target {self.target!r}; targets: {sorted(batch.targets)}"
            )
        x = batch.image.float()
        xn = normalize_images(x, "percentile", self.low, self.high)
        # normalize_images is affine per image and channel: its factor is the ratio of the spreads
        sd_x, sd_n = x.std(dim=(-2, -1), keepdim=True), xn.std(dim=(-2, -1), keepdim=True)
        scale = torch.where(sd_n > 0, sd_x / sd_n.clamp_min(1e-30), torch.full_like(sd_x, 1e-6))
        y = batch.targets[self.target]
        batch.image = xn
        if y.dim() != scale.dim() or y.shape[1] not in (1, scale.shape[1]):
            raise ValueError(
                f"NormalizeWithTarget: target {self.target!r} of shape {tuple(y.shape)} does not match "
                f"the image {tuple(x.shape)} ([B, C, H, W] with 1 or C channels)"
            )
        batch.targets[self.target] = y / scale
        return batch


__all__ = [
    "Background",
    "normalize_input",
    "IlluminationPhotons",
    "NormalizeWithTarget",
    "Camera",
    "NORMALIZE_MODES",
    "Normalize",
    "Poisson",
    "ReadNoise",
    "normalize_images",
]
