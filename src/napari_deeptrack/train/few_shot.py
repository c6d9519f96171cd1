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

__all__ = ["annotate_few", "split_frames", "suggest_regions", "tune_threshold"]

POINT_KINDS = ("detection", "counting")
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


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


def _score(bundle, images: np.ndarray, truth: pd.DataFrame, threshold: float | None, tol: float) -> dict:
    from ..analysis.metrics import detection_metrics
    from ..analysis.predict import predict

    det = predict(bundle, images, threshold=threshold).detections
    m = detection_metrics(det, truth, tol)
    return {k: float(m[k]) for k in ("f1", "precision", "recall", "n_pred", "n_truth")}


def tune_threshold(bundle, images: np.ndarray, truth: pd.DataFrame, tol: float) -> tuple[float, float]:
    """The detection threshold (of :data:`THRESHOLDS`) with the best F1 on annotated frames, and that F1."""
    scores = {t: _score(bundle, images, truth, t, tol)["f1"] for t in THRESHOLDS}
    best = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    return best, scores[best]


def annotate_few(
    init: str | Path,
    images,
    points: pd.DataFrame,
    out: str | Path | None = None,
    *,
    steps: int = 100,
    batch_size: int = 8,
    lr: float = 3e-4,
    seed: int = 0,
    holdout: int = 3,
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
        Fine-tuning length (half real, half simulated batches), batch size, learning rate, seed.
    holdout : int
        Every ``holdout``-th annotated frame is held back for scoring.
    callbacks, stop_flag, max_seconds
        As for :func:`~napari_deeptrack.train.train_task`.

    Returns
    -------
    dict
        ``train_frames``, ``heldout_frames``, ``before`` and ``after`` (F1, precision, recall on the
        held-back frames at each model's default threshold), ``after_tuned`` (at the threshold tuned on
        the training frames), ``threshold``, ``bundle``.
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
    _check_inside(points, frames.shape[1:])
    train_f, held_f = split_frames(points, len(frames), holdout)
    tol = float((task.postprocess or {}).get("match_distance_px", 3.0))

    def sub(fs):
        t = points[points["frame"].isin(fs)].copy()
        t["frame"] = t["frame"].map({f: i for i, f in enumerate(fs)})
        return frames[fs], t

    x_tr, p_tr = sub(train_f)
    x_ho, p_ho = sub(held_f)
    before = _score(b0, x_ho, p_ho, None, tol)
    targets = targets_from_points(task, points_per_frame(p_tr, range(len(train_f))), frames.shape[1:])
    data = mixed_batches(task, x_tr, targets.numpy(), batch_size=batch_size, steps=steps, seed=seed)
    epochs = max(1, steps // 25)
    validation = make_validation_set(task.pipeline, task.target, 32, seed, task.input_normalization)
    res = train_task(
        copy.deepcopy(task), None, init=init, train_data=data, epochs=epochs,
        steps_per_epoch=max(1, steps // epochs),
        batch_size=batch_size, lr=lr, seed=seed, device="cpu", callbacks=callbacks, stop_flag=stop_flag,
        max_seconds=max_seconds, validation=validation,
    )  # fmt: skip
    tuned_task = copy.deepcopy(task)
    b1 = type(b0)(res.model, tuned_task)
    after = _score(b1, x_ho, p_ho, None, tol)
    thr, _ = tune_threshold(b1, x_tr, p_tr, tol) if task.kind == "detection" else (None, None)
    if thr is not None:
        tuned_task.postprocess = {**tuned_task.postprocess, "threshold": thr}
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
        init, images, points, args.out, steps=int(args.steps_per_epoch or 25) * int(args.epochs or 4),
        batch_size=int(args.batch_size or 8), lr=float(args.lr or 3e-4), seed=int(args.seed or 0),
        max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
    )  # fmt: skip
    from ..io.bundle import load_bundle

    sugg = suggest_regions(load_bundle(args.out if args.out else init), images, n=int(args.suggest))
    result["suggest_next"] = sugg.to_dict("records")
    b, a = result["before"]["f1"], result["after_tuned"]["f1"]
    print(f"held-back frames {result['heldout_frames']}: F1 {b:.3f} -> {a:.3f}", file=sys.stderr)
    print(json.dumps(result, default=float))
    return 0
