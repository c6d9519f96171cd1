"""Detection benchmark: the ``particles-2d`` U-Net vs trackpy.locate tuned for its best F1.

256x256 frames with 50 fluorescent point particles (the preset's optics, background 10 photons per
pixel, Poisson noise, particles at least 7 px apart), at shot-noise signal-to-noise ratios
``SNR = peak / sqrt(peak + background)`` of 1.5, 2, 3, 5 and 10 (``peak``: expected photons in the
brightest pixel of a particle above background; the photon count per particle is set from it).

- ``unet``: the preset's U-Net, trained with its default settings within ``--max-minutes`` on the
  CPU (or loaded from ``benchmarks/.cache/``); detections are the probability-weighted centroids of
  the thresholded map with the bundle's own post-processing, from
  :func:`napari_deeptrack.analysis.predict.predict`: the threshold and ``min_signal`` that training
  chose on its simulated validation set (``analysis.tune_detection``; nothing from these frames).
  ``unet_thr05``: the preset's former fixed threshold 0.5 without the brightness filter.
  ``unet_tuned``: the threshold tuned on the tuning frames; ``unet_signal``: threshold and
  ``min_signal`` (the detection's summed normalised input within 3 px, trackpy's minmass for the
  U-Net) tuned together on the tuning frames.
- ``trackpy``: ``trackpy.locate`` with ``diameter``, ``separation`` and ``minmass`` chosen on
  separate tuning frames of the same SNR for the best F1 (grid: diameter 5, 7, 9; separation
  diameter or diameter + 2; minmass at 25 quantiles of the candidate masses); the chosen
  parameters are then run on the test frames. ``trackpy_default_dD``: ``locate(diameter=D)`` with
  trackpy's defaults otherwise (minmass 0), D = 5, 7, 9 (what "no tuning" means for trackpy).

For each SNR: F1 (one-to-one matching within 2 px), precision, recall, RMSE of matched positions
(per axis, px) and frames per second (whole pipeline: normalisation, network or trackpy, post-
processing). Targets (issue 5): U-Net F1 >= 0.95 at SNR >= 3, and at least trackpy's best F1 at
every SNR. Output: JSON lines.

Usage::

    python benchmarks/bench_detection.py                 # train (or load cached) + measure
    python benchmarks/bench_detection.py --dry-run       # tiny settings, checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import cached_or_trained_bundle

from napari_deeptrack.analysis.baselines import locate_trackpy
from napari_deeptrack.analysis.detect import detect_from_map
from napari_deeptrack.analysis.metrics import detection_metrics
from napari_deeptrack.analysis.predict import predict
from napari_deeptrack.io.tables import scene_to_table
from napari_deeptrack.sim import Background, Constant, Particles, Poisson
from napari_deeptrack.sim.scene import Scene
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train import normalize

SNRS = [1.5, 2.0, 3.0, 5.0, 10.0]
BACKGROUND = 10.0
SHAPE = (256, 256)
N_PARTICLES = 50
TOLERANCE_PX = 2.0
TRACKPY_DEFAULT_DIAMETERS = (5, 7, 9)
CACHE = Path(__file__).resolve().parent / ".cache"


def emit(record: dict) -> None:
    base = {
        "bench": "detection",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    print(json.dumps({**base, **record}), flush=True)


def peak_fraction(optics, n: int = 64, seed: int = 0) -> float:
    """Mean fraction of a particle's photons in its brightest pixel (over random sub-pixel positions)."""
    from napari_deeptrack.sim import PointParticle

    g = torch.Generator().manual_seed(seed)
    sc = Scene.empty(n, 1, (16, 16))
    sc.present[:] = True
    sc.position[:, 0, :2] = 7.5 + torch.rand(n, 2, generator=g)
    sc.intensity[:] = 1.0
    img = optics.render(sc, [PointParticle()], g)
    return float(img.flatten(1).amax(1).mean())


def photons_for_snr(snr: float, background: float, frac: float) -> float:
    """Photons per particle whose peak pixel gives ``peak / sqrt(peak + background) = snr``."""
    peak = 0.5 * (snr * snr + snr * math.sqrt(snr * snr + 4 * background))
    return peak / frac


def frames_pipeline(task, photons: float):
    base = task.pipeline
    pop = base.particles[0]
    particles = [
        Particles(
            pop.scatterer, count=N_PARTICLES, z_um=pop.z_um, intensity=Constant(float(photons)), margin_px=2.0
        )
    ]
    return base.with_(
        image_shape=SHAPE,
        particles=particles,
        transforms=[Background(level=BACKGROUND), Poisson()],
        targets={},
    )


