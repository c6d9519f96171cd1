"""Batch apply of any size: lazy input, chunks streamed to disk, resumable, optionally on Dask distributed.

:func:`batch_apply` runs the one prediction path (:func:`~napari_deeptrack.analysis.predict.predict_chunks`
with ``frame_range``) on one chunk of frames at a time and writes every finished chunk at once
(:class:`~napari_deeptrack.io.results_store.ResultStore`: detections as Parquet parts, labels into a
Zarr array), so memory stays bounded by one chunk, Cancel / a crash / Ctrl-C keeps everything
finished, and running the same call again resumes where it stopped. Linking runs last, over the
merged table of the whole stack, exactly as :func:`~napari_deeptrack.analysis.predict.predict` does.

With ``scheduler`` the chunks run on a Dask ``distributed`` cluster: ``"local"`` starts a
``LocalCluster`` (``n_workers`` processes, one thread each), anything else is the address of a
running scheduler (``tcp://host:8786``, e.g. from dask-jobqueue on SLURM). Every worker loads the
bundle once and opens the image source itself (only the path travels); results come back chunk by
chunk and are written by this process in the same way, so the output is identical to the
single-process run. A worker that dies mid-run is survived (Dask reruns its chunks on the others, up
to ``distributed.scheduler.allowed-failures`` deaths per chunk); a chunk that still fails does not
stop the rest, and the run then ends with :class:`ClusterRunError` naming the failed frames, the saved
chunks and how to resume.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeepTrackError

__all__ = ["BatchSummary", "ClusterRunError", "batch_apply", "check_chunk_memory", "connect_scheduler"]

#: Seconds to wait for a scheduler before giving up with a clear error.
CONNECT_TIMEOUT_S = 10.0
#: Seconds a distributed run waits with no worker at all (all died, none restarted) before it stops
#: with :class:`ClusterRunError`, keeping the finished chunks.
NO_WORKERS_TIMEOUT_S = 60.0


@dataclass
class BatchSummary:
    """What :func:`batch_apply` did."""

    results: Path
    frames: int
    chunks: int
    chunks_resumed: int
    detections: int
    tracks: int | None = None
    counts: np.ndarray | None = None
    labels: Path | None = None
    dashboard: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: The merged (and linked) detections as written to ``results``.
    table: Any = None


# ---------------------------------------------------------------------------- worker side
@functools.lru_cache(maxsize=4)
def _cached_bundle(path: str, device: str):
    from ..io.bioimageio import load_model  # a bundle or a bioimage.io package

    return load_model(path, device=device)


@functools.lru_cache(maxsize=4)
def _cached_source(path: str, channel):
    from ..io.lazy import open_lazy

    return open_lazy(path, channel=channel)[0]


def _predict_range(bundle, images, start: int, stop: int, settings: dict, labels_out=None) -> tuple:
    """One chunk through the one prediction path: (start, stop, detections, labels, counts). With
    ``labels_out`` (segmentation) the labels go there band by band (chunk-local ids) and come back None."""
    from .predict import predict_chunks

    gen = predict_chunks(
        bundle,
        images,
        frame_range=(start, stop),
        chunk_frames=stop - start,
        keep_maps=False,
        labels_out=labels_out,
        **settings,
    )
    part = next(gen)
    gen.close()
    return part.start, part.stop, part.detections, part.labels, part.counts


def _worker_chunk(
    bundle_path: str, source, channel, start: int, stop: int, settings: dict, labels_path: str | None = None
) -> tuple:
    """What a Dask worker runs: load the bundle and open the source once per process, run one chunk.
    With ``labels_path`` (a Zarr folder the workers share with the client, as they share the source)
    the worker writes the chunk's labels there band by band and returns none."""
    import torch

    torch.set_num_threads(1)
    bundle = _cached_bundle(bundle_path, str(settings.get("device", "cpu")))
    images = _cached_source(source, channel) if isinstance(source, str) else source
    sink = None
    if labels_path is not None:
        import zarr

        sink = zarr.open_array(labels_path, mode="r+")
    return _predict_range(bundle, images, start, stop, settings, sink)


