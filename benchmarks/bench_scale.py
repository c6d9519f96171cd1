"""Scale: streamed apply on 512x512 Zarr stacks of 100 / 1,000 / 4,000 frames, trackpy side by side, an
8192x8192 tiled image, and Dask distributed (2 workers) against one process. Prints JSON lines.

Every measurement runs in a fresh Python process (``--case``) so its peak resident memory
(``ru_maxrss``) is its own. The stacks are simulated once into ``--data`` (uint16 Zarr, one frame per
chunk): ~30 Gaussian spots (sigma 1.5 px, peak 150 photons over a background of 100, Poisson noise)
diffusing ~1 px per frame.

The network is a stand-in so that the run measures the streaming machinery (reading, normalising,
post-processing, writing, linking) rather than the CPU's convolution speed: a depth-0 U-Net with
hand-set weights whose output is ``sigmoid(2 x - 10)`` of the robust-normalised input (a particle is
where the signal is 5 noise sigmas above the background). ``--network preset`` uses the
``particles-2d`` U-Net (untrained weights, for timing only) instead; its cost per 512x512 frame is
reported by the ``network`` case either way.

``--case ddp`` (DDP: 2 gloo ranks of batch b against 1 rank of batch 2b, over seeds) and ``--case tile``
(peak memory with the automatic tile size against a given one) and ``--case seg`` (segmentation of one
``--tile-frame`` px frame: ``--seg-mode whole / banded / zarr``) run on their own with ``--frames 0``.

Usage::

    python benchmarks/bench_scale.py --data /tmp/scale_data                 # everything
    python benchmarks/bench_scale.py --data /tmp/scale_data --frames 100 1000 --skip slide
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = (512, 512)
CHUNK = 16
SEARCH_RANGE_PX = 5.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------------- data and model
def render_frames(n: int, shape=SHAPE, n_particles: int = 30, seed: int = 0, start_state=None):
    """Frames ``[n, H, W]`` uint16 of diffusing Gaussian spots (and the particle state at the end)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    pos = rng.uniform(8, [h - 8, w - 8], (n_particles, 2)) if start_state is None else start_state
    r = np.arange(-5, 6)
    out = np.empty((n, h, w), np.uint16)
    for t in range(n):
        pos = pos + rng.normal(0, 1.0, pos.shape)
        pos = np.clip(pos, 8, [h - 9, w - 9])
        img = np.full(shape, 100.0)
        base = np.floor(pos).astype(int)
        dy = (base[:, 0, None] + r)[:, :, None] - pos[:, 0, None, None]
        dx = (base[:, 1, None] + r)[:, None, :] - pos[:, 1, None, None]
        spot = 150.0 * np.exp(-(dy**2 + dx**2) / (2 * 1.5**2))
        yy = np.broadcast_to((base[:, 0, None] + r)[:, :, None], spot.shape)
        xx = np.broadcast_to((base[:, 1, None] + r)[:, None, :], spot.shape)
        np.add.at(img, (yy.ravel(), xx.ravel()), spot.ravel())
        out[t] = np.minimum(rng.poisson(img), 65535)
    return out, pos


def make_stack(path: Path, n: int, seed: int = 0) -> Path:
    import zarr

    if (path / "zarr.json").exists():
        return path
    z = zarr.open_array(str(path) + ".tmp", mode="w", shape=(n, *SHAPE), chunks=(1, *SHAPE), dtype="u2")
    state = None
    for s in range(0, n, 100):
        block, state = render_frames(min(100, n - s), seed=seed + s, start_state=state)
        z[s : s + len(block)] = block
    os.replace(str(path) + ".tmp", path)
    return path


def make_bundle(path: Path, network: str) -> Path:
    import torch

    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.tasks import get_preset

    if (path / "config.json").exists():
        return path
    task = get_preset("particles-2d")
    task.input_normalization = {"mode": "robust"}
    if network == "preset":
        model = build_model(task.model)
    else:
        task.model = {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 0, "base_channels": 2,
                      "norm": "none", "convs_per_block": 1}  # fmt: skip
        model = build_model(task.model)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            for conv in convs:
                conv.weight.zero_()
                conv.bias.zero_()
                k = conv.weight.shape[-1] // 2
                conv.weight[0, 0, k, k] = 1.0
            convs[-1].weight[0, 0, 0, 0] = 2.0
            convs[-1].bias[0] = -10.0
    return save_bundle(path, model.eval(), task)


