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

    Emits a ``{"case": "model", ...}`` record either way; ``extra(history)`` adds fields to it.
    """
    from napari_deeptrack.io.bundle import load_bundle
    from napari_deeptrack.train import StopFlag, train_task

    path = Path(path)
    if path.exists() and not retrain:
        emit({"case": "model", "source": "cache", "bundle": str(path)})
        return load_bundle(path)
    stop, t0 = StopFlag(), time.perf_counter()

    def deadline(ev):
        if time.perf_counter() - t0 > 60 * max_minutes:
            stop.stop()

    res = train_task(task, path, callbacks=[deadline], stop_flag=stop, **train_kwargs)
    h = res.history
    emit(
        {
            "case": "model",
            "source": "trained",
            "bundle": str(path),
            "train_s": round(time.perf_counter() - t0, 1),
            "epochs_run": len(h["epoch"]),
            "val_loss": h["val_loss"][-1],
            **(extra(h) if extra else {}),
        }
    )
    return load_bundle(path)
