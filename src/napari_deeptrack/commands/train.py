"""``napari-deeptrack train PRESET|TASK.json|BUNDLE --out BUNDLE [options]``: train on simulated data.

Options override the task's training settings. ``--set KEY=VALUE`` (repeatable) edits any task field
by a dotted key; VALUE is JSON when it parses as JSON, else a string. Examples::

    --set training.lr=3e-4                         # learning rate
    --set training.num_workers=2                   # simulate in 2 worker processes
    --set pipeline.image_shape=[32,32]             # training crop size
    --set pipeline.particles.0.count=5             # particles per image (first population)
    --set 'pipeline.particles.0.intensity={"type": "Uniform", "low": 100, "high": 400}'
    --set loss.pos_weight=[[0,10.0],[0.1,1.0]]     # BCE positive weight schedule
    --set postprocess.threshold=0.6                # kept as set (not re-tuned after training)
    --set postprocess.tune=false                   # keep the preset's threshold

A detection bundle's threshold and brightness cut are otherwise chosen after training on the simulated
validation set (:mod:`napari_deeptrack.analysis.tune_detection`).

The bundle at ``--out`` is rewritten (atomically) whenever the validation loss improves; Ctrl-C
stops after the current batch and keeps the best checkpoint (press twice to abort).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

__all__ = ["add_parser", "parse_assignments", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model on simulated data and save a bundle",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "task", help="preset name, task JSON file (see 'presets NAME') or a bundle (uses its task)"
    )
    p.add_argument("--out", required=True, help="bundle to write: a folder, or a file ending in .zip")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--steps-per-epoch", type=int, help="optimiser steps (batches) per epoch")
    p.add_argument("--batch-size", type=int, help="images per batch")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="time budget: run the epochs that fit, with the learning-rate schedule compressed to fit",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, help="root seed (training batches, validation set, weights)")
    p.add_argument("--num-workers", type=int, help="DataLoader processes simulating training batches")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (reproducible)")
    p.add_argument("--init", help="bundle to start from (fine-tuning / transfer learning)")
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="edit a task field by dotted key (repeatable), e.g. training.lr=1e-3",
    )
    p.add_argument(
        "--match",
        metavar="IMAGE",
        help="calibrate the simulation to a real image first: any image the reader reads (TIFF, PNG, "
        "a folder of frames, .npy); the estimates and a sim-vs-real verdict are printed",
    )
    p.add_argument(
        "--pixel-size-um", type=float, help="pixel size of the --match image (default: from the file)"
    )
    p.add_argument(
        "--match-channel",
        help="colour --match images: channel to use (0/1/2 or r/g/b; default: luminance)",
    )
    p.add_argument(
        "--match-set",
        dest="match_overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="replace a calibration estimate (repeatable), e.g. background=120 or polarity=dark",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--force",
        action="store_true",
        help="keep training when the time estimate (timed on the first batches) exceeds 24 h "
        "(NAPARI_DEEPTRACK_MAX_HOURS); --max-minutes bounds the run instead",
    )
    p.add_argument(  # self-supervised tasks (train/selfsupervised.py)
        "images", nargs="*", metavar="IMAGE", help="self-supervised tasks: image(s) holding the --crop boxes"
    )
    p.add_argument(
        "--crop",
        action="append",
        default=[],
        metavar="Y0,X0,Y1,X1",
        help="self-supervised tasks (particles-selfsupervised): a rectangle around ONE object "
        "(rows Y0:Y1, columns X0:X1; prefix the frame: T,Y0,X0,Y1,X1); repeat for a few objects",
    )
    p.add_argument(  # annotate a few (train/few_shot.py)
        "--annotations",
        metavar="POINTS.csv",
        help="fine-tune the model (--init, or TASK as a bundle / starter name) on these annotated frames of "
        "IMAGE (frame,y,x of EVERY object in each annotated frame); scores before/after on held-back frames",
    )
    p.add_argument("--suggest", type=int, default=5, help="with --annotations: regions to annotate next")
    return p


def parse_assignments(items: list[str]) -> dict:
    """``["a.b=1", "c=text"]`` -> ``{"a.b": 1, "c": "text"}`` (values parsed as JSON when possible)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _match(task, image_path: str, pixel_size_um: float | None, channel=None, overrides=None):
    """``task`` with its simulation calibrated to the image at ``image_path`` (analysis.match)."""
    from ..analysis.match import apply_calibration, calibrate
    from ..io.images import read_images

    if Path(image_path).suffix.lower() == ".npy":  # arrays saved from Python: [H, W] or [T, H, W]
        import numpy as np

        if not Path(image_path).is_file():
            raise FileNotFoundError(f"--match image {image_path} does not exist")
        image, meta = np.load(image_path, allow_pickle=False).astype(np.float32), {}
        image = image[None] if image.ndim == 2 else image
    else:
        image, meta = read_images(image_path, channel=channel)
    for note in meta.get("notes", []):
        print(f"--match {Path(image_path).name}: {note}", file=sys.stderr)
    if pixel_size_um:
        source = "--pixel-size-um"
    elif meta.get("pixel_size_um"):
        pixel_size_um, source = float(meta["pixel_size_um"]), "the image file's metadata"
    else:
        source = "unknown"
    cal = calibrate(
        task.pipeline,
        image,
        pixel_size_um,
        overrides=parse_assignments(overrides or []),
        pixel_source=source,
    )
    print(cal.table(), file=sys.stderr)
    pipeline = apply_calibration(task.pipeline, cal)
    _print_verdict(pipeline, image)
    return task.edited({"pipeline": pipeline, "pixel_size_um": float(cal.pixel_size_um)})


