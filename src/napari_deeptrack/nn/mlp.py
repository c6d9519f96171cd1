"""Dense network (the paper's DNN): flatten, hidden layers, linear output."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import activation, check_positive_int
from .registry import register_model, store_config

__all__ = ["MLP"]


@register_model
class MLP(nn.Module):
    """Fully connected network on flattened inputs.

    Parameters
    ----------
    in_features : int
        Number of input values per sample (C*H*W for images; inputs are flattened).
    out_features : int
        Number of outputs (regression values or class logits).
    hidden : list of int
        Width of each hidden layer.
    activation : str
        Hidden activation (``relu``, ``leaky_relu``, ``gelu``, ``elu``, ``tanh``...).
    dropout : float
        Dropout probability after each hidden layer, in [0, 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        hidden: list[int] = (256, 128),  # noqa: B006 - tuple default, stored as list
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        store_config(self, locals())
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        act = activation
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, h in enumerate(hidden):
            check_positive_int(f"hidden[{i}]", h)
            layers += [nn.Linear(width, h), _act(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x[0].numel()
        if n != self.in_features:
            raise ValueError(
                f"MLP expects {self.in_features} input values per sample, got {n} (shape {tuple(x.shape)})"
            )
        return self.net(x)


def _act(name: str) -> nn.Module:
    return activation(name)
