"""Results written chunk by chunk, so an interrupted batch apply keeps what it finished and resumes.

A store is a folder next to the final results (``results.csv`` -> ``results.csv.parts/``):

- ``manifest.json``: the run's settings and, per finished chunk, its frames, number of detections,
  largest label id and counts per frame (rewritten atomically after every chunk);
- ``det_000000123.parquet``: the detections of the chunk starting at frame 123 (written atomically
  before the manifest names it, so a chunk is either complete or absent);
- labels go straight into a Zarr array ``[T, H, W]`` (``--labels-out LABELS.zarr``), Zarr chunks of
  one frame and at most :data:`LABEL_CHUNK_BYTES` (blocks of rows of a large slide), written band by
  band.

:meth:`ResultStore.open` refuses a folder left by a run with other settings, so results of two
different runs are never mixed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_path, atomic_write_text

__all__ = ["ResultStore", "open_labels_zarr"]

MANIFEST = "manifest.json"
#: Largest Zarr chunk of a labels array: one frame, or a block of its rows for a large slide (so a band
#: written or renumbered reads and writes only its own rows, not the whole frame).
LABEL_CHUNK_BYTES = 16 * 2**20


class ResultStore:
    """Chunk results of one batch apply (see the module docstring)."""

    def __init__(self, folder: Path, settings: dict[str, Any], chunks: dict[int, dict]):
        self.folder = Path(folder)
        self.settings = settings
        self.chunks = chunks

    @classmethod
    def open(cls, folder: str | Path, settings: dict[str, Any]) -> ResultStore:
        """Create the store, or reopen an unfinished one written with the same ``settings``.

        Raises
        ------
        ValueError
            ``folder`` holds a run with other settings, or is not a result store.
        """
        folder = Path(folder)
        settings = json.loads(json.dumps(settings))  # what the manifest will hold (lists, not tuples)
        man = folder / MANIFEST
        if folder.exists():
            if not man.exists():
                raise ValueError(f"{folder} exists and is not a results store of napari-deeptrack; remove it")
            old = json.loads(man.read_text())
            if old.get("settings") != settings:
                diff = sorted(
                    k
                    for k in set(old.get("settings", {})) | set(settings)
                    if old.get("settings", {}).get(k) != settings.get(k)
                )
                raise ValueError(
                    f"{folder} holds an unfinished run with other settings ({', '.join(diff)}); delete the "
                    "folder to start again, or choose another output"
                )
            chunks = {int(k): v for k, v in old.get("chunks", {}).items()}
            return cls(folder, settings, chunks)
        folder.mkdir(parents=True)
        store = cls(folder, settings, {})
        store._write_manifest()
        return store

    def _write_manifest(self) -> None:
        data = {"settings": self.settings, "chunks": {str(k): v for k, v in sorted(self.chunks.items())}}
        atomic_write_text(self.folder / MANIFEST, json.dumps(data, indent=1))

    def is_done(self, start: int) -> bool:
        return int(start) in self.chunks and (self.folder / _part_name(start)).exists()

    def add(self, start: int, stop: int, detections: pd.DataFrame, counts=None, max_label: int = 0) -> None:
        """Record a finished chunk: its detections file first, then the manifest."""
        with atomic_path(self.folder / _part_name(start)) as tmp:
            detections.reset_index(drop=True).to_parquet(tmp, index=False)
        self.chunks[int(start)] = {
            "stop": int(stop),
            "n": int(len(detections)),
            "max_label": int(max_label),
            "counts": None if counts is None else [float(c) for c in np.ravel(counts)],
        }
        self._write_manifest()

    def frames_done(self) -> int:
        return sum(v["stop"] - k for k, v in self.chunks.items())

    def detections(self) -> pd.DataFrame:
        """All chunks' detections in frame order (label ids made unique, in frame order)."""
        tables, offset = [], 0
        for start in sorted(self.chunks):
            det = pd.read_parquet(self.folder / _part_name(start))
            if "label" in det.columns and len(det):
                det["label"] = det["label"].to_numpy() + offset
            offset += self.chunks[start]["max_label"]
            tables.append(det)
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()

    def label_offsets(self) -> dict[int, int]:
        """Per chunk start: what to add to its (chunk-local) label ids so they are unique in frame order."""
        out, offset = {}, 0
        for start in sorted(self.chunks):
            out[start] = offset
            offset += self.chunks[start]["max_label"]
        return out

    def counts(self) -> np.ndarray | None:
        parts = [self.chunks[s]["counts"] for s in sorted(self.chunks)]
        if not parts or any(p is None for p in parts):
            return None
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _part_name(start: int) -> str:
    return f"det_{int(start):09d}.parquet"


def open_labels_zarr(path: str | Path, shape: tuple[int, int, int], resume: bool):
    """The labels Zarr array ``[T, H, W]`` int32 (chunks of one frame, or of a block of rows when a frame
    is over :data:`LABEL_CHUNK_BYTES`): created, or reopened to resume."""
    import zarr

    path = Path(path)
    if path.exists() and resume:
        arr = zarr.open_array(str(path), mode="r+")
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"{path} holds labels of shape {arr.shape}, not {shape}: remove it")
        return arr
    if path.exists():
        raise ValueError(f"{path} exists: remove it or choose another --labels-out")
    h, w = int(shape[1]), int(shape[2])
    rows = max(1, min(h, LABEL_CHUNK_BYTES // (4 * max(w, 1))))
    return zarr.open_array(str(path), mode="w", shape=shape, chunks=(1, rows, w), dtype="int32", fill_value=0)
