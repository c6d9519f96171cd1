"""Read the BBBC039 development images (real U2OS nuclei) from ``shared/data/bbbc039_dev``.

The data are never copied into the repository: the folder is found from ``--data`` or the
``NAPARI_DEEPTRACK_BBBC039`` environment variable, else ``../shared/data/bbbc039_dev`` relative to the
repository root.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

__all__ = ["crop_counts", "default_data_dir", "load_bbbc039", "tile_slices"]


def default_data_dir() -> Path:
    env = os.environ.get("NAPARI_DEEPTRACK_BBBC039")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bbbc039_dev"


def load_bbbc039(data_dir: str | Path | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, images [N, H, W] float32 (raw grey values), instance labels [N, H, W] and counts [N]."""
    import tifffile

    d = Path(data_dir) if data_dir else default_data_dir()
    if not (d / "counts.csv").exists():
        raise FileNotFoundError(f"BBBC039 development data not found in {d} (set --data)")
    names, counts = [], []
    with (d / "counts.csv").open() as f:
        for row in csv.DictReader(f):
            names.append(row["image"])
            counts.append(int(row["n_nuclei"]))
    images = np.stack([tifffile.imread(d / "images" / n).astype(np.float32) for n in names])
    labels = np.stack([tifffile.imread(d / "labels_instance" / n).astype(np.int32) for n in names])
    return names, images, labels, np.asarray(counts)


def tile_slices(shape: tuple[int, int], size: int) -> list[tuple[slice, slice]]:
    """Non-overlapping ``size`` x ``size`` tiles covering the image from the top-left (remainder dropped)."""
    h, w = shape
    return [
        (slice(y, y + size), slice(x, x + size))
        for y in range(0, h - size + 1, size)
        for x in range(0, w - size + 1, size)
    ]


def crop_counts(labels: np.ndarray, tiles: list[tuple[slice, slice]]) -> np.ndarray:
    """True count per tile: nuclei whose centroid (mean pixel position) lies inside the tile.

    This is the rule the training target uses (a nucleus centred in the frame counts 1, whatever
    part of it is cut off), so every nucleus of the image is counted in exactly one tile of a
    tiling.
    """
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.zeros(len(tiles))
    cy, cx = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, ids)).T
    out = []
    for sy, sx in tiles:
        inside = (cy >= sy.start - 0.5) & (cy < sy.stop - 0.5) & (cx >= sx.start - 0.5) & (cx < sx.stop - 0.5)
        out.append(int(inside.sum()))
    return np.asarray(out, dtype=np.float64)
