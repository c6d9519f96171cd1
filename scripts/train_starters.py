"""Train the starter models shipped in ``src/napari_deeptrack/data/starters/`` (simulation only).

One small bundle per main preset, trained with the preset's own simulation, model, loss and
normalisation, but far fewer steps than a full training (a starting point to apply at once and then
fine-tune, not a finished model). Everything is fixed: seed 0, deterministic algorithms, one CPU
thread, the steps listed in :data:`STARTERS`; running the script again gives the same weights.

Usage::

    python scripts/train_starters.py                 # all starters
    python scripts/train_starters.py particles-2d    # some of them
    python scripts/train_starters.py --out /tmp/starters --scale 0.1   # quick check of the plumbing

Each bundle's ``notes`` say how it was made; ``napari-deeptrack info particles-2d`` prints them with
the simulation it was trained on and its validation metrics. The total size must stay below 10 MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "napari_deeptrack" / "data" / "starters"
MAX_TOTAL_MB = 10.0

#: preset -> training overrides (epochs, steps per epoch, batch size, validation size)
STARTERS: dict[str, dict] = {
    # the preset's full budget (1000 steps, ~100 s on an idle 2-core CPU): the starter users apply first
    "particles-2d": {"epochs": 20, "steps_per_epoch": 50, "batch_size": 16, "validation_size": 128},
    "particle-localize": {"epochs": 8, "steps_per_epoch": 40, "batch_size": 32, "validation_size": 128},
    "brightfield-localize": {"epochs": 6, "steps_per_epoch": 30, "batch_size": 32, "validation_size": 64},
    "cells-count": {"epochs": 4, "steps_per_epoch": 20, "batch_size": 8, "validation_size": 32},
    "nuclei-segment": {"epochs": 4, "steps_per_epoch": 20, "batch_size": 8, "validation_size": 32},
}


def train_starter(name: str, out_dir: Path, scale: float = 1.0, seed: int = 0) -> dict:
    """Train the starter of preset ``name`` into ``out_dir/<name>.zip``; return a summary."""
    from napari_deeptrack.io.bundle import load_bundle, save_bundle
    from napari_deeptrack.tasks import get_preset
    from napari_deeptrack.train import train_task

    cfg = STARTERS[name]
    task = get_preset(name).edited({"training.validation_size": int(cfg["validation_size"])})
    epochs = max(1, round(cfg["epochs"] * scale))
    steps = max(1, round(cfg["steps_per_epoch"] * scale))
    path = out_dir / f"{name}.zip"
    t0 = time.perf_counter()
    res = train_task(
        task, path, epochs=epochs, steps_per_epoch=steps, batch_size=int(cfg["batch_size"]), seed=seed,
        deterministic=True, num_workers=0, device="cpu",
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    b = load_bundle(path)
    notes = (
        f"Starter model shipped with napari-deeptrack: trained on simulated images only (the {name} "
        f"preset's simulation, shown under 'task'), {epochs} epochs x {steps} steps x batch "
        f"{cfg['batch_size']}, seed {seed}, deterministic, by scripts/train_starters.py. A starting point: "
        "check it on your images and fine-tune it (train --init) or train the preset fully."
    )
    save_bundle(
        path, b.model, b.task, b.config.get("history"), seed=seed, training=b.config.get("training"),
        metrics=b.config.get("metrics"), notes=notes,
    )  # fmt: skip
    return {
        "starter": name,
        "bundle": str(path),
        "size_kb": round(path.stat().st_size / 1024, 1),
        "train_s": round(seconds, 1),
        "steps": res.history.get("steps"),
        "metrics": b.config.get("metrics"),
    }


def retune_starter(name: str, out_dir: Path, seed: int = 0) -> dict:
    """Re-choose a detection starter's post-processing on its own validation set (no retraining).

    The same step as at the end of ``train_task`` (``analysis.tune_detection``: threshold tuned on
    the simulated validation set, adaptive ``min_signal`` from a noise model), for starters trained
    before that step existed. The validation set is the one training used (same size and seed).
    """
    from napari_deeptrack.analysis.tune_detection import tunable
    from napari_deeptrack.io.bundle import load_bundle, save_bundle
    from napari_deeptrack.train.api import _with_tuned_postprocess
    from napari_deeptrack.train.data import make_validation_set

    path = out_dir / f"{name}.zip"
    b = load_bundle(path)
    if not tunable(b.task):
        return _refresh_readout(name, path, b, seed)
    t = b.task
    val = make_validation_set(t.pipeline, t.target, int(STARTERS[name]["validation_size"]), seed,
                              t.input_normalization)  # fmt: skip
    task = _with_tuned_postprocess(t, b.model, val)
    notes = b.config.get("notes", "") + " Post-processing (threshold, adaptive min_signal) chosen on its " \
        "validation set by scripts/train_starters.py --retune."  # fmt: skip
    save_bundle(
        path, b.model, task, b.config.get("history"), seed=seed, training=b.config.get("training"),
        metrics=b.config.get("metrics"), notes=notes,
    )  # fmt: skip
    pp = task.postprocess
    return {"starter": name, "retuned": True, "threshold": pp["threshold"], "min_signal": pp["min_signal"],
            "tuned_on": pp.get("tuned_on"), "size_kb": round(path.stat().st_size / 1024, 1)}  # fmt: skip


def _refresh_readout(name: str, path: Path, b, seed: int) -> dict:
    """A starter that is not tuned (segmentation, counting) takes the preset's current read-out
    settings (e.g. nuclei-segment's seeds and speck filters), keeping its network and its notes."""
    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.tasks.registry import get_preset

    current = get_preset(name).postprocess or {}
    old = dict(b.task.postprocess or {})
    new = {**old, **{k: v for k, v in current.items() if k not in ("threshold",)}}
    if new == old:
        return {"starter": name, "retuned": False}
    task = dataclasses.replace(b.task, postprocess=new)
    notes = b.config.get("notes", "") + " Read-out settings refreshed from the preset by " \
        "scripts/train_starters.py --retune."  # fmt: skip
    save_bundle(
        path, b.model, task, b.config.get("history"), seed=seed, training=b.config.get("training"),
        metrics=b.config.get("metrics"), notes=notes,
    )  # fmt: skip
    changed = sorted(k for k in new if old.get(k) != new[k])
    return {"starter": name, "retuned": True, "readout_from_preset": changed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"starters to train (default all: {', '.join(STARTERS)})")
    ap.add_argument("--out", default=str(OUT), help="output folder")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply epochs and steps (quick checks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retune", action="store_true",
                    help="only re-choose the detection starters' post-processing (no training)")  # fmt: skip
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(STARTERS))
    if unknown:
        print(f"unknown starter(s) {unknown}; known: {list(STARTERS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(STARTERS):
        if args.retune:
            print(json.dumps(retune_starter(name, out, args.seed), default=float), flush=True)
            continue
        print(json.dumps(train_starter(name, out, args.scale, args.seed), default=float), flush=True)
    total = sum(p.stat().st_size for p in out.glob("*.zip")) / 2**20
    print(json.dumps({"total_mb": round(total, 2), "limit_mb": MAX_TOTAL_MB}), flush=True)
    return 0 if total <= MAX_TOTAL_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
