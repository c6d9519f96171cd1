"""Real data, as a user runs it: match -> train -> apply -> measure, beside the classical tool.

Every step goes through the command line (``napari-deeptrack train PRESET --match ...`` and
``napari-deeptrack apply``), in subprocesses with one torch thread. Each data set is split: the
simulation is matched (and nothing else is tuned) on one part, numbers are reported on another.

- ``bulk``: trackpy's bulk-water video (1 um spheres, 0.351 um/px, 24 fps). Matched on
  ``bulk_water_dev`` (frames 0-9, green channel), reported on ``bulk_water_more`` (frames 100-299):
  detections per frame and the diffusion coefficient against Stokes-Einstein (0.44 um^2/s) and
  against trackpy's walkthrough pipeline run on the same frames (locate diameter 11, invert, minmass 20;
  link 5 px, memory 3; stubs < 25 dropped; drift subtracted; ``emsd`` + power-law fit, D = A / 4).
  The same linking, drift subtraction and MSD fit are applied to our detections.
- ``bbbc``: BBBC039 nuclei. Matched on ``bbbc039_dev`` (10 images), reported on ``bbbc039_more`` (30
  images): ``nuclei-segment`` instance F1 at IoU 0.5 and counts (number of instances), ``cells-count``
  density-map counts, against Otsu + distance-transform watershed.
- ``rings``: trackpy's bright-field sample (5 particles, 50 frames). ``brightfield-particles`` matched on
  frame 0 (pixel size unknown: fitted); reported on frames 10-49: frames with exactly 5 detections,
  tracks spanning all 40 frames; trackpy ``locate`` (diameter 15, minmass tuned on frames 0-9) beside it.
- ``holo``: the CATCH hologram: the calibration's fringe-based height and a Lorenz-Mie least-squares fit
  with our simulator (radius, index, z, centre) against CATCH's published Lorenz-Mie fit.

Usage::

    python benchmarks/bench_real_data.py --part bulk --max-minutes 4 --work /tmp/bench_real
    python benchmarks/bench_real_data.py --part bbbc rings holo --max-minutes 4

Prints one JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STOKES_EINSTEIN_UM2_S = 0.44
BULK_PX_UM, BULK_FPS = 0.351, 24.0


def emit(record: dict) -> None:
    print(json.dumps(record, default=float), flush=True)


def cli(*args: str, log: Path | None = None) -> str:
    """Run ``napari-deeptrack ARGS`` with one torch thread; return stdout (stderr goes to ``log``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "napari_deeptrack.cli", *args], capture_output=True,
                         text=True, env=env)  # fmt: skip
    if log is not None:
        log.write_text(out.stderr)
    if out.returncode != 0:
        msg = f"napari-deeptrack {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}"
        raise RuntimeError(msg)
    wall = round(time.perf_counter() - t0, 1)
    emit({"case": "command", "argv": ["napari-deeptrack", *args], "wall_s": wall})
    return out.stdout


def train(preset: str, bundle: Path, match: Path, minutes: float, *extra: str, retrain: bool = False) -> Path:
    if bundle.exists() and not retrain:
        emit({"case": "model", "source": "cache", "bundle": str(bundle)})
        return bundle
    log = bundle.with_suffix(".match.txt")
    cli("train", preset, "--out", str(bundle), "--match", str(match), "--max-minutes", str(minutes),
        "--seed", "0", "--device", "cpu", "--quiet", *extra, log=log)  # fmt: skip
    emit({"case": "model", "source": "trained", "bundle": str(bundle), "match_log": log.read_text()[-1500:]})
    return bundle


def _bundle_threshold(bundle: Path):
    """The detection threshold ``apply`` uses by default: the bundle's (tuned when it was trained)."""
    return json.loads((bundle / "config.json").read_text()).get("postprocess", {}).get("threshold")


# ---------------------------------------------------------------------------- bulk water
def _walkthrough_tracks(frames: np.ndarray):
    import trackpy as tp

    tp.quiet()
    f = tp.batch(frames, 11, invert=True, minmass=20, processes=1)
    t = tp.link(f, 5, memory=3)
    return f, t


def _drift_corrected_d(t: pd.DataFrame, label: str) -> dict:
    """trackpy walkthrough's read-out: stubs < 25 dropped, drift subtracted, emsd, power-law fit."""
    import trackpy as tp

    t1 = tp.filter_stubs(t, 25)
    d = tp.compute_drift(t1)
    tm = tp.subtract_drift(t1.copy(), d)
    em = tp.emsd(tm, BULK_PX_UM, BULK_FPS)
    fit = tp.utils.fit_powerlaw(em, plot=False)
    short = em.iloc[:10]
    slope = float(np.polyfit(short.index.to_numpy(), short.to_numpy(), 1)[0])
    return {
        "method": label,
        "n_tracks": int(tm["particle"].nunique()),
        "powerlaw_n": float(fit["n"].iloc[0]),
        "D_powerlaw_um2_s": float(fit["A"].iloc[0]) / 4.0,
        "D_lags1to10_um2_s": slope / 4.0,
    }


