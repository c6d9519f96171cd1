"""``napari-deeptrack apply BUNDLE IMAGE --out results.csv``: run a trained model on images.

IMAGE is a TIFF stack, a PNG/TIFF file or a folder of frames (sorted by name). The results CSV has
one row per detection: ``frame, y, x`` in pixels of the input, then ``z_um`` and other properties
where the task gives them, ``probability``, and ``track_id`` with ``--link``. Counting tasks also
write ``RESULTS_counts.csv`` (``frame,count``) next to the results; ``--labels-out`` writes instance labels
(segmentation) as a TIFF. A JSON summary goes to standard output.

Large inputs (a Zarr, ``--chunk-frames``, ``--scheduler``, a ``.parquet`` ``--out``, a ``.zarr``
``--labels-out``, a TIFF over the memory budget) are streamed chunk by chunk
(:func:`napari_deeptrack.analysis.batch.batch_apply`): results are written as chunks finish and a re-run
resumes; labels go to a Zarr folder band by band; ``--format`` and ``--counts-out`` are written at the
end from the merged table, as in memory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

#: The clock the time estimate reads (tests replace it).
_clock = time.perf_counter

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "apply",
        help="run a trained model bundle on images and write a results CSV",
        description="Apply a trained bundle to a TIFF stack, an image file or a folder of frames.",
    )
    p.add_argument(
        "bundle", help="model bundle (folder or .zip) from `napari-deeptrack train`, or a bioimage.io package"
    )
    p.add_argument("image", help="TIFF stack, PNG/TIFF file or folder of frames")
    p.add_argument("--out", required=True, metavar="RESULTS.csv", help="results CSV")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="detection threshold in (0, 1] (default: the task's)",
    )
    p.add_argument("--link", action="store_true", help="link detections over frames into tracks (trackpy)")
    p.add_argument(
        "--format",
        choices=("csv", "trackmate", "ctc", "trackpy"),
        default="csv",
        help="with --link, also write the tracks as TrackMate XML (RESULTS.xml), a Cell Tracking Challenge "
        "folder (RESULTS_ctc/) or trackpy's layout (RESULTS_trackpy.csv)",
    )
    p.add_argument(
        "--search-range-px",
        type=float,
        default=None,
        help="linking search range in pixels (default: the task's, 5)",
    )
    p.add_argument(
        "--memory",
        type=int,
        default=None,
        help="frames a particle may vanish and keep its track (default: the task's, 0)",
    )
    p.add_argument("--labels-out", default=None, metavar="LABELS.tif", help="instance labels (segmentation)")
    p.add_argument(
        "--counts-out",
        default=None,
        metavar="COUNTS.csv",
        help="counts per frame (default for counting tasks: <--out stem>_counts.csv next to --out)",
    )
    p.add_argument(
        "--pixel-size-um",
        type=float,
        default=None,
        metavar="P",
        help="pixel size of IMAGE in um (default: from the file, else the bundle's)",
    )
    p.add_argument(
        "--frame-interval-s",
        type=float,
        default=None,
        metavar="DT",
        help="time between frames; with --link gives diffusion coefficients",
    )
    p.add_argument("--channel", default=None, help="colour images: channel to use (r, g, b or 0, 1, 2)")
    p.add_argument("--batch-size", type=int, default=8, help="frames per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--tile-size",
        type=_tile_size,
        default="auto",
        metavar="PX",
        help="frames larger than this run in overlapping tiles, merged without seams; 'auto' (default): "
        "the largest tile that fits the memory budget (NAPARI_DEEPTRACK_MEMORY_GB), the whole frame when "
        "it fits",
    )
    p.add_argument(
        "--chunk-frames",
        type=int,
        default=None,
        metavar="N",
        help="stream the stack N frames at a time, writing results as they finish (resumable: run the "
        "same command again after an interruption). Implied by a Zarr IMAGE, a .parquet --out, a .zarr "
        "--labels-out, --scheduler, or a stack larger than the memory budget",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the chunks on Dask distributed: 'local' (a LocalCluster) or a scheduler address "
        "(tcp://host:8786); needs pip install 'napari-deeptrack[distributed]'",
    )
    p.add_argument("--workers", type=int, default=2, help="workers of --scheduler local (default 2)")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="read the complete frames of a truncated TIFF (with a warning) instead of refusing it",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run even when the time estimate (one frame, timed first) exceeds 24 h "
        "(NAPARI_DEEPTRACK_MAX_HOURS)",
    )
    return p


def _tile_size(text: str):
    """``--tile-size``: 'auto' or a number of pixels >= 16."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of pixels, got {text!r}") from None
    if v < 16:
        raise argparse.ArgumentTypeError(f"tile size must be >= 16 px, got {v}")
    return v


