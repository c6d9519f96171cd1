"""Accuracy against ground truth: detection, segmentation, image, counting and classification metrics.

Detection (localisation) metrics pair predicted and true particles one-to-one with the Hungarian
algorithm, allowing only pairs closer than a tolerance; the assignment first maximises the number
of pairs and then minimises their total distance. Segmentation metrics follow Box 1 of Laine et
al. (IoU, F1 and average precision at IoU thresholds, panoptic quality); image metrics use
scikit-image (SSIM, PSNR, NRMSE) plus the Pearson correlation and RSE and SSIM maps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ..sim.params import check_range

__all__ = [
    "match_truth_tracks",
    "tracking_metrics",
    "average_precision",
    "classification_metrics",
    "counting_metrics",
    "detection_metrics",
    "image_metrics",
    "iou",
    "iou_matrix",
    "match_points",
    "rse_map",
    "segmentation_metrics",
    "ssim_map",
    "uncertainty_calibration",
]


# ---------------------------------------------------------------------------- detection
def match_points(pred, truth, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of points within ``tolerance`` (Hungarian algorithm).

    Parameters
    ----------
    pred : array [N, D]
    truth : array [M, D]
    tolerance : float
        Largest distance of a matched pair (same units as the points).

    Returns
    -------
    pred_idx, truth_idx : int arrays [K]
        Matched pairs (the largest possible number of pairs, then the smallest total distance).
    distance : float array [K]
    """
    check_range("tolerance", tolerance, 0.0, None, low_inclusive=False)
    if len(pred) == 0 or len(truth) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    p = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    t = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    if p.shape[1] != t.shape[1]:
        raise ValueError(
            f"pred and truth must have the same number of coordinates, got {p.shape[1]} and {t.shape[1]}"
        )
    d = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    valid = d <= tolerance
    # forbidden pairs cost more than any set of allowed pairs, so the number of pairs is maximised
    big = tolerance * (min(len(p), len(t)) + 1) + 1.0
    cost = np.where(valid, d, big)
    r, c = linear_sum_assignment(cost)
    ok = valid[r, c]
    return r[ok], c[ok], d[r[ok], c[ok]]


def _rates(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    jaccard = tp / (tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "jaccard": jaccard}


def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) if len(x) else float("nan")


def detection_metrics(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    tolerance_px: float,
    columns: tuple[str, ...] = ("y", "x"),
    per_frame: bool = False,
) -> dict[str, Any]:
    """Match detections to ground truth frame by frame, then pool the counts and errors.

    Parameters
    ----------
    pred, truth : DataFrame
        Tables with ``frame`` (optional; one frame if absent) and the position ``columns``. If both
        have ``z_um`` the z error is reported too (matching uses ``columns`` only).
    tolerance_px : float
        Largest in-plane distance (pixels) of a true positive.
    columns : tuple of str
        Position columns used for matching.
    per_frame : bool
        Also return the metrics of every frame under ``"per_frame"``.

    Returns
    -------
    dict
        ``tp, fp, fn, precision, recall, f1, jaccard, rmse_y, rmse_x, rmse_xy`` (RMSE of the
        in-plane distance), ``rmse_z_um`` when available, ``mean_dy, mean_dx`` (bias, pred - truth),
        ``n_pred, n_truth, n_frames, tolerance_px``.
    """
    for name, df in (("results", pred), ("truth", truth)):
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"{name} table lacks column(s) {missing}; it has {list(df.columns)}")
    pf = pred["frame"].to_numpy() if "frame" in pred else np.zeros(len(pred), np.int64)
    tf = truth["frame"].to_numpy() if "frame" in truth else np.zeros(len(truth), np.int64)
    has_z = "z_um" in pred.columns and "z_um" in truth.columns
    frames = np.union1d(np.unique(pf), np.unique(tf))
    tp = fp = fn = 0
    diffs, dz, rows = [], [], []
    pp = pred[list(columns)].to_numpy(np.float64)
    tt = truth[list(columns)].to_numpy(np.float64)
    for f in frames:  # small per-frame assignment problems; the frames are independent
        pi, ti = np.nonzero(pf == f)[0], np.nonzero(tf == f)[0]
        a, b, _ = match_points(pp[pi], tt[ti], tolerance_px)
        k = len(a)
        ftp, ffp, ffn = k, len(pi) - k, len(ti) - k
        tp, fp, fn = tp + ftp, fp + ffp, fn + ffn
        dd = pp[pi[a]] - tt[ti[b]]
        diffs.append(dd)
        if has_z:
            dz.append(pred["z_um"].to_numpy()[pi[a]] - truth["z_um"].to_numpy()[ti[b]])
        if per_frame:
            row = {"frame": int(f), "tp": ftp, "fp": ffp, "fn": ffn, **_rates(ftp, ffp, ffn)}
            row["rmse_xy"] = _rmse(np.sqrt((dd * dd).sum(1))) if k else float("nan")
            rows.append(row)
    d = np.concatenate(diffs) if diffs else np.zeros((0, len(columns)))
    out: dict[str, Any] = {
        "tolerance_px": float(tolerance_px),
        "n_frames": int(len(frames)),
        "n_pred": int(len(pred)),
        "n_truth": int(len(truth)),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        **_rates(tp, fp, fn),
    }
    for j, c in enumerate(columns):
        out[f"rmse_{c}"] = _rmse(d[:, j])
        out[f"mean_d{c}"] = float(d[:, j].mean()) if len(d) else float("nan")
    out["rmse_xy"] = _rmse(np.sqrt((d * d).sum(1))) if len(d) else float("nan")
    if has_z:
        out["rmse_z_um"] = _rmse(np.concatenate(dz)) if dz else float("nan")
    if per_frame:
        out["per_frame"] = rows
    return out


