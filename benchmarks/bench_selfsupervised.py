"""Self-supervised (LodeSTAR-style) detector trained from <= 3 crops: simulation vs CRLB, and real data.

Parts (``--part``), each printing JSON lines:

- ``sim``: the localisation bench's crops (``bench_localization.py``: one fluorescent point particle
  per 32x32 crop, NA 1.2, 0.1 um pixels, background 10 photons/px, Poisson noise). The detector is
  trained from 3 crops at 1000 photons (nothing else: no positions, no simulation model) and tested
  on 1000 new crops at 300, 1000 and 3000 photons; RMSE per axis against the truth and the CRLB
  (goal at 1000 photons: <= 1.5x CRLB), with and without the 8-fold flip/transpose vote pooling.
- ``rings``: ``brightfield_rings`` (5 colloids with bright centres and dark rings, 50 frames).
  Trained from 2 crops of frame 0; trackpy's ``locate`` tuned on frames 0-9 (diameter and minmass
  chosen to give 5 features per frame) and its ``locate_brightfield_ring`` refinement are run
  alongside. Reported on frames 10-49: detections per frame; on all 50 frames: tracks (search range
  10 px) and the static localisation error from the MSD offset (``offset = 4 sigma^2``, px^2; a lower
  offset means more precise positions: the colloids' motion is the same for every method).
- ``bulk``: bulk-water bright-field video (dark 1 um spheres, 0.351 um/px, 24 frames/s). Trained
  from 3 crops of ``bulk_water_dev`` frame 0; the detection threshold is tuned on ``bulk_water_dev``
  frames 0-9 (best F1 against trackpy's walkthrough settings, ``locate(11, invert=True,
  minmass=20)``); reported on ``bulk_water_more`` frames 100-299: detections per frame vs trackpy,
  agreement, and the ensemble diffusion coefficient of tracks of >= 25 frames vs 0.44 um^2/s
  (Stokes-Einstein).
- ``nuclei``: BBBC039 nuclei as blobs. Trained from 3 crops of one ``bbbc039_dev`` image (input
  averaged over 4x4 pixels, so the receptive field covers a nucleus); the threshold is tuned on the
  other 9 dev images; reported on the 30 ``bbbc039_more`` images: detection F1 against the label
  centroids (match within 5 px), with Otsu thresholding + connected components (minimum area tuned on
  the dev images) as the classical baseline.

- ``fewshot``: annotate a few. The ``cells-count`` starter is fine-tuned (``train.few_shot``) on
  every nucleus of four 160x160 crops of ``bbbc039_dev`` images 0-3 (label centroids stand for the
  user's clicks; one crop is held back by ``annotate_few`` itself); reported on the 30 whole
  ``bbbc039_more`` images before and after: detection F1 (match within 5 px) and count error.

Each training (``--epochs`` x 50 steps of 8 crops x 4 copies; 800 steps by default) runs on one CPU
thread, stopped early only by the ``--max-minutes`` safety limit, and is cached in
``benchmarks/.cache/`` (``--retrain`` to redo).

Usage::

    python benchmarks/bench_selfsupervised.py --part all
    python benchmarks/bench_selfsupervised.py --part sim --retrain --max-minutes 4
    python benchmarks/bench_selfsupervised.py --dry-run     # tiny settings, checks the plumbing
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from napari_deeptrack.io.bundle import load_bundle
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train.selfsupervised import train_selfsupervised

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
DATA = Path(os.environ.get("NAPARI_DEEPTRACK_DATA", HERE.parent.parent / "shared" / "data"))


def emit(record: dict) -> None:
    base = {"bench": "selfsupervised", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine()}  # fmt: skip
    print(json.dumps({**base, **record}, default=float), flush=True)


def trained(name: str, task, images, boxes, args) -> object:
    """Train from ``boxes`` of ``images`` (or load the cached bundle); emits a ``model`` record."""
    path = CACHE / f"selfsup-{name}{'-dry' if args.dry_run else ''}.zip"
    if path.exists() and not args.retrain:
        emit({"case": "model", "part": name, "source": "cache", "bundle": str(path)})
        return load_bundle(path)
    t0 = time.perf_counter()
    res = train_selfsupervised(
        task,
        images,
        boxes,
        path,
        epochs=2 if args.dry_run else args.epochs,
        steps_per_epoch=3 if args.dry_run else 50,
        seed=args.seed,
        max_seconds=60.0 * args.max_minutes,
    )
    h = res.history
    emit(
        {
            "case": "model",
            "part": name,
            "source": "trained",
            "crops": [list(b) for b in boxes],
            "train_s": round(time.perf_counter() - t0, 1),
            "steps": h.get("steps"),
            "stopped_because": h.get("reason"),
            "consistency_px": h["consistency_px"][h["epoch"].index(h["best_epoch"])],
            "reference_mass": res.task.postprocess["reference_mass"],
        }
    )
    return load_bundle(path)


def _predict(bundle, frames, threshold=None, tta=None):
    from napari_deeptrack.analysis.predict import predict

    b = bundle
    if tta is not None:
        b = type(bundle)(bundle.model, bundle.task.edited({"postprocess.test_time_augmentation": tta}))
    return predict(b, frames, threshold=threshold, batch_size=4).detections


def _read_png(path) -> np.ndarray:
    import imageio.v3 as iio

    a = iio.imread(path)
    return (a[..., 1] if a.ndim == 3 else a).astype(np.float32)


def _box(cy: float, cx: float, half: int, frame: int = 0) -> tuple[int, int, int, int, int]:
    y, x = int(round(cy)), int(round(cx))
    return (frame, y - half, x - half, y + half, x + half)


# ---------------------------------------------------------------------------- simulation vs CRLB
def part_sim(args) -> None:
    sys.path.insert(0, str(HERE))
    from bench_localization import SIZE, crlb_avg, test_pipeline

    task = get_preset("particles-selfsupervised")
    train = test_pipeline(1000, 1.5)(3, seed=1)
    boxes = [(i, 0, 0, SIZE, SIZE) for i in range(3)]
    bundle = trained("sim1000", task, train.image[:, 0].numpy(), boxes, args)
    n = 64 if args.dry_run else args.n_test
    for k, photons in enumerate((300, 1000, 3000)):
        test = test_pipeline(photons, 1.5)(n, seed=20_000 + k)
        img = test.image[:, 0].numpy()
        truth = test.scene.position[:, 0, :2].double().numpy()
        rec = {"case": "sim", "photons": photons, "background": 10.0, "n_test": n, "trained_at_photons": 1000}
        for tta in ("dihedral", "none"):
            t0 = time.perf_counter()
            det = _predict(bundle, img, threshold=0.05, tta=tta)
            dt = time.perf_counter() - t0
            best = det.sort_values("mass").groupby("frame").tail(1).set_index("frame")
            found = best.reindex(range(n))
            ok = found["y"].notna().to_numpy()
            err = found[["y", "x"]].to_numpy()[ok] - truth[ok]
            key = "lodestar" if tta == "dihedral" else "lodestar_single"
            rec[f"{key}_rmse_px"] = float(np.sqrt(np.mean(err**2)))
            rec[f"{key}_found"] = float(ok.mean())
            rec[f"{key}_s_per_crop"] = dt / n
        rec["crlb_px"] = crlb_avg(photons, 2 if args.dry_run else 4)
        rec["lodestar_over_crlb"] = rec["lodestar_rmse_px"] / rec["crlb_px"]
        rec["lodestar_single_over_crlb"] = rec["lodestar_single_rmse_px"] / rec["crlb_px"]
        if photons == 1000:
            rec["target_le_1.5_crlb"] = bool(rec["lodestar_over_crlb"] <= 1.5)
        emit(rec)


# ---------------------------------------------------------------------------- bright-field rings
def _msd_offset_px2(tracks: pd.DataFrame) -> float:
    from napari_deeptrack.analysis.tracking import diffusion_coefficients

    d = diffusion_coefficients(tracks, 1.0, 1.0, fit_lags=4)
    return float(d["ensemble"]["offset_um2"])


def _track_summary(det: pd.DataFrame, n_frames: int, search_range: float) -> dict:
    from napari_deeptrack.analysis.tracking import link_tracks

    tr = link_tracks(det, search_range, memory=0)
    lengths = tr.groupby("track_id")["frame"].nunique()
    full = lengths[lengths == n_frames].index
    return {
        "tracks": int(len(lengths)),
        "full_length_tracks": int(len(full)),
        "msd_offset_px2": _msd_offset_px2(tr[tr.track_id.isin(full)]) if len(full) else None,
    }


def part_rings(args) -> None:
    from napari_deeptrack.analysis.baselines import locate_trackpy

    files = sorted(glob.glob(str(DATA / "brightfield_rings" / "frames" / "*.png")))
    frames = np.stack([_read_png(f) for f in files[: 12 if args.dry_run else None]])
    n = len(frames)
    tune, report = slice(0, 10), slice(10, n)
    # crops: two of the five colloids in frame 0, found by trackpy (a user would draw them)
    first = locate_trackpy(frames[0], diameter=41, topn=5)
    first = first.sort_values("x").reset_index(drop=True)
    boxes = [_box(first.y[i], first.x[i], 18) for i in (0, 2)]
    task = get_preset("particles-selfsupervised").edited(
        {"postprocess.radius_px": 3.0, "postprocess.min_distance_px": 10.0}
    )
    bundle = trained("rings", task, frames[:1], boxes, args)
    t0 = time.perf_counter()
    det = _predict(bundle, frames)
    lode_s = (time.perf_counter() - t0) / n
    # trackpy locate tuned on frames 0-9: diameter and minmass giving exactly 5 features per frame
    best = None
    for d in (21, 31, 41):
        cand = locate_trackpy(frames[tune], diameter=d)
        masses = np.sort(cand.groupby("frame")["mass"].apply(lambda m: np.sort(m.to_numpy())[-5]).to_numpy())
        minmass = 0.9 * float(masses.min())
        per = locate_trackpy(frames[tune], diameter=d, minmass=minmass).groupby("frame").size()
        score = float(np.mean(per.reindex(range(10), fill_value=0) == 5))
        if best is None or score > best[0]:
            best = (score, d, minmass)
    _, d, minmass = best
    t0 = time.perf_counter()
    tp_det = locate_trackpy(frames, diameter=d, minmass=minmass)
    tp_s = (time.perf_counter() - t0) / n
    ring = _ring_refine(frames, tp_det, d)
    for name, table, sec in (("lodestar", det, lode_s), ("trackpy_locate_tuned", tp_det, tp_s),
                             ("trackpy_brightfield_ring", ring, None)):  # fmt: skip
        per = table.groupby("frame").size().reindex(range(n), fill_value=0).to_numpy()
        rec = {
            "case": "rings",
            "method": name,
            "frames_reported": f"{report.start}-{n - 1}",
            "mean_detections_per_frame": float(per[report].mean()),
            "frames_with_exactly_5": float(np.mean(per[report] == 5)),
            "s_per_frame": sec,
            **_track_summary(table, n, 10.0),
        }
        if name.startswith("trackpy_locate"):
            rec.update({"diameter": d, "minmass": minmass})
        emit(rec)


def _ring_refine(frames, coords: pd.DataFrame, diameter: int) -> pd.DataFrame:
    """trackpy's ring locator refining the tuned ``locate`` positions (its own peak finding picks up
    noise features on this data)."""
    import trackpy as tp

    tp.quiet()
    out = []
    for f, c in coords.groupby("frame"):
        im = frames[int(f)].astype(np.uint8)  # the PNGs are 8-bit
        r = tp.locate_brightfield_ring(im, diameter, previous_coords=c[["y", "x"]], processes=1)
        out.append(pd.DataFrame({"frame": int(f), "y": r["y"].to_numpy(), "x": r["x"].to_numpy()}))
    return pd.concat(out, ignore_index=True)


# ---------------------------------------------------------------------------- bulk water
def part_bulk(args) -> None:
    from napari_deeptrack.analysis.baselines import locate_trackpy
    from napari_deeptrack.analysis.metrics import detection_metrics
    from napari_deeptrack.analysis.tracking import diffusion_coefficients, link_tracks

    dev_files = sorted(glob.glob(str(DATA / "bulk_water_dev" / "frames" / "*.png")))[:10]
    more_files = sorted(glob.glob(str(DATA / "bulk_water_more" / "frames" / "*.png")))
    if args.dry_run:
        dev_files, more_files = dev_files[:2], more_files[:4]
    dev = np.stack([_read_png(f) for f in dev_files])
    more = np.stack([_read_png(f) for f in more_files])
    tp_kw = {"diameter": 11, "minmass": 20.0, "invert": True}
    first = locate_trackpy(dev[0], **tp_kw)
    boxes = _isolated_boxes(first, dev.shape[1:], half=7, min_nn=16.0, k=3)
    task = get_preset("particles-selfsupervised").edited(
        {
            "postprocess.radius_px": 1.5,
            "postprocess.min_distance_px": 4.0,
            "postprocess.test_time_augmentation": "none",
        }  # fmt: skip
    )
    bundle = trained("bulk", task, dev[:1], boxes, args)
    tp_dev = locate_trackpy(dev, **tp_kw)
    scores = {}
    dev_det = _predict(bundle, dev, threshold=0.05)
    for thr in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        m = detection_metrics(dev_det[dev_det.probability >= thr], tp_dev, 2.0)
        scores[thr] = m["f1"]
    thr = max(scores, key=scores.get)
    emit({"case": "bulk_tuning", "frames": "bulk_water_dev 0-9", "f1_vs_trackpy": scores, "chosen": thr})
    t0 = time.perf_counter()
    det_all = _predict(bundle, more, threshold=0.05)
    lode_s = (time.perf_counter() - t0) / len(more)
    t0 = time.perf_counter()
    tp_more = locate_trackpy(more, **tp_kw)
    tp_s = (time.perf_counter() - t0) / len(more)
    px, dt = 0.351, 1.0 / 24.0
    tables = {
        "lodestar_default": det_all[det_all.probability >= 0.5],
        "lodestar_tuned": det_all[det_all.probability >= thr],
        "trackpy_walkthrough": tp_more,
    }
    for name, table in tables.items():
        table = table.reset_index(drop=True)
        tr = link_tracks(table, 5.0, memory=3)
        lengths = tr.groupby("track_id")["frame"].transform("size")
        long = tr[lengths >= (3 if args.dry_run else 25)]
        dd = diffusion_coefficients(long, px, dt, fit_lags=4) if len(long) else None
        agree = detection_metrics(table, tp_more, 2.0)
        emit(
            {
                "case": "bulk",
                "method": name,
                "frames": f"bulk_water_more {len(more)} frames",
                "threshold": {"lodestar_default": 0.5, "lodestar_tuned": thr}.get(name),
                "detections_per_frame": len(table) / len(more),
                "vs_trackpy_precision": agree["precision"],
                "vs_trackpy_recall": agree["recall"],
                "tracks_ge_25_frames": int(long.track_id.nunique()) if len(long) else 0,
                "diffusion_um2_s": None if dd is None else dd["ensemble"]["diffusion_um2_s"],
                "diffusion_sem_um2_s": None if dd is None else dd["ensemble"]["sem_um2_s"],
                "expected_um2_s": 0.44,
                "s_per_frame": lode_s if name.startswith("lodestar") else tp_s,
            }
        )


def _isolated_boxes(found: pd.DataFrame, shape, half: int, min_nn: float, k: int) -> list[tuple]:
    """Boxes around ``k`` isolated features of median mass, away from the border (what a user would draw)."""
    from scipy.spatial import cKDTree

    p = found[["y", "x"]].to_numpy()
    nn = cKDTree(p).query(p, k=2)[0][:, 1]
    inner = (p[:, 0] > 2 * half) & (p[:, 0] < shape[0] - 2 * half) & (p[:, 1] > 2 * half) & (
        p[:, 1] < shape[1] - 2 * half)  # fmt: skip
    cand = found[(nn >= min_nn) & inner].copy()
    cand["dev"] = (cand["mass"] - cand["mass"].median()).abs()
    cand = cand.sort_values("dev").head(k)
    return [_box(r.y, r.x, half) for r in cand.itertuples()]


# ---------------------------------------------------------------------------- nuclei
def _centroids(labels: np.ndarray, frame: int) -> pd.DataFrame:
    from scipy import ndimage

    ids = np.unique(labels[labels > 0])
    c = np.asarray(ndimage.center_of_mass(labels > 0, labels, ids)).reshape(-1, 2)
    return pd.DataFrame({"frame": frame, "y": c[:, 0], "x": c[:, 1]})


def _otsu(images: np.ndarray, min_area: int) -> pd.DataFrame:
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    rows = []
    for f, im in enumerate(images):
        lab, n = ndimage.label(im > threshold_otsu(im))
        ids = np.arange(1, n + 1)
        area = ndimage.sum_labels(np.ones_like(im), lab, ids)
        keep = ids[area >= min_area]
        c = np.asarray(ndimage.center_of_mass(np.ones_like(im), lab, keep)).reshape(-1, 2)
        rows.append(pd.DataFrame({"frame": f, "y": c[:, 0], "x": c[:, 1]}))
    return pd.concat(rows, ignore_index=True)


def part_nuclei(args) -> None:
    from scipy import ndimage

    from napari_deeptrack.analysis.metrics import detection_metrics
    from napari_deeptrack.io.tiff import read_tiff

    def load(folder, limit=None):
        files = sorted(glob.glob(str(DATA / folder / "images" / "*.tif")))[:limit]
        ims = np.stack([read_tiff(f)[0].astype(np.float32).squeeze() for f in files])
        labs = [
            read_tiff(str(Path(f).parent.parent / "labels_instance" / Path(f).name))[0].squeeze()
            for f in files
        ]
        truth = pd.concat([_centroids(lab, i) for i, lab in enumerate(labs)], ignore_index=True)
        return ims, labs, truth

    dev, dev_labs, dev_truth = load("bbbc039_dev", 3 if args.dry_run else None)
    more, _, more_truth = load("bbbc039_more", 3 if args.dry_run else None)
    # crops: three isolated nuclei of median area in dev image 0 (what a user would draw)
    lab = dev_labs[0]
    ids = np.unique(lab[lab > 0])
    objs = ndimage.find_objects(lab)
    area = ndimage.sum_labels(np.ones_like(lab), lab, ids)
    med = np.median(area)
    cands = []
    for i, a in zip(ids, area, strict=True):
        sl = objs[i - 1]
        cy, cx = (sl[0].start + sl[0].stop - 1) / 2, (sl[1].start + sl[1].stop - 1) / 2
        half = int(max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) / 2 + 8)
        y0, x0, y1, x1 = int(cy) - half, int(cx) - half, int(cy) + half, int(cx) + half
        if y0 < 0 or x0 < 0 or y1 > lab.shape[0] or x1 > lab.shape[1]:
            continue
        others = np.setdiff1d(np.unique(lab[y0:y1, x0:x1]), [0, i])
        if len(others) == 0:
            cands.append((abs(a - med), (0, y0, x0, y1, x1)))
    boxes = [b for _, b in sorted(cands)[:3]]
    task = get_preset("particles-selfsupervised").edited(
        {"model.binning": 4, "postprocess.radius_px": 6.0, "postprocess.min_distance_px": 12.0}
    )
    bundle = trained("nuclei", task, dev[:1], boxes, args)
    det_dev = _predict(bundle, dev[1:], threshold=0.05)
    truth_dev = dev_truth[dev_truth.frame > 0].assign(frame=lambda d: d.frame - 1)
    scores = {t: detection_metrics(det_dev[det_dev.probability >= t], truth_dev, 5.0)["f1"]
              for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)}  # fmt: skip
    thr = max(scores, key=scores.get)
    otsu_scores = {
        a: detection_metrics(_otsu(dev[1:], a), truth_dev, 5.0)["f1"] for a in (0, 20, 50, 100, 200)
    }
    area_min = max(otsu_scores, key=otsu_scores.get)
    emit({"case": "nuclei_tuning", "images": "bbbc039_dev 1-9", "lodestar_f1": scores, "threshold": thr,
          "otsu_f1": otsu_scores, "otsu_min_area": area_min})  # fmt: skip
    t0 = time.perf_counter()
    det = _predict(bundle, more, threshold=0.05)
    lode_s = (time.perf_counter() - t0) / len(more)
    for name, table, sec in (
        ("lodestar_default", det[det.probability >= 0.5], lode_s),
        ("lodestar_tuned", det[det.probability >= thr], lode_s),
        ("otsu_components", _otsu(more, area_min), None),
    ):
        m = detection_metrics(table, more_truth, 5.0)
        emit({"case": "nuclei", "method": name, "images": f"bbbc039_more ({len(more)})", "f1": m["f1"],
              "precision": m["precision"], "recall": m["recall"], "rmse_px": m.get("rmse_px"),
              "s_per_image": sec})  # fmt: skip


# ---------------------------------------------------------------------------- annotate a few
def part_fewshot(args) -> None:
    """Annotate a few: fine-tune the ``cells-count`` starter on ~25 annotated nuclei in crops of
    ``bbbc039_dev`` images (label centroids as the clicks), score before / after on the 30 whole
    ``bbbc039_more`` images (never seen, never tuned on)."""
    from napari_deeptrack.analysis.metrics import detection_metrics
    from napari_deeptrack.analysis.predict import predict
    from napari_deeptrack.io.starters import resolve_bundle
    from napari_deeptrack.io.tiff import read_tiff
    from napari_deeptrack.train.few_shot import annotate_few

    def load(folder, limit=None):
        files = sorted(glob.glob(str(DATA / folder / "images" / "*.tif")))[:limit]
        ims = [read_tiff(f)[0].astype(np.float32).squeeze() for f in files]
        labs = [read_tiff(str(Path(f).parent.parent / "labels_instance" / Path(f).name))[0].squeeze()
                for f in files]  # fmt: skip
        return ims, labs

    n_crops, size, y0, x0 = 4, 160, 100, 150
    dev, dev_labs = load("bbbc039_dev", n_crops)
    frames = np.stack([im[y0 : y0 + size, x0 : x0 + size] for im in dev])
    points = pd.concat(
        [_centroids(lab[y0 : y0 + size, x0 : x0 + size], i) for i, lab in enumerate(dev_labs)],
        ignore_index=True,
    )
    more, more_labs = load("bbbc039_more", 3 if args.dry_run else args.n_more)
    more = np.stack(more)
    truth = pd.concat([_centroids(lab, i) for i, lab in enumerate(more_labs)], ignore_index=True)
    n_true = truth.groupby("frame").size().reindex(range(len(more)), fill_value=0).to_numpy()
    init = resolve_bundle(args.fewshot_init)
    out = CACHE / f"fewshot{'-dry' if args.dry_run else ''}.zip"
    t0 = time.perf_counter()
    res = annotate_few(
        init, frames, points, out, steps=4 if args.dry_run else args.fewshot_steps, batch_size=8,
        seed=args.seed, holdout=3, real_fraction=args.real_fraction,
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    crops = f"bbbc039_dev 0-{n_crops - 1} [{y0}:{y0 + size}, {x0}:{x0 + size}]"
    emit({"case": "fewshot_train", "init": str(init), "crops": crops, "train_s": round(train_s, 1),
          **{k: res[k] for k in ("train_frames", "heldout_frames", "n_train_objects", "n_heldout_objects",
                                 "before", "after", "after_tuned", "match_distance_px", "lr", "steps",
                                 "real_fraction")}})  # fmt: skip
    for name, path in (("before", init), ("after", out)):
        r = predict(load_bundle(path), more, batch_size=2)
        m = detection_metrics(r.detections, truth, 5.0)
        counts = np.asarray(r.counts, float)
        emit({"case": "fewshot", "model": name, "images": f"bbbc039_more ({len(more)})", "f1": m["f1"],
              "precision": m["precision"], "recall": m["recall"],
              "count_mean_abs_error": float(np.mean(np.abs(counts - n_true))),
              "count_mean_rel_error": float(np.mean(np.abs(counts - n_true) / np.maximum(n_true, 1))),
              "nuclei_per_image": float(n_true.mean())})  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="all", choices=["all", "sim", "rings", "bulk", "nuclei", "fewshot"])
    ap.add_argument("--n-more", type=int, default=30, help="fewshot: bbbc039_more images scored")
    ap.add_argument("--fewshot-init", default="cells-count", help="fewshot: bundle or starter to fine-tune")
    ap.add_argument("--fewshot-steps", type=int, default=200, help="fewshot: fine-tuning steps")
    ap.add_argument("--real-fraction", type=float, default=0.75, help="fewshot: fraction of real batches")
    ap.add_argument("--n-test", type=int, default=1000, help="simulated test crops per photon count")
    ap.add_argument("--epochs", type=int, default=16, help="training epochs of 50 steps (32 images each)")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="training time limit per part (safety)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="tiny settings: checks that everything runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.dry_run:
        args.max_minutes = min(args.max_minutes, 0.5)
    parts = ["sim", "rings", "bulk", "nuclei", "fewshot"] if args.part == "all" else [args.part]
    for p in parts:
        t0 = time.perf_counter()
        globals()[f"part_{p}"](args)
        emit({"case": "part_done", "part": p, "wall_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
