"""Writer contributions: Points to CSV with all features, Labels to TIFF with the pixel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "points_to_table",
    "write_image_ome_tiff",
    "write_labels",
    "write_labels_ome_tiff",
    "write_points",
    "write_tracks_trackmate",
]


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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    header = spatial_header(meta, sum(str(c).startswith("axis-") for c in table.columns))
    tmp = Path(path).with_name(Path(path).name + ".part")
    with open(tmp, "w", newline="") as fh:  # atomic: a failed write never leaves half a file
        fh.write(header + "\n")
        table.to_csv(fh, index=False)
    tmp.replace(path)
    return [path]


#: First line of the plugin's CSV files: the layer's scale, translate and units, so the points re-open
#: in the same physical place (a Points CSV of a um-scaled image otherwise re-opens at scale 1).
CSV_HEADER = "# napari-deeptrack"


def spatial_header(meta: dict, ndim: int) -> str:
    """``# napari-deeptrack scale=1,0.1,0.1 translate=0,0,0 units=pixel,um,um`` for ``ndim`` axes."""
    parts = [CSV_HEADER]
    for key in ("scale", "translate", "units"):
        value = meta.get(key)
        if value is not None and len(value) == ndim:
            parts.append(f"{key}=" + ",".join(str(v) for v in value))
    return " ".join(parts)


def parse_spatial_header(line: str) -> dict:
    """Inverse of :func:`spatial_header` (empty dict for any other first line)."""
    if not line.startswith(CSV_HEADER):
        return {}
    out: dict = {}
    for token in line[len(CSV_HEADER) :].split():
        key, _, value = token.partition("=")
        items = value.split(",")
        if key in ("scale", "translate"):
            out[key] = tuple(float(v) for v in items)
        elif key == "units":
            out[key] = tuple(items)
    return out


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
    # napari_layer=labels: the reader opens it as a Labels layer again, not as an image
    write_tiff(path, data, pixel_size_um=pixel_size, napari_layer="labels")
    return [path]


# ---------------------------------------------------------------------------- interop (issue 13)
_LENGTH_UM = {"micrometer": 1.0, "um": 1.0, "µm": 1.0, "micron": 1.0, "nanometer": 1e-3, "nm": 1e-3}
_TIME_S = {"second": 1.0, "s": 1.0, "millisecond": 1e-3, "ms": 1e-3, "minute": 60.0, "min": 60.0}


def _axis_value(meta: dict, axis: int, table: dict) -> float | None:
    """The layer's scale along ``axis`` in the table's unit, or None when it is not physical."""
    scale, units = meta.get("scale"), meta.get("units")
    if scale is None or len(scale) <= abs(axis):
        return None
    unit = str(units[axis]) if units is not None and len(units) > abs(axis) else "pixel"
    factor = table.get(unit)
    if factor is None and float(scale[axis]) != 1.0 and table is _LENGTH_UM:
        factor = 1.0  # a scale set without units: micrometres, as the plugin's own layers
    return None if factor is None else float(scale[axis]) * factor


def _ome_axes(ndim: int, meta: dict) -> str:
    labels = [str(a).lower() for a in (meta.get("axis_labels") or [])]
    if len(labels) == ndim and all(a[:1] in "tczyx" for a in labels) and labels[-2:] == ["y", "x"]:
        return "".join(a[0] for a in labels).upper()
    return {2: "YX", 3: "TYX", 4: "TZYX", 5: "TCZYX"}.get(ndim, "YX")


def _write_ome(path: str, data, meta: dict) -> list[str]:
    from ..io.ome import write_ome_tiff

    path = str(path)
    if not path.lower().endswith((".ome.tif", ".ome.tiff")):
        path += ".ome.tif"
    data = np.asarray(data)
    axes = _ome_axes(data.ndim, meta)
    t_ax, z_ax = axes.find("T"), axes.find("Z")
    write_ome_tiff(
        path,
        data,
        axes,
        pixel_size_um=_axis_value(meta, -1, _LENGTH_UM),
        z_step_um=_axis_value(meta, z_ax, _LENGTH_UM) if z_ax >= 0 else None,
        frame_interval_s=_axis_value(meta, t_ax, _TIME_S) if t_ax >= 0 else None,
    )
    return [path]


def write_image_ome_tiff(path: str, data, meta: dict) -> list[str]:
    """Write an Image layer as OME-TIFF with pixel size (um), z step and frame interval (s)."""
    return _write_ome(path, data, meta)


def write_labels_ome_tiff(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer as OME-TIFF (16-bit when the labels fit) with its physical pixel size."""
    data = np.asarray(data)
    if data.max(initial=0) <= 65535 and data.min(initial=0) >= 0:
        data = data.astype(np.uint16)
    return _write_ome(path, data, meta)


def write_tracks_trackmate(path: str, data, meta: dict) -> list[str]:
    """Write a Tracks layer (``track_id, t, (z), y, x``) as TrackMate XML with physical units.

    The pixel size comes from the layer's scale (micrometres; 1 when the layer is in pixels), the
    frame interval from the time axis' scale (seconds; 1 otherwise); numeric features become spot
    features.
    """
    from ..io.trackmate import write_trackmate

    path = str(path)
    if not path.lower().endswith(".xml"):
        path += ".xml"
    data = np.asarray(data, dtype=float)
    if data.ndim != 2 or data.shape[1] not in (4, 5):
        raise ValueError(
            f"Tracks data must be [N, 4] (id, t, y, x) or [N, 5] (id, t, z, y, x), got {data.shape}"
        )
    table = pd.DataFrame(
        {"frame": np.rint(data[:, 1]).astype(np.int64), "y": data[:, -2], "x": data[:, -1],
         "track_id": data[:, 0].astype(np.int64)}
    )  # fmt: skip
    px = _axis_value(meta, -1, _LENGTH_UM) or 1.0
    if data.shape[1] == 5:
        table.insert(3, "z_um", data[:, 2] * (_axis_value(meta, -3, _LENGTH_UM) or px))
    feats = meta.get("features")
    if feats is not None:
        feats = pd.DataFrame(feats).reset_index(drop=True)
        if len(feats) == len(table):
            for col in feats.columns:
                if str(col) not in table.columns and pd.api.types.is_numeric_dtype(feats[col]):
                    table[str(col)] = feats[col].to_numpy()
    dt = _axis_value(meta, 0, _TIME_S) or 1.0
    write_trackmate(table, path, pixel_size_um=px, frame_interval_s=dt)
    return [path]