# ---------------------------------------------------------------------------- segmentation
def iou(mask_pred, mask_true) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(mask_pred) > 0, np.asarray(mask_true) > 0
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def iou_matrix(labels_pred, labels_true) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (predicted, true) object pair, from one contingency table (no loop over objects).

    Returns
    -------
    iou : array [n_pred, n_true]
    pred_ids, true_ids : label values of the rows and columns
    """
    p, t = np.asarray(labels_pred), np.asarray(labels_true)
    if p.shape != t.shape:
        raise ValueError(f"label images must have the same shape, got {p.shape} and {t.shape}")
    pid, pinv = np.unique(p.ravel(), return_inverse=True)
    tid, tinv = np.unique(t.ravel(), return_inverse=True)
    cont = np.bincount(pinv * len(tid) + tinv, minlength=len(pid) * len(tid)).reshape(len(pid), len(tid))
    area_p, area_t = cont.sum(1), cont.sum(0)
    pk, tk = pid != 0, tid != 0
    inter = cont[np.ix_(pk, tk)].astype(np.float64)
    union = area_p[pk][:, None] + area_t[tk][None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0), pid[pk], tid[tk]


def segmentation_metrics(labels_pred, labels_true, iou_threshold: float = 0.5) -> dict[str, float]:
    """Instance segmentation scores at one IoU threshold.

    Objects are paired one-to-one by maximum total IoU (Hungarian), and a pair counts as a true
    positive when its IoU exceeds ``iou_threshold``.

    Returns
    -------
    dict
        ``tp, fp, fn, precision, recall, f1, average_precision`` (TP / (TP + FP + FN), the
        object-level accuracy used by StarDist and Cellpose), ``mean_matched_iou``,
        ``panoptic_quality`` (sum of matched IoU / (TP + FP/2 + FN/2)) and the pixel ``iou`` of the
        foregrounds.
    """
    check_range("iou_threshold", iou_threshold, 0.0, 1.0)
    m, _, _ = iou_matrix(labels_pred, labels_true)
    n_pred, n_true = m.shape
    if n_pred and n_true:
        r, c = linear_sum_assignment(-m)
        ok = m[r, c] > iou_threshold
        matched = m[r, c][ok]
    else:
        matched = np.zeros(0)
    tp = len(matched)
    fp, fn = n_pred - tp, n_true - tp
    rates = _rates(tp, fp, fn)
    denom = tp + 0.5 * fp + 0.5 * fn
    return {
        "iou_threshold": float(iou_threshold),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": rates["precision"],
        "recall": rates["recall"],
        "f1": rates["f1"],
        "average_precision": rates["jaccard"],
        "mean_matched_iou": float(matched.mean()) if tp else 0.0,
        "panoptic_quality": float(matched.sum() / denom) if denom else 1.0,
        "iou": iou(labels_pred, labels_true),
    }


def average_precision(labels_pred, labels_true, thresholds=None) -> dict[str, Any]:
    """Average precision TP / (TP + FP + FN) at each IoU threshold (default 0.5:0.05:0.95) and the mean."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.5, 0.96, 0.05), 2)
    per = {
        float(t): segmentation_metrics(labels_pred, labels_true, float(t))["average_precision"]
        for t in thresholds
    }
    return {"per_threshold": per, "mean": float(np.mean(list(per.values())))}


