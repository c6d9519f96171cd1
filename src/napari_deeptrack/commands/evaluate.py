"""``napari-deeptrack evaluate RESULTS.csv TRUTH.csv --tolerance PX [--tracks]``: metrics as JSON.

Detections and true particles are matched one-to-one within the tolerance, frame by frame
(Hungarian algorithm), then the counts and errors are pooled over all frames.

With ``--tracks`` (both tables have a ``track_id`` column) the linked tracks are scored too, under
``"tracking"``: the ISBI 2012 particle-tracking challenge measures (``isbi``: alpha, beta, Jaccard of
tracks and of points, RMSE of matched points within ``--gate-px``) and the Cell Tracking Challenge / MOT
measures (``ctc``: DET, TRA, LNK, MOTA, IDF1, HOTA, CHOTA). A table missing a needed column is refused
naming the file and the column.
"""

from __future__ import annotations

import argparse
import json
import math

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="detection (and, with --tracks, tracking) metrics of a results CSV against a ground truth",
        description=(
            "Match detections to true particles frame by frame within a tolerance (Hungarian algorithm) "
            "and print TP, FP, FN, precision, recall, F1, Jaccard and RMSE (y, x, in-plane, z) as JSON. "
            "With --tracks (both tables have track_id) also the tracking measures: ISBI 2012 (alpha, "
            "beta, Jaccard of tracks and points, RMSE within --gate-px) and CTC / MOT (DET, TRA, LNK, "
            "MOTA, IDF1, HOTA, CHOTA)."
        ),
    )
    p.add_argument("results", help="results CSV (frame,y,x,...) from `napari-deeptrack apply`")
    p.add_argument(
        "truth", help="ground-truth CSV in the same layout (e.g. from `napari-deeptrack simulate`)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=2.0,
        metavar="PX",
        help="largest distance of a true positive in pixels (default 2)",
    )
    p.add_argument("--per-frame", action="store_true", help="also list the metrics of every frame")
    p.add_argument("--out", default=None, metavar="JSON", help="also write the metrics to this file")
    p.add_argument(
        "--tracks",
        action="store_true",
        help="both tables have track_id: also report the ISBI 2012 particle-tracking measures (alpha, beta, "
        "Jaccard of tracks and points, RMSE) and the CTC / MOT measures (DET, TRA, MOTA, IDF1, HOTA...)",
    )
    p.add_argument(
        "--gate-px",
        type=float,
        default=5.0,
        metavar="PX",
        help="ISBI gate: farthest a predicted point may be from its true point, in pixels "
        "(default 5, the challenge's; with --tracks)",
    )
    return p


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def run(args) -> int:
    from ..analysis.metrics import detection_metrics
    from ..errors import InputError
    from ..io.atomic import atomic_write_text, check_output_file
    from ..io.tables import read_results_csv, read_truth_csv

    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise InputError(f"--tolerance must be a finite number > 0 pixels, got {args.tolerance}")
    if args.out:
        check_output_file(args.out, "--out")
    tracks = bool(getattr(args, "tracks", False))
    if tracks and not (math.isfinite(args.gate_px) and args.gate_px > 0):
        raise InputError(f"--gate-px must be a finite number > 0 pixels, got {args.gate_px}")
    pred = read_results_csv(args.results)
    truth = read_truth_csv(args.truth)
    needed = ["frame", "y", "x"] + (["track_id"] if tracks else [])
    for label, path, df in (("results", args.results, pred), ("truth", args.truth, truth)):
        missing = [c for c in needed if c not in df.columns]
        if missing:
            why = " (needed by --tracks)" if missing == ["track_id"] else ""
            raise InputError(
                f"{label} file {path} lacks column(s) {missing}{why}; it has {list(df.columns)}",
                parameter=label,
            )
    metrics = detection_metrics(pred, truth, args.tolerance, per_frame=args.per_frame)
    if tracks:
        from ..analysis.tracking_metrics import ctc_tracking_metrics, isbi_tracking_scores

        metrics["tracking"] = {
            "isbi": isbi_tracking_scores(pred, truth, gate_px=args.gate_px),
            "ctc": ctc_tracking_metrics(pred, truth),
        }
    metrics = _clean(metrics)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0
