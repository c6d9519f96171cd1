"""CSV tables of results and ground truth, in one layout.

One row per detection (or true particle): ``frame, y, x`` in pixels of the input image (centre of
the top-left pixel at (0, 0); y is the row, x the column), then ``z_um`` and other properties where
the task gives them (``radius_um``, ``n_real``, ``class_id``...), then ``probability``, and
``track_id`` after linking. :func:`write_results_csv` orders the columns this way;
:func:`read_results_csv` checks that ``frame, y, x`` are there (``z`` is read as ``z_um``).
Counts go to a separate ``frame,count`` table (:func:`write_counts_csv`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = [
    "read_truth_csv",
    "order_columns",
    "read_results_csv",
    "scene_to_table",
    "write_counts_csv",
    "write_results_csv",
]

_LEADING = ["frame", "y", "x", "z_um"]
_TRAILING = ["probability", "track_id"]


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``frame, y, x, z_um``, then the other columns in their order, then ``probability, track_id``."""
    lead = [c for c in _LEADING if c in df.columns]
    trail = [c for c in _TRAILING if c in df.columns]
    middle = [c for c in df.columns if c not in lead and c not in trail]
    return df[lead + middle + trail]


def write_results_csv(df: pd.DataFrame, path: str | Path, float_format: str = "%.6g") -> Path:
    """Write a detection / truth table (columns ordered, header, no index)."""
    missing = [c for c in ("frame", "y", "x") if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}; it has {list(df.columns)}")
    from .atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, order_columns(df).to_csv(index=False, float_format=float_format))
    return path


def read_results_csv(path: str | Path) -> pd.DataFrame:
    """Read a results or truth CSV; requires ``frame, y, x``; a ``z`` column is renamed ``z_um``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a CSV file")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV table ({type(exc).__name__}: {exc})") from None
    if "z" in df.columns and "z_um" not in df.columns:
        df = df.rename(columns={"z": "z_um"})
    missing = [c for c in ("frame", "y", "x") if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {list(df.columns)}")
    for col in ("frame", "y", "x"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{path}: column {col!r} holds a non-numeric or non-finite value {df[col].iloc[row]!r} "
                f"in data row {row + 1} ({int(bad.sum())} such rows)"
            )
        df[col] = values
    if (df["frame"] < 0).any() or (df["frame"] != np.round(df["frame"])).any():
        raise InputError(f"{path}: column 'frame' must hold whole numbers >= 0")
    df["frame"] = df["frame"].astype(np.int64)
    return df


def read_truth_csv(path: str | Path) -> pd.DataFrame:
    """Read a ground-truth CSV, keeping only particles a detector can see.

    Like :func:`read_results_csv`; rows whose optional ``present`` or ``visible`` column is false
    (a track that left the field of view, a blinked-off or bleached emitter) are dropped.
    """
    df = read_results_csv(path)
    for col in ("present", "visible"):
        if col in df.columns:
            keep = df[col].astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])
            df = df[keep]
    return df.reset_index(drop=True)


def write_counts_csv(counts, path: str | Path) -> Path:
    """Write ``frame,count`` (one row per frame)."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    from .atomic import atomic_write_text

    path = Path(path)
    table = pd.DataFrame({"frame": np.arange(len(c)), "count": c})
    atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
    return path


def scene_to_table(scene, frame_offset: int = 0, in_frame_only: bool = True) -> pd.DataFrame:
    """Ground truth of a :class:`~napari_deeptrack.sim.scene.Scene` batch as a results-layout table.

    One row per present particle (image index + ``frame_offset`` as ``frame``): ``frame, y, x,
    z_um, intensity, radius_um, n_real, n_imag, class_id`` and scalar per-particle attributes
    (``track_id`` from a movie). With ``in_frame_only`` particles whose centre lies outside the
    image are left out (a detector cannot report them).
    """
    present = scene.present
    if in_frame_only:
        h, w = scene.image_shape
        y, x = scene.position[..., 0], scene.position[..., 1]
        present = present & (y >= -0.5) & (y < h - 0.5) & (x >= -0.5) & (x < w - 0.5)
    b_idx, n_idx = np.nonzero(present.detach().cpu().numpy())
    pos = scene.position.detach().cpu().numpy()[b_idx, n_idx]
    cols: dict[str, np.ndarray] = {
        "frame": b_idx.astype(np.int64) + int(frame_offset),
        "y": pos[:, 0].astype(np.float64),
        "x": pos[:, 1].astype(np.float64),
        "z_um": pos[:, 2].astype(np.float64),
        "intensity": scene.intensity.detach().cpu().numpy()[b_idx, n_idx].astype(np.float64),
        "radius_um": scene.radius_um.detach().cpu().numpy()[b_idx, n_idx].astype(np.float64),
        "n_real": scene.refractive_index.real.detach().cpu().numpy()[b_idx, n_idx].astype(np.float64),
        "n_imag": scene.refractive_index.imag.detach().cpu().numpy()[b_idx, n_idx].astype(np.float64),
        "class_id": scene.class_id.detach().cpu().numpy()[b_idx, n_idx].astype(np.int64),
    }
    for k, v in scene.attributes.items():
        if v.dim() == 2 and tuple(v.shape) == tuple(scene.present.shape) and k not in cols:
            arr = v.detach().cpu().numpy()[b_idx, n_idx]
            cols[k] = arr.astype(np.int64) if k == "track_id" else arr
    return order_columns(pd.DataFrame(cols))
