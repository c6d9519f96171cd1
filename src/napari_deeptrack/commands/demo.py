"""``napari-deeptrack demo [--out DIR] [--gui] [--quick] [--seed S] [--device D]``: the main job.

Simulates a fluorescent-particle movie with known ground truth, trains the ``particles-2d``
detector on simulated images, detects and links the particles, measures F1, localisation error and
the diffusion coefficient against the truth, and writes a report (``report.md``, ``metrics.json``,
figures, the model bundle, the movie and CSV tables) into ``--out``. ``--gui`` then opens the
results in napari with the plugin's widgets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "format_summary", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="simulate a particle movie, train, detect, track, evaluate and write a report",
        description="The main job, end to end on simulated data with known ground truth: simulate a "
        "fluorescent-particle movie, train the particles-2d detector, detect, link tracks, evaluate "
        "(F1, localisation RMSE, diffusion coefficient) and write a report. A few minutes on 2 CPU "
        "cores (--quick: about one minute).",
    )
    p.add_argument("--out", default="demo_out", help="report folder (default: ./demo_out)")
    p.add_argument("--gui", action="store_true", help="open the results in napari afterwards")
    p.add_argument("--quick", action="store_true", help="short training (for CI; lower accuracy)")
    p.add_argument("--seed", type=int, default=0, help="root seed of the movie and the training (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress output (the summary is still printed)")
    return p


class _Progress:
    """Stage lines and the training progress bar on stderr."""

    def __init__(self, stream=None):
        from ..train import ProgressBar

        self.stream = stream or sys.stderr
        self.bar = ProgressBar(self.stream)

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["type"] == "stage":
            self.stream.write(f"[{ev['index'] + 1}/{ev['n_stages']}] {ev['message']}\n")
            self.stream.flush()
        elif ev["type"] in ("batch", "epoch", "end"):
            self.bar(ev)


def _f(v: Any, fmt: str = ".3f") -> str:
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return "n/a"


def format_summary(result: dict[str, Any]) -> str:
    """The concise end-of-run summary printed by the command."""
    m = result["metrics"]
    d, t, dif, tr = m["detection"], m["tracking"], m["diffusion"], m["training"]
    p = result["paths"]
    lines = [
        f"detection    F1 {_f(d['f1'])}  precision {_f(d['precision'])}  recall {_f(d['recall'])}  "
        f"(match within {_f(d['tolerance_px'], 'g')} px; {d['tp']} found, {d['fn']} missed, {d['fp']} false)",
        f"localisation RMSE {_f(d['rmse_xy'])} px = {_f(d['rmse_xy_nm'], '.0f')} nm",
        f"tracking     {t['n_tracks']} tracks (truth {t['n_true_tracks']}), link accuracy "
        f"{_f(t['link_accuracy'])}, purity {_f(t['track_purity'])}",
        f"diffusion    D measured {_f(dif['measured_um2_s'], '.4f')} um^2/s vs true "
        f"{_f(dif['true_um2_s'], '.4f')} ({_f(100 * dif['relative_error'], '+.1f')} %; "
        f"true tracks give {_f(dif['from_true_tracks_um2_s'], '.4f')})",
        f"training     {tr['epochs_run']} epochs, {tr['images_seen']} simulated images, best epoch "
        f"{tr['best_epoch']} on {tr['device']}",
        f"time         {_f(result['elapsed_s'], '.0f')} s",
        f"report       {p['report']}",
        f"metrics      {p['metrics']}",
        f"model        {p['bundle']}",
        f"movie        {p['movie']}  (truth: {p['truth'].name}, detections: {p['detections'].name})",
    ]
    return "\n".join(lines)


def run(args) -> int:
    from ..demo import run_demo

    out = Path(args.out)
    progress = None if args.quiet else _Progress()
    result = run_demo(out, quick=args.quick, seed=args.seed, device=args.device, progress=progress)
    print(format_summary(result))
    if args.gui:
        from .._napari._demo_viewer import show_demo  # napari is imported there, only for --gui

        show_demo(out, block=True)
    return 0