def bulk(work: Path, minutes: float, retrain: bool) -> None:
    from napari_deeptrack.io.images import read_images

    more = DATA / "bulk_water_more" / "frames"
    frames, _ = read_images(more)
    # trackpy's walkthrough on the same frames
    f, t = _walkthrough_tracks(frames)
    tp_per_frame = f.groupby("frame").size().reindex(range(len(frames)), fill_value=0)
    ref = _drift_corrected_d(t, "trackpy walkthrough")
    emit({**ref, "case": "bulk_water", "report_on": "bulk_water_more 100-299",
          "detections_per_frame": float(tp_per_frame.mean())})  # fmt: skip
    for preset in ("particles-2d", "brightfield-particles"):
        dev = DATA / "bulk_water_dev" / "frames"
        bundle = train(preset, work / f"bulk_{preset}", dev, minutes, "--match-channel", "g",
                       "--pixel-size-um", str(BULK_PX_UM), retrain=retrain)  # fmt: skip
        res = work / f"bulk_{preset}.csv"
        if res.exists() and res.stat().st_mtime > (bundle / "config.json").stat().st_mtime and not retrain:
            emit({"case": "detections", "source": "cache", "csv": str(res)})  # apply: 15-40 min on 2 cores
        else:
            cli("apply", str(bundle), str(more), "--out", str(res), "--pixel-size-um", str(BULK_PX_UM))
        det = pd.read_csv(res)
        per_frame = det.groupby("frame").size().reindex(range(len(frames)), fill_value=0)
        import trackpy as tp

        tp.quiet()
        linked = tp.link(det.rename(columns={})[["frame", "y", "x"]], 5, memory=3)
        ours = _drift_corrected_d(linked, "same linking and read-out as trackpy")
        d = ours["D_powerlaw_um2_s"]
        emit({
            **ours, "case": "bulk_water", "method": preset, "readout": ours["method"],
            "tuned_on": "bulk_water_dev 0-9 (--match only)",
            "report_on": "bulk_water_more 100-299", "detections_per_frame": float(per_frame.mean()),
            "threshold": _bundle_threshold(bundle),
            "detections_vs_trackpy": float(per_frame.mean() / max(tp_per_frame.mean(), 1e-9)),
            "D_rel_error_vs_stokes_einstein": (d - STOKES_EINSTEIN_UM2_S) / STOKES_EINSTEIN_UM2_S,
            "trackpy_D_rel_error": (ref["D_powerlaw_um2_s"] - STOKES_EINSTEIN_UM2_S) / STOKES_EINSTEIN_UM2_S,
        })  # fmt: skip


# ---------------------------------------------------------------------------- BBBC039
def bbbc(work: Path, minutes: float, retrain: bool) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    from nuclei_segment import otsu_watershed, pooled_scores

    from napari_deeptrack.io.images import read_images
    from napari_deeptrack.io.tiff import read_tiff

    more = DATA / "bbbc039_more"
    images, meta = read_images(more / "images")
    names = [Path(p).name for p in meta["files"]]
    truth = np.stack([read_tiff(more / "labels_instance" / n)[0] for n in names]).astype(np.int32)
    counts = pd.read_csv(more / "counts.csv").set_index("image").loc[names, "n_nuclei"].to_numpy(float)

    def count_err(pred):
        rel = np.abs(np.asarray(pred, float) - counts) / counts
        return {"count_mean_abs_rel_error": float(rel.mean()), "count_bias": float(np.mean(pred - counts))}

    base = otsu_watershed(images)
    n_base = np.array([len(np.unique(b[b > 0])) for b in base], float)
    s = pooled_scores(base, truth, thresholds=(0.5,))
    emit({"case": "bbbc039", "method": "otsu_watershed", "report_on": "bbbc039_more (30 images)",
          "f1_iou05": s["f1"]["0.5"], **count_err(n_base)})  # fmt: skip
    dev = DATA / "bbbc039_dev" / "images"
    seg = train("nuclei-segment", work / "bbbc_nuclei_segment", dev, minutes, retrain=retrain)
    lab_path = work / "bbbc_labels.tif"
    cli("apply", str(seg), str(more / "images"), "--out", str(work / "bbbc_seg.csv"),
        "--labels-out", str(lab_path))  # fmt: skip
    pred = read_tiff(lab_path)[0].astype(np.int32)
    n_pred = np.array([len(np.unique(p[p > 0])) for p in pred], float)
    s = pooled_scores(pred, truth, thresholds=(0.5,))
    conf = json.loads((seg / "config.json").read_text())
    emit({"case": "bbbc039", "method": "nuclei-segment (matched)",
          "tuned_on": "bbbc039_dev (--match; read-out thresholds of the preset, tuned on bbbc039_dev)",
          "report_on": "bbbc039_more (30 images)", "f1_iou05": s["f1"]["0.5"],
          "panoptic_quality": s["panoptic_quality"], "tp": s["tp"], "fp": s["fp"], "fn": s["fn"],
          "training_steps": conf.get("history", {}).get("steps"), "postprocess": conf.get("postprocess"),
          **count_err(n_pred)})  # fmt: skip
    cnt = train("cells-count", work / "bbbc_cells_count", dev, minutes, retrain=retrain)
    cli("apply", str(cnt), str(more / "images"), "--out", str(work / "bbbc_count.csv"),
        "--counts-out", str(work / "bbbc_counts.csv"))  # fmt: skip
    c = pd.read_csv(work / "bbbc_counts.csv").sort_values("frame")["count"].to_numpy(float)
    emit({"case": "bbbc039", "method": "cells-count (matched)", "tuned_on": "bbbc039_dev (--match only)",
          "report_on": "bbbc039_more (30 images)", **count_err(c)})  # fmt: skip


