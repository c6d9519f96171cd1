"""Batch apply at scale (issue 12): lazy Zarr/TIFF input streamed chunk by chunk, results written as
chunks finish, resume after an interruption, Dask distributed with the same results, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from napari_deeptrack.analysis.batch import batch_apply, connect_scheduler
from napari_deeptrack.analysis.predict import predict
from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import save_bundle
from napari_deeptrack.io.tables import read_results_csv
from napari_deeptrack.nn import build_model
from napari_deeptrack.sim import DiskMask, Fluorescence, Particles, Pipeline, PointParticle
from napari_deeptrack.tasks.base import Task


def _bundle(path, kind="detection"):
    """A saved bundle whose network is ``sigmoid(8 x - 4)`` of the (unnormalised) input."""
    pipe = Pipeline(
        image_shape=(48, 48),
        particles=[Particles(PointParticle(), count=3)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"t": DiskMask(radius_px=3)},
    )
    task = Task(name="scale", kind=kind, description="test", pipeline=pipe, target="t",
                model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 0, "base_channels": 2,
                       "norm": "none", "convs_per_block": 1},
                input_normalization={"mode": "none"},
                postprocess={"activation": "sigmoid", "threshold": 0.5})  # fmt: skip
    model = build_model(task.model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            conv.bias.zero_()
            k = conv.weight.shape[-1] // 2
            conv.weight[0, 0, k, k] = 1.0
        convs[-1].weight[0, 0, 0, 0] = 8.0
        convs[-1].bias[0] = -4.0
    return save_bundle(path, model.eval(), task)


def _stack(frames=10, shape=(48, 64), seed=0):
    """Disks of radius 3 drifting 2 px per frame (4 particles; one dims to nothing in frame 4)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros((frames, *shape), np.float32)
    for t in range(frames):
        for k in range(4):
            amp = 0.0 if (k == 1 and t == 4) else 1.0
            y, x = 8 + 10 * k + rng.uniform(-0.5, 0.5), 6 + 2 * t + 3 * k + rng.uniform(-0.5, 0.5)
            out[t] += amp * ((yy - y) ** 2 + (xx - x) ** 2 <= 9)
    return out


def _zarr(path, stack, chunks=None):
    z = zarr.open_array(str(path), mode="w", shape=stack.shape, chunks=chunks or (1, *stack.shape[1:]),
                        dtype="f4")  # fmt: skip
    z[:] = stack
    return path


def _key(df):
    return df.sort_values(["frame", "y", "x"]).reset_index(drop=True)