# ---------------------------------------------------------------------------- checks
def check_chunk_memory(model_config: dict, frame_shape, chunk_frames: int, batch_size: int) -> None:
    """Refuse a chunking whose peak memory would not fit (names ``--chunk-frames`` / ``--batch-size``)."""
    from ..sim.budget import Estimate, estimate_apply

    h, w = (int(s) for s in frame_shape[-2:])
    net = estimate_apply(model_config, (1, h, w), n_frames=int(batch_size), chunk=int(batch_size))
    # one chunk in memory: raw + normalised input, output maps, float64 maps and labels in detection
    per_frame = h * w * (4 + 4 + 4 + 8 + 4)
    total = net.bytes + int(chunk_frames) * per_frame
    Estimate(
        total,
        "apply of one chunk",
        [f"`--chunk-frames` ({chunk_frames})", f"`--batch-size` ({batch_size})"],
        {"per_frame_bytes": per_frame},
    ).check()


def connect_scheduler(scheduler: str, n_workers: int = 2, timeout_s: float | None = None):
    """A ``distributed.Client``: a new ``LocalCluster`` (``"local"``) or a running scheduler's address.

    Raises
    ------
    ValueError
        ``distributed`` is not installed, or the address cannot be reached within ``timeout_s``
        (default :data:`CONNECT_TIMEOUT_S`).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - depends on the install
        raise ValueError(
            "--scheduler needs Dask distributed: pip install 'napari-deeptrack[distributed]'"
        ) from None
    if scheduler == "local":
        if int(n_workers) < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        cluster = LocalCluster(
            n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        return Client(cluster)
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    try:
        return Client(scheduler, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise ValueError(
            f"cannot reach a Dask scheduler at {scheduler!r} within {timeout_s:g} s ({exc}); start one "
            "(dask scheduler) or use --scheduler local"
        ) from None


# ---------------------------------------------------------------------------- the run
def _settings_key(bundle, source_desc: str, shape, settings: dict, chunk: int) -> dict:
    weights = ((getattr(bundle, "config", None) or {}).get("weights") or {}).get("sha256")
    if weights is None:  # an unsaved model: hash its weights
        h = hashlib.sha256()
        for t in bundle.model.state_dict().values():
            h.update(t.detach().cpu().numpy().tobytes())
        weights = h.hexdigest()
    keep = {k: v for k, v in settings.items() if k not in ("device", "batch_size")}
    return {
        "weights_sha256": weights,
        "source": source_desc,
        "shape": [int(s) for s in shape],
        "chunk_frames": int(chunk),
        **keep,
    }


def batch_apply(
    bundle,
    images,
    out: str | Path,
    *,
    channel=None,
    chunk_frames: int | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    tile_size: int | str = "auto",
    tile_overlap: int = 32,
    min_signal: float | None = None,
    link: bool = False,
    search_range_px: float | None = None,
    memory: int | None = None,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    labels_out: str | Path | None = None,
    counts_out: str | Path | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    keep_parts: bool = False,
) -> BatchSummary:
    """Apply ``bundle`` to a stack of any length, chunk by chunk, writing results as they finish.

    Parameters
    ----------
    bundle : Bundle or str or Path
        A loaded bundle or its path (a path is needed for ``scheduler``: workers load it themselves).
    images : str, Path or array
        A Zarr / OME-Zarr folder, a TIFF, a folder of frames (opened lazily by
        :func:`~napari_deeptrack.io.lazy.open_lazy`), or an array ``[T, H, W]`` (NumPy, zarr, dask).
    out : str or Path
        Results table, ``.csv`` or ``.parquet``. Unfinished work lives in ``OUT.parts/`` until the end.
    chunk_frames : int or None
        Frames per chunk (default: 64, fewer when the memory budget asks for it).
    tile_size : int or "auto"
        Frames larger than this run in overlapping tiles; ``"auto"`` (default): the largest tile the
        memory budget allows with ``chunk_frames`` frames in memory
        (:func:`~napari_deeptrack.analysis.predict.auto_tile_size`), the whole frame when it fits.
    labels_out : str or Path or None
        Segmentation: a ``.zarr`` folder receiving the labels ``[T, H, W]`` chunk by chunk.
    counts_out : str or Path or None
        ``frame,count`` CSV of the objects per frame (written from the saved chunks at the end);
        counting tasks write ``OUT_counts.csv`` next to ``out`` without it.
    scheduler : str or None
        None (this process), ``"local"`` (a ``LocalCluster`` of ``n_workers``) or a scheduler address.
    progress : callable or None
        Called with (frames done, frames in all) after every chunk.
    Other parameters
        As :func:`~napari_deeptrack.analysis.predict.predict`.

    Returns
    -------
    BatchSummary
    """
    from ..io.lazy import as_lazy_stack, open_lazy
    from ..io.results_store import ResultStore, open_labels_zarr
    from ..io.tables import order_columns, write_counts_csv, write_results_csv
    from ..sim.budget import frames_per_chunk
    from .predict import auto_tile_size, check_images_fit, kind_rule, link_detections

    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"results must be a .csv or .parquet file, got {out}")
    bundle_path = None
    if isinstance(bundle, str | Path):
        bundle_path = str(bundle)
        from ..io.bioimageio import load_model

        bundle = load_model(bundle_path, device=device)
    elif getattr(bundle, "path", None) is not None:
        bundle_path = str(bundle.path)
    if scheduler is not None and bundle_path is None:
        raise ValueError("a distributed run needs a saved bundle (its path): save the model first")
    task = bundle.task
    rule = kind_rule(task.kind)
    if isinstance(images, str | Path):
        source_desc = str(Path(images).resolve())
        stack, meta = open_lazy(images, channel=channel)
    else:
        source_desc, meta = f"array:{type(images).__name__}", {}
        stack = as_lazy_stack(images, channel=channel)
    n, h, w = (int(s) for s in stack.shape)
    model_cfg = (bundle.config or {}).get("model") or task.model or {}
    check_images_fit(task, model_cfg, (h, w), 1)
    if chunk_frames is None:
        try:
            chunk = min(64, max(1, frames_per_chunk(model_cfg, (1, h, w), limit=64)), n)
        except (ValueError, KeyError, TypeError):  # a model the estimator does not know
            chunk = min(64, n)
    else:
        chunk = int(chunk_frames)
        if chunk < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    check_chunk_memory(model_cfg, (h, w), chunk, batch_size)
    tile_asked = tile_size
    if isinstance(tile_size, str) and tile_size == "auto":
        tile_size = auto_tile_size(bundle, (h, w), None, batch_size, chunk)
    elif isinstance(tile_size, str) or not int(tile_size) >= 1:
        raise ValueError(f"tile_size must be a number of pixels >= 1 or 'auto', got {tile_size!r}")
    settings = {
        "threshold": threshold,
        "batch_size": int(batch_size),
        "device": device,
        "tile_size": int(tile_size),
        "tile_overlap": int(tile_overlap),
        "min_signal": min_signal,
    }
    # the key holds the tile size asked for ("auto" stays "auto": a resume with other free memory is
    # the same run; tiles are merged without seams, so the chunks agree whatever the tile)
    key = _settings_key(bundle, source_desc, (n, h, w), {**settings, "tile_size": tile_asked}, chunk)
    store = ResultStore.open(out.with_name(out.name + ".parts"), key)
    starts = list(range(0, n, chunk))
    resumed = sum(store.is_done(s) for s in starts)
    labels_zarr = None
    if labels_out is not None:
        if task.kind != "segmentation":
            raise ValueError(f"labels: the {task.kind} task produces no instance labels")
        labels_zarr = open_labels_zarr(labels_out, (n, h, w), resume=resumed > 0)

    def record(start, stop, det, labels, counts):
        max_label = 0
        if labels is not None:
            max_label = int(labels.max(initial=0))
            if labels_zarr is not None:
                labels_zarr[start:stop] = labels.astype(np.int32)
        elif "label" in det.columns and len(det):  # written to labels_zarr band by band
            max_label = int(det["label"].max())
        store.add(start, stop, det, counts, max_label)
        if progress is not None:
            progress(store.frames_done(), n)

    todo = [s for s in starts if not store.is_done(s)]
    dashboard = None
    try:
        if scheduler is None:
            for s in todo:
                record(*_predict_range(bundle, stack, s, min(s + chunk, n), settings, labels_zarr))
        else:
            dashboard = _run_distributed(
                scheduler, n_workers, bundle_path, images, stack, channel, todo, chunk, n, settings,
                record, store, None if labels_zarr is None else str(labels_out),
            )  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"interrupted: {store.frames_done()} of {n} frames are saved in {store.folder}; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        raise
    det = store.detections()
    if not len(det):
        from .detect import empty_detections

        det = empty_detections()
    if labels_zarr is not None:  # chunk-local label ids made unique, one block of rows at a time
        rows = max(1, int(labels_zarr.chunks[1]))
        for start, offset in store.label_offsets().items():
            if offset:
                for f in range(start, store.chunks[start]["stop"]):
                    for r0 in range(0, h, rows):
                        block = np.asarray(labels_zarr[f, r0 : r0 + rows])
                        labels_zarr[f, r0 : r0 + rows] = np.where(block > 0, block + offset, 0)
    info: dict[str, Any] = {"chunk_frames": chunk, "threshold": threshold, "tile_size": int(tile_size)}
    tracks = None
    if link and rule.has_detections:
        det, diffusion, _, link_info = link_detections(
            task, det, n, search_range_px, memory, pixel_size_um, frame_interval_s
        )
        info.update(link_info)
        if "track_id" in det.columns:
            tracks = int(det["track_id"].nunique())
        if diffusion is not None:
            info["diffusion_um2_s"] = diffusion["ensemble"].get("diffusion_um2_s")
    if out.suffix.lower() == ".parquet":
        from ..io.atomic import atomic_path

        with atomic_path(out) as tmp:
            order_columns(det).reset_index(drop=True).to_parquet(tmp, index=False)
    else:
        write_results_csv(det, out)
    counts = store.counts()
    counts_path = counts_out
    if counts_path is None and task.kind == "counting":
        counts_path = out.with_name(out.stem + "_counts.csv")
    if counts_path is not None and counts is not None:
        info["counts"] = str(write_counts_csv(counts, counts_path))
    if not keep_parts:
        store.remove()
    info["pixel_size_um"] = meta.get("pixel_size_um")
    info["trained_pixel_size_um"] = float(task.pixel_size_um)
    info["image_shape"] = [h, w]
    return BatchSummary(
        results=out,
        frames=n,
        chunks=len(starts),
        chunks_resumed=resumed,
        detections=int(len(det)),
        tracks=tracks,
        counts=counts,
        labels=None if labels_out is None else Path(labels_out),
        dashboard=dashboard,
        info=info,
        table=det,
    )


class ClusterRunError(DeepTrackError, RuntimeError):
    """Chunks of a distributed run failed (a worker died, or an error inside a worker); the finished
    chunks are saved and running the same call again resumes with the missing ones only.

    Attributes
    ----------
    failed : list of (start, stop)
        The frames of the chunks that did not finish.
    """

    def __init__(self, message: str, failed: list[tuple[int, int]]):
        super().__init__(message, parameter="--scheduler")
        self.failed = failed


def _why_chunk_failed(exc: BaseException) -> str:
    """One clause for a chunk's failure: a dead worker (and what usually kills one) or the error."""
    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover - depends on the install
        KilledWorker = ()  # noqa: N806
    if isinstance(exc, KilledWorker):
        return (
            "the workers running it died (KilledWorker: a worker process was killed, often for running "
            "out of memory; lower --chunk-frames / --batch-size or give the workers more memory)"
        )
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _NoWorkersWatch:
    """Whether the cluster has had no worker for :data:`NO_WORKERS_TIMEOUT_S` (asks the scheduler at
    most twice a second)."""

    def __init__(self, client):
        self.client, self.empty_since, self.checked = client, None, 0.0

    def stranded(self) -> bool:
        import time

        now = time.monotonic()
        if now - self.checked >= 0.5:
            self.checked = now
            workers = self.client.scheduler_info().get("workers") or {}
            self.empty_since = None if workers else (self.empty_since or now)
        return self.empty_since is not None and now - self.empty_since >= NO_WORKERS_TIMEOUT_S