# ---------------------------------------------------------------------------- cases (child processes)
def case_stream(a) -> dict:
    from napari_deeptrack.analysis.batch import batch_apply

    out = Path(a.work) / f"stream_{a.frames[0]}.parquet"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    s = batch_apply(a.bundle, a.stack, out, chunk_frames=CHUNK, link=True, search_range_px=SEARCH_RANGE_PX)
    dt = time.perf_counter() - t0
    return {"frames_per_s": s.frames / dt, "seconds": dt, "detections": s.detections, "tracks": s.tracks}


def case_in_memory(a) -> dict:
    import zarr

    from napari_deeptrack.analysis.predict import predict
    from napari_deeptrack.io.bundle import load_bundle

    bundle = load_bundle(a.bundle)
    t0 = time.perf_counter()
    stack = np.asarray(zarr.open_array(a.stack, mode="r"))
    res = predict(
        bundle, stack, chunk_frames=CHUNK, link=True, search_range_px=SEARCH_RANGE_PX, keep_maps=False
    )
    dt = time.perf_counter() - t0
    det = res.detections
    return {"frames_per_s": len(stack) / dt, "seconds": dt, "detections": len(det),
            "tracks": int(det["track_id"].nunique())}  # fmt: skip


def case_trackpy(a) -> dict:
    import pandas as pd
    import zarr

    from napari_deeptrack.analysis.baselines import locate_trackpy
    from napari_deeptrack.analysis.tracking import link_tracks

    z = zarr.open_array(a.stack, mode="r")
    t0 = time.perf_counter()
    parts = []
    for s in range(0, z.shape[0], CHUNK):  # trackpy.batch chunk by chunk: the same bounded memory
        f = locate_trackpy(np.asarray(z[s : s + CHUNK]), 7, minmass=300)
        f["frame"] += s
        parts.append(f)
    feats = pd.concat(parts, ignore_index=True)
    tracks = link_tracks(feats, SEARCH_RANGE_PX, memory=0)
    dt = time.perf_counter() - t0
    return {"frames_per_s": z.shape[0] / dt, "seconds": dt, "detections": len(feats),
            "tracks": int(tracks["track_id"].nunique())}  # fmt: skip


def case_dask(a) -> dict:
    from napari_deeptrack.analysis.batch import batch_apply

    out = Path(a.work) / f"dask_{a.frames[0]}.parquet"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    s = batch_apply(a.bundle, a.stack, out, chunk_frames=CHUNK, link=True, search_range_px=SEARCH_RANGE_PX,
                    scheduler="local", n_workers=2)  # fmt: skip
    dt = time.perf_counter() - t0
    import pandas as pd

    ref = Path(a.work) / f"stream_{a.frames[0]}.parquet"
    same = None
    if ref.exists():
        same = pd.read_parquet(ref).equals(pd.read_parquet(out))
    return {"frames_per_s": s.frames / dt, "seconds": dt, "detections": s.detections, "tracks": s.tracks,
            "dashboard": s.dashboard, "identical_to_one_process": same, "workers": 2}  # fmt: skip


def case_network(a) -> dict:
    import torch

    from napari_deeptrack.io.bundle import load_bundle
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.tasks import get_preset

    out = {}
    for name, model in (("stand-in", load_bundle(a.bundle).model),
                        ("particles-2d", build_model(get_preset("particles-2d").model).eval())):  # fmt: skip
        x = torch.rand(4, 1, *SHAPE)
        with torch.no_grad():
            model(x[:1])
            t0 = time.perf_counter()
            model(x)
        out[f"{name}_s_per_frame"] = (time.perf_counter() - t0) / 4
    return out