# ---------------------------------------------------------------------------- bright-field rings
def _ring_scores(det: pd.DataFrame, frames: range, search_px: float = 10.0) -> dict:
    import trackpy as tp

    tp.quiet()
    det = det[det["frame"].isin(list(frames))]
    per = det.groupby("frame").size().reindex(list(frames), fill_value=0)
    linked = tp.link(det[["frame", "y", "x"]].reset_index(drop=True), search_px, memory=0)
    lengths = linked.groupby("particle").size()
    return {
        "frames": len(per),
        "frac_frames_with_5": float((per == 5).mean()),
        "detections_per_frame_mean": float(per.mean()),
        "full_length_tracks": int((lengths == len(per)).sum()),
        "n_tracks": int(len(lengths)),
    }


def rings(work: Path, minutes: float, retrain: bool) -> None:
    import trackpy as tp

    from napari_deeptrack.io.images import read_images

    folder = DATA / "brightfield_rings" / "frames"
    frames, _ = read_images(folder)
    tp.quiet()
    # trackpy: minmass chosen on frames 0-9 as the largest value that still finds 5 particles in each
    best = None
    for mm in np.quantile(tp.locate(frames[0], 15, minmass=0)["mass"], np.linspace(0.5, 0.999, 40)):
        n = [len(tp.locate(fr, 15, minmass=float(mm))) for fr in frames[:10]]
        if all(k == 5 for k in n):
            best = float(mm)
    f = tp.batch(frames, 15, minmass=best if best else 0.0, processes=1)
    emit({"case": "rings", "method": "trackpy locate (diameter 15)", "minmass_tuned_on": "frames 0-9",
          "minmass": best, "report_on": "frames 10-49", **_ring_scores(f, range(10, 50))})  # fmt: skip
    bundle = train("brightfield-particles", work / "rings_bf", folder / "bf_0000.png", minutes,
                   retrain=retrain)
    res = work / "rings.csv"
    cli("apply", str(bundle), str(folder), "--out", str(res))
    det = pd.read_csv(res)
    emit({"case": "rings", "method": "brightfield-particles (matched)", "tuned_on": "frame 0 (--match only)",
          "threshold": f"the bundle's {_bundle_threshold(bundle)} (tuned on its simulated validation set)",
          "report_on": "frames 10-49",
          **_ring_scores(det, range(10, 50))})  # fmt: skip
    # as trackpy's minmass: the detection threshold tuned on frames 0-9 (most frames with 5 detections)
    tune = work / "rings_tune"
    tune.mkdir(exist_ok=True)
    for i in range(10):
        link = tune / f"bf_{i:04d}.png"
        if not link.exists():
            link.symlink_to(folder / f"bf_{i:04d}.png")
    frac = {}
    for thr in (0.5, 0.6, 0.7, 0.8, 0.9):
        out = work / f"rings_tune_{thr}.csv"
        cli("apply", str(bundle), str(tune), "--out", str(out), "--threshold", str(thr))
        frac[thr] = _ring_scores(pd.read_csv(out), range(0, 10))["frac_frames_with_5"]
    best = max(frac, key=lambda t: (frac[t], -t))
    cli("apply", str(bundle), str(folder), "--out", str(res), "--threshold", str(best))
    emit({"case": "rings", "method": "brightfield-particles (matched)", "tuned_on": "frame 0 (--match), "
          "threshold on frames 0-9", "threshold": best, "tuning_frac_with_5": frac,
          "report_on": "frames 10-49",
          **_ring_scores(pd.read_csv(res), range(10, 50))})  # fmt: skip