def _finished_or_stranded(watch: _NoWorkersWatch, futures):
    """The futures as they finish (any order); stops early when the cluster is left without workers
    (the rest would wait forever)."""
    import time

    from distributed import as_completed

    ac = as_completed(futures)
    while not ac.is_empty():
        if ac.has_ready():
            yield from ac.next_batch(block=False)
        elif watch.stranded():
            return
        else:
            time.sleep(0.05)


def _fetch(watch: _NoWorkersWatch, fut):
    """A finished future's result; its data may have been lost with its worker and be recomputed, so
    wait while a worker is left, else raise ``TimeoutError``."""
    while True:
        try:
            return fut.result(timeout=1.0)
        except TimeoutError:
            if watch.stranded():
                raise TimeoutError(f"no worker left on the cluster for {NO_WORKERS_TIMEOUT_S:g} s") from None


def _run_distributed(
    scheduler, n_workers, bundle_path, images, stack, channel, todo, chunk, n, settings, record, store,
    labels_path=None,
):  # fmt: skip
    """Submit the chunks to Dask workers and record them as they finish (in any order).

    A worker that dies mid-run is survived: Dask reruns its chunks on the other workers (a restarted
    one included) up to ``distributed.scheduler.allowed-failures`` times. A chunk that still fails
    (its workers kept dying, or it raised) does not stop the others: every chunk that can finish is
    recorded, then :class:`ClusterRunError` names the failed frames, where the finished ones are saved
    and that running the same call again resumes.
    """
    client = connect_scheduler(scheduler, n_workers)
    try:
        dashboard = client.dashboard_link
        print(f"dask dashboard: {dashboard}", file=sys.stderr)
        by_path = isinstance(images, str | Path)
        source = str(images) if by_path else None
        futures, first_frame = [], {}
        for s in todo:
            stop = min(s + chunk, n)
            data = source if by_path else np.asarray(stack[s:stop])
            # a chunk given as data is numbered from 0 inside the worker: shift it back below
            args = (s, stop) if by_path else (0, stop - s)
            # labels: workers that read the source by path write them into the shared Zarr themselves
            kw = {"labels_path": labels_path} if by_path and labels_path is not None else {}
            fut = client.submit(_worker_chunk, bundle_path, data, channel, *args, settings, pure=False, **kw)
            futures.append(fut)
            first_frame[fut.key] = s
        failed: list[tuple[int, int, BaseException]] = []
        finished: set = set()
        watch = _NoWorkersWatch(client)
        for fut in _finished_or_stranded(watch, futures):
            finished.add(fut.key)
            s = first_frame[fut.key]
            try:
                start, stop, det, labels, counts = _fetch(watch, fut)
            except Exception as exc:  # noqa: BLE001 - a dead worker or an error in one: keep going
                failed.append((s, min(s + chunk, n), exc))
                print(f"apply: frames {s}-{min(s + chunk, n) - 1} failed ({type(exc).__name__})",
                      file=sys.stderr)  # fmt: skip
                continue
            if not by_path:
                det = det.assign(frame=det["frame"].to_numpy() + s)
                start, stop = start + s, stop + s
            record(start, stop, det, labels, counts)
        lost = TimeoutError(f"no worker left on the cluster for {NO_WORKERS_TIMEOUT_S:g} s")
        for fut in futures:  # stranded: the cluster lost all its workers
            if fut.key not in finished:
                s = first_frame[fut.key]
                failed.append((s, min(s + chunk, n), lost))
                fut.cancel()
        if failed:
            failed.sort(key=lambda f: f[0])
            first = failed[0]
            ranges = ", ".join(f"{a}-{b - 1}" for a, b, _ in failed[:5]) + (" ..." if len(failed) > 5 else "")
            raise ClusterRunError(
                f"{len(failed)} of {len(todo)} chunks failed on the Dask cluster (frames {ranges}); frames "
                f"{first[0]}-{first[1] - 1}: {_why_chunk_failed(first[2])}. The {len(store.chunks)} finished "
                f"chunks ({store.frames_done()} of {n} frames) are saved in {store.folder}: fix the cause "
                "and run the same command again to resume (only the missing chunks run)",
                [(a, b) for a, b, _ in failed],
            )
        return dashboard
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None and scheduler == "local":
            cluster.close()


def settings_json(summary: BatchSummary) -> str:
    """The summary as one JSON line (for the command line)."""
    d = {
        "results": str(summary.results),
        "frames": summary.frames,
        "chunks": summary.chunks,
        "chunks_resumed": summary.chunks_resumed,
        "detections": summary.detections,
    }
    if summary.tracks is not None:
        d["tracks"] = summary.tracks
    if summary.counts is not None:
        d["mean_count"] = float(np.mean(summary.counts)) if len(summary.counts) else math.nan
    if summary.labels is not None:
        d["labels"] = str(summary.labels)
    if summary.info.get("counts"):
        d["counts"] = summary.info["counts"]
    if summary.info.get("tile_size"):
        d["tile_size"] = summary.info["tile_size"]
    if summary.dashboard:
        d["dashboard"] = summary.dashboard
    return json.dumps(d)