def _print_verdict(pipeline, image) -> None:
    """Compare 8 matched training images with 8 tiles of the real data of the same size; print the
    per-component verdict (analysis.realism.sim_real_distance)."""
    from ..analysis.realism import real_tiles, sim_real_distance

    h, w = (min(a, b) for a, b in zip(pipeline.image_shape, image.shape[-2:]))
    real, sparse = real_tiles(image, (h, w), 8)  # sparse data: tiles centred on the particles
    sim = pipeline.with_(image_shape=(h, w))(8, seed=0).image[:, 0].numpy()
    d = sim_real_distance(sim, real, sparse=sparse)
    comps = ", ".join(f"{k} {v:.2f}{'' if d['ok'][k] else '!'}" for k, v in d["components"].items())
    verdict = f"{d['verdict']} (distance {d['distance']:.2f}; {comps})"
    where = " centred on particles (sparse data; density not compared)" if sparse else ""
    print(f"matched simulation vs {len(real)} real tiles of {h}x{w}{where}: {verdict}", file=sys.stderr)
    for reason in d["reasons"]:
        print(f"  - {reason}", file=sys.stderr)


def run(args) -> int:
    from ..io.bundle import check_bundle_destination
    from ..tasks import load_task
    from ..train import ProgressBar, StopFlag, train_task

    check_bundle_destination(args.out)  # before loading, matching or training anything (issue 14)
    if args.annotations:  # annotate a few: fine-tune on points, score on held-back frames
        from ..train.few_shot import run_cli

        return run_cli(args)
    task = load_task(args.task)
    if args.assignments:
        edits = parse_assignments(args.assignments)
        if any(k in ("postprocess.threshold", "postprocess.min_signal") for k in edits):
            edits.setdefault("postprocess.tune", False)  # the user's read-out is kept, not re-tuned
        task = task.edited(edits)
    if args.match:
        task = _match(task, args.match, args.pixel_size_um, args.match_channel, args.match_overrides)
    stop = StopFlag()

    def on_sigint(signum, frame):
        if stop:
            raise KeyboardInterrupt
        print("\nstopping after this batch (Ctrl-C again to abort)...", file=sys.stderr)
        stop.stop()

    trainer = train_task
    from ..train.distributed import distributed_rank, distributed_world_size, train_task_ddp

    if distributed_world_size() > 1:  # under torchrun: DistributedDataParallel, rank 0 writes
        trainer = train_task_ddp
    if args.crop or args.images or task.loss.get("type") == "lodestar":  # self-supervised, from crops
        from ..train.selfsupervised import crop_trainer

        trainer = crop_trainer(args.images, args.crop)
    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        result = trainer(
            task,
            args.out,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            seed=args.seed,
            num_workers=args.num_workers,
            deterministic=True if args.deterministic else None,
            init=args.init,
            max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
            callbacks=[TimeGuard(force=args.force or args.max_minutes is not None)]
            + ([] if args.quiet else [ProgressBar()]),
            stop_flag=stop,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    h = result.history
    if distributed_rank() != 0:
        return 0
    if result.bundle_path is None or "best_epoch" not in h:
        print("no checkpoint was saved (training stopped before the first validation)", file=sys.stderr)
        return 1
    i = h["epoch"].index(h["best_epoch"])
    extra = "".join(f", {k}={h[k][i]:.4g}" for k in ("rmse_px", "consistency_px") if k in h)
    print(
        f"saved {result.bundle_path} (best epoch {h['best_epoch'] + 1}/{len(h['epoch'])}, "
        f"val_loss={h['val_loss'][i]:.4g}{extra}; {h['reason']})"
    )
    return 0


class TimeGuard:
    """Training callback: after the first few batches, print the estimated duration (stderr) and stop
    a run estimated beyond the time limit (24 h) unless ``force`` (no checkpoint is written by then).

    The sample is the run's own first batches, so it costs nothing; it includes one-off costs (first
    batch, validation set), so the estimate errs long.
    """

    def __init__(self, force: bool = False, sample_steps: int = 3, stream=None):
        self.force, self.sample_steps, self.stream, self.estimate = force, sample_steps, stream, None

    def __call__(self, ev: dict) -> None:
        if self.estimate is not None or ev.get("type") != "batch":
            return
        step, total = int(ev["step"]), int(ev["total_steps"])
        if step < min(self.sample_steps, int(ev["steps_per_epoch"]), total):
            return
        from ..sim.budget import announce_time, extrapolate_time

        hints = [
            f"`--epochs` ({ev['epochs']})",
            f"`--steps-per-epoch` ({ev['steps_per_epoch']})",
            "`--batch-size`, or set --max-minutes",
        ]
        self.estimate = extrapolate_time(ev["elapsed_s"], step, total, "training", hints, unit="batch")
        announce_time(self.estimate, self.force, self.stream)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
