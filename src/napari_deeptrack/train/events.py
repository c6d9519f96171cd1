"""Training events, the cooperative :class:`StopFlag`, and a text progress bar.

The trainer calls every callback with a plain dict (so the CLI, the napari widget and scripts all
consume the same thing):

``{"type": "batch", "epoch", "epochs", "batch", "steps_per_epoch", "step", "total_steps", "loss",
"val_loss" (of the last validation; NaN before the first),
"lr", "samples_per_s", "elapsed_s", "eta_s", ...scheduled loss values such as "pos_weight"}``

``{"type": "epoch", ... as above, "loss" (mean training loss of the epoch), "val_loss", "best"
(bool), "best_val_loss", "metrics" (dict, also merged at top level)}``

``{"type": "end", "epoch", "step", "reason" ("completed" | "stopped" | "early_stopping" |
"data_exhausted"), "best_epoch", "best_val_loss", "loss", "val_loss" (last), "lr", "elapsed_s",
"eta_s" (0), "history"}``

``epoch`` counts from 0; ``step`` is the number of optimiser steps done so far.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Callback", "ProgressBar", "StopFlag", "format_event"]

Callback = Callable[[dict[str, Any]], None]


class StopFlag:
    """Thread-safe request to stop training; checked by the trainer after every batch.

    ``flag.stop()`` from any thread (a GUI button, a signal handler, a callback); the trainer
    finishes the current batch, keeps the best checkpoint and returns.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def __bool__(self) -> bool:
        return self._event.is_set()


def _fmt_time(s: float | None) -> str:
    if s is None or s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def format_event(ev: dict[str, Any]) -> str:
    """A one-line human summary of an event."""
    if ev["type"] == "epoch":
        extra = "".join(f" {k}={v:.4g}" for k, v in (ev.get("metrics") or {}).items())
        star = " *" if ev.get("best") else ""
        return (
            f"epoch {ev['epoch'] + 1}/{ev['epochs']}: loss={ev['loss']:.4g} val_loss={ev['val_loss']:.4g}"
            f"{extra} lr={ev['lr']:.3g} {ev['samples_per_s']:.0f} samples/s{star}"
        )
    if ev["type"] == "end":
        return (
            f"{ev['reason']}: best epoch {ev['best_epoch'] + 1 if ev['best_epoch'] is not None else '-'}, "
            f"best val_loss={ev['best_val_loss']:.4g}, {_fmt_time(ev['elapsed_s'])}"
        )
    return (
        f"epoch {ev['epoch'] + 1}/{ev['epochs']} batch {ev['batch'] + 1}/{ev['steps_per_epoch']} "
        f"loss={ev['loss']:.4g}"
    )


class ProgressBar:
    """Callback that draws a progress bar (``tqdm`` when installed, else a plain text line).

    Parameters
    ----------
    stream : file
        Where to write (stderr by default).
    use_tqdm : bool or None
        None: use tqdm when it can be imported.
    """

    def __init__(self, stream: TextIO | None = None, use_tqdm: bool | None = None):
        self.stream = stream or sys.stderr
        self._bar = None
        self._tqdm = None
        if use_tqdm is not False:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm
            except ImportError:  # pragma: no cover - tqdm is a soft dependency
                if use_tqdm:
                    raise
        self._last_len = 0
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["type"] == "batch":
            if self._tqdm is not None:
                if self._bar is None:
                    self._bar = self._tqdm(
                        total=ev["total_steps"], file=self.stream, unit="batch", dynamic_ncols=True
                    )
                self._bar.n = ev["step"]
                self._bar.set_postfix(
                    epoch=f"{ev['epoch'] + 1}/{ev['epochs']}", loss=f"{ev['loss']:.4g}", refresh=False
                )
                self._bar.refresh()
            elif self._tty and time.monotonic() - self._last_draw > 0.2:
                self._last_draw = time.monotonic()
                frac = ev["step"] / max(1, ev["total_steps"])
                n = int(30 * frac)
                line = (
                    f"\r[{'#' * n}{'.' * (30 - n)}] {100 * frac:5.1f}% {format_event(ev)} "
                    f"{ev['samples_per_s']:.0f}/s eta {_fmt_time(ev['eta_s'])}"
                )
                self.stream.write(line.ljust(self._last_len))
                self._last_len = len(line)
                self.stream.flush()
        elif ev["type"] == "epoch":
            self._write(format_event(ev))
        elif ev["type"] == "end":
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._write(format_event(ev))

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            if self._last_len:
                self.stream.write("\n")
                self._last_len = 0
            self.stream.write(text + "\n")
            self.stream.flush()