def _check_time(args, bundle, images, px) -> None:
    """Time one frame's crop (at most 128 x 128 px), extrapolate to the stack by its pixels; print a
    long estimate, refuse one over 24 h. Costs about 1/16 of a 512 x 512 frame's prediction."""
    from ..analysis.predict import predict
    from ..sim.budget import announce_time, extrapolate_time

    n, (h, w) = int(images.shape[0]), images.shape[-2:]
    if n <= 8:  # the run itself is a few samples long
        return
    ch, cw = min(int(h), 128), min(int(w), 128)
    t0 = _clock()
    predict(bundle, images[:1, ..., :ch, :cw], threshold=args.threshold, batch_size=1, device=args.device,
            tile_size=args.tile_size, pixel_size_um=px, keep_maps=False)  # fmt: skip
    hints = ["the number of frames (crop the stack)", "the image size", "`--device` (a GPU)"]
    est = extrapolate_time(_clock() - t0, ch * cw / (int(h) * int(w)), n, "apply", hints)
    announce_time(est, bool(getattr(args, "force", False)))


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run(args) -> int:
    from ..analysis.predict import predict
    from ..io.atomic import atomic_write_text
    from ..io.bioimageio import load_model
    from ..io.images import read_images
    from ..io.tables import write_counts_csv, write_results_csv

    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must lie in (0, 1], got {args.threshold}")
    from ..io.starters import check_starter_fits, is_starter, resolve_bundle

    args.bundle = str(resolve_bundle(args.bundle))  # a preset name -> its shipped starter model
    for name in ("pixel_size_um", "frame_interval_s", "search_range_px"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    if args.memory is not None and args.memory < 0:
        raise ValueError(f"--memory must be >= 0, got {args.memory}")
    if getattr(args, "format", "csv") != "csv" and not args.link:
        raise ValueError(f"--format {args.format} writes tracks: add --link")
    # validate every output path and the device before reading or writing anything (issue 14)
    from ..io.atomic import check_output_file
    from ..train.seeding import resolve_device

    if _streamed(args):
        return _run_streamed(args)

    check_output_file(args.out, "--out", (".csv",))
    if args.labels_out:
        check_output_file(args.labels_out, "--labels-out", (".tif", ".tiff"))
    if args.counts_out:
        check_output_file(args.counts_out, "--counts-out", (".csv",))
    resolve_device(args.device)
    bundle = load_model(args.bundle, device=args.device)  # bundle or bioimage.io package
    images, meta = read_images(args.image, channel=args.channel, allow_partial=args.allow_partial)
    for note in meta["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if is_starter(args.bundle):
        check_starter_fits(bundle.task, images)
    px = args.pixel_size_um or meta.get("pixel_size_um")
    trained_px = float(bundle.task.pixel_size_um)
    if px and abs(float(px) - trained_px) > 0.05 * trained_px:
        print(
            f"warning: image pixel size {float(px):.4g} um differs from the model's {trained_px:.4g} um; "
            "positions are in pixels of the input, but accuracy may suffer (resample or retrain)",
            file=sys.stderr,
        )
    _check_time(args, bundle, images, px or trained_px)
    res = predict(
        bundle,
        images,
        threshold=args.threshold,
        batch_size=args.batch_size,
        device=args.device,
        tile_size=args.tile_size,
        link=args.link,
        search_range_px=args.search_range_px,
        memory=args.memory,
        pixel_size_um=px or trained_px,
        frame_interval_s=args.frame_interval_s,
        keep_maps=False,  # the CLI writes tables and labels only: memory stays bounded in the frames
    )
    if args.labels_out and res.labels is None:
        raise ValueError(f"--labels-out: the {res.kind} task produces no instance labels")
    out = write_results_csv(res.detections, args.out)
    summary: dict = {
        "task": bundle.task.name,
        "kind": res.kind,
        "frames": int(images.shape[0]),
        "detections": int(len(res.detections)),
        "results": str(out),
        "tile_size": res.info.get("tile_size"),
    }
    counts_path = args.counts_out
    if counts_path is None and res.kind == "counting":
        counts_path = Path(args.out).with_name(Path(args.out).stem + "_counts.csv")  # follows --out
    if counts_path is not None and res.counts is not None:
        summary["counts"] = str(write_counts_csv(res.counts, counts_path))
        summary["mean_count"] = float(np.mean(res.counts))
    if args.labels_out:
        from ..io.tiff import write_tiff

        lab = res.labels.astype(np.uint16 if res.labels.max(initial=0) < 65536 else np.int32)
        if str(args.labels_out).lower().endswith((".ome.tif", ".ome.tiff")):  # OME metadata (issue 13)
            from ..io.ome import write_ome_tiff

            kw = {"pixel_size_um": px, "frame_interval_s": args.frame_interval_s}
            summary["labels"] = str(write_ome_tiff(args.labels_out, lab, **kw))
        else:
            summary["labels"] = str(write_tiff(args.labels_out, lab, pixel_size_um=px))
    if args.link and "track_id" in res.detections:
        summary["tracks"] = int(res.detections["track_id"].nunique())
        if res.diffusion is not None:
            tracks_path = Path(args.out).with_name(Path(args.out).stem + "_tracks.csv")
            atomic_write_text(
                tracks_path, res.diffusion["per_track"].to_csv(index=False, float_format="%.6g")
            )
            summary["diffusion_um2_s"] = _finite(res.diffusion["ensemble"]["diffusion_um2_s"])
            summary["tracks_table"] = str(tracks_path)
    if res.track_properties is not None:
        props_path = Path(args.out).with_name(Path(args.out).stem + "_properties.csv")
        atomic_write_text(props_path, res.track_properties.to_csv(index=False, float_format="%.6g"))
        summary["properties_table"] = str(props_path)
    if getattr(args, "format", "csv") != "csv":  # tracks for TrackMate, the CTC tools or trackpy
        from .export import track_output_path, write_tracks

        tracks = res.detections
        if "track_id" not in tracks:  # no detection at all: nothing was linked
            tracks = tracks.assign(track_id=np.zeros(len(tracks), np.int64))
        summary[args.format] = str(
            write_tracks(
                tracks,
                track_output_path(args.out, args.format),
                args.format,
                px or trained_px,
                args.frame_interval_s or 1.0,
                image_shape=images.shape[-2:],
            )
        )
    print(json.dumps(summary))
    return 0


def _streamed(args) -> bool:
    """Whether to stream the stack chunk by chunk (:func:`napari_deeptrack.analysis.batch.batch_apply`)."""
    from ..io.lazy import is_lazy_source

    if args.chunk_frames is not None or args.scheduler is not None or is_lazy_source(args.image):
        return True
    if str(args.out).lower().endswith(".parquet"):
        return True
    if args.labels_out and str(args.labels_out).rstrip("/").lower().endswith(".zarr"):
        return True
    path = Path(args.image)
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():  # too big to read whole?
        from ..io.lazy import open_lazy
        from ..sim.budget import memory_budget

        try:
            stack, _ = open_lazy(path, channel=args.channel)
        except ValueError:
            return False  # let the reader give its own message
        return stack.size * 4 * 3 > memory_budget()
    return False


def _run_streamed(args) -> int:
    """Chunks streamed to disk (resumable), optionally on Dask distributed; then linking."""
    from ..analysis.batch import batch_apply, settings_json
    from ..io.atomic import check_output_file
    from ..io.bioimageio import load_model
    from ..train.seeding import resolve_device

    check_output_file(args.out, "--out", (".csv", ".parquet"))
    if args.counts_out:
        check_output_file(args.counts_out, "--counts-out", (".csv",))
    if args.labels_out and not str(args.labels_out).rstrip("/").lower().endswith(".zarr"):
        raise ValueError("--labels-out: streamed labels are written to a Zarr folder (LABELS.zarr)")
    resolve_device(args.device)
    bundle = args.bundle if args.scheduler else load_model(args.bundle, device=args.device)
    done = [-1]

    def progress(frames_done: int, total: int) -> None:
        pct = int(100 * frames_done / max(total, 1))
        if pct != done[0]:
            done[0] = pct
            print(f"apply: {frames_done}/{total} frames ({pct}%)", file=sys.stderr)

    summary = batch_apply(
        bundle,
        args.image,
        args.out,
        channel=args.channel,
        chunk_frames=args.chunk_frames,
        threshold=args.threshold,
        batch_size=args.batch_size,
        device=args.device,
        tile_size=args.tile_size,
        link=args.link,
        search_range_px=args.search_range_px,
        memory=args.memory,
        pixel_size_um=args.pixel_size_um,
        frame_interval_s=args.frame_interval_s,
        labels_out=args.labels_out,
        counts_out=args.counts_out,
        scheduler=args.scheduler,
        n_workers=args.workers,
        progress=progress,
    )
    fmt = getattr(args, "format", "csv")
    if fmt == "csv":
        print(settings_json(summary))
        return 0
    # tracks for TrackMate, the CTC tools or trackpy: from the merged, linked table just written
    from .export import track_output_path, write_tracks

    out = Path(summary.results)
    tracks = summary.table
    if "track_id" not in tracks:  # no detection at all: nothing was linked
        tracks = tracks.assign(track_id=np.zeros(len(tracks), np.int64))
    px = args.pixel_size_um or summary.info.get("pixel_size_um") or summary.info["trained_pixel_size_um"]
    where = write_tracks(
        tracks,
        track_output_path(out.with_suffix(".csv"), fmt),
        fmt,
        float(px),
        args.frame_interval_s or 1.0,
        image_shape=tuple(summary.info["image_shape"]),
    )
    print(json.dumps({**json.loads(settings_json(summary)), fmt: str(where)}))
    return 0
