"""Reader contribution: TIFF stacks with pixel size from ImageJ/OME metadata."""

from __future__ import annotations

from pathlib import Path


def get_reader(path):
    """Return a reader function for .tif/.tiff paths, else None."""
    if isinstance(path, list):
        if not path:
            return None
        path = path[0]
    if str(path).lower().endswith((".tif", ".tiff")):
        return read_tiff
    return None


def read_tiff(path):
    """Read a TIFF (stack) into one image layer, with scale from its pixel-size metadata."""
    from ..io.tiff import read_tiff as _read

    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        data, meta = _read(p)
        kwargs = {"name": Path(p).stem, "metadata": {"source_path": str(p), **meta.get("metadata", {})}}
        if meta.get("pixel_size_um"):
            s = float(meta["pixel_size_um"])
            kwargs["scale"] = (1.0,) * (data.ndim - 2) + (s, s)
            kwargs["units"] = ("pixel",) * (data.ndim - 2) + ("um", "um")
        layers.append((data, kwargs, "image"))
    return layers
