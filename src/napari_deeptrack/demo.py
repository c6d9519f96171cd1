"""The main job, headless: simulate a particle movie, train the detector, detect, link, evaluate, report.

:func:`run_demo` is what ``napari-deeptrack demo`` (and ``tox -e demo``) runs:

1. **simulate** a fluorescent-particle movie with known ground truth: point emitters imaged through
   the ``particles-2d`` preset's pupil-function fluorescence microscope (NA 1.3, 0.6 um emission,
   0.1 um pixels), a uniform background and Poisson shot noise, diffusing by Brownian motion with a
   known diffusion coefficient (:class:`~napari_deeptrack.sim.movie.Movie`);
2. **train** the ``particles-2d`` U-Net detector on freshly simulated 64x64 crops (the preset's own
   simulation, never the movie), saving the best checkpoint as a bundle;
3. **detect** the particles in every frame with the trained bundle;
4. **link** the detections into tracks (trackpy, :mod:`napari_deeptrack.analysis.tracking`);
5. **evaluate** against the ground truth: precision, recall, F1 and localisation RMSE with detections
   matched within 2 px, how often linked steps join the same true particle, the ISBI 2012 particle
   tracking challenge scores (alpha, beta, track and point Jaccard, RMSE; 5 px gate), and the diffusion
   coefficient from the tracks' MSD vs the simulated one (and vs the same estimator on the true
   tracks, which shows the estimator's own sampling error);
6. **report**: ``report.md``, ``metrics.json``, figures, the bundle, the movie as a TIFF with its
   pixel size, and CSV tables (detections with track ids, ground truth, per-track summary).

No napari here; ``napari-deeptrack demo --gui`` opens the results in the viewer afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PRESET", "DemoSettings", "demo_settings", "run_demo", "simulate_movie"]

#: The task preset the demo trains.
PRESET = "particles-2d"
MOVIE_STREAM = 101  # seed stream of the movie (independent of the training streams)

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class DemoSettings:
    """What the demo simulates, how long it trains and how it links and evaluates.

    Parameters
    ----------
    image_shape : (int, int)
        Movie frame size in pixels.
    n_frames : int
        Number of frames.
    n_particles : int
        Particles in the field of view at the start (at least ``min_distance_px`` apart).
    frame_interval_s : float
        Time between frames.
    diffusion_um2_s : float
        True diffusion coefficient of every particle.
    intensity_photons : (float, float)
        Range of detected photons per particle per frame (uniform).
    background_photons : float
        Background photons per pixel.
    z_um : (float, float)
        Range of distances from the focal plane (uniform; slight defocus).
    epochs, steps_per_epoch, batch_size, validation_size : int
        Training budget (the preset's network, loss and simulation are unchanged).
    tolerance_px : float
        A detection is correct when it lies within this distance of a true particle.
    search_range_px : float
        Largest step linked between consecutive frames (trackpy).
    memory : int
        Frames a particle may be missed and keep its track.
    min_track_length : int
        Tracks with fewer points are not used to measure diffusion.
    fit_lags : int
        MSD lags fitted (``MSD = 4 D tau + offset``); 2 is optimal when the localisation error is
        small compared with the step length (Michalet 2010).
    detection_method : str
        ``maxima`` (local maxima of the probability map at least the disk radius apart; separates
        particles whose disks touch, which diffusing particles often do) or ``components``
        (connected components, the preset's default). Stored in the bundle's post-processing.
    threshold : float
        Decision threshold on the detection probability, stored in the bundle. The preset trains on
        particles down to a shot-noise SNR of 1.5 (default threshold 0.5), so its network also gives
        noise blobs probabilities of 0.5-0.8; this movie's particles are all bright (SNR >= 5), for
        which 0.9 keeps the recall and drops those false detections. The report lists F1,
        precision and recall at every ``threshold_sweep`` value, so the trade-off is visible.
    threshold_sweep : tuple of float
        Thresholds at which the detections are also evaluated (re-running the bundle).
    """

    image_shape: tuple[int, int] = (128, 128)
    n_frames: int = 30
    n_particles: int = 30
    frame_interval_s: float = 0.1
    diffusion_um2_s: float = 0.1
    intensity_photons: tuple[float, float] = (300.0, 1500.0)
    background_photons: float = 10.0
    z_um: tuple[float, float] = (-0.2, 0.2)
    epochs: int = 12
    steps_per_epoch: int = 50
    batch_size: int = 16
    validation_size: int = 128
    tolerance_px: float = 2.0
    search_range_px: float = 5.0
    memory: int = 2
    min_track_length: int = 5
    fit_lags: int = 2
    detection_method: str = "maxima"
    threshold: float = 0.9
    threshold_sweep: tuple[float, ...] = (0.5, 0.7, 0.9)
    quick: bool = False


def demo_settings(quick: bool = False, **changes: Any) -> DemoSettings:
    """Full settings (a few minutes on 2 CPU cores) or ``quick`` ones (about a minute, for CI)."""
    s = DemoSettings()
    if quick:
        s = replace(s, epochs=6, steps_per_epoch=50, batch_size=16, validation_size=64, quick=True)
    unknown = sorted(set(changes) - set(asdict(s)))
    if unknown:
        raise ValueError(f"unknown demo setting(s) {unknown}; valid settings: {sorted(asdict(s))}")
    s = replace(s, **changes)
    _check(s)
    return s


def _check(s: DemoSettings) -> None:
    from .sim.params import check_range

    if len(s.image_shape) != 2 or min(s.image_shape) < 32:
        raise ValueError(f"image_shape must be (H, W) with H, W >= 32, got {s.image_shape}")
    check_range("n_frames", s.n_frames, 2, None)
    check_range("n_particles", s.n_particles, 1, None)
    check_range("frame_interval_s", s.frame_interval_s, 0.0, None, low_inclusive=False)
    check_range("diffusion_um2_s", s.diffusion_um2_s, 0.0, None)
    check_range("background_photons", s.background_photons, 0.0, None)
    check_range("epochs", s.epochs, 1, None)
    check_range("steps_per_epoch", s.steps_per_epoch, 1, None)
    check_range("batch_size", s.batch_size, 1, None)
    check_range("validation_size", s.validation_size, 1, None)
    check_range("tolerance_px", s.tolerance_px, 0.0, None, low_inclusive=False)
    check_range("search_range_px", s.search_range_px, 0.0, None, low_inclusive=False)
    check_range("fit_lags", s.fit_lags, 2, None)
    if s.detection_method not in ("maxima", "components"):
        raise ValueError(f"detection_method must be 'maxima' or 'components', got {s.detection_method!r}")
    for t in (s.threshold, *s.threshold_sweep):
        check_range("threshold", t, 0.0, 1.0, low_inclusive=False)
    lo, hi = s.intensity_photons
    if not 0 < lo <= hi:
        raise ValueError(
            f"intensity_photons must be (low, high) with 0 < low <= high, got {s.intensity_photons}"
        )


# ---------------------------------------------------------------------------- 1. simulate
def simulate_movie(settings: DemoSettings, seed: int = 0, device: str = "cpu"):
    """The demo movie and its ground truth, imaged like the ``particles-2d`` preset's training data.

    Returns
    -------
    images : ndarray [T, H, W] float32
        Detected photons per pixel (Poisson noise included).
    truth : DataFrame
        One row per particle and frame: ``frame, track_id, y, x`` (px), ``z_um``, ``visible``,
        ``present`` (visible and in the field of view).
    movie : Movie
        The serialisable movie description (for the report).
    """
    from .sim import Background, Movie, Poisson, Uniform, movie_truth_table
    from .tasks import get_preset
    from .train.seeding import derive_seed, make_generator

    task = get_preset(PRESET)
    population = replace(
        task.pipeline.particles[0],
        count=int(settings.n_particles),
        intensity=Uniform(*map(float, settings.intensity_photons)),
        z_um=Uniform(*map(float, settings.z_um)),
        margin_px=3.0,
    )
    pipeline = task.pipeline.with_(
        image_shape=tuple(int(v) for v in settings.image_shape),
        particles=[population],
        transforms=[Background(level=float(settings.background_photons)), Poisson()],
        targets={},
    )
    movie = Movie(
        pipeline,
        n_frames=int(settings.n_frames),
        frame_interval_s=float(settings.frame_interval_s),
        diffusion_um2_s=float(settings.diffusion_um2_s),
        pixel_size_um=float(task.pixel_size_um),
    )
    batch = movie(1, generator=make_generator(derive_seed(int(seed), MOVIE_STREAM), device))
    images = batch.image[0, :, 0].detach().cpu().numpy().astype(np.float32)
    truth = pd.DataFrame(movie_truth_table(batch)).drop(columns=["movie"])
    return images, truth, movie


# ---------------------------------------------------------------------------- 3. detect
def detect_movie(
    bundle, images: np.ndarray, device: str = "cpu", threshold: float | None = None
) -> pd.DataFrame:
    """Detections ``frame, y, x, probability, area`` in every frame (:func:`analysis.predict.predict`).

    ``threshold`` None uses the bundle's own decision threshold.
    """
    from .analysis.predict import predict

    return predict(bundle, images, threshold=threshold, device=device).detections.reset_index(drop=True)


# ---------------------------------------------------------------------------- 5. evaluate
def _diffusion(tracks: pd.DataFrame, s: DemoSettings, pixel_size_um: float) -> dict[str, Any]:
    from .analysis.tracking import diffusion_coefficients

    n = tracks.groupby("track_id")["frame"].transform("size")
    long = tracks[n >= s.min_track_length]
    if long["track_id"].nunique() == 0:
        return {
            "ensemble": {"diffusion_um2_s": float("nan"), "offset_um2": float("nan"), "n_tracks": 0},
            "msd": None,
            "per_track": None,
        }
    return diffusion_coefficients(long, pixel_size_um, s.frame_interval_s, fit_lags=s.fit_lags)


# ---------------------------------------------------------------------------- pipeline
def _emit(progress: ProgressFn | None, ev: dict[str, Any]) -> None:
    if progress is not None:
        progress(ev)


STAGES = ("simulate", "train", "detect", "link", "evaluate", "report")


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Simulate, train, detect, link, evaluate and report (see the module docstring).

    Parameters
    ----------
    out_dir : path
        Folder for the report, bundle, movie and tables (created; files in it are overwritten).
    quick : bool
        Short training for CI (about a minute on 2 CPU cores) instead of the full demo.
    seed : int
        Root seed: the movie, the training data, the validation set and the weights follow from it.
    device : str
        ``cpu`` (default), ``auto``, ``cuda``, ``mps`` for training and inference.
    progress : callable(dict), optional
        Receives ``{"type": "stage", "stage", "index", "n_stages", "message"}`` at every stage, the
        trainer's events (``batch``, ``epoch``, ``end``) while training, and
        ``{"type": "done", "elapsed_s", "metrics"}`` at the end.
    settings : DemoSettings, optional
        Overrides ``quick`` (see :func:`demo_settings`).

    Returns
    -------
    dict
        ``metrics`` (``detection``, ``tracking``, ``tracking (ISBI 2012)``, ``diffusion``, ``training``,
        ``timing`` sections),
        ``paths`` (name -> Path of every file written), ``settings`` (dict), ``elapsed_s``.
    """
    from .analysis.metrics import detection_metrics, match_truth_tracks, tracking_metrics
    from .analysis.tracking import link_tracks, track_table
    from .analysis.tracking_metrics import isbi_tracking_scores
    from .io.bundle import load_bundle
    from .io.tiff import write_tiff
    from .report import plot_msd, plot_overlay, plot_tracks, write_report
    from .sim.serialize import to_dict
    from .tasks import get_preset
    from .train import resolve_device, train_task

    s = settings if settings is not None else demo_settings(quick)
    _check(s)
    seed = int(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    timing: dict[str, float] = {}
    t_start = time.perf_counter()
    stage_t = [t_start]

    def stage(i: int, message: str) -> None:
        now = time.perf_counter()
        if i > 0:
            timing[f"{STAGES[i - 1]}_s"] = now - stage_t[0]
        stage_t[0] = now
        _emit(
            progress,
            {"type": "stage", "stage": STAGES[i], "index": i, "n_stages": len(STAGES), "message": message},
        )

    # 1. simulate ------------------------------------------------------------------------
    h, w = s.image_shape
    stage(0, f"simulating {s.n_frames} frames of {h}x{w} px with {s.n_particles} diffusing particles")
    images, truth, movie = simulate_movie(s, seed)
    task = get_preset(PRESET)
    px = float(task.pixel_size_um)
    # photon counts are integers after shot noise: store them as a 16-bit camera movie
    integral = images.max() < 65536 and np.array_equal(images, np.round(images))
    counts = images.astype(np.uint16) if integral else images
    paths: dict[str, Path] = {"movie": write_tiff(out / "movie.tif", counts, pixel_size_um=px)}
    truth.to_csv(out / "truth.csv", index=False)
    paths["truth"] = out / "truth.csv"
    present = truth[truth["present"]].reset_index(drop=True)

    # 2. train ---------------------------------------------------------------------------
    stage(
        1,
        f"training the {PRESET} detector ({s.epochs} epochs x {s.steps_per_epoch} batches of "
        f"{s.batch_size}) on {dev}",
    )
    task = task.edited(
        {
            "training.validation_size": int(s.validation_size),
            "postprocess.method": s.detection_method,
            "postprocess.threshold": float(s.threshold),
            "postprocess.tune": False,  # the demo's threshold is a setting, not re-tuned after training
        }
    )
    batch_losses: list[float] = []

    def on_train_event(ev: dict[str, Any]) -> None:
        if ev["type"] == "batch":
            batch_losses.append(float(ev["loss"]))
        _emit(progress, ev)

    result = train_task(
        task,
        out / "model",
        epochs=s.epochs,
        steps_per_epoch=s.steps_per_epoch,
        batch_size=s.batch_size,
        seed=seed,
        device=str(dev),
        num_workers=0,
        callbacks=[on_train_event],
    )
    if result.bundle_path is None or "best_epoch" not in result.history:
        raise RuntimeError("training stopped before the first validation; no model was saved")
    paths["bundle"] = result.bundle_path

    # 3. detect --------------------------------------------------------------------------
    stage(2, f"detecting particles in {s.n_frames} frames")
    bundle = load_bundle(result.bundle_path, device=dev)
    detections = detect_movie(bundle, images, device=str(dev))

    # 4. link ----------------------------------------------------------------------------
    stage(
        3,
        f"linking {len(detections)} detections (search range {s.search_range_px:g} px, "
        f"memory {s.memory} frames)",
    )
    tracks = link_tracks(detections, s.search_range_px, memory=s.memory)

    # 5. evaluate ------------------------------------------------------------------------
    stage(4, "evaluating against the ground truth")
    det = detection_metrics(tracks, present, tolerance_px=s.tolerance_px)
    sweep = {}
    for thr in s.threshold_sweep:  # the precision / recall trade-off of the decision threshold
        m_thr = detection_metrics(detect_movie(bundle, images, str(dev), float(thr)), present, s.tolerance_px)
        for k in ("f1", "precision", "recall"):
            sweep[f"{k} at {thr:g}"] = m_thr[k]
    tracks["truth_track_id"] = match_truth_tracks(tracks, present, s.tolerance_px)
    trk = tracking_metrics(tracks, truth)
    # the ISBI 2012 particle tracking challenge measures (Chenouard et al. 2014), 5 px gate
    cols = ["frame", "y", "x", "track_id"]
    isbi = isbi_tracking_scores(tracks[cols], present[cols], gate_px=5.0)
    diff = _diffusion(tracks, s, px)
    true_tracks = present[["frame", "track_id", "y", "x"]]
    diff_truth = _diffusion(true_tracks, s, px)
    d_meas = float(diff["ensemble"]["diffusion_um2_s"])
    d_ref = float(diff_truth["ensemble"]["diffusion_um2_s"])
    diffusion = {
        "true_um2_s": float(s.diffusion_um2_s),
        "measured_um2_s": d_meas,
        "relative_error": (d_meas - s.diffusion_um2_s) / s.diffusion_um2_s if s.diffusion_um2_s else math.nan,
        "from_true_tracks_um2_s": d_ref,
        "measured_sem_um2_s": float(diff["ensemble"].get("sem_um2_s", math.nan)),
        "offset_um2": float(diff["ensemble"]["offset_um2"]),
        "n_tracks_fitted": int(diff["ensemble"]["n_tracks"]),
        "fit_lags": int(s.fit_lags),
    }
    h_ = result.history
    bi = h_["epoch"].index(h_["best_epoch"])
    training = {
        "preset": PRESET,
        "epochs_run": len(h_["epoch"]),
        "best_epoch": int(h_["best_epoch"]) + 1,
        "best_val_loss": float(h_["val_loss"][bi]),
        "steps": int(h_.get("steps", 0)),
        "images_seen": int(h_.get("steps", 0)) * int(s.batch_size),
        "stopped": h_.get("reason"),
        "device": str(dev),
    }
    detection = {
        k: det[k]
        for k in (
            "f1",
            "precision",
            "recall",
            "rmse_xy",
            "rmse_y",
            "rmse_x",
            "mean_dy",
            "mean_dx",
            "tp",
            "fp",
            "fn",
            "n_pred",
            "n_truth",
            "n_frames",
            "tolerance_px",
        )
    }
    detection["rmse_xy_nm"] = det["rmse_xy"] * px * 1000.0
    detection["threshold"] = float(s.threshold)

    # 6. report --------------------------------------------------------------------------
    stage(5, f"writing the report to {out}")
    det_out = tracks.rename(columns={"truth_track_id": "true_track_id"})
    det_out.to_csv(out / "detections.csv", index=False)
    paths["detections"] = out / "detections.csv"
    summary_tracks = track_table(tracks.drop(columns=["truth_track_id"]), px, s.frame_interval_s, s.fit_lags)
    summary_tracks.to_csv(out / "tracks.csv", index=False)
    paths["tracks"] = out / "tracks.csv"
    # for other tools (issue 13): the tracks as TrackMate XML (opens with movie.tif in Fiji) and the
    # model as a bioimage.io package (deepImageJ, ilastik, QuPath, bioimageio.core)
    from .io.bioimageio import export_bioimageio
    from .io.trackmate import write_trackmate

    paths["trackmate"] = write_trackmate(
        tracks.drop(columns=["truth_track_id"]), out / "tracks_trackmate.xml", px, s.frame_interval_s,
        image_shape=images.shape[-2:], image_name="movie.tif",
    )  # fmt: skip
    paths["bioimageio"] = export_bioimageio(bundle, out / "model_bioimageio.zip", seed=0)
    frame0 = 0
    figures = {
        "detections on frame 1": plot_overlay(
            images[frame0],
            present[present["frame"] == frame0],
            tracks[tracks["frame"] == frame0],
            out / "overlay.png",
            tolerance_px=s.tolerance_px,
            pixel_size_um=px,
            title=f"frame 1: truth vs detections (F1 over all frames = {det['f1']:.3f})",
        ),
        "tracks": plot_tracks(
            images.mean(0),
            tracks,
            out / "tracks.png",
            pixel_size_um=px,
            title=f"{trk['n_tracks']} linked tracks over the mean image",
        ),
        "mean squared displacement": plot_msd(
            diff["msd"],
            out / "msd.png",
            d_meas,
            float(diff["ensemble"]["offset_um2"]),
            true_diffusion_um2_s=s.diffusion_um2_s,
            reference_msd=diff_truth["msd"],
        ),
    }
    now = time.perf_counter()
    timing["report_s"] = now - stage_t[0]  # tables and figures; report.md and metrics.json follow
    timing["total_s"] = now - t_start
    metrics = {
        "detection": detection,
        "detection vs threshold": sweep,
        "tracking": trk,
        "tracking (ISBI 2012)": isbi,
        "diffusion": diffusion,
        "training": training,
        "timing": timing,
    }
    config = {
        "seed": seed,
        "device": str(dev),
        "preset": PRESET,
        "settings": asdict(s),
        "movie": to_dict(movie),
    }
    summary = (
        f"Simulated {s.n_frames} frames ({h}x{w} px, {px} um/px) of {s.n_particles} fluorescent point "
        f"particles diffusing with D = {s.diffusion_um2_s} um^2/s; trained the `{PRESET}` U-Net "
        f"({training['images_seen']} simulated images); detected, linked and compared with the ground truth. "
        f"**F1 = {det['f1']:.3f}** (precision {det['precision']:.3f}, recall {det['recall']:.3f}, "
        f"match within {s.tolerance_px:g} px), localisation RMSE {det['rmse_xy']:.3f} px "
        f"({detection['rmse_xy_nm']:.0f} nm); ISBI 2012 tracking scores alpha {isbi['alpha']:.3f}, "
        f"beta {isbi['beta']:.3f}, track Jaccard {isbi['jaccard_tracks']:.3f}; "
        f"D measured {d_meas:.4f} um^2/s vs true {s.diffusion_um2_s:g} "
        f"(same estimator on the true tracks: {d_ref:.4f})."
    )
    written = write_report(
        out,
        metrics,
        history=result.history,
        config=config,
        figures=figures,
        files=dict(paths),
        title="napari-deeptrack demo: detect and track particles",
        summary=summary,
        batch_losses=batch_losses,
    )
    paths.update({k.replace(" ", "_"): v for k, v in written.items()})
    elapsed = time.perf_counter() - t_start
    _emit(progress, {"type": "done", "elapsed_s": elapsed, "metrics": metrics})
    return {"metrics": metrics, "paths": paths, "settings": asdict(s), "elapsed_s": elapsed}
