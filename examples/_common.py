"""Shared helpers for the case-study scripts: command line, JSON-lines results, timing.

Every script takes ``--quick`` (a CPU run of a few minutes) or runs the full setting, prints its
measured results as JSON lines on stdout and appends them to ``--results`` (default
``case_study_results/<case>.jsonl`` in the working directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["Reporter", "base_parser", "jsonable"]


def base_parser(case: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{case}.py", description=description)
    p.add_argument("--quick", action="store_true", help="short CPU run (minutes) instead of the full setting")
    p.add_argument(
        "--results", default=None, help=f"JSON-lines results file (default case_study_results/{case}.jsonl)"
    )
    p.add_argument("--out", default=None, help="folder for the trained bundle(s) (default: not saved)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return p


def jsonable(x: Any) -> Any:
    """Numbers, lists and dicts only (numpy / torch scalars and arrays converted)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if hasattr(x, "tolist"):
        return jsonable(x.tolist())
    if isinstance(x, float):
        return round(x, 6) if x == x else None
    return x


class Reporter:
    """Prints one JSON object per line and appends it to the results file."""

    def __init__(self, case: str, args: argparse.Namespace):
        if args.threads:
            torch.set_num_threads(int(args.threads))
        self.case = case
        self.mode = "quick" if args.quick else "full"
        self.path = Path(args.results or Path("case_study_results") / f"{case}.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.emit(
            "run",
            mode=self.mode,
            seed=args.seed,
            device=args.device,
            torch_threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            python=platform.python_version(),
            torch=torch.__version__,
        )

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = {"case": self.case, "record": kind, "mode": self.mode, **jsonable(fields)}
        line = json.dumps(rec)
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
        return rec

    def train(
        self,
        task,
        out: str | None,
        args: argparse.Namespace,
        epochs: int,
        steps: int,
        batch: int | None = None,
        **train_kwargs: Any,
    ):
        """Train ``task`` (bundle saved to ``out`` if given), emit a ``training`` record, return it.

        ``batch`` None keeps the task's batch size; ``train_kwargs`` go to ``train_task`` (e.g.
        ``validation``).
        """
        from napari_deeptrack.train import train_task

        res = train_task(
            task, out, epochs=epochs, steps_per_epoch=steps, batch_size=batch, seed=args.seed,
            device=args.device, **train_kwargs,
        )  # fmt: skip
        h = res.history
        self.emit(
            "training",
            epochs=len(h["epoch"]),
            steps_per_epoch=steps,
            batch_size=res.settings["batch_size"],
            final_train_loss=h["train_loss"][-1],
            best_val_loss=min(h["val_loss"]),
        )
        return res

    def done(self, **fields: Any) -> dict[str, Any]:
        return self.emit("done", wall_s=time.perf_counter() - self.t0, **fields)
