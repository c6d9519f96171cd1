"""U-Net and encoder-decoder for image-to-image tasks (masks, density maps, z-binned volumes).

Both accept any input size: the input is padded (reflecting) up to a multiple of ``2**depth`` and
the output is cropped back, so an H x W image gives an H x W output.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, activation, check_positive_int, pad_to_multiple
from .registry import register_model, store_config

__all__ = ["EncoderDecoder", "UNet"]


class _Up(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(in_ch, out_ch, 1)
            )
        else:
            raise ValueError(f"upsampling must be 'transpose' or 'bilinear', got {mode!r}")

    def forward(self, x):
        return self.up(x)


def _widths(base_channels: int, depth: int, channel_multiplier: float, max_channels: int) -> list[int]:
    return [min(int(round(base_channels * channel_multiplier**i)), max_channels) for i in range(depth + 1)]


def _check(in_channels, out_channels, depth, base_channels, convs_per_block, channel_multiplier):
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("depth", depth, 0)
    check_positive_int("base_channels", base_channels)
    check_positive_int("convs_per_block", convs_per_block)
    if not float(channel_multiplier) >= 1.0:
        raise ValueError(f"channel_multiplier must be >= 1, got {channel_multiplier}")


@register_model
class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with configurable depth and widths.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels; output channels (1 for a mask, ``n_bins`` for a z-binned volume, K for classes).
    depth : int
        Number of 2x down-samplings (0 gives a plain convolution stack).
    base_channels : int
        Channels at full resolution; multiplied by ``channel_multiplier`` at each level.
    channel_multiplier : float
        Width growth per level (2 in the original U-Net).
    max_channels : int
        Upper limit on the width of any level.
    convs_per_block : int
        3x3 convolutions per block.
    norm, activation : str
        Normalisation (``batch``, ``instance``, ``group``, ``none``) and activation of hidden layers.
    upsampling : str
        ``transpose`` (learned 2x2 transposed convolution) or ``bilinear`` (+ 1x1 convolution).
    output_activation : str
        Applied to the output; ``none`` (logits) when training with BCE-with-logits or CE.
    """

    skip_connections = True

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 3,
        base_channels: int = 16,
        channel_multiplier: float = 2.0,
        max_channels: int = 512,
        convs_per_block: int = 2,
        norm: str = "batch",
        activation: str = "relu",
        upsampling: str = "transpose",
        output_activation: str = "none",
    ):
        super().__init__()
        store_config(self, locals())
        _check(in_channels, out_channels, depth, base_channels, convs_per_block, channel_multiplier)
        w = _widths(base_channels, depth, channel_multiplier, max_channels)
        self.depth = depth
        self.down = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            self.down.append(ConvBlock(c, w[i], convs_per_block, norm, activation))
            c = w[i]
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(c, w[depth], convs_per_block, norm, activation)
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(_Up(w[i + 1], w[i], upsampling))
            cin = 2 * w[i] if self.skip_connections else w[i]
            self.up_blocks.append(ConvBlock(cin, w[i], convs_per_block, norm, activation))
        self.head = nn.Conv2d(w[0], out_channels, 1)
        self.out_act = _act(output_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 2**self.depth)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = up(x)
            x = block(torch.cat([x, skip], dim=1) if self.skip_connections else x)
        return self.out_act(self.head(x))[..., :h, :w]


@register_model
class EncoderDecoder(UNet):
    """Encoder-decoder: the U-Net without skip connections (all information passes the bottleneck).

    Same parameters as :class:`UNet`.
    """

    skip_connections = False


def _act(name: str) -> nn.Module:
    return activation(name)
