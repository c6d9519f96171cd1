"""Annotate a few, get better: fine-tune a bundle on a handful of annotated real frames, score it on
held-back annotations before and after, tune its detection threshold on the same corrections, and
suggest where to annotate next from the model's own uncertainty.

The fine-tuning data come from :mod:`.finetune` (:func:`~.finetune.targets_from_points` renders the
task's own target from the points; :class:`~.finetune.mixed_batches` alternates real and simulated
batches so the model does not forget the simulation). Every annotated frame must be *completely*
annotated (an object left out teaches the network that it is background). The frames are split:
every ``holdout``-th annotated frame (at least one) is held back and only scored, never trained on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .events import Callback, StopFlag

__all__ = ["annotate_few", "match_distance_px", "split_frames", "suggest_regions", "tune_threshold"]

POINT_KINDS = ("detection", "counting")


def split_frames(table: pd.DataFrame, n_frames: int, holdout: int = 3) -> tuple[list[int], list[int]]:
    """Annotated frames -> (frames to train on, frames held back for scoring).

    Every ``holdout``-th annotated frame (counting from the second) is held back, at least one.

    Raises
    ------
    ValueError
        No annotation, annotations outside the frames, or fewer than two annotated frames.
    """
    if table is None or len(table) == 0:
        raise ValueError("the annotation table is empty: click at least ~20 objects on two or more frames")
    for c in ("frame", "y", "x"):
        if c not in table.columns:
            raise ValueError(f"the annotation table needs columns frame, y, x; it has {list(table.columns)}")
    frames = sorted(int(f) for f in np.unique(table["frame"].to_numpy()))
    bad = [f for f in frames if not 0 <= f < n_frames]
    if bad:
        raise ValueError(f"annotations on frame(s) {bad[:5]} outside the image's {n_frames} frame(s)")
    if len(frames) < 2:
        raise ValueError(
            "annotate at least two frames: one is held back to measure the gain, the others are trained on"
        )
    held = frames[1 :: max(2, int(holdout))] or frames[-1:]
    return [f for f in frames if f not in held], held


def _check_inside(table: pd.DataFrame, shape: tuple[int, int]) -> None:
    y, x = table["y"].to_numpy(float), table["x"].to_numpy(float)
    out = (y < -0.5) | (y > shape[0] - 0.5) | (x < -0.5) | (x > shape[1] - 0.5)
    if out.any():
        r = table[out].iloc[0]
        raise ValueError(
            f"{int(out.sum())} annotation(s) lie outside the {shape[0]}x{shape[1]} image, e.g. frame "
            f"{int(r['frame'])} at y={r['y']:.1f}, x={r['x']:.1f} (positions are in pixels of the image)"
        )


def match_distance_px(task) -> float:
    """Largest distance (px) between a detection and an annotation that still counts as a match.

    ``postprocess["match_distance_px"]`` when the task sets it; a counting task's objects are
    Gaussians of ``sigma_px`` (nuclei ~15 px in radius for ``cells-count``), whose annotated centres
    (a click, a label centroid) and density peaks differ by a few pixels, so half that sigma
    (5 px for ``cells-count``, the issue's "match within 5 px" for nuclei); else 3 px.
    """
    pp = task.postprocess or {}
    if "match_distance_px" in pp:
        return float(pp["match_distance_px"])
    if task.kind == "counting" and "sigma_px" in pp:
        return 0.5 * float(pp["sigma_px"])
    return 3.0


def _score(bundle, images: np.ndarray, truth: pd.DataFrame, threshold: float | None, tol: float) -> dict:
    from ..analysis.metrics import detection_metrics
    from ..analysis.predict import predict

    res = predict(bundle, images, threshold=threshold)
    m = detection_metrics(res.detections, truth, tol)
    out = {k: float(m[k]) for k in ("f1", "precision", "recall", "n_pred", "n_truth")}
    if res.counts is not None and len(truth):
        # count error per frame, from the model's own count (a density integral for counting models)
        n_true = np.bincount(truth["frame"].to_numpy(int), minlength=len(images))
        out["count_abs_error"] = float(np.mean(np.abs(np.asarray(res.counts, float) - n_true)))
    return out


@torch.no_grad()
def tune_threshold(bundle, images: np.ndarray, truth: pd.DataFrame, tol: float) -> dict:
    """Detection threshold (and ``min_signal`` with robust normalisation) with the best F1 on annotated
    frames; see :func:`~napari_deeptrack.analysis.tune_detection.tune_detection`."""
    from ..analysis.predict import run_model
    from ..analysis.tune_detection import tune_detection
    from .data import normalize

    task = bundle.task
    x = normalize(torch.from_numpy(np.asarray(images, np.float32))[:, None], task.input_normalization)
    depth = int((task.model or {}).get("depth", 3) or 3)
    maps = torch.sigmoid(run_model(bundle.model.eval(), x, True, 2**depth, 4))[:, 0].numpy()
    robust = (task.input_normalization or {}).get("mode") == "robust"
    image = x[:, 0].numpy() if robust else None
    return tune_detection(maps, truth, tol, image=image, postprocess=task.postprocess)


def _fit_set(task, frames: np.ndarray, targets: np.ndarray, validation, seed: int, n: int = 16):
    """Model selection during fine-tuning: fixed crops of the corrected training frames (never the
    held-back ones) next to the simulated validation images, so that the kept epoch is the one that
    fits the user's images without forgetting the simulation (the simulated set alone picked the
    least-adapted epoch)."""
    from .data import ValidationSet, normalize

    rng = np.random.default_rng(seed)
    h, w = frames.shape[-2:]
    ch, cw = (min(h, s) for s in task.pipeline.image_shape)
    k = rng.integers(0, len(frames), n)
    y0, x0 = rng.integers(0, h - ch + 1, n), rng.integers(0, w - cw + 1, n)
    xs = np.stack([frames[i, a : a + ch, b : b + cw] for i, a, b in zip(k, y0, x0)])
    ys = np.stack([targets[i, ..., a : a + ch, b : b + cw] for i, a, b in zip(k, y0, x0)])
    xr = normalize(
        torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32))[:, None], task.input_normalization
    )
    yr = torch.from_numpy(np.ascontiguousarray(ys))
    if (ch, cw) != tuple(validation.images.shape[-2:]):
        return ValidationSet(xr, yr)
    return ValidationSet(
        torch.cat([xr, validation.images]), torch.cat([yr.to(validation.targets.dtype), validation.targets])
    )


def annotate_few(
    init: str | Path,
    images,
    points: pd.DataFrame,
    out: str | Path | None = None,
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float | None = None,
    seed: int = 0,
    holdout: int = 3,
    real_fraction: float = 0.75,
    callbacks: Sequence[Callback] = (),
    stop_flag: StopFlag | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Fine-tune bundle ``init`` on annotated frames; score before and after on held-back frames.

    Parameters
    ----------
    init : path
        Bundle to start from (a starter model, or one trained on simulation); detection or counting.
    images : array [T, H, W]
        Raw frames.
    points : DataFrame
        ``frame, y, x`` (px) of every object in each annotated frame.
    out : path, optional
        Where to save the fine-tuned bundle (with the tuned threshold in its postprocess).
    steps, batch_size, lr, seed
        Fine-tuning length, batch size, learning rate (default: the task's training rate) and seed.
        Measured on BBBC039 (docs/benchmarks.md): 40 steps at 3e-4 with half the batches simulated
        made the cells-count starter worse on held-back images; 200 steps at the task's 1e-3 with
        three quarters real made it better.
    real_fraction : float
        Fraction of the batches made of crops of the annotated frames; the rest are simulated (so
        the model keeps what it learnt from simulation).
    holdout : int
        Every ``holdout``-th annotated frame is held back for scoring.
    callbacks, stop_flag, max_seconds
        As for :func:`~napari_deeptrack.train.train_task`.

    Returns
    -------
    dict
        ``train_frames``, ``heldout_frames``, ``before`` and ``after`` (F1, precision, recall, and
        for counting models the mean count error per frame, on the held-back frames with each model's
        own post-processing), ``after_tuned`` (with the threshold / ``min_signal`` tuned on the
        training frames' annotations), ``threshold``, ``min_signal``, ``match_distance_px``,
        ``bundle``.
    """
    from ..io.bundle import load_bundle, save_bundle
    from .api import train_task
    from .data import make_validation_set
    from .finetune import mixed_batches, points_per_frame, targets_from_points

    frames = np.asarray(images, dtype=np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise ValueError(f"images must be [H, W] or [T, H, W], got shape {frames.shape}")
    b0 = load_bundle(init)
    task = b0.task
    if task.kind not in POINT_KINDS or (task.postprocess or {}).get("method") == "lodestar":
        raise ValueError(
            f"fine-tuning from points needs a detection or counting model trained on simulation; "
            f"{task.name!r} is a {task.kind} model"
            + (" (self-supervised: retrain it from crops instead)" if task.kind == "detection" else "")
        )
    from ..io.starters import check_starter_fits, is_starter

    if is_starter(init):  # a fluorescence starter on bright-field frames: refuse, as apply does
        check_starter_fits(task, frames)
    _check_inside(points, frames.shape[1:])
    train_f, held_f = split_frames(points, len(frames), holdout)
    tol = match_distance_px(task)

    def sub(fs):
        t = points[points["frame"].isin(fs)].copy()
        t["frame"] = t["frame"].map({f: i for i, f in enumerate(fs)})
        return frames[fs], t

    x_tr, p_tr = sub(train_f)
    x_ho, p_ho = sub(held_f)
    before = _score(b0, x_ho, p_ho, None, tol)
    targets = targets_from_points(task, points_per_frame(p_tr, range(len(train_f))), frames.shape[1:])
    targets = targets.numpy()
    data = mixed_batches(
        task, x_tr, targets, batch_size=batch_size, steps=steps, seed=seed, real_fraction=real_fraction
    )
    epochs = max(1, steps // 25)
    validation = make_validation_set(task.pipeline, task.target, 16, seed, task.input_normalization)
    lr = float(task.training_settings()["lr"] if lr is None else lr)
    res = train_task(
        copy.deepcopy(task), None, init=init, train_data=data, epochs=epochs,
        steps_per_epoch=max(1, steps // epochs),
        batch_size=batch_size, lr=lr, seed=seed, device="cpu", callbacks=callbacks, stop_flag=stop_flag,
        max_seconds=max_seconds, validation=_fit_set(task, x_tr, targets, validation, seed),
    )  # fmt: skip
    # the fine-tuned model keeps the starting bundle's post-processing until tuned on the corrections
    tuned_task = copy.deepcopy(task)
    b1 = type(b0)(res.model, tuned_task)
    after = _score(b1, x_ho, p_ho, None, tol)
    thr = ms = None
    if task.kind == "detection":
        best = tune_threshold(b1, x_tr, p_tr, tol)
        thr, ms = best["threshold"], best["min_signal"]
        tuned_task.postprocess = {
            **tuned_task.postprocess, "threshold": thr, "min_signal": ms,
            "tuned_on": f"{len(p_tr)} annotated objects in frames {train_f}: F1 {best['f1']:.3f}",
        }  # fmt: skip
    after_tuned = _score(type(b0)(res.model, tuned_task), x_ho, p_ho, None, tol)
    if out is not None:
        save_bundle(
            out, res.model, tuned_task, res.history, seed=seed, training=res.settings,
            metrics={f"heldout_{k}": v for k, v in after_tuned.items()},
            notes=f"fine-tuned from {init} on {len(p_tr)} annotated objects in frames {train_f}; "
            f"held-back frames {held_f}: F1 {before['f1']:.3f} -> {after_tuned['f1']:.3f}",
        )  # fmt: skip
    return {
        "train_frames": train_f,
        "heldout_frames": held_f,
        "n_train_objects": int(len(p_tr)),
        "n_heldout_objects": int(len(p_ho)),
        "before": before,
        "after": after,
        "after_tuned": after_tuned,
        "threshold": thr,
        "min_signal": ms,
        "match_distance_px": tol,
        "lr": lr,
        "steps": int(steps),
        "real_fraction": float(real_fraction),
        "bundle": None if out is None else str(out),
    }


@torch.no_grad()
def suggest_regions(bundle, images, n: int = 5, tile_px: int = 64) -> pd.DataFrame:
    """Where to annotate next: tiles where the model disagrees most with itself under flips.

    The model runs on each frame and on its three flips; the per-pixel standard deviation of the
    (un-flipped) outputs, averaged over ``tile_px`` tiles, ranks the tiles (test-time augmentation
    disagreement: high where the model is unsure, e.g. on objects unlike its training images).

    Returns
    -------
    DataFrame
        ``frame, y0, x0, y1, x1, disagreement`` of the ``n`` most uncertain tiles, highest first.
    """
    from ..analysis.predict import run_model
    from .data import normalize

    task, model = bundle.task, bundle.model
    a = np.asarray(images, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a
    x = normalize(torch.from_numpy(a)[:, None], task.input_normalization)
    depth = int((task.model or {}).get("depth", 3) or 3)
    act = (task.postprocess or {}).get("activation", "none")
    outs = []
    for dims in ([], [-2], [-1], [-2, -1]):
        xf = x.flip(dims) if dims else x
        o = run_model(model.eval(), xf, True, 2**depth, 4)
        o = torch.sigmoid(o) if act == "sigmoid" else o
        outs.append(o.flip(dims) if dims else o)
    spread = torch.stack(outs).std(0).mean(1)  # [T, H, W]
    t_n, h, w = spread.shape
    ty, tx = max(1, h // tile_px), max(1, w // tile_px)
    sy, sx = h // ty, w // tx
    tiles = spread[:, : ty * sy, : tx * sx].reshape(t_n, ty, sy, tx, sx).mean((2, 4))
    order = torch.argsort(tiles.flatten(), descending=True)[: int(n)]
    rows = []
    for k in order.tolist():
        f, r = divmod(k, ty * tx)
        iy, ix = divmod(r, tx)
        rows.append((f, iy * sy, ix * sx, (iy + 1) * sy, (ix + 1) * sx, float(tiles[f, iy, ix])))
    return pd.DataFrame(rows, columns=["frame", "y0", "x0", "y1", "x1", "disagreement"])


def run_cli(args) -> int:
    """``napari-deeptrack train MODEL --annotations POINTS.csv IMAGE [--out BUNDLE] [--suggest N]``.

    MODEL (``--init`` if given, else the task argument) is a bundle or a preset with a starter model.
    Prints one JSON line with the before / after scores and the suggested regions.
    """
    import json
    import sys

    from ..io.images import read_images
    from ..io.starters import resolve_bundle
    from ..io.tables import read_truth_csv

    init = resolve_bundle(args.init or args.task)
    if len(args.images) != 1:
        raise ValueError("--annotations needs exactly one IMAGE (a stack or a folder of frames)")
    images, _ = read_images(args.images[0])
    points = read_truth_csv(args.annotations)
    result = annotate_few(
        init, images, points, args.out, steps=int(args.steps_per_epoch or 25) * int(args.epochs or 8),
        batch_size=int(args.batch_size or 8), lr=args.lr, seed=int(args.seed or 0),
        max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
    )  # fmt: skip
    from ..io.bundle import load_bundle

    sugg = suggest_regions(load_bundle(args.out if args.out else init), images, n=int(args.suggest))
    result["suggest_next"] = sugg.to_dict("records")
    b, a = result["before"]["f1"], result["after_tuned"]["f1"]
    print(f"held-back frames {result['heldout_frames']}: F1 {b:.3f} -> {a:.3f}", file=sys.stderr)
    print(json.dumps(result, default=float))
    return 0
