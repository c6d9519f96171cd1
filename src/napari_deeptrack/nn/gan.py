"""Pix2Pix conditional GAN (Isola et al. 2017) as in the DeepTrack 2.0 paper (section IV.7).

Generator: a U-Net whose encoder uses strided convolutions, two residual blocks at the bottleneck,
bilinear up-sampling followed by a convolution, two final 16-channel blocks and a ``tanh`` output
(images normalised to [-1, 1]). Every layer but the last has instance normalisation and LeakyReLU.
Discriminator: a PatchGAN that scores overlapping patches of (condition, image) pairs.
The adversarial + L1 objective lives in :mod:`napari_deeptrack.train.losses` (``Pix2PixLoss``).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import check_positive_int, pad_to_multiple
from .registry import register_model, store_config

__all__ = ["PatchDiscriminator", "Pix2Pix", "Pix2PixGenerator"]


def _conv(in_ch: int, out_ch: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    k = 4 if stride == 2 else 3
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=1),
        nn.InstanceNorm2d(out_ch) if norm else nn.Identity(),
        nn.LeakyReLU(0.2),
    )


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_conv(ch, ch), nn.Conv2d(ch, ch, 3, padding=1), nn.InstanceNorm2d(ch))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.act(x + self.body(x))


class Pix2PixGenerator(nn.Module):
    """U-Net generator with a residual bottleneck (see module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        depth: int,
        n_residual: int,
        max_channels: int,
    ):
        super().__init__()
        w = [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]
        self.depth = depth
        self.stem = nn.Sequential(_conv(in_channels, w[0]), _conv(w[0], w[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv(w[i], w[i + 1], stride=2), _conv(w[i + 1], w[i + 1])) for i in range(depth)
        )
        self.res = nn.Sequential(*[_Residual(w[depth]) for _ in range(n_residual)])
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(w[i + 1], w[i])
            )
            for i in reversed(range(depth))
        )
        self.up_blocks = nn.ModuleList(_conv(2 * w[i], w[i]) for i in reversed(range(depth)))
        self.final = nn.Sequential(_conv(w[0], 16), _conv(16, 16), nn.Conv2d(16, out_channels, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 2**self.depth)
        x = self.stem(x)
        skips = [x]
        for d in self.down:
            x = d(x)
            skips.append(x)
        x = self.res(x)
        skips.pop()
        for up, block in zip(self.up, self.up_blocks):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.final(x)[..., :h, :w]


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided convolutions with instance norm and LeakyReLU; one logit per patch."""

    def __init__(self, in_channels: int, base_channels: int, n_layers: int, max_channels: int):
        super().__init__()
        layers: list[nn.Module] = [_conv(in_channels, base_channels, stride=2, norm=False)]
        c = base_channels
        for i in range(1, n_layers):
            nc = min(base_channels * 2**i, max_channels)
            layers.append(_conv(c, nc, stride=2))
            c = nc
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], dim=1))


@register_model
class Pix2Pix(nn.Module):
    """Conditional GAN: ``forward(x)`` runs the generator; ``discriminator(x, y)`` scores pairs.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the condition (e.g. a semantic mask) and of the generated image.
    base_channels : int
        Generator width at full resolution (doubled per level up to ``max_channels``).
    depth : int
        Strided down-samplings in the generator.
    n_residual : int
        Residual blocks at the bottleneck (2 in the paper).
    disc_base_channels, disc_layers : int
        PatchGAN width and number of stride-2 layers.
    max_channels : int
        Upper limit on layer widths.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        depth: int = 3,
        n_residual: int = 2,
        disc_base_channels: int = 16,
        disc_layers: int = 3,
        max_channels: int = 1024,
    ):
        super().__init__()
        store_config(self, locals())
        for name in (
            "in_channels",
            "out_channels",
            "base_channels",
            "depth",
            "disc_base_channels",
            "disc_layers",
        ):
            check_positive_int(name, locals()[name])
        check_positive_int("n_residual", n_residual, 0)
        self.generator = Pix2PixGenerator(
            in_channels, out_channels, base_channels, depth, n_residual, max_channels
        )
        self.discriminator = PatchDiscriminator(
            in_channels + out_channels, disc_base_channels, disc_layers, max_channels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)
