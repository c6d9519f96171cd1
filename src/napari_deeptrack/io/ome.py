"""OME metadata in and out: OME-TIFF (tifffile) and OME-Zarr (ome-zarr), with physical pixel sizes,
z step and frame interval.

Both readers return ``(data, meta)`` with ``meta``:

==================  =====================================================================
``axes``            the data's axes, upper case, e.g. ``"TZYX"``, ``"TCYX"``, ``"YX"``
``pixel_size_um``   in-plane pixel size (x) in micrometres, or None
``pixel_size_y_um`` y pixel size (usually the same), or None
``z_step_um``       z spacing in micrometres, or None
``frame_interval_s`` time between frames in seconds, or None
``channel_names``   list of names, or None
==================  =====================================================================

The writers take the same numbers. Writes are atomic (a temporary file or folder renamed into
place). OME-Zarr is written as one resolution level (NGFF 0.5 with ome-zarr >= 0.12), axes with
their types and units and a ``scale`` transformation.
"""

from __future__ import annotations

import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

__all__ = ["read_ome", "read_ome_tiff", "read_ome_zarr", "write_ome_tiff", "write_ome_zarr"]

#: length units -> micrometres (OME's UnitsLength symbols and NGFF names)
LENGTH_UM = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "micrometer": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "Å": 1e-4,
    "angstrom": 1e-4,
}
#: time units -> seconds
TIME_S = {
    "s": 1.0,
    "second": 1.0,
    "ms": 1e-3,
    "millisecond": 1e-3,
    "µs": 1e-6,
    "microsecond": 1e-6,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_AXES_OK = set("TCZYX")


def _check_axes(data: np.ndarray, axes: str) -> str:
    axes = axes.upper()
    if len(axes) != data.ndim or set(axes) - _AXES_OK or len(set(axes)) != len(axes):
        raise ValueError(
            f"axes {axes!r} do not describe data of shape {data.shape}: one letter per dimension "
            "from T, C, Z, Y, X, each at most once"
        )
    if not axes.endswith("YX"):
        raise ValueError(f"axes must end with YX (rows, columns), got {axes!r}")
    return axes


def _positive(name: str, v):
    if v is not None and not float(v) > 0:
        raise ValueError(f"{name} must be > 0, got {v}")


def _meta(axes, px=None, py=None, dz=None, dt=None, channels=None) -> dict:
    return {
        "axes": axes,
        "pixel_size_um": None if px is None else float(px),
        "pixel_size_y_um": None if py is None else float(py),
        "z_step_um": None if dz is None else float(dz),
        "frame_interval_s": None if dt is None else float(dt),
        "channel_names": channels,
    }


def _check_budget(nbytes: int, path) -> None:
    from ..sim.budget import format_bytes, memory_budget

    budget = memory_budget()
    if nbytes > budget:
        raise ValueError(
            f"{path} holds {format_bytes(nbytes)} of pixels, more than the memory budget "
            f"({format_bytes(budget)}); raise NAPARI_DEEPTRACK_MEMORY_GB or crop the data"
        )


# ---------------------------------------------------------------------------- OME-TIFF
def write_ome_tiff(
    path: str | Path,
    data: np.ndarray,
    axes: str | None = None,
    pixel_size_um: float | None = None,
    z_step_um: float | None = None,
    frame_interval_s: float | None = None,
    channel_names: list[str] | None = None,
) -> Path:
    """Write ``data`` as an OME-TIFF with physical sizes in µm and the frame interval in s.

    ``axes`` defaults to ``YX``, ``TYX``, ``TZYX`` for 2, 3, 4 dimensions.
    """
    import tifffile

    from .atomic import atomic_path

    data = np.asarray(data)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype == np.int64:
        data = data.astype(np.int32 if data.max(initial=0) > 65535 or data.min(initial=0) < 0 else np.uint16)
    axes = _check_axes(data, axes or {2: "YX", 3: "TYX", 4: "TZYX", 5: "TCZYX"}.get(data.ndim, ""))
    for name, v in (
        ("pixel_size_um", pixel_size_um),
        ("z_step_um", z_step_um),
        ("frame_interval_s", frame_interval_s),
    ):
        _positive(name, v)
    md: dict = {"axes": axes}
    if pixel_size_um:
        md.update(
            PhysicalSizeX=float(pixel_size_um),
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=float(pixel_size_um),
            PhysicalSizeYUnit="µm",
        )
    if z_step_um and "Z" in axes:
        md.update(PhysicalSizeZ=float(z_step_um), PhysicalSizeZUnit="µm")
    if frame_interval_s and "T" in axes:
        md.update(TimeIncrement=float(frame_interval_s), TimeIncrementUnit="s")
    if channel_names and "C" in axes:
        md["Channel"] = {"Name": list(channel_names)}
    path = Path(path)
    kw = {}
    if pixel_size_um:
        kw = {
            "resolution": (1e4 / float(pixel_size_um), 1e4 / float(pixel_size_um)),
            "resolutionunit": "CENTIMETER",
        }
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, ome=True, metadata=md, photometric="minisblack", **kw)
    return path


