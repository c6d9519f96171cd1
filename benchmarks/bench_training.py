"""Training benchmark for the ``particles-2d`` preset (JSON lines on stdout).

1. Throughput: training samples/s at 64x64, batch 16, with the simulation in 0, 1 and 2 DataLoader
   worker processes (``case: "throughput"``), next to simulation-only and optimiser-step-only rates
   measured in the same process, so the overlap of simulation and optimisation is visible.
2. Time to accuracy: wall time until the validation F1 reaches 0.9 (``case: "time_to_f1"``).
   Detections are blobs of the thresholded probability map (threshold 0.5); a detection is a true
   positive when it is matched one-to-one (Hungarian algorithm) to a true particle within 2 px.

Usage::

    python benchmarks/bench_training.py                        # both parts
    python benchmarks/bench_training.py --part throughput --steps 30
    python benchmarks/bench_training.py --part f1 --max-minutes 30 --device cpu

Numbers depend on the machine: record its CPU count and load next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from napari_deeptrack.nn import build_model
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train import OnlineDataset, StopFlag, build_loss, train_task

PRESET = "particles-2d"


def emit(record: dict) -> None:
    base = {
        "bench": "training",
        "preset": PRESET,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    print(json.dumps({**base, **record}), flush=True)


# ---------------------------------------------------------------------------- detection F1
def _detect(prob: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Per image: (y, x) of blobs above ``threshold`` (probability-weighted centroids)."""
    try:
        from napari_deeptrack.analysis.detect import detect_from_map

        df = detect_from_map(prob, threshold=threshold)
        return [df.loc[df["frame"] == i, ["y", "x"]].to_numpy() for i in range(len(prob))]
    except ImportError:  # minimal fallback
        from scipy import ndimage

        out = []
        for p in prob:
            lab, n = ndimage.label(p > threshold)
            out.append(np.array(ndimage.center_of_mass(p, lab, range(1, n + 1))).reshape(-1, 2))
        return out


def _match(pred: np.ndarray, truth: np.ndarray, tol: float) -> int:
    """Number of one-to-one matches within ``tol`` (Hungarian algorithm)."""
    if len(pred) == 0 or len(truth) == 0:
        return 0
    try:
        from napari_deeptrack.analysis.metrics import match_points

        return len(match_points(pred, truth, tol)[0])
    except ImportError:
        from scipy.optimize import linear_sum_assignment

        d = np.sqrt(((pred[:, None] - truth[None]) ** 2).sum(-1))
        r, c = linear_sum_assignment(np.where(d <= tol, d, 1e6))
        return int((d[r, c] <= tol).sum())


def f1_metrics(threshold: float = 0.5, tol_px: float = 2.0):
    """Trainer metrics hook: detection precision / recall / F1 on the validation set."""

    def metrics(pred: torch.Tensor, val) -> dict[str, float]:
        prob = torch.sigmoid(pred[:, 0]).numpy()
        dets = _detect(prob, threshold)
        pos, present = val.scene.position.numpy(), val.scene.present.numpy()
        tp = n_pred = n_true = 0
        for i, d in enumerate(dets):
            truth = pos[i, present[i], :2]
            tp += _match(d, truth, tol_px)
            n_pred += len(d)
            n_true += len(truth)
        fp, fn = n_pred - tp, n_true - tp
        return {
            "precision": tp / max(n_pred, 1),
            "recall": tp / max(n_true, 1),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        }

    return metrics


