"""Heavy numerical work of the widgets, run in a helper *process* (no Qt, no napari here).

A worker thread keeps napari's event loop free only while it does not hold Python's GIL. NumPy and torch
release it in their big loops, but ``scipy.ndimage`` filters over a whole 424 x 640 stack hold it for up
to ~0.1 s each: Match to layer in a thread stalled the event loop up to 135 ms (issue 11). Here the
calibration (and the preview's simulation and sim-vs-real distance) run in one long-lived helper process
started on first use (``spawn``: safe next to Qt and torch threads); the widget's worker thread only
waits for the answer, which releases the GIL. When no process can be started (a frozen app, a sandbox),
the same functions run in the calling thread.

Everything here is picklable and imports only the headless core.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import sys
import threading
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

__all__ = ["apply_estimates", "in_helper_process", "match_layer", "shutdown", "simulate_preview", "start"]

_POOL: ProcessPoolExecutor | None = None
_LOCK = threading.Lock()
#: set NAPARI_DEEPTRACK_NO_HELPER_PROCESS=1 to run everything in the widgets' worker threads
ENV_NO_PROCESS = "NAPARI_DEEPTRACK_NO_HELPER_PROCESS"


def _init_child() -> None:
    try:  # the helper yields the CPU to napari's own process (the viewer stays smooth on 2 cores)
        os.nice(5)
    except (AttributeError, OSError):
        pass
    try:
        import torch

        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) - 1)))
    except Exception:  # noqa: BLE001 - a slower child is still a working child
        pass


def _pool() -> ProcessPoolExecutor | None:
    global _POOL
    if os.environ.get(ENV_NO_PROCESS):
        return None
    with _LOCK:
        if _POOL is None:
            try:
                _POOL = _start_pool()
            except (OSError, ValueError, NotImplementedError, RuntimeError):
                return None
        return _POOL


def _start_pool() -> ProcessPoolExecutor:
    """A one-process pool, its process started now *without* the user's ``__main__``.

    ``spawn`` runs the parent's main script again in the child (as ``__mp_main__``) unless it has an
    ``if __name__ == "__main__"`` guard; a napari script without one would open a second viewer there
    and never answer. The child is started while ``__main__`` is an empty module, so it imports only
    the functions it is sent (the window is the few milliseconds of ``Process.start``).
    """
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_child)
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        pool.submit(int)  # starts the process (Process.start reads __main__ here, synchronously)
    finally:
        if main is not None:
            sys.modules["__main__"] = main
    return pool


def start() -> None:
    """Start the helper process now (call when a widget opens).

    Starting it forks this (large) process, which holds the GIL for a few hundred ms; at widget
    opening that is part of opening the dock, in the middle of a Match or an Apply run it would be a
    visible stall."""
    _pool()


def shutdown() -> None:
    """Stop the helper process (at exit; a later call starts a new one)."""
    global _POOL
    with _LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


atexit.register(shutdown)


def in_helper_process(fn, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in the helper process (the calling thread waits without the GIL).

    Falls back to calling ``fn`` here when the process cannot be used (not startable, broken, or the
    arguments cannot be pickled). Exceptions raised by ``fn`` itself propagate unchanged.
    """
    global _POOL
    pool = _pool()
    if pool is None:
        return fn(*args, **kwargs)
    try:
        future = pool.submit(fn, *args, **kwargs)
    except (BrokenProcessPool, RuntimeError):
        with _LOCK:
            _POOL = None
        return fn(*args, **kwargs)
    try:
        return future.result()
    except BrokenProcessPool:  # the child died (killed, out of memory): once more, here
        with _LOCK:
            _POOL = None
        return fn(*args, **kwargs)
    except pickle.PicklingError:  # an argument or result that cannot cross: run it here
        return fn(*args, **kwargs)
    except (TypeError, AttributeError) as exc:
        if "pickle" in str(exc).lower():
            return fn(*args, **kwargs)
        raise


# ---------------------------------------------------------------------------- jobs (run in the child)
def _match(template, dark_template, frames: np.ndarray, px: float | None, pixel_source: str):
    from ..analysis.calibrate import estimate_statistics
    from ..analysis.match import apply_calibration, calibrate

    stats = estimate_statistics(frames, px)
    if dark_template is not None and stats.polarity == "dark":
        template = dark_template
    cal = calibrate(template, frames, px, pixel_source=pixel_source, stats=stats)
    return template, cal, apply_calibration(template, cal, match_shape=True)


def match_layer(template, dark_template, frames: np.ndarray, px: float | None, pixel_source: str = "given"):
    """Match to layer (helper process): the image statistics, the per-family
    :class:`~napari_deeptrack.analysis.match.Calibration` and the calibrated pipeline.

    ``dark_template`` (optional) replaces ``template`` when the particles are dark (a fluorescence form
    given bright-field images): the bright-field family measures radius, rings and defocus. Returns
    ``(template used, calibration, matched pipeline)``.
    """
    return in_helper_process(_match, template, dark_template, np.ascontiguousarray(frames), px, pixel_source)


def _apply(template, calibration):
    from ..analysis.match import apply_calibration

    return apply_calibration(template, calibration, match_shape=True)


def apply_estimates(template, calibration):
    """``apply_calibration`` in the helper process (bright field simulates particle contrasts: ~1 s)."""
    return in_helper_process(_apply, template, calibration)


def _simulate_preview(pipeline, n: int, seed: int, frames: np.ndarray | None) -> dict:
    import torch

    from ..analysis.realism import sim_real_distance
    from ..sim.serialize import to_json

    with torch.no_grad():
        batch = pipeline(n, seed=seed)
    images = batch.image[:, 0].detach().cpu().numpy().astype(np.float32)
    out: dict[str, Any] = {"images": images, "pipeline_json": to_json(pipeline, indent=None)}
    out["comparison"] = None
    if frames is not None:
        try:
            out["comparison"] = sim_real_distance(images, frames)
        except ValueError:
            pass
    return out


def simulate_preview(pipeline, n: int, seed: int, frames: np.ndarray | None) -> dict:
    """Simulate ``n`` images and their per-component distance to the real ``frames`` (helper process):
    ``{"images", "pipeline_json", "comparison"}`` (``comparison``: ``sim_real_distance``'s dict or None)."""
    if frames is not None:
        frames = np.ascontiguousarray(frames)
    return in_helper_process(_simulate_preview, pipeline, n, seed, frames)