def get_bundle(args):
    path = Path(args.cache_dir) / ("particles-2d-dry.zip" if args.dry_run else "particles-2d.zip")
    return cached_or_trained_bundle(
        path,
        get_preset("particles-2d"),
        retrain=args.retrain,
        max_minutes=args.max_minutes,
        emit=emit,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        device=args.device,
        seed=args.seed,
    )

def _f1_grid(cands: pd.DataFrame, truth: pd.DataFrame, n_q: int = 25) -> tuple[float, float]:
    """Best F1 over minmass thresholds applied to the candidates (quantiles of their masses)."""
    if len(cands) == 0:
        return 0.0, 0.0
    best = (-1.0, 0.0)
    for mm in np.unique(np.quantile(cands["mass"], np.linspace(0, 0.98, n_q))):
        f1 = detection_metrics(cands[cands["mass"] >= mm], truth, TOLERANCE_PX)["f1"]
        best = max(best, (f1, float(mm)))
    return best


def tune_trackpy(images: np.ndarray, truth: pd.DataFrame) -> dict:
    best = {"f1": -1.0}
    for d in (5, 7, 9):
        for sep in (d, d + 2):
            cands = locate_trackpy(images, diameter=d, minmass=0.0, separation=sep)
            f1, mm = _f1_grid(cands, truth)
            if f1 > best["f1"]:
                best = {"f1": f1, "diameter": d, "separation": sep, "minmass": mm}
    return best


def tune_threshold(maps: np.ndarray, truth: pd.DataFrame) -> float:
    """Decision threshold of the probability map with the best F1 on tuning frames."""
    grid = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    f1 = [detection_metrics(detect_from_map(maps, t), truth, TOLERANCE_PX)["f1"] for t in grid]
    return float(grid[int(np.argmax(f1))])


def tune_threshold_signal(maps: np.ndarray, norm: np.ndarray, truth: pd.DataFrame) -> tuple[float, float]:
    """Threshold and ``min_signal`` (like trackpy's minmass) with the best F1 on tuning frames.

    ``norm``: the network's normalised input; a detection's signal is its sum within 3 px.
    Ties are broken as in trackpy's tuning: the higher ``min_signal`` at one threshold (as
    ``_f1_grid`` prefers the higher minmass), the first threshold across thresholds.
    """
    best = (-1.0, 0.5, -math.inf)
    for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        cands = detect_from_map(maps, t, image=norm)
        if len(cands) == 0:
            continue
        f1, ms = max(
            (detection_metrics(cands[cands["signal"] >= ms], truth, TOLERANCE_PX)["f1"], float(ms))
            for ms in np.unique(np.quantile(cands["signal"], np.linspace(0, 0.98, 25)))
        )
        if f1 > best[0]:
            best = (f1, t, ms)
    return best[1], best[2]