# ---------------------------------------------------------------------------- part 1
def throughput(steps: int, workers: list[int], batch: int, device: str) -> None:
    task = get_preset(PRESET)
    # simulation alone
    ds = OnlineDataset(
        task.pipeline,
        task.target,
        batch_size=batch,
        steps_per_epoch=steps + 2,
        seed=0,
        normalization=task.input_normalization,
    )
    it = iter(ds)
    next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
    sim_rate = steps * batch / (time.perf_counter() - t0)
    # optimiser steps alone, on one pre-simulated batch
    model = build_model(task.model).to(device)
    loss = build_loss(task.loss)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = x.to(device), y.to(device)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    step_rate = steps * batch / (time.perf_counter() - t0)
    emit(
        {
            "case": "components",
            "image": list(task.pipeline.image_shape),
            "batch": batch,
            "device": device,
            "simulation_samples_per_s": round(sim_rate, 1),
            "optimiser_samples_per_s": round(step_rate, 1),
        }
    )
    for w in workers:
        events = []
        train_task(
            task,
            None,
            epochs=1,
            steps_per_epoch=steps,
            batch_size=batch,
            num_workers=w,
            device=device,
            seed=0,
            callbacks=[events.append],
            metrics=lambda p, v: {},
            validation=_tiny_validation(task),
        )
        batches = [e for e in events if e["type"] == "batch"]
        # rate after the first two batches (excludes worker start-up)
        t = [e["elapsed_s"] for e in batches]
        rate = (len(t) - 2) * batch / (t[-1] - t[1]) if len(t) > 3 else float("nan")
        emit(
            {
                "case": "throughput",
                "image": list(task.pipeline.image_shape),
                "batch": batch,
                "workers": w,
                "device": device,
                "steps": steps,
                "samples_per_s": round(rate, 1),
                "samples_per_s_incl_startup": round(batches[-1]["step"] * batch / t[-1], 1),
            }
        )


def _tiny_validation(task):
    from napari_deeptrack.train import make_validation_set

    return make_validation_set(task.pipeline, task.target, 8, seed=0, normalization=task.input_normalization)


# ---------------------------------------------------------------------------- part 2
def time_to_f1(
    target_f1: float, max_minutes: float, workers: int, device: str, steps: int, val: int, epochs: int
) -> None:
    task = get_preset(PRESET).edited({"training.validation_size": val})
    stop = StopFlag()
    state: dict = {"reached": None, "last": None}
    t0 = time.perf_counter()

    def cb(ev):
        if ev["type"] == "epoch":
            state["last"] = ev
            emit(
                {
                    "case": "f1_progress",
                    "epoch": ev["epoch"] + 1,
                    "step": ev["step"],
                    "elapsed_s": round(ev["elapsed_s"], 1),
                    "val_loss": round(ev["val_loss"], 5),
                    "f1": round(ev["f1"], 4),
                    "precision": round(ev["precision"], 4),
                    "recall": round(ev["recall"], 4),
                }
            )
            if ev["f1"] >= target_f1 and state["reached"] is None:
                state["reached"] = ev
                stop.stop()
        if time.perf_counter() - t0 > 60 * max_minutes:
            stop.stop()

    settings = task.training_settings()
    train_task(
        task,
        None,
        epochs=1000,
        steps_per_epoch=steps or settings["steps_per_epoch"],
        num_workers=workers,
        device=device,
        seed=0,
        callbacks=[cb],
        stop_flag=stop,
        metrics=f1_metrics(),
    )
    ev = state["reached"] or state["last"] or {}
    emit(
        {
            "case": "time_to_f1",
            "target_f1": target_f1,
            "reached": state["reached"] is not None,
            "time_s": round(ev.get("elapsed_s", float("nan")), 1),
            "epochs": ev.get("epoch", -1) + 1,
            "steps": ev.get("step"),
            "batch": settings["batch_size"],
            "f1": round(ev.get("f1", float("nan")), 4),
            "workers": workers,
            "device": device,
            "validation_images": val,
        }
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["throughput", "f1", "all"], default="all")
    p.add_argument("--steps", type=int, default=40, help="throughput: timed steps per worker setting")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads in the main process (0: torch default)"
    )
    p.add_argument("--target-f1", type=float, default=0.9)
    p.add_argument("--max-minutes", type=float, default=30.0)
    p.add_argument("--f1-workers", type=int, default=1)
    p.add_argument("--f1-steps-per-epoch", type=int, default=0, help="0: the preset's value")
    p.add_argument("--f1-epochs", type=int, default=0, help="0: the preset's value")
    p.add_argument("--validation-images", type=int, default=128)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.part in ("throughput", "all"):
        throughput(a.steps, a.workers, a.batch_size, a.device)
    if a.part in ("f1", "all"):
        time_to_f1(
            a.target_f1,
            a.max_minutes,
            a.f1_workers,
            a.device,
            a.f1_steps_per_epoch,
            a.validation_images,
            a.f1_epochs,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
