"""Simulation throughput: napari-deeptrack versus DeepTrack 2.0.2, one JSON line per measurement.

Usage::

    python benchmarks/bench_simulation.py                      # all pipelines, batch 64
    python benchmarks/bench_simulation.py --pipelines F --batch 64 --repeats 7
    python benchmarks/bench_simulation.py --deeptrack-python /tmp/dtvenv/bin/python

DeepTrack 2.0.2 is timed when it can be imported, either in this interpreter or in the interpreter given
by ``--deeptrack-python`` / the ``DEEPTRACK_PYTHON`` environment variable (default: ``/tmp/dtvenv/bin/python``
if it exists), e.g. a throw-away venv made with::

    python -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install deeptrack==2.0.2

Otherwise ``deeptrack_images_per_s`` is null and a ``note`` says why.

Each pipeline is a :class:`Bench` in ``BENCHMARKS``: a builder for our pipeline, optionally a builder for
the same pipeline in DeepTrack (a function returning a zero-argument callable that makes one image; it
runs in the DeepTrack interpreter, so it must not import napari_deeptrack), and optionally a "floor"
(the unavoidable cost, e.g. Poisson sampling alone). Add pipelines by appending to ``BENCHMARKS``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEEPTRACK_VERSION = "2.0.2"


@dataclass
class Bench:
    """One benchmark pipeline."""

    name: str
    description: str
    ours: Callable[[], Any]  # -> napari_deeptrack.sim.Pipeline
    deeptrack: Callable[[], Callable[[], Any]] | None = None  # -> make-one-image callable (DeepTrack side)
    floor: Callable[[Any, int, Any], dict] | None = None  # (pipeline, batch, device) -> extra fields


# ---------------------------------------------------------------------------- pipeline F: fluorescence
def ours_fluorescence():
    from napari_deeptrack.sim import (
        Background,
        Fluorescence,
        Particles,
        Pipeline,
        PointParticle,
        Poisson,
        Uniform,
    )

    optics = Fluorescence(NA=0.8, wavelength_um=0.68, camera_pixel_um=1.0, magnification=10)
    particles = Particles(PointParticle(), count=10, z_um=Uniform(-1.0, 1.0), intensity=100.0)
    return Pipeline((128, 128), [particles], optics, transforms=[Background(10.0), Poisson()])


def deeptrack_fluorescence():
    import deeptrack as dt
    import numpy as np

    optics = dt.Fluorescence(
        NA=0.8, wavelength=680e-9, magnification=10, resolution=1e-6, output_region=(0, 0, 128, 128)
    )
    # DeepTrack's z is in pixels of the sample plane (0.1 um here): +-1 um = +-10
    rng = np.random.default_rng()
    particle = dt.PointParticle(
        position=lambda: rng.uniform(0, 128, 2), z=lambda: rng.uniform(-10, 10), intensity=100
    )
    pipeline = optics(particle ^ 10) >> dt.Add(value=10) >> dt.Poisson(snr=10, background=10)
    return lambda: pipeline.update().resolve()


def poisson_floor(pipeline, batch: int, device) -> dict:
    """Time of Poisson sampling alone for one batch of the same images (torch or numpy, the faster)."""
    import numpy as np
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    expected = pipeline(batch, generator=g).image.clamp(min=0)  # same shape and photon levels
    rng = np.random.default_rng(0)
    ex_np = expected.cpu().numpy()
    t_torch = _best_time(lambda: torch.poisson(expected, generator=g), 5, device)
    t_numpy = (
        _best_time(lambda: rng.poisson(ex_np), 5, "cpu") if expected.device.type == "cpu" else float("inf")
    )
    t = min(t_torch, t_numpy)
    return {
        "poisson_floor_images_per_s": batch / t,
        "poisson_floor_backend": "torch" if t == t_torch else "numpy",
    }


# ---------------------------------------------------------------------------- pipelines B, H: coherent
# (added by the coherent-imaging helper)
def ours_brightfield():
    from napari_deeptrack.sim import Brightfield, Particles, Pipeline, Sphere, Uniform

    optics = Brightfield(NA=0.7, wavelength_um=0.68, camera_pixel_um=1.0, magnification=15.0)
    sphere = Sphere(radius_um=0.5, refractive_index=1.45 + 0.02j)
    return Pipeline((51, 51), [Particles(sphere, count=1, z_um=Uniform(-1.0, 1.0))], optics)


def deeptrack_brightfield():
    import deeptrack as dt
    import numpy as np

    optics = dt.Brightfield(
        NA=0.7,
        wavelength=680e-9,
        resolution=1e-6,
        magnification=15,
        refractive_index_medium=1.33,
        output_region=(0, 0, 51, 51),
    )
    # DeepTrack's z is in sample-plane pixels (1/15 um here): +-1 um = +-15
    rng = np.random.default_rng()
    particle = dt.Sphere(
        position=lambda: rng.uniform(5, 46, 2),
        z=lambda: rng.uniform(-15, 15),
        radius=0.5e-6,
        refractive_index=1.45 + 0.02j,
    )
    pipeline = optics(particle)
    return lambda: pipeline.update().resolve()


def ours_holography():
    from napari_deeptrack.sim import Holography, MieSphere, Particles, Pipeline, Uniform

    optics = Holography(NA=1.3, wavelength_um=0.633, pixel_size_um=0.114, output="complex")
    sphere = MieSphere(radius_um=Uniform(0.2, 0.6), refractive_index=Uniform(1.4, 1.6))
    return Pipeline((64, 64), [Particles(sphere, count=1, z_um=Uniform(-5.0, 5.0))], optics)


def deeptrack_holography():
    import deeptrack as dt
    import numpy as np

    optics = dt.Brightfield(
        NA=1.3,
        wavelength=633e-9,
        resolution=0.114e-6,
        magnification=1,
        refractive_index_medium=1.33,
        output_region=(0, 0, 64, 64),
        return_field=True,
    )
    rng = np.random.default_rng()
    particle = dt.MieSphere(  # z in pixels of 0.114 um: +-5 um = +-43.9
        position=lambda: rng.uniform(8, 56, 2),
        z=lambda: rng.uniform(-5, 5) / 0.114,
        radius=lambda: rng.uniform(0.2e-6, 0.6e-6),
        refractive_index=lambda: rng.uniform(1.4, 1.6),
    )
    pipeline = optics(particle)
    return lambda: pipeline.update().resolve()


def catch_hologram_ncc() -> float | None:
    """NCC of the real CATCH hologram with our simulation of its published Lorenz-Mie fit (tests/)."""
    tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
    sys.path.insert(0, tests)
    try:
        from test_catch_hologram import DATA, load_crop, ncc_with_shift, simulate_catch
    except ImportError:
        return None
    if not (DATA / "test_image_crop.png").exists():
        return None
    data = load_crop()
    return ncc_with_shift(data, simulate_catch(shape=data.shape))[0]


BENCHMARKS: list[Bench] = [
    Bench(
        "F",
        "128x128 fluorescence, NA 0.8, 680 nm, 0.1 um pixels, 10 point particles, z +-1 um, 100 photons, "
        "background 10, Poisson",
        ours_fluorescence,
        deeptrack_fluorescence,
        poisson_floor,
    ),
    Bench(
        "B",
        "51x51 brightfield, NA 0.7, 680 nm, camera pixel 1 um at 15x, one sphere r 0.5 um, n 1.45+0.02i in "
        "water, z +-1 um",
        ours_brightfield,
        deeptrack_brightfield,
    ),
    Bench(
        "H",
        "64x64 complex field, NA 1.3, 633 nm, 0.114 um pixels, one Mie sphere r 0.2-0.6 um, n 1.4-1.6, "
        "z +-5 um",
        ours_holography,
        deeptrack_holography,
    ),
]


# ---------------------------------------------------------------------------- timing helpers
def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _best_time(fn: Callable[[], Any], repeats: int, device="cpu") -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def time_ours(bench: Bench, batch: int, repeats: int, device: str) -> tuple[float, Any]:
    import torch

    pipeline = bench.ours()
    g = torch.Generator(device=device).manual_seed(0)
    pipeline(batch, generator=g)  # warm-up: caches, allocator
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        pipeline(batch, generator=g)
        _sync(device)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times), pipeline


def time_deeptrack_here(name: str, n_images: int) -> float:
    bench = {b.name: b for b in BENCHMARKS}[name]
    make = bench.deeptrack()
    make()  # warm-up
    t = time.perf_counter()
    for _ in range(n_images):
        make()
    return n_images / (time.perf_counter() - t)


def _deeptrack_here_ok() -> str | None:
    try:
        from importlib.metadata import version

        v = version("deeptrack")
    except Exception:
        return "deeptrack is not installed in this interpreter"
    if v != DEEPTRACK_VERSION:
        return f"deeptrack {v} is installed, not {DEEPTRACK_VERSION}"
    try:
        import deeptrack  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"deeptrack {v} does not import: {exc!r}"
    return None


def time_deeptrack(name: str, n_images: int, python: str | None) -> tuple[float | None, str | None]:
    """DeepTrack images/s for pipeline ``name``, here or in another interpreter; (None, reason) if not."""
    reason = _deeptrack_here_ok()
    if reason is None:
        return time_deeptrack_here(name, n_images), None
    if python is None or not os.path.exists(python):
        return None, reason + "; no DeepTrack interpreter (--deeptrack-python / DEEPTRACK_PYTHON)"
    cmd = [python, os.path.abspath(__file__), "--deeptrack-only", name, "--n-images", str(n_images)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return None, f"DeepTrack run timed out in {python}"
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            data = json.loads(line)
            return data.get("deeptrack_images_per_s"), data.get("note")
    return None, f"DeepTrack run failed in {python}: {out.stderr.strip()[-300:]}"


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipelines", default=",".join(b.name for b in BENCHMARKS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--deeptrack-images", type=int, default=50, help="images timed in DeepTrack")
    parser.add_argument(
        "--deeptrack-python",
        default=os.environ.get("DEEPTRACK_PYTHON", "/tmp/dtvenv/bin/python"),
        help="interpreter with deeptrack==2.0.2 installed",
    )
    parser.add_argument("--no-deeptrack", action="store_true")
    parser.add_argument("--deeptrack-only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n-images", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.deeptrack_only:  # child mode, inside the DeepTrack interpreter
        import warnings

        warnings.filterwarnings("ignore")
        reason = _deeptrack_here_ok()
        if reason:
            print(json.dumps({"deeptrack_images_per_s": None, "note": reason}))
        else:
            print(
                json.dumps(
                    {"deeptrack_images_per_s": time_deeptrack_here(args.deeptrack_only, args.n_images)}
                )
            )
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    known = {b.name: b for b in BENCHMARKS}
    for name in wanted:
        if name not in known:
            parser.error(f"unknown pipeline {name!r}; known: {sorted(known)}")
    for name in wanted:
        bench = known[name]
        ours, pipeline = time_ours(bench, args.batch, args.repeats, args.device)
        row: dict[str, Any] = {"pipeline": name, "batch": args.batch, "ours_images_per_s": round(ours, 1)}
        if bench.deeptrack is not None and not args.no_deeptrack:
            dt_rate, note = time_deeptrack(name, args.deeptrack_images, args.deeptrack_python)
        else:
            dt_rate, note = None, "no DeepTrack comparison requested"
        row["deeptrack_images_per_s"] = None if dt_rate is None else round(dt_rate, 2)
        row["ratio"] = None if dt_rate is None else round(ours / dt_rate, 1)
        if bench.floor is not None:
            floor = bench.floor(pipeline, args.batch, args.device)
            rate = floor.get("poisson_floor_images_per_s")
            row.update({k: (round(v, 1) if isinstance(v, float) else v) for k, v in floor.items()})
            if rate:
                row["floor_fraction"] = round(ours / rate, 3)
        row["peak_rss_mb"] = round(peak_rss_mb(), 1)
        row["device"] = args.device
        row["threads"] = torch.get_num_threads()
        row["description"] = bench.description
        if note:
            row["note"] = note
        print(json.dumps(row), flush=True)
    if "H" in wanted or "B" in wanted:  # coherent pipelines: the real-data check of the coherent optics
        ncc = catch_hologram_ncc()
        ncc = None if ncc is None else round(ncc, 4)
        print(json.dumps({"check": "catch_hologram", "ncc": ncc}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