def read_ome_tiff(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read an OME-TIFF: the first image series and its OME physical sizes (see the module doc)."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable TIFF ({exc})") from None
    with tif:
        if not tif.is_ome:
            raise ValueError(f"{path} is a TIFF without OME metadata (use io.tiff.read_tiff)")
        series = tif.series[0]
        _check_budget(int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize, path)
        data = series.asarray()
        axes = series.axes.upper().replace("Q", "").replace("S", "C")
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError as exc:
            raise ValueError(f"{path}: malformed OME-XML ({exc})") from None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        raise ValueError(f"{path}: OME-XML has no Pixels element")
    a = pixels.attrib

    def length(key):
        if key not in a:
            return None
        unit = a.get(f"{key}Unit", "µm")
        if unit not in LENGTH_UM:
            raise ValueError(f"{path}: unknown length unit {unit!r} for {key}")
        return float(a[key]) * LENGTH_UM[unit]

    dt = None
    if "TimeIncrement" in a:
        unit = a.get("TimeIncrementUnit", "s")
        if unit not in TIME_S:
            raise ValueError(f"{path}: unknown time unit {unit!r}")
        dt = float(a["TimeIncrement"]) * TIME_S[unit]
    channels = [c.attrib.get("Name") for c in pixels if c.tag.endswith("Channel")]
    channels = channels if channels and all(channels) else None
    if data.ndim != len(axes):  # squeezed singleton axes
        axes = axes[-data.ndim :]
    return data, _meta(
        axes, length("PhysicalSizeX"), length("PhysicalSizeY"), length("PhysicalSizeZ"), dt, channels
    )


# ---------------------------------------------------------------------------- OME-Zarr
def write_ome_zarr(
    path: str | Path,
    data: np.ndarray,
    axes: str | None = None,
    pixel_size_um: float | None = None,
    z_step_um: float | None = None,
    frame_interval_s: float | None = None,
    channel_names: list[str] | None = None,
) -> Path:
    """Write ``data`` as a single-resolution OME-Zarr image (ome-zarr library), units on every axis."""
    try:
        import zarr
        from ome_zarr.io import parse_url
        from ome_zarr.writer import write_image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(
            "OME-Zarr needs the ome-zarr package (pip install 'napari-deeptrack[interop]')"
        ) from exc
    data = np.asarray(data)
    axes = _check_axes(data, axes or {2: "YX", 3: "TYX", 4: "TZYX", 5: "TCZYX"}.get(data.ndim, ""))
    for name, v in (
        ("pixel_size_um", pixel_size_um),
        ("z_step_um", z_step_um),
        ("frame_interval_s", frame_interval_s),
    ):
        _positive(name, v)
    scale, units = {}, {}
    for ax in axes.lower():
        if ax in "yx":
            scale[ax] = float(pixel_size_um or 1.0)
            if pixel_size_um:
                units[ax] = "micrometer"
        elif ax == "z":
            scale[ax] = float(z_step_um or 1.0)
            if z_step_um:
                units[ax] = "micrometer"
        elif ax == "t":
            scale[ax] = float(frame_interval_s or 1.0)
            if frame_interval_s:
                units[ax] = "second"
        else:
            scale[ax] = 1.0
    path = Path(path)
    if path.exists() and not (path / "zarr.json").exists() and not (path / ".zattrs").exists():
        raise ValueError(f"{path} exists and is not a Zarr folder; refusing to overwrite it")
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        root = zarr.group(store=parse_url(str(tmp), mode="w").store)
        write_image(data, root, scale_factors=(), axes=axes.lower(), scale=scale, axes_units=units or None)
        if channel_names and "C" in axes:
            root.attrs["omero"] = {"channels": [{"label": str(n)} for n in channel_names]}
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_ome_zarr(path: str | Path, level: int = 0) -> tuple[np.ndarray, dict]:
    """Read an OME-Zarr image (its ``level``-th resolution) with axes, units and scales."""
    try:
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader
    except ImportError as exc:  # pragma: no cover
        raise ValueError(
            "OME-Zarr needs the ome-zarr package (pip install 'napari-deeptrack[interop]')"
        ) from exc
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such OME-Zarr: {path}")
    loc = parse_url(str(path))
    if loc is None:
        raise ValueError(f"{path} is not a Zarr store")
    nodes = [n for n in Reader(loc)() if n.data]
    if not nodes:
        raise ValueError(f"{path} holds no OME-Zarr image (no multiscales metadata)")
    node = nodes[0]
    if not 0 <= level < len(node.data):
        raise ValueError(f"level must be in 0..{len(node.data) - 1}, got {level}")
    arr = node.data[level]
    _check_budget(int(np.prod(arr.shape)) * np.dtype(arr.dtype).itemsize, path)
    data = np.asarray(arr)
    axes_md = node.metadata.get("axes") or []
    names = [str(a["name"] if isinstance(a, dict) else a).upper() for a in axes_md]
    axes = "".join(n[:1] for n in names) if names else {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}[data.ndim]
    transforms = (node.metadata.get("coordinateTransformations") or [[]])[level]
    scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), [1.0] * data.ndim)
    vals: dict = {}
    for i, name in enumerate(axes):
        unit = axes_md[i].get("unit") if i < len(axes_md) and isinstance(axes_md[i], dict) else None
        if unit is None:
            continue
        if name in "XYZ":
            if unit not in LENGTH_UM:
                raise ValueError(f"{path}: unknown length unit {unit!r} on axis {name}")
            vals[name] = float(scale[i]) * LENGTH_UM[unit]
        elif name == "T":
            if unit not in TIME_S:
                raise ValueError(f"{path}: unknown time unit {unit!r}")
            vals[name] = float(scale[i]) * TIME_S[unit]
    channels = None
    omero = node.metadata.get("channel_names") or None
    if omero:
        channels = [str(c) for c in omero]
    return data, _meta(axes, vals.get("X"), vals.get("Y"), vals.get("Z"), vals.get("T"), channels)


def read_ome(path: str | Path) -> tuple[np.ndarray, dict]:
    """OME-TIFF (``.ome.tif``, ``.ome.tiff``) or OME-Zarr (``.zarr`` folder), by name."""
    p = str(path).rstrip("/").lower()
    if p.endswith(".zarr") or (Path(path).is_dir() and (Path(path) / "zarr.json").exists()):
        return read_ome_zarr(path)
    return read_ome_tiff(path)
