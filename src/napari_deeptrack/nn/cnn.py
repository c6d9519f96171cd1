"""Convolutional network with a dense top, for single-object regression and classification."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, activation, check_positive_int
from .registry import register_model, store_config

__all__ = ["CNN"]


@register_model
class CNN(nn.Module):
    """Convolution blocks (each followed by 2x2 max pooling), then dense layers.

    After the last block the feature map is adaptively average-pooled to ``pool_to`` x ``pool_to``,
    so any input size works (a 32x32 crop with three blocks is already 4x4 there, and nothing is
    averaged); the spatial grid keeps the position information a localiser needs.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for intensity, 2 for a complex field as real/imaginary parts).
    out_features : int
        Outputs: regression values (e.g. 2 for a (y, x) offset) or class logits.
    channels : list of int
        Output channels of each convolution block.
    convs_per_block : int
        3x3 convolutions per block.
    dense : list of int
        Hidden dense layer widths.
    norm : str
        ``batch``, ``instance``, ``group`` or ``none``.
    activation : str
        Activation of every hidden layer.
    pool_to : int
        Side of the pooled feature map fed to the dense layers.
    dropout : float
        Dropout before each dense hidden layer, in [0, 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 2,
        channels: list[int] = (16, 32, 64),  # noqa: B006
        convs_per_block: int = 2,
        dense: list[int] = (64, 32),  # noqa: B006
        norm: str = "batch",
        activation: str = "relu",
        pool_to: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        store_config(self, locals())
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_features", out_features)
        check_positive_int("convs_per_block", convs_per_block)
        check_positive_int("pool_to", pool_to)
        if len(channels) == 0:
            raise ValueError("channels must list at least one block")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        blocks: list[nn.Module] = []
        c = in_channels
        for i, ch in enumerate(channels):
            check_positive_int(f"channels[{i}]", ch)
            blocks += [ConvBlock(c, ch, convs_per_block, norm, activation), nn.MaxPool2d(2, ceil_mode=True)]
            c = ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool_to)
        layers: list[nn.Module] = [nn.Flatten()]
        width = c * pool_to * pool_to
        act = activation
        for i, h in enumerate(dense):
            check_positive_int(f"dense[{i}]", h)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, h), _act(act)]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def _act(name: str) -> nn.Module:
    return activation(name)
