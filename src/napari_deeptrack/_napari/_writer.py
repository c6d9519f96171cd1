"""Writer contributions: Points to CSV with all features, Labels to TIFF with the pixel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["points_to_table", "write_labels", "write_points"]


def points_to_table(data, features=None) -> pd.DataFrame:
    """Points coordinates (``axis-0``... in data pixels, as napari's own CSV) plus their features."""
    data = np.asarray(data, dtype=float)
    if data.ndim != 2:
        data = data.reshape(0, 2)
    table = pd.DataFrame({f"axis-{i}": data[:, i] for i in range(data.shape[1])})
    if features is not None:
        feats = pd.DataFrame(features).reset_index(drop=True)
        if len(feats) == len(table):
            for col in feats.columns:
                name = str(col)
                if name in table.columns:
                    name = f"feature_{name}"
                table[name] = feats[col].to_numpy()
    return table


def write_points(path: str, data, meta: dict) -> list[str]:
    """Write a Points layer as CSV: one row per point, ``axis-*`` coordinates then every feature.

    Only the points currently shown are written (what you see, e.g. after a probability threshold).
    """
    path = str(path)
    if not path.lower().endswith(".csv"):
        path += ".csv"
    features = meta.get("features")
    if features is None and meta.get("properties"):
        features = pd.DataFrame(meta["properties"])
    table = points_to_table(data, features)
    shown = meta.get("shown")
    if shown is not None and len(shown) == len(table):
        table = table[np.asarray(shown, dtype=bool)]
    scale = meta.get("scale")
    if scale is not None:
        table.attrs["scale"] = list(scale)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return [path]


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer as an ImageJ TIFF, with the pixel size when the layer's scale is physical."""
    from ..io.tiff import write_tiff

    path = str(path)
    if not path.lower().endswith((".tif", ".tiff")):
        path += ".tif"
    pixel_size = None
    scale, units = meta.get("scale"), meta.get("units")
    if scale is not None:
        unit = str(units[-1]) if units is not None else "pixel"
        factor = {"micrometer": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3, "nm": 1e-3}.get(unit)
        if factor is None and float(scale[-1]) != 1.0:
            factor = 1.0
        if factor is not None:
            pixel_size = float(scale[-1]) * factor
    data = np.asarray(data)
    data = data.astype(np.uint16) if data.max(initial=0) <= 65535 and data.min(initial=0) >= 0 else data
    write_tiff(path, data, pixel_size_um=pixel_size)
    return [path]
