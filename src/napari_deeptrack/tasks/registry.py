"""Task presets by name: ``get_preset("particles-2d")`` returns a fresh :class:`~.base.Task`.

Preset modules are the files ``tasks/presets_*.py``; each registers factories with
:func:`register_preset`. They are discovered automatically, so adding a preset never means editing
this file.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path

from .base import Task

__all__ = ["get_preset", "list_presets", "load_task", "register_preset"]

_PRESETS: dict[str, Callable[[], Task]] = {}
_BROKEN: dict[str, str] = {}  # preset module -> import error (reported, never hidden)
_loaded = False


def register_preset(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator: register a zero-argument factory returning a :class:`Task` under ``name``."""

    def deco(factory: Callable[[], Task]) -> Callable[[], Task]:
        if name in _PRESETS and _PRESETS[name] is not factory:
            raise ValueError(f"two presets named {name!r}")
        _PRESETS[name] = factory
        return factory

    return deco


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import __path__ as pkg_path

    for info in pkgutil.iter_modules(pkg_path):
        if info.name.startswith("presets_"):
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except ImportError as exc:  # one broken preset module must not hide the others
                _BROKEN[info.name] = f"{type(exc).__name__}: {exc}"


def list_presets() -> list[str]:
    """Names of all task presets."""
    _load()
    return sorted(_PRESETS)


def get_preset(name: str) -> Task:
    """A fresh :class:`Task` for preset ``name`` (see :func:`list_presets`)."""
    _load()
    if name not in _PRESETS:
        broken = f" (preset modules that failed to import: {_BROKEN})" if _BROKEN else ""
        raise ValueError(f"unknown preset {name!r}; available presets: {sorted(_PRESETS)}{broken}")
    task = _PRESETS[name]()
    if not isinstance(task, Task):  # pragma: no cover - programming error in a preset module
        raise TypeError(f"preset {name!r} did not return a Task")
    return task


def load_task(spec: str | Path) -> Task:
    """A task from a preset name, a task JSON file (``presets NAME > task.json``), or a bundle.

    Raises
    ------
    ValueError
        ``spec`` is none of these (the message lists the presets).
    """
    from ..sim.serialize import from_dict

    spec_s = str(spec)
    if spec_s in list_presets():
        return get_preset(spec_s)
    path = Path(spec_s)
    if not path.exists():
        raise ValueError(f"{spec_s!r} is neither a preset ({list_presets()}) nor an existing file")
    if path.is_dir() or path.suffix.lower() == ".zip":
        from ..io.bundle import read_bundle_config

        data = read_bundle_config(path)["task"]
    else:
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a JSON task file: {exc}") from None
        if isinstance(data, dict) and data.get("format") == "napari-deeptrack-bundle":
            data = data["task"]
    task = from_dict(data)
    if not isinstance(task, Task):
        raise ValueError(f"{path} does not describe a Task (got {type(task).__name__})")
    return task
