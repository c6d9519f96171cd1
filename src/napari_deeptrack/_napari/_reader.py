"""Reader contributions: TIFF stacks with pixel size from ImageJ/OME metadata; Points CSV with features."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["get_reader", "read_points_csv", "read_tiff", "read_trackmate_xml"]

#: npe2's "read, but no layers" value: napari adds nothing and raises nothing
NO_LAYERS = [(None,)]


def _reader_boundary(read):
    """A claimed file that then fails to read becomes one napari error notification, never a traceback.

    Expected failures (corrupt, truncated or too large images, bad tables) name the file and the
    problem; anything else is logged as a bug (``errors.report_bug``). napari then gets no layers.
    """

    @functools.wraps(read)
    def wrapper(path, *args, **kwargs):
        try:
            return read(path, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the reader's error boundary
            from ._layers import notify, worker_error_message

            first = path[0] if isinstance(path, list) and path else path
            notify(worker_error_message(f"Cannot open {first}", exc), "error")
            return NO_LAYERS

    return wrapper


def get_reader(path):
    """Return a reader function for .tif/.tiff (images) or .csv (points with features) paths, else None."""
    if isinstance(path, list):
        if not path:
            return None
        if len({Path(p).suffix.lower() for p in path}) != 1:
            return None
        path = path[0]
    p = str(path).lower()
    if p.endswith((".tif", ".tiff")):
        # a file we cannot open goes back to napari (None), which then tries its other readers
        return read_tiff if _is_tiff(path) else None
    if p.endswith(".csv") and _is_points_csv(path):
        return read_points_csv
    if p.endswith(".xml") and _is_trackmate(path):
        return read_trackmate_xml
    return None


def _is_trackmate(path) -> bool:
    try:
        with open(path, "rb") as fh:
            return b"<TrackMate" in fh.read(4096)
    except OSError:
        return False


@_reader_boundary
def read_trackmate_xml(path):
    """Read TrackMate XML files into a Tracks layer and a Points layer (for Review), in physical scale."""
    from ..io.trackmate import read_trackmate

    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        df, meta = read_trackmate(p)
        px, dt = float(meta["pixel_size_um"]), float(meta["frame_interval_s"] or 1.0)
        name = Path(p).stem
        feats = df.drop(columns=["frame", "y", "x"]).reset_index(drop=True)
        common = {"scale": (dt, px, px), "units": ("second", "um", "um"), "metadata": {"source_path": str(p)}}
        tracks = df[["track_id", "frame", "y", "x"]].to_numpy(float)
        layers.append((tracks, {"name": f"{name} tracks", "features": feats, **common}, "tracks"))
        points = df[["frame", "y", "x"]].to_numpy(float)
        layers.append((points, {"name": f"{name} spots", "features": feats, **common}, "points"))
    return layers


def _is_tiff(path) -> bool:
    try:
        import tifffile

        from ..io.tiff import quiet_tifffile

        with quiet_tifffile(), tifffile.TiffFile(path) as tif:  # no log noise for a file we decline
            return len(tif.pages) > 0
    except Exception:  # noqa: BLE001 - any failure: not ours to read
        return False


def _first_line(path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.readline().rstrip("\r\n")


def _is_points_csv(path) -> bool:
    try:
        skip = 1 if _first_line(path).startswith("#") else 0
        head = pd.read_csv(path, nrows=1, skiprows=skip)
    except Exception:  # noqa: BLE001 - any failure: not ours to read
        return False
    return any(str(c).startswith("axis-") for c in head.columns)


@_reader_boundary
def read_tiff(path):
    """Read TIFF (stack) files into image layers, with scale and units from their pixel-size metadata."""
    from ..io.tiff import read_tiff as _read

    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        data, meta = _read(p)
        kwargs = {"name": Path(p).stem, "metadata": {"source_path": str(p), **meta.get("metadata", {})}}
        if data.ndim >= 3 and data.shape[-1] in (3, 4) and data.shape[-2] > 4:
            kwargs["rgb"] = True
        n_spatial = 2
        lead = data.ndim - n_spatial - (1 if kwargs.get("rgb") else 0)
        if meta.get("pixel_size_um"):
            s = float(meta["pixel_size_um"])
            kwargs["metadata"]["pixel_size_um"] = s
            kwargs["scale"] = (1.0,) * lead + (s, s)
            kwargs["units"] = ("pixel",) * lead + ("um", "um")
        kind = "image"
        if str(kwargs["metadata"].get("napari_layer", "")) == "labels" and np.issubdtype(
            data.dtype, np.integer
        ):
            kind = "labels"  # written by the Labels writer
            for key in ("rgb",):
                kwargs.pop(key, None)
        layers.append((data, kwargs, kind))
    return layers


@_reader_boundary
def read_points_csv(path):
    """Read a CSV written by the Points writer (``axis-*`` coordinates + feature columns)."""
    paths = path if isinstance(path, list) else [path]
    layers = []
    from ._writer import parse_spatial_header

    for p in paths:
        spatial = parse_spatial_header(_first_line(p))
        table = pd.read_csv(p, skiprows=1 if _first_line(p).startswith("#") else 0)
        coords = [c for c in table.columns if str(c).startswith("axis-")]
        coords.sort(key=lambda c: int(str(c).split("-")[1]))
        data = table[coords].to_numpy(dtype=float) if len(table) else np.zeros((0, len(coords)))
        features = table.drop(columns=coords).reset_index(drop=True)
        kwargs = {"name": Path(p).stem, "features": features, "metadata": {"source_path": str(p)}}
        kwargs.update({k: v for k, v in spatial.items() if len(v) == data.shape[1]})
        layers.append((data, kwargs, "points"))
    return layers
