"""``napari-deeptrack simulate PRESET|CONFIG.json --frames N --seed S --out stack.tif --truth truth.csv``.

Simulates a stack with a preset's (or a JSON configuration's) pipeline and writes it as a TIFF with
the pixel size, plus its ground truth as a CSV in the layout of ``napari-deeptrack apply``
(``frame, y, x`` in pixels, ``z_um``, properties, and ``track_id`` for movies). A configuration
file may hold a Task, a Pipeline or a Movie (``sim.to_json``); a Movie (or a task that defines one)
gives a time series with moving particles, otherwise the frames are independent images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import OutputPathError

__all__ = ["add_parser", "check_simulation", "load_simulation", "run", "simulate_stack"]

#: Largest configuration file read (bytes); real ones are a few kB.
MAX_CONFIG_BYTES = 64 * 1024**2
#: The clock the time estimate reads (tests replace it).
_clock = time.perf_counter


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a stack and its ground truth (TIFF + CSV)",
        description="Simulate images with a preset's or a configuration file's pipeline, with ground truth.",
    )
    p.add_argument(
        "source",
        metavar="PRESET|CONFIG.json",
        help="preset name (see `napari-deeptrack presets`) or a JSON Task / Pipeline / Movie",
    )
    p.add_argument("--frames", type=int, default=10, metavar="N", help="number of frames (default 10)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--out", required=True, metavar="STACK.tif", help="output TIFF stack")
    p.add_argument(
        "--truth", default=None, metavar="TRUTH.csv", help="ground-truth CSV (default: next to --out)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="frames simulated at once (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--force",
        action="store_true",
        help="run even when the time estimate (timed on the first batch) exceeds 24 h "
        "(NAPARI_DEEPTRACK_MAX_HOURS)",
    )
    return p


def load_simulation(source: str):
    """A preset name or a JSON file -> (pipeline or movie, pixel size in um or None, description)."""
    from ..errors import ConfigError
    from ..sim import Pipeline, from_json
    from ..sim.movie import Movie

    path = Path(source)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"no such configuration file: {path}")
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; expected a JSON configuration file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES // 1024**2} MB: not a configuration")
        try:
            obj = from_json(path.read_bytes())
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        name = path.name
    else:
        from ..tasks import get_preset

        obj = get_preset(source)
        name = f"preset {source!r}"
    px = getattr(obj, "pixel_size_um", None) if not isinstance(obj, Pipeline | Movie) else None
    movie = getattr(obj, "movie", None)
    if isinstance(obj, Movie | Pipeline):
        sim = obj
    elif isinstance(movie, Movie):
        sim = movie
    elif isinstance(getattr(obj, "pipeline", None), Pipeline):
        sim = obj.pipeline
    else:
        raise ValueError(f"{name} holds a {type(obj).__name__}; expected a Task, Pipeline or Movie")
    _check_structure(sim.pipeline if isinstance(sim, Movie) else sim, name)
    opx = (sim.pipeline if isinstance(sim, Movie) else sim).optics.sample_pixel_um
    return sim, (float(opx) if opx else (float(px) if px else None)), name


def _check_structure(pipeline, name: str) -> None:
    """A decoded configuration has the right kinds of objects where the simulation needs them."""
    from ..errors import ConfigError
    from ..sim import Optics, Particles

    if not isinstance(pipeline.optics, Optics):
        raise ConfigError(f"{name}: 'optics' must be an optics object, got {type(pipeline.optics).__name__}")
    parts = pipeline.particles
    if not isinstance(parts, list) or not all(isinstance(p, Particles) for p in parts):
        raise ConfigError(f"{name}: 'particles' must be a list of Particles objects")


def simulate_stack(
    sim,
    frames: int,
    seed: int,
    batch_size: int = 16,
    device: str = "cpu",
    time_guard: Callable | None = None,
):
    """Simulate ``frames`` frames: returns images ``[T, C, H, W]`` (numpy) and the truth table.

    ``time_guard``, if given, receives a :class:`~napari_deeptrack.sim.budget.TimeEstimate` of the
    whole run, extrapolated from the first batch (a movie: from a 2-frame sample movie), and may raise
    to stop before the rest is simulated.
    """
    import torch

    from ..io.tables import scene_to_table
    from ..sim.budget import extrapolate_time
    from ..sim.movie import Movie

    check_simulation(sim, frames, batch_size)
    hints = [f"`--frames` ({frames})", "`image_shape`", "the particle `count`"]
    gen = torch.Generator(device=device).manual_seed(int(seed))
    if isinstance(sim, Movie):
        if time_guard is not None and frames > 8:  # a short sample movie (its own generator)
            t0 = _clock()
            sample = torch.Generator(device=device).manual_seed(int(seed) + 1)
            dataclasses.replace(sim, n_frames=2)(1, generator=sample)
            time_guard(extrapolate_time(_clock() - t0, 2, frames, "simulation", hints))
        batch = dataclasses.replace(sim, n_frames=int(frames))(1, generator=gen)
        images = batch.image[0].detach().cpu().numpy()
        truth = scene_to_table(batch.scene)
        return images, truth
    images, tables = [], []
    done = 0
    while done < frames:  # chunks bound the memory; one generator keeps the stack reproducible
        n = min(int(batch_size), frames - done)
        t0 = _clock()
        batch = sim(n, generator=gen)
        images.append(batch.image.detach().cpu().numpy())
        tables.append(scene_to_table(batch.scene, frame_offset=done))
        if done == 0 and time_guard is not None and frames > n:  # the first batch is the sample
            time_guard(extrapolate_time(_clock() - t0, n, frames, "simulation", hints))
        done += n
    import pandas as pd

    return np.concatenate(images), pd.concat(tables, ignore_index=True)


def check_simulation(sim, frames: int, batch_size: int) -> None:
    """Validate ``--frames`` / ``--batch-size`` and the memory of the whole run before simulating.

    The stack is held in memory (then written), so its size counts, plus one batch's rendering.
    """
    from ..errors import InputError
    from ..sim import budget
    from ..sim.movie import Movie

    if frames < 1:
        raise InputError(f"--frames must be >= 1, got {frames}", parameter="--frames")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}", parameter="--batch-size")
    pipeline = sim.pipeline if isinstance(sim, Movie) else sim
    h, w = pipeline.image_shape
    ch = int(getattr(pipeline.optics, "n_channels", 1) or 1)
    n_batch = frames if isinstance(sim, Movie) else min(batch_size, frames)
    render = budget.estimate_render(pipeline, n_batch)
    stack = frames * ch * h * w * 4 * 2  # float32 frames, then one concatenated copy
    truth = frames * sum(max(c, 1) for c in budget._counts(pipeline)) * 12 * 8  # table rows
    hints = [f"`--frames` ({frames})", *render.parameters]
    if not isinstance(sim, Movie):
        hints = [h_ for h_ in hints if "batch_size" not in h_] + [f"`--batch-size` ({batch_size})"]
    budget.check(budget.Estimate(render.bytes + stack + truth, "simulation", hints, render.detail))


def run(args) -> int:
    from ..io.atomic import check_output_file
    from ..io.tables import write_results_csv
    from ..io.tiff import write_tiff
    from ..train.seeding import resolve_device

    # validate everything before the work: outputs, device, sizes and memory
    out = check_output_file(args.out, "--out", (".tif", ".tiff"))
    truth_path = Path(args.truth) if args.truth else out.with_name(out.stem + "_truth.csv")
    check_output_file(truth_path, "--truth", (".csv",))
    if truth_path.resolve() == out.resolve():
        raise OutputPathError("--truth and --out name the same file", parameter="--truth")
    device = str(resolve_device(args.device))
    sim, px, name = load_simulation(args.source)
    from ..sim.budget import announce_time

    force = bool(getattr(args, "force", False))
    images, truth = simulate_stack(
        sim,
        int(args.frames),
        int(args.seed),
        int(args.batch_size),
        device,
        time_guard=lambda est: announce_time(est, force),
    )
    data = images[:, 0] if images.shape[1] == 1 else images
    extra = {} if images.shape[1] == 1 else {"axes": "TCYX"}
    write_tiff(out, data.astype(np.float32), pixel_size_um=px, **extra)
    write_results_csv(truth, truth_path)
    summary = {
        "source": name,
        "frames": int(images.shape[0]),
        "shape": list(images.shape[1:]),
        "pixel_size_um": px,
        "particles": int(len(truth)),
        "stack": str(out),
        "truth": str(truth_path),
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0
