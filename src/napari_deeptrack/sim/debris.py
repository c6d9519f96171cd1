"""Unlabelled faint specks (debris, out-of-focus fluorescence) added to an image: negatives for a network.

Real fluorescence images of stained nuclei (BBBC039) hold small faint blobs that are not nuclei: on
the 10 ``bbbc039_dev`` images a U-Net trained on clean simulated nuclei labelled ~15 of them per
image as nuclei (median 6 px, 25 grey values above a 160 background; real nuclei are 200-850 above it).
:class:`Debris` draws such specks into the image only (no target sees them), so that the network learns
that faint small blobs are background.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .params import IntUniform, LogUniform, ParamLike, Uniform, check_range, sample, support
from .pipeline import SimBatch, Transform
from .serialize import register

__all__ = ["Debris"]


@register
@dataclass
class Debris(Transform):
    """Faint Gaussian specks at random places, in the image only (targets are untouched).

    The peak of each speck is ``contrast`` times the image's median (its background), so the same
    transform works before a camera (photons) or after it (grey values): placed after the noise model
    it adds noise-free specks on top of a noisy background.

    Parameters
    ----------
    count : int or IntUniform
        Specks per image (at most :attr:`MAX_COUNT`).
    sigma_px : float or Distribution
        Gaussian width of a speck in pixels.
    contrast : float or Distribution
        Peak height relative to the image median (0.05-0.5 for BBBC039's debris).

    Stores ``debris_count`` in ``scene.image_params``.
    """

    kind = "other"
    MAX_COUNT = 64

    count: ParamLike = field(default_factory=lambda: IntUniform(0, 6))
    sigma_px: ParamLike = field(default_factory=lambda: Uniform(0.8, 3.0))
    contrast: ParamLike = field(default_factory=lambda: LogUniform(0.05, 0.5))

    def __post_init__(self):
        check_range("count", self.count, 0, self.MAX_COUNT)
        check_range("sigma_px", self.sigma_px, 0.0, None, low_inclusive=False)
        check_range("contrast", self.contrast, 0.0, None)

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        img = batch.image
        b, (h, w) = img.shape[0], img.shape[-2:]
        dev = img.device
        n_max = max(int(support(self.count)[1]), 0)
        count = sample(self.count, (b,), generator, device=dev).long()
        batch.scene.image_params["debris_count"] = count
        if n_max == 0:
            return batch
        y = torch.rand(b, n_max, generator=generator, device=dev) * (h - 1)
        x = torch.rand(b, n_max, generator=generator, device=dev) * (w - 1)
        sig = sample(self.sigma_px, (b, n_max), generator, device=dev)
        amp = sample(self.contrast, (b, n_max), generator, device=dev)
        amp = amp * (torch.arange(n_max, device=dev)[None] < count[:, None])
        bg = img.reshape(b, -1).float().median(dim=1).values  # [B]
        amp = amp * bg[:, None]
        # separable Gaussians: [B, N, H] x [B, N, W] summed over the specks
        gy = torch.exp(
            -0.5 * ((torch.arange(h, device=dev)[None, None] - y[..., None]) / sig[..., None]) ** 2
        )
        gx = torch.exp(
            -0.5 * ((torch.arange(w, device=dev)[None, None] - x[..., None]) / sig[..., None]) ** 2
        )
        specks = torch.einsum("bn,bnh,bnw->bhw", amp, gy, gx)
        lead = [1] * (img.dim() - 3)
        batch.image = img + specks.reshape(b, *lead, h, w).to(img.dtype)
        return batch