def _summary(det: pd.DataFrame, truth: pd.DataFrame) -> dict:
    m = detection_metrics(det, truth, TOLERANCE_PX)
    rmse = math.sqrt((m["rmse_y"] ** 2 + m["rmse_x"] ** 2) / 2) if m["tp"] else float("nan")
    return {"f1": m["f1"], "precision": m["precision"], "recall": m["recall"], "rmse_px": rmse}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10, help="test frames per SNR")
    ap.add_argument("--tune-frames", type=int, default=4, help="frames for tuning trackpy per SNR")
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the preset's)")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="training time budget")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=str(CACHE))
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="tiny settings: checks that everything runs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        args.frames, args.tune_frames, args.epochs, args.steps = 2, 1, 1, 3
    bundle = get_bundle(args)
    task = get_preset("particles-2d")
    frac = peak_fraction(task.pipeline.optics)
    rows = []
    for k, snr in enumerate(SNRS):
        photons = photons_for_snr(snr, BACKGROUND, frac)
        pipe = frames_pipeline(task, photons)
        tune = pipe(args.tune_frames, seed=1000 + k)
        test = pipe(args.frames, seed=2000 + k)
        timg, img = tune.image[:, 0].numpy(), test.image[:, 0].numpy()
        ttruth, truth = scene_to_table(tune.scene), scene_to_table(test.scene)
        rec = {
            "case": "snr",
            "snr": snr,
            "photons": photons,
            "background": BACKGROUND,
            "frames": args.frames,
            "particles": int(len(truth)),
        }
        predict(bundle, img[:1])  # warm-up
        t0 = time.perf_counter()
        res = predict(bundle, img, batch_size=4)
        dt = time.perf_counter() - t0
        rec.update({f"unet_{k2}": v for k2, v in _summary(res.detections, truth).items()})
        rec["unet_fps"] = len(img) / dt
        # before the bundle stored post-processing tuned on its validation set: threshold 0.5, no filter
        radius = float(task.postprocess["disk_radius_px"])
        fixed = detect_from_map(res.maps[:, 0], 0.5, min_distance_px=radius)
        rec.update({f"unet_thr05_{k2}": v for k2, v in _summary(fixed, truth).items()})
        # trackpy with its defaults (minmass 0, separation diameter + 1, percentile 64) at the
        # diameters a user would pick for these ~2.4 px (FWHM) spots
        for d in TRACKPY_DEFAULT_DIAMETERS:
            tpd = locate_trackpy(img, diameter=d, minmass=0.0)
            rec.update({f"trackpy_default_d{d}_{k2}": v for k2, v in _summary(tpd, truth).items()})
        # the same fairness as for trackpy: the decision threshold tuned on the tuning frames
        thr = tune_threshold(predict(bundle, timg, batch_size=4).maps[:, 0], ttruth)
        tuned = detect_from_map(
            res.maps[:, 0], thr, min_distance_px=float(task.postprocess.get("disk_radius_px", 3))
        )
        rec.update({f"unet_tuned_{k2}": v for k2, v in _summary(tuned, truth).items()})
        rec["unet_tuned_threshold"] = thr
        # threshold + min_signal (integrated normalised intensity), both tuned on the tuning frames
        norm = lambda a: normalize(torch.from_numpy(a[:, None]).float(), task.input_normalization)[:, 0]  # noqa: E731
        tmaps = predict(bundle, timg, batch_size=4).maps[:, 0]
        thr2, min_signal = tune_threshold_signal(tmaps, norm(timg).numpy(), ttruth)
        t0 = time.perf_counter()
        res2 = predict(bundle, img, batch_size=4, threshold=thr2, min_signal=min_signal)
        rec["unet_signal_fps"] = len(img) / (time.perf_counter() - t0)
        rec.update({f"unet_signal_{k2}": v for k2, v in _summary(res2.detections, truth).items()})
        rec["unet_signal_threshold"], rec["unet_signal_min_signal"] = thr2, min_signal
        best = tune_trackpy(timg, ttruth)
        t0 = time.perf_counter()
        tp = locate_trackpy(
            img, diameter=best["diameter"], minmass=best["minmass"], separation=best["separation"]
        )
        dt = time.perf_counter() - t0
        rec.update({f"trackpy_{k2}": v for k2, v in _summary(tp, truth).items()})
        rec["trackpy_fps"] = len(img) / dt
        rec["trackpy_params"] = {k2: best[k2] for k2 in ("diameter", "separation", "minmass")}
        rec["trackpy_tune_f1"] = best["f1"]
        emit(rec)
        rows.append(rec)
    emit(
        {
            "case": "summary",
            "target_unet_f1_ge_0.95_at_snr_ge_3": all(r["unet_f1"] >= 0.95 for r in rows if r["snr"] >= 3),
            "target_unet_f1_ge_trackpy_every_snr": all(r["unet_f1"] >= r["trackpy_f1"] for r in rows),
            "target_unet_default_f1_ge_trackpy_defaults_every_snr": all(
                r["unet_f1"] >= max(r[f"trackpy_default_d{d}_f1"] for d in TRACKPY_DEFAULT_DIAMETERS)
                for r in rows
            ),
            "unet_postprocess": {
                k2: bundle.task.postprocess.get(k2) for k2 in ("threshold", "min_signal", "tuned_on")
            },
            "target_unet_tuned_f1_ge_trackpy_every_snr": all(
                r["unet_tuned_f1"] >= r["trackpy_f1"] for r in rows
            ),
            "target_unet_signal_f1_ge_0.95_at_snr_ge_3": all(
                r["unet_signal_f1"] >= 0.95 for r in rows if r["snr"] >= 3
            ),
            "target_unet_signal_f1_ge_trackpy_every_snr": all(
                r["unet_signal_f1"] >= r["trackpy_f1"] for r in rows
            ),
            "dry_run": bool(args.dry_run),
        }
    )


if __name__ == "__main__":
    main()
