"""How much memory one step (a simulation batch, a model, a training step, an apply chunk) may use.

The home of the memory budget shared by every layer (:mod:`napari_deeptrack.sim.budget` holds the
estimates and re-exports these): :func:`memory_budget` is ``min(cap, fraction * available RAM)`` with a
4 GB cap that ``NAPARI_DEEPTRACK_MEMORY_GB`` replaces. It lives in ``nn``, the bottom layer, so that
:func:`~napari_deeptrack.nn.registry.build_model` can refuse a model whose weights would not fit.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..errors import ConfigError

__all__ = [
    "ENV_CAP",
    "GB",
    "available_memory_bytes",
    "check_config_sizes",
    "format_bytes",
    "memory_budget",
]

GB = 1024**3
DEFAULT_CAP_GB = 4.0
DEFAULT_FRACTION = 0.5
ENV_CAP = "NAPARI_DEEPTRACK_MEMORY_GB"
#: Model hyper-parameters that make a loop (levels, layers, blocks): larger values are refused outright.
MAX_DEPTH = 16
#: Longest list in a model config (e.g. ``channels``).
MAX_LIST = 1024


def available_memory_bytes() -> int:
    """RAM available to this process now (bytes): the smaller of free RAM and a cgroup limit."""
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing: read /proc
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    if avail is None:
        avail = 8 * GB  # unknown platform: assume a small machine
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                raw = fh.read().strip()
            if raw.isdigit() and int(raw) < 1 << 60:
                avail = min(avail, int(raw))
        except OSError:
            continue
    return avail


def memory_budget(cap_gb: float | None = None, fraction: float = DEFAULT_FRACTION) -> int:
    """Bytes one simulation / training / apply step may use: ``min(cap, fraction * available)``.

    ``cap_gb`` defaults to ``$NAPARI_DEEPTRACK_MEMORY_GB`` or 4 GB.
    """
    if cap_gb is None:
        env = os.environ.get(ENV_CAP)
        try:
            cap_gb = float(env) if env else DEFAULT_CAP_GB
        except ValueError:
            cap_gb = DEFAULT_CAP_GB
        if not cap_gb > 0 or not math.isfinite(cap_gb):
            cap_gb = DEFAULT_CAP_GB
    return int(max(min(cap_gb * GB, fraction * available_memory_bytes()), 64 * 1024**2))


def format_bytes(n: float) -> str:
    """``1.5 GB``, ``320 MB``, ``12 kB`` (powers of 1024)."""
    n = float(n)
    for unit, size in (("TB", 1024**4), ("GB", GB), ("MB", 1024**2), ("kB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_config_sizes(config: dict[str, Any]) -> None:
    """Refuse loop-making hyper-parameters and lists that no real network has (before building)."""
    name = config.get("type", "model")
    for key, value in config.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and not math.isfinite(float(value)):
            raise ConfigError(f"{name}: `{key}` must be finite, got {value}", parameter=key)
        loopy = key in ("depth", "n_blocks", "n_layers", "num_layers") or key.endswith(("_layers", "_blocks"))
        if loopy and isinstance(value, int | float) and value > MAX_DEPTH:
            raise ConfigError(
                f"{name}: `{key}` = {value:g} is far beyond any useful network (at most {MAX_DEPTH}); "
                "typical values are 2-6",
                parameter=key,
            )
        if isinstance(value, list | tuple) and len(value) > MAX_LIST:
            raise ConfigError(
                f"{name}: `{key}` lists {len(value)} entries (at most {MAX_LIST})", parameter=key
            )
