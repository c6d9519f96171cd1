"""Model registry: every model is rebuilt from a JSON-able config ``{"type": name, **kwargs}``.

:func:`build_model` is the only way the rest of the package makes a network, so a saved bundle can
always be rebuilt from its ``config.json``. A model class joins the registry with
:func:`register_model`; its constructor keyword arguments are its config, and it keeps them in
``self.config`` (see :func:`model_config`). A user's own ``torch.nn.Module`` may replace any of these
models everywhere (training, bundles via ``load_bundle(..., model=...)``).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch

from ..errors import MemoryBudgetError
from .memory import ENV_CAP, check_config_sizes, format_bytes, memory_budget

#: hyper-parameters that make a model wide (named in a refusal, most effective first)
_WIDEST = ("base_channels", "channels", "max_channels", "depth", "dense", "hidden")
__all__ = [
    "MODELS",
    "build_model",
    "count_parameters",
    "list_models",
    "model_config",
    "register_model",
    "store_config",
]

MODELS: dict[str, type[torch.nn.Module]] = {}


def register_model(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    """Class decorator: make ``cls`` buildable by :func:`build_model` under its class name."""
    name = cls.__name__
    if name in MODELS and MODELS[name] is not cls:
        raise TypeError(f"two models named {name!r}: {MODELS[name]} and {cls}")
    MODELS[name] = cls
    return cls


def list_models() -> list[str]:
    """Names accepted as ``config["type"]``."""
    return sorted(MODELS)


def _valid_kwargs(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {k: p for k, p in params.items() if k != "self" and p.kind in kinds}


def _class_and_kwargs(config: dict[str, Any]) -> tuple[type[torch.nn.Module], dict[str, Any]]:
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(
            f"model config must be a dict with a 'type' key (one of {list_models()}), got {config!r}"
        )
    name = config["type"]
    cls = MODELS.get(name)
    if cls is None:
        raise ValueError(f"unknown model type {name!r}; valid types: {list_models()}")
    kwargs = {k: copy.deepcopy(v) for k, v in config.items() if k != "type"}
    valid = _valid_kwargs(cls)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; valid parameters: {sorted(valid)}")
    check_config_sizes(config)
    return cls, kwargs


def count_parameters(config: dict[str, Any]) -> int:
    """Number of parameters of the model ``config`` describes, counted on *meta* tensors (no allocation)."""
    cls, kwargs = _class_and_kwargs(config)
    with torch.device("meta"):
        model = cls(**kwargs)
    return int(sum(p.numel() for p in model.parameters()))


def build_model(config: dict[str, Any], *, check_memory: bool = True) -> torch.nn.Module:
    """Build a model from ``{"type": "UNet", "in_channels": 1, ...}``.

    Before allocating, the parameters are counted on meta tensors (milliseconds) and a model whose
    float32 weights exceed :func:`~napari_deeptrack.nn.memory.memory_budget` is refused.

    Parameters
    ----------
    config : dict
        ``type`` is one of :func:`list_models`; the other keys are the model's keyword arguments.
    check_memory : bool
        Count the parameters first and refuse a model that would not fit (default).

    Raises
    ------
    ValueError
        Unknown type or unknown / invalid keyword arguments (the message lists the valid ones);
        :class:`~napari_deeptrack.errors.ConfigError` for loop-making sizes (``depth: 100``);
        :class:`~napari_deeptrack.errors.MemoryBudgetError` when the weights would not fit.
    """
    cls, kwargs = _class_and_kwargs(config)
    if check_memory and torch.empty(0).device.type != "meta":
        n = count_parameters(config)
        need, budget = 4 * n, memory_budget()
        if need > budget:
            widest = [f"`{k}` ({config[k]})" for k in _WIDEST if k in config]
            raise MemoryBudgetError(
                f"{config['type']}: the model's {n:,} parameters would need {format_bytes(need)} "
                f"(> {format_bytes(budget)} budget): lower {' or '.join(widest) or 'its sizes'} "
                f"(or raise the budget with {ENV_CAP}=<GB>)",
                parameter=widest[0].split("`")[1] if widest else None,
                need_bytes=need,
                budget_bytes=budget,
            )
    return cls(**kwargs)


def model_config(model: torch.nn.Module) -> dict[str, Any] | None:
    """The config that rebuilds ``model`` with :func:`build_model`, or None for a user's own module."""
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and MODELS.get(cfg.get("type")) is type(model):
        return copy.deepcopy(cfg)
    return None


def store_config(model: torch.nn.Module, local_vars: dict[str, Any]) -> None:
    """Record the constructor arguments of ``model`` (call first thing in ``__init__`` with ``locals()``)."""
    cls = type(model)
    valid = _valid_kwargs(cls)
    cfg: dict[str, Any] = {"type": cls.__name__}
    for k in valid:
        v = local_vars[k]
        cfg[k] = list(v) if isinstance(v, tuple) else copy.deepcopy(v)
    model.config = cfg