def case_slide(a) -> dict:
    """8192x8192: tiled predict vs the same model applied to overlapping crops by hand."""
    import pandas as pd
    import torch

    from napari_deeptrack.analysis.detect import detect_from_map
    from napari_deeptrack.analysis.predict import predict
    from napari_deeptrack.io.bundle import load_bundle
    from napari_deeptrack.train import normalize

    n = a.slide
    img = np.concatenate(
        [render_frames(1, shape=(n // 8, n), n_particles=n // 32, seed=i)[0][0] for i in range(8)]
    )
    bundle = load_bundle(a.bundle)
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    res = predict(bundle, img, tile_size=1024, tile_overlap=32, keep_maps=False)
    dt = time.perf_counter() - t0
    peak = _peak_rss_mb()
    # by hand: the whole image normalised once, then 1024-px crops overlapping by 64 px; each crop's
    # detections kept where their centre lies in the crop's own (non-overlapping) part
    tile, ov = 1024, 32
    xn = normalize(torch.from_numpy(img.astype(np.float32))[None, None], bundle.task.input_normalization)
    rows = []
    starts = list(range(0, n - tile, tile - 2 * ov)) + [n - tile]
    # a crop owns from its start + overlap (0 for the first) to where the next crop's part begins
    own = [
        (s + (ov if i else 0), starts[i + 1] + ov if i + 1 < len(starts) else n) for i, s in enumerate(starts)
    ]
    for y0, (lo_y, hi_y) in zip(starts, own):
        for x0, (lo_x, hi_x) in zip(starts, own):
            with torch.no_grad():
                p = torch.sigmoid(bundle.model(xn[..., y0 : y0 + tile, x0 : x0 + tile]))[0].numpy()
            d = detect_from_map(p, 0.5)
            lo_y, hi_y, lo_x, hi_x = lo_y - 0.5, hi_y - 0.5, lo_x - 0.5, hi_x - 0.5
            d["y"] += y0
            d["x"] += x0
            keep = (d["y"] >= lo_y) & (d["y"] < hi_y) & (d["x"] >= lo_x) & (d["x"] < hi_x)
            rows.append(d[keep])
    hand = pd.concat(rows).sort_values(["y", "x"]).reset_index(drop=True)
    mine = res.detections.sort_values(["y", "x"]).reset_index(drop=True)
    same = len(hand) == len(mine) and np.allclose(hand[["y", "x"]], mine[["y", "x"]], atol=1e-6)
    return {"image": f"{n}x{n}", "seconds": dt, "detections": len(mine), "detections_by_hand": len(hand),
            "identical_to_crops_by_hand": bool(same), "peak_rss_mb_before": rss0,
            "peak_rss_mb_predict": peak}  # fmt: skip


def case_tile(a) -> dict:
    """Peak memory of ``predict`` with the automatic tile (``auto_tile_size``) or a given one: the
    ``particles-2d`` U-Net (untrained) on one ``--tile-frame`` px square frame, ``--tile-budget-mb``."""
    import torch

    from napari_deeptrack.analysis.predict import auto_tile_size, predict
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.tasks import get_preset

    task = get_preset("particles-2d")
    model = build_model(task.model).eval()
    side, budget = a.tile_frame, a.tile_budget_mb * 2**20
    img = np.random.default_rng(0).poisson(100, (1, side, side)).astype(np.float32)
    with torch.no_grad():
        predict(model, img[:, :64, :64], task=task)  # first-use allocations out of the measurement
    rss0 = _peak_rss_mb()
    tile = auto_tile_size(task.model, (side, side), budget, batch_size=8) if a.tile == "auto" else int(a.tile)
    t0 = time.process_time()
    predict(model, img, task=task, tile_size=tile, batch_size=8, keep_maps=False)
    return {"frame": side, "budget_mb": a.tile_budget_mb, "tile_asked": a.tile, "tile": tile,
            "predict_cpu_s": time.process_time() - t0, "peak_growth_mb": _peak_rss_mb() - rss0}  # fmt: skip


def case_seg(a) -> dict:
    """Segmentation of one large frame (``--tile-frame`` px square, disks of radius 3-5.5): peak memory
    of the watershed on the whole frame (``--seg-mode whole``), in row bands with the labels in memory
    (``banded``) or streamed into Zarr by ``batch_apply`` (``zarr``). Stand-in network: a depth-0 U-Net,
    ``sigmoid(8 x - 4)`` of the input, so the numbers are the post-processing's and the writer's."""
    import torch

    import napari_deeptrack.analysis.predict as pr
    from napari_deeptrack.analysis.batch import batch_apply
    from napari_deeptrack.io.bundle import load_bundle, save_bundle
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.tasks import get_preset

    work = Path(a.work)
    task = get_preset("nuclei-segment")
    task.input_normalization = {"mode": "none"}
    task.postprocess = {"activation": "sigmoid", "threshold": 0.5}
    task.model = {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 0, "base_channels": 2,
                  "norm": "none", "convs_per_block": 1}  # fmt: skip
    model = build_model(task.model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, conv.weight.shape[-1] // 2, conv.weight.shape[-1] // 2] = 1.0
        convs[-1].weight[0, 0, 0, 0] = 8.0
        convs[-1].bias[0] = -4.0
    path = save_bundle(work / f"seg_bundle_{os.getpid()}", model.eval(), task)
    bundle = load_bundle(path)
    side = a.tile_frame
    rng = np.random.default_rng(0)
    img = np.zeros((1, side, side), np.float32)
    yy, xx = np.mgrid[-6:7, -6:7]
    for _ in range(side * side // 2000):
        y, x, r = rng.integers(8, side - 8), rng.integers(8, side - 8), rng.uniform(3, 5.5)
        img[0, y - 6 : y + 7, x - 6 : x + 7] = np.maximum(
            img[0, y - 6 : y + 7, x - 6 : x + 7], yy**2 + xx**2 <= r * r
        )
    # warm up (first-use allocations, the streamed path's imports) out of the measurement
    pr.predict(bundle, img[:, :64, :64])
    batch_apply(
        bundle, img[:, :64, :64], work / f"w_{os.getpid()}.parquet", labels_out=work / f"w_{os.getpid()}.zarr"
    )
    rss0 = _peak_rss_mb()
    t0 = time.process_time()
    if a.seg_mode == "zarr":
        out, labels = work / f"seg_{os.getpid()}.csv", work / f"seg_{os.getpid()}.zarr"
        s = batch_apply(bundle, img, out, labels_out=labels, tile_size=512)
        n = s.detections
    else:
        if a.seg_mode == "whole":
            pr.BAND_PIXELS = 10**12  # the watershed on the whole frame at once
        n = int(pr.predict(bundle, img, keep_maps=False).labels.max())
    return {"mode": a.seg_mode, "frame": side, "instances": n, "predict_cpu_s": time.process_time() - t0,
            "peak_growth_mb": _peak_rss_mb() - rss0}  # fmt: skip


_DDP_RANK_SCRIPT = """
import json, os, sys
import torch
from napari_deeptrack.sim import DiskMask, Fluorescence, Particles, Pipeline, PointParticle
from napari_deeptrack.tasks.base import Task
from napari_deeptrack.train.distributed import distributed_rank, train_task_ddp

torch.set_num_threads(1)
batch, seed, epochs, steps = (int(v) for v in sys.argv[1:5])
out = sys.argv[5]
pipe = Pipeline(
    image_shape=(32, 32),
    particles=[Particles(PointParticle(), count=2, intensity=400.0)],
    optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
    targets={"t": DiskMask(radius_px=3)},
)
task = Task(name="ddp", kind="detection", description="ddp vs 1 rank", pipeline=pipe, target="t",
            model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4},
            loss={"type": "bce"}, postprocess={"activation": "sigmoid", "threshold": 0.5},
            training={"validation_size": 32, "batch_size": batch, "steps_per_epoch": steps, "epochs": epochs})
res = train_task_ddp(task, None, device="cpu", seed=seed)
if distributed_rank() == 0:
    h = res.history
    with open(out, "w") as f:
        json.dump({"train_loss": h["train_loss"], "val_loss": h["val_loss"]}, f)
"""


def case_ddp(a) -> dict:
    """DDP, 2 gloo ranks of batch b, against 1 rank of batch 2b: same seeds, same validation set, same
    initial weights; per-epoch validation loss of each, and the spread over seeds (the noise)."""
    import socket
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="ddp_", dir=a.work))
    script = tmp / "rank.py"
    script.write_text(_DDP_RANK_SCRIPT)
    b, epochs, steps = a.ddp_batch, a.ddp_epochs, a.ddp_steps
    curves: dict[str, list] = {f"2x{b}": [], f"1x{2 * b}": []}
    wall: dict[str, float] = {}
    for seed in a.ddp_seeds:
        for ranks, batch in ((2, b), (1, 2 * b)):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            out = tmp / f"h_{ranks}_{seed}.json"
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                 "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), str(batch), str(seed),
                 str(epochs), str(steps), str(out)],
                env=dict(os.environ, OMP_NUM_THREADS="1"), check=True, capture_output=True,
            )  # fmt: skip
            key = f"{ranks}x{batch}"
            wall[key] = wall.get(key, 0.0) + time.perf_counter() - t0
            curves[key].append(json.loads(out.read_text()))
    rec: dict = {"seeds": list(a.ddp_seeds), "epochs": epochs, "steps_per_epoch": steps}
    for key, runs in curves.items():
        val = np.array([r["val_loss"] for r in runs])
        rec[f"val_loss_{key}"] = [round(float(v), 4) for v in val.mean(0)]
        rec[f"val_loss_sd_over_seeds_{key}"] = [round(float(v), 4) for v in val.std(0, ddof=1)]
        rec[f"train_loss_{key}"] = [round(float(v), 4) for v in np.mean([r["train_loss"] for r in runs], 0)]
        rec[f"wall_s_per_run_{key}"] = round(wall[key] / len(runs), 1)
    two, one = (np.array([r["val_loss"] for r in curves[k]]) for k in curves)
    diff = two[:, -1] - one[:, -1]  # paired by seed: same initial weights and validation set
    rec["final_val_loss_diff_2rank_minus_1rank"] = [round(float(d), 4) for d in diff]
    # the noise: the spread over seeds within one configuration (pooled over the two)
    noise = np.sqrt((two[:, -1].var(ddof=1) + one[:, -1].var(ddof=1)) / 2) if len(diff) > 1 else np.nan
    rec["final_val_loss_sd_over_seeds"] = round(float(noise), 4)
    return rec


CASES = {
    "stream": case_stream,
    "in_memory": case_in_memory,
    "trackpy": case_trackpy,
    "dask": case_dask,
    "network": case_network,
    "slide": case_slide,
    "ddp": case_ddp,
    "tile": case_tile,
    "seg": case_seg,
}


def run_child(a) -> None:
    import torch

    torch.set_num_threads(1)
    cpu0 = time.process_time()
    rec = {"case": a.case, "frames": a.frames[0], **CASES[a.case](a)}
    rec["peak_rss_mb"] = _peak_rss_mb()
    # CPU seconds of this process (the machine is shared: wall time includes waiting for a core)
    rec["cpu_s"] = time.process_time() - cpu0
    if a.frames[0]:
        rec["cpu_s_per_frame"] = rec["cpu_s"] / a.frames[0]
    for k, v in list(rec.items()):
        if isinstance(v, float):
            rec[k] = round(v, 3)
    _emit(rec)


# ---------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/napari_deeptrack_scale", help="folder for stacks, bundle, results")
    p.add_argument("--frames", type=int, nargs="+", default=[100, 1000, 4000])
    p.add_argument("--network", choices=("stand-in", "preset"), default="stand-in")
    p.add_argument("--skip", nargs="*", default=[], choices=sorted(CASES), help="cases to leave out")
    p.add_argument("--dask-frames", type=int, default=1000, help="stack used for dask vs one process")
    p.add_argument("--in-memory-max", type=int, default=1000, help="largest stack also run in memory")
    p.add_argument("--slide", type=int, default=8192, help="side of the tiled whole-slide image")
    p.add_argument("--ddp-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the DDP comparison")
    p.add_argument("--ddp-batch", type=int, default=4, help="DDP: batch per rank b (1 rank gets 2b)")
    p.add_argument("--ddp-epochs", type=int, default=5)
    p.add_argument("--ddp-steps", type=int, default=8, help="DDP: steps per epoch")
    p.add_argument("--tile-frame", type=int, default=2048, help="tile case: side of the frame (px)")
    p.add_argument("--tile-budget-mb", type=int, default=1024, help="tile case: memory budget (MB)")
    p.add_argument("--tile", default="auto", help="tile case: 'auto' or a tile size (px)")
    p.add_argument("--seg-mode", choices=("whole", "banded", "zarr"), default="banded", help="seg case")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--stack", default=None, help=argparse.SUPPRESS)
    p.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case:
        run_child(a)
        return 0
    data = Path(a.data)
    data.mkdir(parents=True, exist_ok=True)
    bundle = make_bundle(data / f"bundle_{a.network}", a.network)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def child(case: str, frames: int = 0, stack: Path | None = None) -> None:
        cmd = [sys.executable, __file__, "--case", case, "--frames", str(frames), "--bundle", str(bundle),
               "--work", str(data), "--slide", str(a.slide), "--ddp-batch", str(a.ddp_batch),
               "--ddp-epochs", str(a.ddp_epochs), "--ddp-steps", str(a.ddp_steps),
               "--ddp-seeds", *map(str, a.ddp_seeds)]  # fmt: skip
        if stack is not None:
            cmd += ["--stack", str(stack)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode or not lines:
            _emit({"case": case, "frames": frames, "error": r.stderr.strip().splitlines()[-1:]})
        else:
            print(lines[-1], flush=True)

    _emit({"case": "setup", "network": a.network, "cpu_threads": 1, "chunk_frames": CHUNK,
           "frame_shape": list(SHAPE), "machine_cores": os.cpu_count()})  # fmt: skip
    if "network" not in a.skip:
        child("network")
    for n in a.frames:
        t0 = time.perf_counter()
        stack = make_stack(data / f"stack_{n}.zarr", n)
        _emit(
            {"case": "data", "frames": n, "seconds": round(time.perf_counter() - t0, 1), "path": str(stack)}
        )
        for case in ("stream", "in_memory", "trackpy"):
            if case not in a.skip and not (case == "in_memory" and n > a.in_memory_max):
                child(case, n, stack)
        if "dask" not in a.skip and n == a.dask_frames:
            child("dask", n, stack)
    if "slide" not in a.skip:
        child("slide")
    if "ddp" not in a.skip:
        child("ddp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
