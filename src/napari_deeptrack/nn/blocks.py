"""Small building blocks shared by the models: activations, normalisation, convolution blocks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "ConvBlock",
    "activation",
    "check_positive_int",
    "norm2d",
    "pad_to_multiple",
]

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "elu", "tanh", "sigmoid", "none")
NORMS = ("batch", "instance", "group", "none")


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "gelu":
        return nn.GELU()
    if name == "elu":
        return nn.ELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def norm2d(name: str, channels: int) -> nn.Module:
    """A 2D normalisation layer by name (one of :data:`NORMS`)."""
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if name == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {name!r}")


def check_positive_int(name: str, value, low: int = 1) -> int:
    """Return ``int(value)`` or raise a ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class ConvBlock(nn.Sequential):
    """``n_convs`` x (3x3 convolution, normalisation, activation), keeping the spatial size."""

    def __init__(self, in_ch: int, out_ch: int, n_convs: int = 2, norm: str = "batch", act: str = "relu"):
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                nn.Conv2d(
                    in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=norm in ("none", "instance")
                ),
                norm2d(norm, out_ch),
                activation(act),
            ]
        super().__init__(*layers)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (bottom / right, reflecting) up to a multiple; return the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
