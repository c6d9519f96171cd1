"""Choose a detection model's post-processing (threshold, minimum signal) on images of known truth.

A U-Net's probability map needs a decision threshold, and at high signal-to-noise ratios a brightness
filter (``min_signal``: the detection's integrated normalised input, trackpy's ``minmass``) removes the
noise clusters that a detector trained to find faint particles also flags. Both are chosen here for
the best F1 against known positions:

- :func:`tune_detection` on given maps and truth (annotated real frames, simulated frames);
- :func:`tune_on_validation` on a training run's simulated validation set, so that a freshly trained
  bundle stores post-processing chosen on data it was not trained on (``train_task`` does this for
  every probability-map detection task), instead of a hand-set constant.

The brightness filter is tuned only when the input normalisation is the robust z-score
(``{"mode": "robust"}``): there ``signal`` is in background-noise units, the same on every image,
so a value chosen on one set of images transfers to another.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .detect import detect_from_map
from .metrics import detection_metrics, match_points

__all__ = ["THRESHOLD_GRID", "measure_noise_model", "tune_detection", "tune_on_validation", "tunable"]

#: decision thresholds tried
THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: quantiles of the candidates' signals tried as ``min_signal`` (0: no filter)
SIGNAL_QUANTILES = np.linspace(0.0, 0.5, 26)


def tunable(task) -> bool:
    """Whether ``task`` is a detection task whose output is a probability map this module can tune.

    ``postprocess.tune: false`` keeps the task's own threshold and ``min_signal`` (set when the user
    chose them: ``train --set postprocess.threshold=0.6``, the demo's settings).
    """
    pp = task.postprocess or {}
    return (
        pp.get("tune", True) is not False
        and task.kind == "detection"
        and pp.get("method", "components") in ("components", "maxima")
        and (pp.get("activation") == "sigmoid")
    )


def _detect(maps, thr: float, pp: dict, image) -> pd.DataFrame:
    return detect_from_map(
        maps,
        thr,
        method=pp.get("method", "components"),
        min_distance_px=float(pp.get("disk_radius_px", 3.0)),
        image=image,
        signal_radius_px=float(pp.get("signal_radius_px", pp.get("disk_radius_px", 3.0))),
    )


def _matched(det: pd.DataFrame, truth: pd.DataFrame, tol: float) -> np.ndarray:
    """Whether each detection is matched one-to-one to a true object (per frame, within ``tol``)."""
    ok = np.zeros(len(det), bool)
    if len(det) == 0 or len(truth) == 0:
        return ok
    pf, tf = det["frame"].to_numpy(), truth["frame"].to_numpy()
    pp, tt = det[["y", "x"]].to_numpy(np.float64), truth[["y", "x"]].to_numpy(np.float64)
    for f in np.unique(pf):
        pi, ti = np.nonzero(pf == f)[0], np.nonzero(tf == f)[0]
        if len(ti):
            a, _, _ = match_points(pp[pi], tt[ti], tol)
            ok[pi[a]] = True
    return ok


def tune_detection(
    maps,
    truth: pd.DataFrame,
    tolerance_px: float,
    image=None,
    postprocess: dict | None = None,
    thresholds: tuple[float, ...] = THRESHOLD_GRID,
) -> dict[str, Any]:
    """Threshold (and ``min_signal`` when ``image`` is given) with the best F1 against ``truth``.

    Parameters
    ----------
    maps : array [T, H, W]
        Probability maps (after the activation).
    truth : DataFrame
        ``frame, y, x`` of every object in the frames (frames with none count: their detections are
        false positives).
    tolerance_px : float
        Largest distance of a match.
    image : array [T, H, W], optional
        The normalised network input: when given, ``min_signal`` is tuned too, over quantiles 0-50 %
        of the candidates' signals (0: no filter).
    postprocess : dict, optional
        The task's post-processing (method, disk and signal radius).
    thresholds : tuple of float
        Thresholds tried.

    Returns
    -------
    dict
        ``threshold``, ``min_signal`` (None when not tuned or when no filter is best), ``f1``,
        ``precision``, ``recall``, ``n_truth``. Ties go to the threshold nearest 0.5 and the weaker
        filter (a choice that changes nothing measurable should not move far from the defaults).
    """
    pp = dict(postprocess or {})
    n_truth = len(truth)
    best: tuple | None = None
    for thr in thresholds:
        cands = _detect(maps, float(thr), pp, image)
        # one matching per threshold; a brightness filter then only removes detections (counting the
        # matches it keeps is exact unless a removed match would have freed a truth for another one)
        ok = _matched(cands, truth, float(tolerance_px))
        signals = [None]
        if image is not None and len(cands):
            qs = np.unique(np.quantile(cands["signal"].to_numpy(), SIGNAL_QUANTILES[1:]))
            signals += [float(q) for q in qs]
        for ms in signals:
            keep = np.ones(len(cands), bool) if ms is None else cands["signal"].to_numpy() >= ms
            tp = int(np.sum(ok & keep))
            f1 = 2.0 * tp / max(int(keep.sum()) + n_truth, 1)
            key = (round(f1, 6), -abs(float(thr) - 0.5), 0 if ms is None else -ms)
            if best is None or key > best[0]:
                best = (key, float(thr), ms, cands[keep])
    assert best is not None
    _, thr, ms, det = best
    m = detection_metrics(det, truth, float(tolerance_px))
    return {
        "threshold": thr,
        "min_signal": ms,
        "f1": float(m["f1"]),
        "precision": float(m["precision"]),
        "recall": float(m["recall"]),
        "n_truth": int(m["n_truth"]),
    }


@torch.no_grad()
def tune_on_validation(task, model: torch.nn.Module, validation, device: str | torch.device = "cpu") -> dict:
    """Post-processing of a detection model tuned on its simulated validation set.

    Parameters
    ----------
    task : Task
        A :func:`tunable` detection task.
    model : Module
        The trained network.
    validation : ValidationSet
        Normalised images and their scene (the ground truth); the images were never trained on.
    device : str or device

    Returns
    -------
    dict
        The keys to merge into ``task.postprocess``: ``threshold``, ``min_signal`` (None unless the
        filter helps and the normalisation is robust) and ``tuned_on`` (what was tuned on, and the F1
        there). Empty when the validation set has no scene or no object.
    """
    from ..io.tables import scene_to_table

    if validation is None or validation.scene is None or len(validation) == 0:
        return {}
    truth = scene_to_table(validation.scene)
    # only the particles the network is trained to find: a target drawn for a depth range (in-focus
    # spheres) leaves out-of-focus distractors out of the truth
    z_range = getattr((task.pipeline.targets or {}).get(task.target), "z_range_um", None)
    if z_range is not None and len(truth):
        truth = truth[(truth["z_um"] >= float(z_range[0])) & (truth["z_um"] <= float(z_range[1]))]
    if len(truth) == 0:
        return {}
    pp = task.postprocess or {}
    model.eval()
    dev = torch.device(device)
    outs = []
    for x, _ in validation.batches(32):
        outs.append(torch.sigmoid(model(x.to(dev))).cpu())
    maps = torch.cat(outs)[:, 0].numpy()
    tol = float(pp.get("match_distance_px", 2.0))
    best = tune_detection(maps, truth, tol, postprocess=pp)
    out: dict[str, Any] = {"threshold": best["threshold"], "min_signal": None}
    note = (
        f"simulated validation set ({len(validation)} images, {best['n_truth']} objects, match {tol:g} px): "
        f"threshold {best['threshold']:g}, F1 {best['f1']:.3f} (precision {best['precision']:.3f}, "
        f"recall {best['recall']:.3f})"
    )
    if (task.input_normalization or {}).get("mode") == "robust":
        # the brightness filter adapts to each frame (analysis.detect.adaptive_min_signal): a fixed
        # min_signal cannot suit both faint and bright particles, whose signals differ 20-fold
        n_noise = max(16, 2 * len(validation))  # 256 images of 128 x 128 for 128 validation images
        seed = validation.seed or 0
        noise = measure_noise_model(task, model, best["threshold"], n_noise, device=dev, seed=seed)
        auto = detection_metrics(
            detect_from_map(
                maps, best["threshold"], method=pp.get("method", "components"),
                min_distance_px=float(pp.get("disk_radius_px", 3.0)), image=validation.images[:, 0].numpy(),
                min_signal="auto", noise_model=noise,
                signal_radius_px=float(pp.get("signal_radius_px", pp.get("disk_radius_px", 3.0))),
            ),
            truth, tol,
        )  # fmt: skip
        note += f"; with min_signal 'auto' F1 {auto['f1']:.3f}"
        if auto["f1"] >= best["f1"] - 0.005:
            out.update({"min_signal": "auto", "noise_model": noise})
        note += (
            f"; noise model: {len(noise['signals'])} detections in {noise['pixels']} px of simulated images "
            "without objects"
        )
    out["tuned_on"] = note
    return out


@torch.no_grad()
def measure_noise_model(
    task,
    model: torch.nn.Module,
    threshold: float,
    n_images: int = 256,
    image_px: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Signals of the detections a network makes at ``threshold`` in simulated images with no object.

    The task's own simulation with its particles removed (background and noise as in training), run
    through the network and :func:`~.detect.detect_from_map`; the model of
    :func:`~.detect.adaptive_min_signal`.

    Returns
    -------
    dict
        ``signals`` (sorted, rounded to 0.01) and ``pixels`` (pixels examined).
    """
    from ..sim.noise import normalize_input as normalize

    pp = task.postprocess or {}
    pipe = task.pipeline.with_(image_shape=(int(image_px), int(image_px)), particles=[], targets={})
    model.eval()
    dev = torch.device(device)
    signals = []
    chunk = 32
    for i in range(0, int(n_images), chunk):
        batch = pipe(min(chunk, int(n_images) - i), seed=int(seed) + 7919 + i)
        x = normalize(batch.image, task.input_normalization)
        maps = torch.sigmoid(model(x.to(dev))).cpu()[:, 0].numpy()
        det = detect_from_map(
            maps, float(threshold), method=pp.get("method", "components"),
            min_distance_px=float(pp.get("disk_radius_px", 3.0)), image=x[:, 0].numpy(),
            signal_radius_px=float(pp.get("signal_radius_px", pp.get("disk_radius_px", 3.0))),
        )  # fmt: skip
        signals.append(det["signal"].to_numpy())
    sig = np.sort(np.round(np.concatenate(signals), 2)) if signals else np.zeros(0)
    return {"signals": [float(v) for v in sig], "pixels": int(n_images) * int(image_px) ** 2}
