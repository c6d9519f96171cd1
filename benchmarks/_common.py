"""Helpers shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def cached_or_trained_bundle(
    path: Path,
    task,
    *,
    retrain: bool,
    max_minutes: float,
    emit: Callable[[dict], None],
    extra: Callable[[dict], dict] | None = None,
    **train_kwargs,
):
    """Load the bundle cached at ``path``, or train ``task`` there within ``max_minutes`` and load it.

    The time budget is the trainer's ``max_seconds``: when the requested epochs do not fit, the run
    is shortened and its learning-rate schedule compressed (not cut off half-way). Emits a
    ``{"case": "model", ...}`` record either way; ``extra(history)`` adds fields to it.
    """
    from napari_deeptrack.io.bundle import load_bundle
    from napari_deeptrack.train import train_task

    path = Path(path)
    if path.exists() and not retrain:
        emit({"case": "model", "source": "cache", "bundle": str(path)})
        return load_bundle(path)
    t0 = time.perf_counter()
    res = train_task(task, path, max_seconds=60.0 * max_minutes, **train_kwargs)
    h = res.history
    emit(
        {
            "case": "model",
            "source": "trained",
            "bundle": str(path),
            "train_s": round(time.perf_counter() - t0, 1),
            "epochs_run": len(h["epoch"]),
            "stopped_because": h.get("reason"),
            "val_loss": h["val_loss"][-1],
            **(extra(h) if extra else {}),
        }
    )
    return load_bundle(path)