def test_streamed_zarr_equals_in_memory_and_resumes_after_a_crash(tmp_path):
    bundle = _bundle(tmp_path / "b")
    stack = _stack()
    src = _zarr(tmp_path / "stack.zarr", stack)
    ref = predict(_load(bundle), stack, link=True, search_range_px=4.0).detections
    out = tmp_path / "res.csv"
    s = batch_apply(bundle, src, out, chunk_frames=3, link=True, search_range_px=4.0)
    assert (s.frames, s.chunks, s.chunks_resumed, s.tracks) == (10, 4, 0, 5)
    got = read_results_csv(out)
    pd.testing.assert_frame_equal(_key(got)[["frame", "y", "x", "track_id"]],
                                  _key(ref)[["frame", "y", "x", "track_id"]], atol=1e-5)  # fmt: skip
    assert not (tmp_path / "res.csv.parts").exists()

    # a crash after two chunks keeps them; the same call resumes and gives the same table
    out2 = tmp_path / "res2.parquet"
    calls = []

    def crash(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch_apply(bundle, src, out2, chunk_frames=3, link=True, search_range_px=4.0, progress=crash)
    manifest = json.loads((tmp_path / "res2.parquet.parts" / "manifest.json").read_text())
    assert sorted(manifest["chunks"]) == ["0", "3"] and not out2.exists()
    # other settings are refused rather than mixed in
    with pytest.raises(ValueError, match="threshold"):
        batch_apply(bundle, src, out2, chunk_frames=3, threshold=0.7, link=True)
    s2 = batch_apply(bundle, src, out2, chunk_frames=3, link=True, search_range_px=4.0)
    assert s2.chunks_resumed == 2
    pd.testing.assert_frame_equal(_key(pd.read_parquet(out2)), _key(got), check_dtype=False, atol=1e-5)


def _load(path):
    from napari_deeptrack.io.bundle import load_bundle

    return load_bundle(path)


def test_segmentation_labels_stream_into_zarr_with_unique_ids(tmp_path):
    bundle = _bundle(tmp_path / "b", kind="segmentation")
    stack = _stack(frames=7)
    ref = predict(_load(bundle), stack)
    s = batch_apply(bundle, stack, tmp_path / "seg.csv", chunk_frames=2, labels_out=tmp_path / "lab.zarr")
    labels = np.asarray(zarr.open_array(str(tmp_path / "lab.zarr"), mode="r"))
    np.testing.assert_array_equal(labels, ref.labels)
    got = read_results_csv(tmp_path / "seg.csv")
    np.testing.assert_array_equal(
        np.sort(got["label"].to_numpy()), np.sort(ref.detections["label"].to_numpy())
    )
    assert s.chunks == 4


def test_cli_streams_a_zarr_and_refuses_wrong_axes(tmp_path, capsys):
    bundle = _bundle(tmp_path / "b")
    stack = _stack()
    _zarr(tmp_path / "stack.zarr", stack)
    out = tmp_path / "r.parquet"
    assert main(["apply", str(bundle), str(tmp_path / "stack.zarr"), "--out", str(out), "--link",
                 "--search-range-px", "4", "--chunk-frames", "4"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 10 and summary["tracks"] == 5 and len(pd.read_parquet(out)) == 39
    # Y, X not last: a clear message, exit status 2, nothing written
    bad = zarr.open_array(str(tmp_path / "yxt.zarr"), mode="w", shape=(48, 64, 10), dtype="f4")
    bad.attrs["_ARRAY_DIMENSIONS"] = ["y", "x", "t"]
    assert main(["apply", str(bundle), str(tmp_path / "yxt.zarr"), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "last two axes must be Y, X" in err and "'YXT'" in err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.csv.parts").exists()
    # a 4D array without axis names is ambiguous
    zarr.open_array(str(tmp_path / "4d.zarr"), mode="w", shape=(2, 3, 8, 8), dtype="f4")
    assert main(["apply", str(bundle), str(tmp_path / "4d.zarr"), "--out", str(tmp_path / "y.csv")]) == 2
    assert "no axis names" in capsys.readouterr().err


def test_lazy_multipage_tiff_is_read_by_pages(tmp_path):
    from napari_deeptrack.io.lazy import open_lazy
    from napari_deeptrack.io.tiff import write_tiff

    stack = _stack()
    write_tiff(tmp_path / "s.tif", stack, pixel_size_um=0.1)
    lazy, meta = open_lazy(tmp_path / "s.tif")
    assert lazy.shape == stack.shape and meta["pixel_size_um"] == pytest.approx(0.1)
    assert lazy.chunksize[0] == 1  # one page per chunk: a chunk of frames reads only its pages
    np.testing.assert_array_equal(np.asarray(lazy[3:5]), stack[3:5])


def test_unreachable_scheduler_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="cannot reach a Dask scheduler"):
        connect_scheduler("tcp://127.0.0.1:9", timeout_s=1.0)
    bundle = _bundle(tmp_path / "b")
    _zarr(tmp_path / "s.zarr", _stack(frames=2))
    args = ["apply", str(bundle), str(tmp_path / "s.zarr"), "--out", str(tmp_path / "r.csv"),
            "--scheduler", "tcp://127.0.0.1:9"]  # fmt: skip
    import napari_deeptrack.analysis.batch as batch

    batch.CONNECT_TIMEOUT_S = 1.0
    try:
        assert main(args) == 2
    finally:
        batch.CONNECT_TIMEOUT_S = 10.0
    assert "cannot reach a Dask scheduler" in capsys.readouterr().err


@pytest.mark.slow
def test_two_worker_local_cluster_gives_the_single_process_results(tmp_path):
    pytest.importorskip("distributed")
    bundle = _bundle(tmp_path / "b")
    stack = _stack(frames=12)
    src = _zarr(tmp_path / "s.zarr", stack)
    one = batch_apply(bundle, src, tmp_path / "one.csv", chunk_frames=2, link=True, search_range_px=4.0)
    two = batch_apply(bundle, src, tmp_path / "two.csv", chunk_frames=2, link=True, search_range_px=4.0,
                      scheduler="local", n_workers=2)  # fmt: skip
    assert two.dashboard and (one.detections, one.tracks) == (two.detections, two.tracks)
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()


def test_ome_zarr_is_opened_lazily_with_its_axes_and_units(tmp_path):
    from napari_deeptrack.io.lazy import open_lazy
    from napari_deeptrack.io.ome import write_ome_zarr

    stack = _stack(frames=6)
    two_channels = np.stack([stack, 2 * stack], axis=1)  # T, C, Y, X
    write_ome_zarr(
        tmp_path / "img.zarr", two_channels, axes="TCYX", pixel_size_um=0.13, frame_interval_s=0.05
    )
    with pytest.raises(ValueError, match="2 channels"):
        open_lazy(tmp_path / "img.zarr")
    lazy, meta = open_lazy(tmp_path / "img.zarr", channel=1)
    assert lazy.shape == (6, 48, 64) and meta["axes"] == "TCYX"
    assert meta["pixel_size_um"] == pytest.approx(0.13) and meta["frame_interval_s"] == pytest.approx(0.05)
    np.testing.assert_array_equal(np.asarray(lazy[2:4]), 2 * stack[2:4])


# ---------------------------------------------------------------------------- a worker dies mid-run
@pytest.fixture(scope="module")
def two_process_cluster():
    """A LocalCluster of 2 worker processes (1 thread each) whose scheduler reruns the chunks of a dead
    worker once (``allowed-failures`` 1) and gives up on the second death (KilledWorker)."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")  # fmt: skip
    yield cluster
    cluster.close()


def _dying_chunk(marker, kill_start, always):
    """A chunk function for the workers that kills its worker process (``os._exit``) on the chunk
    starting at ``kill_start``: the first time only, or every time. Each death appends to ``marker``.
    A closure, so it travels to the workers by value; the real work is the package's own."""

    def chunk(bundle_path, source, channel, start, stop, settings):
        import os
        from pathlib import Path

        m = Path(marker)
        if start == kill_start and (always or not m.exists()):
            with m.open("a") as f:
                f.write(f"{os.getpid()}\n")
            os._exit(1)
        from napari_deeptrack.analysis import batch as real

        return real._worker_chunk(bundle_path, source, channel, start, stop, settings)

    return chunk


@pytest.mark.slow
def test_a_worker_that_dies_mid_run_is_survived_or_stops_clearly_keeping_the_finished_chunks(
    tmp_path, two_process_cluster, monkeypatch, capsys
):
    import napari_deeptrack.analysis.batch as batch

    bundle = _bundle(tmp_path / "b")
    src = _zarr(tmp_path / "s.zarr", _stack(frames=12))
    kw = {"chunk_frames": 2, "link": True, "search_range_px": 4.0}
    batch_apply(bundle, src, tmp_path / "ref.csv", **kw)
    ref = (tmp_path / "ref.csv").read_text()
    address = two_process_cluster.scheduler_address

    # 1. the worker running frames 4-5 dies once: Dask reruns them elsewhere, the run finishes, same table
    monkeypatch.setattr(batch, "_worker_chunk", _dying_chunk(str(tmp_path / "once"), 4, always=False))
    s = batch_apply(bundle, src, tmp_path / "once.csv", scheduler=address, **kw)
    assert len((tmp_path / "once").read_text().split()) == 1  # it did die, once
    assert (s.chunks, s.chunks_resumed) == (6, 0)
    assert (tmp_path / "once.csv").read_text() == ref
    assert not (tmp_path / "once.csv.parts").exists()

    # 2. frames 6-7 kill every worker that takes them: the others finish, then a clear error that names
    #    the frames, the saved chunks and how to resume; no results table yet
    monkeypatch.setattr(batch, "_worker_chunk", _dying_chunk(str(tmp_path / "always"), 6, always=True))
    out = tmp_path / "always.csv"
    with pytest.raises(batch.ClusterRunError) as err:
        batch_apply(bundle, src, out, scheduler=address, **kw)
    msg = str(err.value)
    assert len((tmp_path / "always").read_text().split()) == 2  # killed twice, then given up
    assert "6-7" in msg and "KilledWorker" in msg and "run the same command again to resume" in msg
    assert (6, 8) in err.value.failed and not out.exists()
    manifest = json.loads((tmp_path / "always.csv.parts" / "manifest.json").read_text())
    saved = sorted(int(k) for k in manifest["chunks"])
    assert 6 not in saved and len(saved) == 6 - len(err.value.failed) and len(saved) >= 1
    assert f"{len(saved)} finished chunks" in msg

    # the same call on a healthy cluster resumes with the missing chunks only and gives the same table
    monkeypatch.undo()
    s = batch_apply(bundle, src, out, scheduler=address, **kw)
    assert s.chunks_resumed == len(saved)
    assert out.read_text() == ref

    # on the command line: exit status 2 and the message, not a traceback
    monkeypatch.setattr(batch, "_worker_chunk", _dying_chunk(str(tmp_path / "cli"), 0, always=True))
    capsys.readouterr()
    args = ["apply", str(bundle), str(src), "--out", str(tmp_path / "cli.csv"), "--chunk-frames", "6",
            "--scheduler", address]  # fmt: skip
    assert main(args) == 2
    err_text = capsys.readouterr().err
    assert "napari-deeptrack apply: error:" in err_text and "frames 0-5" in err_text
    assert "Traceback" not in err_text


# ---------------------------------------------------------------------------- labels of large frames
def _disks(shape=(200, 96), n=40, seed=3):
    """One frame of ~n disks of radius 3-5 at random places (some touching, many across band edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for _ in range(n):
        y, x, r = rng.uniform(4, shape[0] - 4), rng.uniform(4, shape[1] - 4), rng.uniform(3, 5)
        img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1.0
    return img[None]


def _same_partition(a, b):
    """The same instances, whatever their ids: same foreground, and ids map one to one."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def test_large_frames_are_segmented_in_bands_and_labels_written_band_by_band(tmp_path, monkeypatch):
    import napari_deeptrack.analysis.predict as pr

    bundle = _bundle(tmp_path / "b", kind="segmentation")
    img = _disks()
    whole = predict(_load(bundle), img)  # one band: the whole frame at once
    assert whole.labels.max() >= 20
    # bands of 48 rows (+ 12 rows of context): instances across band borders are merged, not cut
    monkeypatch.setattr(pr, "BAND_PIXELS", 32 * img.shape[-1])
    monkeypatch.setattr(pr, "SEG_BAND_OVERLAP_PX", 12)
    assert len(pr._bands(200, 96, 12)) == 5
    banded = predict(_load(bundle), img)
    assert _same_partition(banded.labels, whole.labels)
    cols = ["frame", "y", "x", "area", "probability"]
    pd.testing.assert_frame_equal(_key(banded.detections)[cols], _key(whole.detections)[cols], atol=1e-9)

    # streamed into Zarr: every write is a band of rows, never the whole label image
    import napari_deeptrack.io.results_store as rs

    writes = []
    real_open = rs.open_labels_zarr

    class Spy:
        def __init__(self, arr):
            self.arr, self.chunks, self.shape = arr, arr.chunks, arr.shape

        def __getitem__(self, key):
            return self.arr[key]

        def __setitem__(self, key, value):
            writes.append(np.shape(value))
            self.arr[key] = value

    monkeypatch.setattr(rs, "LABEL_CHUNK_BYTES", 4 * 96 * 16)  # Zarr chunks of 16 rows
    monkeypatch.setattr(rs, "open_labels_zarr", lambda *a, **k: Spy(real_open(*a, **k)))
    two = np.concatenate([img, img[:, ::-1]])  # 2 frames in 2 chunks: ids renumbered at the end
    ref = predict(_load(bundle), two)
    s = batch_apply(bundle, two, tmp_path / "seg.csv", chunk_frames=1, labels_out=tmp_path / "lab.zarr")
    assert s.chunks == 2 and writes and max(w[-2] for w in writes) < img.shape[-2]
    labels = np.asarray(zarr.open_array(str(tmp_path / "lab.zarr"), mode="r"))
    assert zarr.open_array(str(tmp_path / "lab.zarr"), mode="r").chunks == (1, 16, 96)
    assert _same_partition(labels, ref.labels)
    assert len(np.unique(labels[labels > 0])) == len(np.unique(ref.labels[ref.labels > 0]))
    got = read_results_csv(tmp_path / "seg.csv")
    assert sorted(got["label"]) == sorted(np.unique(labels[labels > 0]))  # table ids = image ids


def test_cli_streaming_writes_track_formats_and_counts_like_the_in_memory_path(tmp_path, capsys):
    from napari_deeptrack.io.tiff import write_tiff

    bundle = _bundle(tmp_path / "b")
    stack = _stack()
    write_tiff(tmp_path / "s.tif", stack, pixel_size_um=0.1)
    _zarr(tmp_path / "s.zarr", stack)
    common = ["--link", "--search-range-px", "4", "--format", "trackpy", "--frame-interval-s", "0.5",
              "--pixel-size-um", "0.1"]  # fmt: skip
    assert main(["apply", str(bundle), str(tmp_path / "s.tif"), "--out", str(tmp_path / "mem.csv"),
                 "--counts-out", str(tmp_path / "mem_n.csv"), *common]) == 0  # fmt: skip
    assert "trackpy" in json.loads(capsys.readouterr().out)
    assert main(["apply", str(bundle), str(tmp_path / "s.zarr"), "--out", str(tmp_path / "st.csv"),
                 "--counts-out", str(tmp_path / "st_n.csv"), "--chunk-frames", "3",
                 *common]) == 0  # fmt: skip
    st = json.loads(capsys.readouterr().out)
    assert st["chunks"] == 4 and st["counts"] == str(tmp_path / "st_n.csv")
    assert (tmp_path / "st_n.csv").read_text() == (tmp_path / "mem_n.csv").read_text()
    assert (tmp_path / "st_trackpy.csv").read_text() == (tmp_path / "mem_trackpy.csv").read_text()
    assert st["trackpy"] == str(tmp_path / "st_trackpy.csv")
    assert len(pd.read_csv(st["trackpy"], comment="#")) == 39


# ---------------------------------------------------------------------------- tile size from memory
def test_tile_size_is_chosen_from_the_memory_budget(tmp_path, capsys):
    from napari_deeptrack.analysis.predict import auto_tile_size
    from napari_deeptrack.errors import MemoryBudgetError
    from napari_deeptrack.sim.budget import estimate_apply
    from napari_deeptrack.tasks import get_preset

    cfg = get_preset("particles-2d").model  # a U-Net of depth d: tiles are multiples of 2**d
    mult = 2 ** cfg["depth"]
    gb = 2**30
    # room for everything: the whole frame (rounded up to the down-sampling factor), no tiling
    assert auto_tile_size(cfg, (500, 300), 64 * gb) == -(-500 // mult) * mult
    tiles = [auto_tile_size(cfg, (4096, 4096), b * gb, batch_size=8) for b in (8, 2, 1, 0.5)]
    assert tiles == sorted(tiles, reverse=True) and tiles[0] > tiles[-1]  # less memory, smaller tiles
    assert all(t % mult == 0 and t < 4096 for t in tiles)
    # the tile chosen fits by the model's own estimate (meta forward pass on that tile), the next does not
    budget = 1 * gb
    t = auto_tile_size(cfg, (4096, 4096), budget, batch_size=8)
    frame = 4096 * 4096 * 24
    assert estimate_apply(cfg, (1, t, t), 8, 8).bytes + frame <= budget * 1.05
    bigger = min(s for s in (t * 2, t + t // 2) if s % mult == 0)
    assert estimate_apply(cfg, (1, bigger, bigger), 8, 8).bytes + frame > budget * 0.95
    with pytest.raises(MemoryBudgetError, match="--batch-size"):
        auto_tile_size(cfg, (8192, 8192), 0.5 * gb)
    # a small frame of a bundle: the whole frame
    assert auto_tile_size(_load(_bundle(tmp_path / "b")), (48, 64), gb) == 64

    # the command line: 'auto' by default (reported), a number overrides, nonsense is refused
    bundle = _bundle(tmp_path / "b2")
    from napari_deeptrack.io.tiff import write_tiff

    write_tiff(tmp_path / "s.tif", _stack(frames=2), pixel_size_um=0.1)
    assert main(["apply", str(bundle), str(tmp_path / "s.tif"), "--out", str(tmp_path / "a.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["tile_size"] == 64
    assert main(["apply", str(bundle), str(tmp_path / "s.tif"), "--out", str(tmp_path / "b.csv"),
                 "--tile-size", "32"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["tile_size"] == 32
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()  # tiles merge seamlessly
    with pytest.raises(SystemExit):
        main(["apply", str(bundle), str(tmp_path / "s.tif"), "--out", str(tmp_path / "c.csv"),
              "--tile-size", "big"])  # fmt: skip
    assert "expected 'auto' or a number of pixels" in capsys.readouterr().err


def test_a_cluster_left_without_workers_stops_with_a_clear_error_keeping_the_finished_chunks(
    tmp_path, monkeypatch
):
    distributed = pytest.importorskip("distributed")
    import napari_deeptrack.analysis.batch as batch

    bundle = _bundle(tmp_path / "b")
    src = _zarr(tmp_path / "s.zarr", _stack(frames=12))
    monkeypatch.setattr(batch, "NO_WORKERS_TIMEOUT_S", 1.0)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                       dashboard_address=":0")  # fmt: skip
    try:

        def lose_all_workers(done, total):  # after the first chunk, the only worker leaves for good
            import time

            if cluster.workers:
                cluster.scale(0)
                t0 = time.monotonic()
                while cluster.scheduler.workers and time.monotonic() - t0 < 30:
                    time.sleep(0.05)

        with pytest.raises(batch.ClusterRunError, match="no worker left on the cluster") as err:
            batch_apply(bundle, src, tmp_path / "r.csv", chunk_frames=1, scheduler=cluster.scheduler_address,
                        progress=lose_all_workers)  # fmt: skip
    finally:
        cluster.close()
    manifest = json.loads((tmp_path / "r.csv.parts" / "manifest.json").read_text())
    assert 1 <= len(manifest["chunks"]) < 12 and len(err.value.failed) == 12 - len(manifest["chunks"])
    assert "run the same command again to resume" in str(err.value)
    s = batch_apply(bundle, src, tmp_path / "r.csv", chunk_frames=1)  # resumes in this process
    assert s.chunks_resumed == len(manifest["chunks"]) and s.detections == 47


@pytest.mark.slow
def test_distributed_segmentation_workers_write_labels_into_the_shared_zarr(tmp_path, two_process_cluster):
    bundle = _bundle(tmp_path / "b", kind="segmentation")
    stack = np.concatenate([_disks(seed=s) for s in range(5)])
    src = _zarr(tmp_path / "s.zarr", stack)
    one = batch_apply(bundle, src, tmp_path / "one.csv", chunk_frames=2, labels_out=tmp_path / "one.zarr")
    two = batch_apply(bundle, src, tmp_path / "two.csv", chunk_frames=2, labels_out=tmp_path / "two.zarr",
                      scheduler=two_process_cluster.scheduler_address)  # fmt: skip
    assert (one.chunks, one.detections) == (two.chunks, two.detections) == (3, one.detections)
    a = np.asarray(zarr.open_array(str(tmp_path / "one.zarr"), mode="r"))
    b = np.asarray(zarr.open_array(str(tmp_path / "two.zarr"), mode="r"))
    np.testing.assert_array_equal(a, b)  # same ids: chunk-local ids renumbered in frame order
    assert len(np.unique(a[a > 0])) == one.detections
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()