# ---------------------------------------------------------------------------- CATCH hologram
def holo(work: Path, minutes: float, retrain: bool) -> None:
    import dataclasses

    import torch
    from scipy import ndimage, optimize

    from napari_deeptrack.analysis.match import calibrate
    from napari_deeptrack.io.images import read_images
    from napari_deeptrack.sim import Holography, MieSphere, Scene
    from napari_deeptrack.tasks import get_preset

    ref = json.loads((DATA / "hologram_catch" / "reference_values.json").read_text())
    lm = ref["test_image_large.png"]["lm_refined_particle0"]
    lam, px, nm = 0.447, 0.048, 1.34
    img = read_images(DATA / "hologram_catch" / "test_image_crop.png")[0][0].astype(np.float64)
    pipe = get_preset("holography-3d").pipeline
    optics = dataclasses.replace(pipe.optics, wavelength_um=lam, refractive_index_medium=nm, pixel_size_um=px,
                                 camera_pixel_um=None, magnification=None)  # fmt: skip
    cal = calibrate(pipe.with_(optics=optics), img, px)
    z0 = float(cal.get("z_um"))
    data = img / float(cal.get("normalisation"))
    h, w = data.shape
    # centre of the hologram: its centre of point symmetry (correlation with the image rotated by 180 deg)
    f = ndimage.gaussian_filter(data - 1.0, 1.0)
    corr = np.fft.ifft2(np.fft.fft2(f) * np.conj(np.fft.fft2(f[::-1, ::-1]))).real
    sy, sx = np.unravel_index(np.argmax(corr), corr.shape)
    sy, sx = (sy + h // 2) % h - h // 2, (sx + w // 2) % w - w // 2
    yy, xx = (h - 1 + sy) / 2.0, (w - 1 + sx) / 2.0
    # the camera records the in-line hologram |E|^2 (output="intensity"); Holography's default output is the
    # complex field, whose real part 1 + Re(E_s) lacks half the interference term: fitted to the intensity
    # it gave radius 1.002 um / index 1.591 (-6.4 % / +3.4 %) instead of 1.067 / 1.542
    opt = Holography(NA=1.2, wavelength_um=lam, pixel_size_um=px, refractive_index_medium=nm,
                     output="intensity")  # fmt: skip
    torch.set_num_threads(1)

    def model(p):
        a, n, z, cy, cx = p
        scene = Scene.empty(1, 1, (h, w))
        scene.present[:] = True
        scene.position[0, 0] = torch.tensor([cy, cx, z])
        scene.radius_um[:] = a
        scene.refractive_index[:] = n
        return opt.render(scene, [MieSphere(float(a), float(n))], None)[0, 0].double().numpy()

    def resid(p):
        return (model(p) - data).ravel()

    t0 = time.perf_counter()
    # coarse grid over radius and index at the fringe height, then a local least-squares fit
    grid = [(a, n) for a in np.arange(0.5, 1.55, 0.1) for n in np.arange(1.40, 1.66, 0.05)]
    cost = [float((resid([a, n, z0, float(yy), float(xx)]) ** 2).sum()) for a, n in grid]
    a0, n0 = grid[int(np.argmin(cost))]
    fit = optimize.least_squares(resid, [a0, n0, z0, float(yy), float(xx)],
                                 bounds=([0.2, 1.36, 1.0, 0, 0], [3.0, 2.2, 40.0, h, w]), diff_step=1e-3,
                                 max_nfev=60)  # fmt: skip
    a, n, z = fit.x[:3]
    lm_cost = float((resid([lm["a_p"], lm["n_p"], lm["z_p"] * px, *fit.x[3:]]) ** 2).mean())
    emit({"case": "catch_hologram", "z_from_fringes_um": z0, "lm_fit_z_um": lm["z_p"] * px,
          "radius_um": float(a), "index": float(n), "z_um": float(z),
          "mse_our_fit": float(fit.cost * 2 / h / w), "mse_at_catch_lm_values": lm_cost,
          "radius_rel_error_vs_lm_fit": float(a / lm["a_p"] - 1),
          "index_rel_error_vs_lm_fit": float(n / lm["n_p"] - 1),
          "method": "least-squares Lorenz-Mie fit with our simulator, started from the calibration's z",
          "wall_s": round(time.perf_counter() - t0, 1)})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", nargs="+", default=["bulk", "bbbc", "rings", "holo"],
                   choices=["bulk", "bbbc", "rings", "holo"])  # fmt: skip
    p.add_argument("--max-minutes", type=float, default=4.0, help="training budget per model")
    p.add_argument("--work", default="bench_real_data_work", help="folder for bundles and results")
    p.add_argument("--retrain", action="store_true", help="retrain even when a bundle is cached")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    for part in a.part:
        {"bulk": bulk, "bbbc": bbbc, "rings": rings, "holo": holo}[part](work, a.max_minutes, a.retrain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