# ---------------------------------------------------------------------------- images
def _normalize01(img: np.ndarray, low: float = 0.0, high: float = 100.0) -> np.ndarray:
    lo, hi = np.percentile(img, [low, high])
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _prep(pred, truth, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    if p.ndim != 2:
        raise ValueError(f"images must be 2D [H, W], got shape {p.shape}")
    if normalize:
        p, t = _normalize01(p), _normalize01(t)
    return p, t


def rse_map(pred, truth, normalize: bool = True) -> np.ndarray:
    """Root squared error map ``sqrt((P - GT)^2)`` per pixel (images min-max normalised by default)."""
    p, t = _prep(pred, truth, normalize)
    return np.sqrt((p - t) ** 2)


def ssim_map(pred, truth, normalize: bool = True, data_range: float | None = None) -> np.ndarray:
    """Per-pixel SSIM map (scikit-image, 7x7 window)."""
    from skimage.metrics import structural_similarity

    p, t = _prep(pred, truth, normalize)
    dr = data_range if data_range is not None else max(float(t.max() - t.min()), 1e-12)
    _, smap = structural_similarity(t, p, data_range=dr, full=True)
    return smap


def image_metrics(pred, truth, normalize: bool = True, data_range: float | None = None) -> dict[str, float]:
    """Image similarity: SSIM, PSNR (dB), NRMSE, Pearson correlation and mean RSE.

    Both images are min-max normalised first (``normalize=True``), as the metrics are usually
    reported; ``data_range`` defaults to the truth's range.
    """
    from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

    p, t = _prep(pred, truth, normalize)
    dr = data_range if data_range is not None else max(float(t.max() - t.min()), 1e-12)
    mse = float(np.mean((p - t) ** 2))
    pc = p - p.mean()
    tc = t - t.mean()
    den = math.sqrt(float((pc * pc).sum() * (tc * tc).sum()))
    return {
        "ssim": float(structural_similarity(t, p, data_range=dr)),
        "psnr_db": float(peak_signal_noise_ratio(t, p, data_range=dr)) if mse > 0 else float("inf"),
        "nrmse": float(normalized_root_mse(t, p)) if np.any(t) else float("nan"),
        "pearson": float((pc * tc).sum() / den) if den > 0 else float("nan"),
        "mean_rse": float(np.mean(np.sqrt((p - t) ** 2))),
    }


# ---------------------------------------------------------------------------- counting, classes
def counting_metrics(pred_counts, true_counts) -> dict[str, float]:
    """MAE, mean relative error |pred - true| / true (images with true > 0), bias, exact-count rate."""
    p = np.asarray(pred_counts, dtype=np.float64).ravel()
    t = np.asarray(true_counts, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred_counts and true_counts must have the same length, got {p.size} and {t.size}")
    err = p - t
    pos = t > 0
    return {
        "n_images": int(p.size),
        "mae": float(np.abs(err).mean()) if p.size else float("nan"),
        "relative_error": float((np.abs(err[pos]) / t[pos]).mean()) if pos.any() else float("nan"),
        "bias": float(err.mean()) if p.size else float("nan"),
        "exact_fraction": float((np.round(p) == t).mean()) if p.size else float("nan"),
    }


def classification_metrics(pred_labels, true_labels, n_classes: int | None = None) -> dict[str, Any]:
    """Accuracy and confusion matrix (rows: true class, columns: predicted class)."""
    p = np.asarray(pred_labels, dtype=np.int64).ravel()
    t = np.asarray(true_labels, dtype=np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred_labels and true_labels must have the same length, got {p.size} and {t.size}")
    if (p < 0).any() or (t < 0).any():
        raise ValueError("class labels must be >= 0")
    k = int(n_classes) if n_classes is not None else int(max(p.max(initial=-1), t.max(initial=-1)) + 1)
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    return {"accuracy": float((p == t).mean()) if p.size else float("nan"), "confusion_matrix": cm.tolist()}


# ---------------------------------------------------------------------------- tracking
def match_truth_tracks(detections: pd.DataFrame, truth: pd.DataFrame, tolerance_px: float) -> np.ndarray:
    """The true track id matched to every detection (-1: false detection), frame by frame.

    Detections and truth are tables ``frame, y, x`` (px); truth also has ``track_id``. Points are
    matched one-to-one within ``tolerance_px`` (:func:`match_points`).
    """
    out = np.full(len(detections), -1, dtype=np.int64)
    df = detections["frame"].to_numpy()
    tf = truth["frame"].to_numpy()
    dp = detections[["y", "x"]].to_numpy(np.float64)
    tp = truth[["y", "x"]].to_numpy(np.float64)
    tid = truth["track_id"].to_numpy()
    for f in np.unique(df):  # small assignment problem per frame (evaluation, not a hot path)
        di, ti = np.nonzero(df == f)[0], np.nonzero(tf == f)[0]
        a, b, _ = match_points(dp[di], tp[ti], tolerance_px)
        out[di[a]] = tid[ti[b]]
    return out


def tracking_metrics(tracks: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """How well the links follow the true particles.

    ``tracks`` needs ``track_id, frame`` and ``truth_track_id`` (the true particle each detection
    was matched to, -1 for false detections). A link joins consecutive points of a measured track;
    it is correct when both points belong to the same true particle.

    Returns
    -------
    dict
        ``n_tracks``, ``n_true_tracks``, ``mean_track_length``, ``mean_true_track_length``,
        ``n_links``, ``link_accuracy`` (correct links / links between two matched detections),
        ``track_purity`` (mean fraction of a track's matched points on its majority true particle).
    """
    t = tracks.sort_values(["track_id", "frame"], kind="stable")
    same_track = t["track_id"].to_numpy()[1:] == t["track_id"].to_numpy()[:-1]
    a, b = t["truth_track_id"].to_numpy()[:-1], t["truth_track_id"].to_numpy()[1:]
    matched = same_track & (a >= 0) & (b >= 0)
    correct = matched & (a == b)
    m = t[t["truth_track_id"] >= 0]
    if len(m):
        counts = m.groupby(["track_id", "truth_track_id"]).size()
        purity = float((counts.groupby(level=0).max() / counts.groupby(level=0).sum()).mean())
    else:
        purity = float("nan")
    present = truth[truth["present"]]
    return {
        "n_tracks": int(t["track_id"].nunique()),
        "n_true_tracks": int(present["track_id"].nunique()),
        "mean_track_length": float(t.groupby("track_id").size().mean()) if len(t) else 0.0,
        "mean_true_track_length": float(present.groupby("track_id").size().mean()) if len(present) else 0.0,
        "n_links": int(same_track.sum()),
        "link_accuracy": float(correct.sum() / matched.sum()) if matched.any() else float("nan"),
        "track_purity": purity,
    }


def uncertainty_calibration(errors, sigmas) -> dict[str, float]:
    """How well claimed 1-sigma uncertainties describe the actual errors.

    Parameters
    ----------
    errors : array [N] or [N, K]
        Estimate minus truth (e.g. ``y - y_true`` and ``x - x_true`` in pixels).
    sigmas : array like ``errors``
        The claimed standard deviations (e.g. the ``y_sigma`` and ``x_sigma`` columns of a
        localisation result), same units.

    Returns
    -------
    dict
        ``rmse`` and ``rms_sigma`` (over all entries); ``ratio`` = rmse / rms_sigma (1: calibrated,
        > 1: over-confident, < 1: conservative); ``z_std``, the standard deviation of
        ``error / sigma`` (1 for calibrated Gaussian errors); ``coverage_1sigma`` and
        ``coverage_2sigma``, the fractions with ``|error| <= sigma`` and ``<= 2 sigma`` (0.683 and
        0.954 for calibrated Gaussian errors); ``n``.
    """
    e = np.asarray(errors, dtype=np.float64).ravel()
    s = np.asarray(sigmas, dtype=np.float64).ravel()
    if e.shape != s.shape:
        raise ValueError(f"errors and sigmas must have the same shape, got {e.size} and {s.size} values")
    ok = np.isfinite(e) & np.isfinite(s)
    if not ok.any():
        raise ValueError("no finite (error, sigma) pairs")
    if (s[ok] <= 0).any():
        raise ValueError("sigmas must be > 0")
    e, s = e[ok], s[ok]
    z = e / s
    rmse, rms_sigma = float(np.sqrt(np.mean(e**2))), float(np.sqrt(np.mean(s**2)))
    return {
        "n": int(e.size),
        "rmse": rmse,
        "rms_sigma": rms_sigma,
        "ratio": rmse / rms_sigma,
        "z_std": float(np.sqrt(np.mean(z**2))),
        "coverage_1sigma": float(np.mean(np.abs(z) <= 1.0)),
        "coverage_2sigma": float(np.mean(np.abs(z) <= 2.0)),
    }
