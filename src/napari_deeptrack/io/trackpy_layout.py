"""trackpy's DataFrame layout: ``frame, y, x, particle`` (+ ``mass``...), positions in pixels.

:func:`to_trackpy` renames our ``track_id`` to ``particle`` (trackpy's track column) and keeps every
other column, so ``trackpy.emsd(df, mpp=pixel_size_um, fps=1/frame_interval_s)``,
``trackpy.imsd`` and ``trackpy.motion`` run on it unchanged; :func:`from_trackpy` goes back.
:func:`write_trackpy_csv` / :func:`read_trackpy_csv` store it with the units in a ``#`` header line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["from_trackpy", "read_trackpy_csv", "to_trackpy", "write_trackpy_csv"]


def to_trackpy(tracks: pd.DataFrame) -> pd.DataFrame:
    """Our tracks table -> trackpy layout (``particle`` instead of ``track_id``; ``frame, y, x`` first)."""
    missing = [c for c in ("frame", "y", "x", "track_id") if c not in tracks.columns]
    if missing:
        raise ValueError(f"tracks lack column(s) {missing} (link the detections first)")
    df = tracks.rename(columns={"track_id": "particle"}).copy()
    df["frame"] = df["frame"].astype(np.int64)
    df["particle"] = df["particle"].astype(np.int64)
    lead = ["frame", "y", "x"]
    df = df[lead + [c for c in df.columns if c not in lead and c != "particle"] + ["particle"]]
    return df.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


def from_trackpy(df: pd.DataFrame) -> pd.DataFrame:
    """trackpy layout -> our tracks table (``particle`` -> ``track_id``)."""
    missing = [c for c in ("frame", "y", "x", "particle") if c not in df.columns]
    if missing:
        raise ValueError(f"not a trackpy trajectory table: lacks column(s) {missing}")
    out = df.rename(columns={"particle": "track_id"}).reset_index(drop=True)
    out["frame"] = out["frame"].astype(np.int64)
    out["track_id"] = out["track_id"].astype(np.int64)
    return out


def write_trackpy_csv(
    tracks: pd.DataFrame,
    path: str | Path,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
) -> Path:
    """Write tracks in trackpy layout; the first line is ``# {"pixel_size_um": ..., ...}`` (units)."""
    from .atomic import atomic_write_text

    df = to_trackpy(tracks)
    units = {"positions": "px", "pixel_size_um": pixel_size_um, "frame_interval_s": frame_interval_s}
    text = "# " + json.dumps(units) + "\n" + df.to_csv(index=False, float_format="%.10g")
    return atomic_write_text(Path(path), text)


def read_trackpy_csv(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a trackpy-layout CSV (ours or trackpy's own ``to_csv``); returns (our table, units)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    first = path.read_text().split("\n", 1)[0]
    units: dict = {}
    if first.startswith("#"):
        try:
            units = json.loads(first[1:].strip())
        except json.JSONDecodeError:
            units = {}
    df = pd.read_csv(path, comment="#")
    if "Unnamed: 0" in df.columns:
        df = df.drop(columns="Unnamed: 0")
    return from_trackpy(df), units
