"""Tracking scored with the field's measures.

:func:`isbi_tracking_scores` implements the ISBI 2012 particle tracking challenge measures
(Chenouard et al., *Objective comparison of particle tracking methods*, Nat. Methods 11, 281-289,
2014), from the paper's definitions:

- the distance between a true track theta and an estimated track omega is
  ``d(theta, omega) = sum_t ||theta(t) - omega(t)||_{2,eps}`` over the frames of either track, where
  ``||.||_{2,eps} = min(||.||_2, eps)`` and a point missing from one of the two tracks counts ``eps``
  (the gate, 5 px in the challenge);
- every true track is paired with one estimated track or with a dummy (empty) track so that the sum
  of distances is smallest (Hungarian algorithm; a pairing no better than the dummy is not made);
- ``alpha = 1 - d(X, Y*) / d(X, 0)``, with ``d(X, 0) = eps x`` (number of true points): 1 for
  perfect tracks, 0 for none; it ignores spurious tracks;
- ``beta = (d(X, 0) - d(X, Y*)) / (d(X, 0) + d(Y_bar, 0))``, with ``Y_bar`` the estimated tracks
  left unpaired (spurious), so ``beta <= alpha`` penalises them;
- track Jaccard ``JSC_theta = TP / (TP + FN + FP)`` with TP the true tracks paired with an estimated
  track, FN those paired with a dummy, FP the spurious estimated tracks;
- point Jaccard ``JSC = TP / (TP + FN + FP)`` over the points of paired tracks closer than the gate
  (TP), the true points left (FN) and the estimated points left (FP, spurious tracks included);
- ``rmse_px``: root mean square distance of the TP point pairs.

:func:`ctc_tracking_metrics` gives the Cell Tracking Challenge and MOT measures (DET, TRA, LNK,
MOTA, IDF1, HOTA, CHOTA...) through ``py-ctcmetrics`` (a maintained implementation), by drawing both
tables as CTC label folders.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

__all__ = ["CTC_METRICS", "ctc_tracking_metrics", "isbi_tracking_scores"]

CTC_METRICS = ("DET", "TRA", "LNK", "MOTA", "IDF1", "HOTA", "CHOTA")


def _check(df: pd.DataFrame, name: str, columns) -> None:
    missing = [c for c in ("frame", *columns, "track_id") if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(df.columns)}")
    if df.duplicated(["track_id", "frame"]).any():
        raise ValueError(f"{name}: a track has two points in one frame")


def isbi_tracking_scores(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    gate_px: float = 5.0,
    columns: tuple[str, ...] = ("y", "x"),
) -> dict:
    """ISBI 2012 particle tracking challenge measures of ``pred`` tracks against ``truth`` tracks.

    Parameters
    ----------
    pred, truth : DataFrame
        ``frame``, position ``columns`` (pixels) and ``track_id``.
    gate_px : float
        The gate eps (5 px in the challenge).
    columns : tuple of str
        Position columns.

    Returns
    -------
    dict
        ``alpha, beta, jaccard_tracks, jaccard_points, rmse_px`` and the counts behind them
        (``tp_tracks, fn_tracks, fp_tracks, tp_points, fn_points, fp_points``), ``gate_px``,
        ``n_true_tracks``, ``n_pred_tracks``.
    """
    if not gate_px > 0:
        raise ValueError(f"gate_px must be > 0, got {gate_px}")
    _check(pred, "pred", columns)
    _check(truth, "truth", columns)
    eps = float(gate_px)
    cols = list(columns)
    t_ids, t_idx = np.unique(truth["track_id"].to_numpy(), return_inverse=True)
    p_ids, p_idx = np.unique(pred["track_id"].to_numpy(), return_inverse=True)
    k, m = len(t_ids), len(p_ids)
    n_t = np.bincount(t_idx, minlength=k).astype(float)
    n_p = np.bincount(p_idx, minlength=m).astype(float)
    a = pd.DataFrame(
        {"frame": truth["frame"].to_numpy(), "ti": t_idx, **{c: truth[c].to_numpy(float) for c in cols}}
    )
    b = pd.DataFrame(
        {"frame": pred["frame"].to_numpy(), "pi": p_idx, **{c: pred[c].to_numpy(float) for c in cols}}
    )
    pairs = a.merge(b, on="frame", suffixes=("_t", "_p"))  # every true point with every estimate of its frame
    dist = np.sqrt(sum((pairs[f"{c}_t"].to_numpy() - pairs[f"{c}_p"].to_numpy()) ** 2 for c in cols))
    pairs = pairs.assign(dist=dist)
    # d(theta_k, omega_l) = eps (n_k + m_l) + sum over common frames of (min(d, eps) - 2 eps)
    cost = eps * (n_t[:, None] + n_p[None, :])
    if len(pairs):
        gain = np.minimum(dist, eps) - 2 * eps
        np.add.at(cost, (pairs["ti"].to_numpy(), pairs["pi"].to_numpy()), gain)
    d_dummy = eps * n_t
    # pairing: estimated tracks plus one dummy per true track; a pair no better than the dummy is refused
    big = float(d_dummy.sum() + eps * n_p.sum() + 1.0)
    full = np.full((k, m + k), big)
    full[:, :m] = np.where(cost < d_dummy[:, None] - 1e-12, cost, big)
    full[np.arange(k), m + np.arange(k)] = d_dummy
    rows, cols_ = linear_sum_assignment(full) if k else (np.zeros(0, int), np.zeros(0, int))
    paired = cols_ < m
    d_xy = float(full[rows, cols_].sum())
    d_x0 = float(d_dummy.sum())
    used = np.zeros(m, bool)
    used[cols_[paired]] = True
    d_ybar = float(eps * n_p[~used].sum())
    alpha = 1.0 - d_xy / d_x0 if d_x0 > 0 else float("nan")
    beta = (d_x0 - d_xy) / (d_x0 + d_ybar) if d_x0 + d_ybar > 0 else float("nan")
    tp_tr, fn_tr, fp_tr = int(paired.sum()), int(k - paired.sum()), int((~used).sum())
    # points: pairs of the paired tracks, same frame, closer than the gate
    partner = np.full(k, -1)
    partner[rows[paired]] = cols_[paired]
    if len(pairs):
        close = (partner[pairs["ti"].to_numpy()] == pairs["pi"].to_numpy()) & (pairs["dist"].to_numpy() < eps)
        d_tp = pairs["dist"].to_numpy()[close]
    else:
        d_tp = np.zeros(0)
    tp = int(len(d_tp))
    fn = int(len(truth) - tp)
    fp = int(len(pred) - tp)

    def jac(tp_, fn_, fp_):
        s = tp_ + fn_ + fp_
        return tp_ / s if s else float("nan")

    return {
        "alpha": float(alpha),
        "beta": float(beta),
        "jaccard_tracks": jac(tp_tr, fn_tr, fp_tr),
        "jaccard_points": jac(tp, fn, fp),
        "rmse_px": float(np.sqrt(np.mean(d_tp**2))) if tp else float("nan"),
        "tp_tracks": tp_tr,
        "fn_tracks": fn_tr,
        "fp_tracks": fp_tr,
        "tp_points": tp,
        "fn_points": fn,
        "fp_points": fp,
        "gate_px": eps,
        "n_true_tracks": int(k),
        "n_pred_tracks": int(m),
    }


def ctc_tracking_metrics(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    image_shape: tuple[int, int] | None = None,
    radius_px: float = 2.0,
    metrics: tuple[str, ...] = CTC_METRICS,
) -> dict:
    """Cell Tracking Challenge / MOT measures through ``py-ctcmetrics``.

    Both tables are drawn as CTC label folders (disks of ``radius_px``; a detection matches a true
    particle when its disk covers more than half of the true disk, the CTC rule) and scored by
    ``ctc_metrics.evaluate_sequence``.

    Returns
    -------
    dict
        One value per name in ``metrics`` (and ``Valid``).

    Raises
    ------
    ValueError
        ``py-ctcmetrics`` is not installed, or the tables lack ``frame, y, x, track_id``.
    """
    try:
        from ctc_metrics import evaluate_sequence
    except ImportError as exc:
        raise ValueError("CTC metrics need py-ctcmetrics (pip install py-ctcmetrics)") from exc
    from ..io.ctc import write_ctc

    _check(pred, "pred", ("y", "x"))
    _check(truth, "truth", ("y", "x"))
    n = int(max(pred["frame"].max() if len(pred) else 0, truth["frame"].max() if len(truth) else 0)) + 1
    if image_shape is None:
        both = pd.concat([pred[["y", "x"]], truth[["y", "x"]]])
        image_shape = (
            int(np.ceil(both["y"].max() + radius_px + 2)),
            int(np.ceil(both["x"].max() + radius_px + 2)),
        )
    with tempfile.TemporaryDirectory(prefix="ctc-") as tmp:
        res = write_ctc(pred, Path(tmp) / "RES", image_shape, radius_px, n_frames=n)
        write_ctc(truth, Path(tmp) / "GT", image_shape, radius_px, n_frames=n, kind="gt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                out = evaluate_sequence(str(res), str(Path(tmp) / "GT"), metrics=list(metrics), threads=1)
    return {key: (None if v is None else float(v)) for key, v in out.items()}
