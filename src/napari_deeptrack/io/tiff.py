"""TIFF in and out with the pixel size in micrometres (ImageJ and OME metadata)."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["quiet_tifffile", "read_tiff", "write_tiff"]

_QUIET = threading.local()


class _DropWhenQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_QUIET, "depth", 0)


_FILTER = _DropWhenQuiet()


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's log messages (its reports of a corrupt file) in this thread while reading.

    tifffile logs every oddity of a corrupt file to stderr; the package turns what matters into one
    clear error instead. Thread-safe (a filter with a per-thread switch, not a logger level), so dask
    workers reading chunks of a lazy stack can use it at once.
    """
    logger = logging.getLogger("tifffile")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1


def _pixel_size_from_tags(page) -> float | None:
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if num == 0:
        return None
    px_per_unit = num / den
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
    unit = int(getattr(unit, "value", unit))
    per_unit = 1.0 / px_per_unit
    if unit == 3:  # centimetre
        return per_unit * 1e4
    if unit == 2:  # inch
        return per_unit * 25400.0
    return None


def _declared_bytes(series) -> int:
    shape = tuple(int(v) for v in series.shape)
    return int(math.prod(shape)) * int(np.dtype(series.dtype).itemsize)


def _truncation(tif, path: Path) -> str | None:
    """Why the file holds less than its header declares (None if complete)."""
    size = path.stat().st_size
    ij = tif.imagej_metadata or {}
    declared = int(ij.get("images", 0) or 0)
    series = tif.series[0] if tif.series else None
    if series is not None and declared > 1:
        axes = str(getattr(series, "axes", ""))
        have = 1
        for ax, n in zip(axes, series.shape):
            if ax not in "YXS":
                have *= int(n)
        if have < declared:
            return f"its ImageJ header declares {declared} images but only {have} could be read"
    if series is not None and getattr(series, "dataoffset", None) is not None:
        end = int(series.dataoffset) + _declared_bytes(series)
        if end > size:
            return f"its header declares {end} bytes of pixels but the file has {size}"
    n_pages = 0
    for page in tif.pages:
        n_pages += 1
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for o, c in zip(offsets, counts):
            if int(o) + int(c) > size:
                return (
                    f"page {n_pages - 1} needs bytes up to {int(o) + int(c)} but the file has {size} "
                    "(truncated copy or download?)"
                )
        if n_pages > 1_000_000:
            break
    return None


def read_tiff(
    path: str | Path, allow_partial: bool = False, max_bytes: int | None = None
) -> tuple[np.ndarray, dict]:
    """Read a TIFF file (2D image or stack).

    Parameters
    ----------
    path : str or Path
        The file.
    allow_partial : bool
        Read what a truncated file holds (with a loud warning, and ``meta["partial"]`` set) instead of
        refusing it.
    max_bytes : int, optional
        Refuse files whose header declares more data than this (default: the memory budget,
        :func:`napari_deeptrack.sim.budget.memory_budget`), before allocating anything.

    Returns
    -------
    data : ndarray
    meta : dict
        ``pixel_size_um`` (float or None), ``unit`` and raw ``metadata`` (ImageJ dict, OME XML flag).

    Raises
    ------
    ImageReadError
        Not a TIFF, corrupt, truncated (unless ``allow_partial``) or larger than ``max_bytes``;
        a ``ValueError``, like every input error of the package.
    MemoryBudgetError
        The declared size exceeds ``max_bytes``.
    """
    from ..errors import ImageReadError, MemoryBudgetError
    from ..sim.budget import format_bytes, memory_budget

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ImageReadError(f"{path} is a folder, not a TIFF file")
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:  # its log: turned into one error below
            if not tif.pages or not tif.series:
                raise ImageReadError(f"{path}: the TIFF holds no image")
            need = _declared_bytes(tif.series[0])
            limit = memory_budget() if max_bytes is None else int(max_bytes)
            if need > limit:
                shape = "x".join(str(v) for v in tif.series[0].shape)
                raise MemoryBudgetError(
                    f"{path}: the TIFF declares {shape} {tif.series[0].dtype} pixels "
                    f"({format_bytes(need)}), more than the {format_bytes(limit)} memory budget; crop or "
                    "split the stack (or raise NAPARI_DEEPTRACK_MEMORY_GB)",
                    need_bytes=need,
                    budget_bytes=limit,
                )
            partial = _truncation(tif, path)
            if partial is not None and not allow_partial:
                raise ImageReadError(
                    f"{path} is truncated: {partial}; re-copy the file, or pass --allow-partial to read "
                    "the frames it holds"
                )
            if partial is not None:
                warnings.warn(f"PARTIAL FILE {path}: {partial}; reading what it holds", stacklevel=2)
                data = _read_partial(tif)
            else:
                data = tif.asarray()
            pixel_size = _pixel_size(tif)
            ij = tif.imagej_metadata
            meta: dict = {}
            if ij:
                meta = {k: v for k, v in ij.items() if isinstance(v, str | int | float)}
    except (ImageReadError, MemoryBudgetError):
        raise
    except MemoryError:
        raise MemoryBudgetError(f"{path}: not enough memory to read this TIFF; crop or split it") from None
    except Exception as exc:  # noqa: BLE001 - tifffile/zlib/struct errors of a corrupt file
        raise ImageReadError(f"{path}: cannot read this TIFF ({type(exc).__name__}: {exc})") from None
    out = {"pixel_size_um": pixel_size, "metadata": meta}
    if partial is not None:
        out["partial"] = partial
    return data, out


def _read_partial(tif) -> np.ndarray:
    """The complete pages of a truncated file, stacked."""
    size = Path(tif.filehandle.path).stat().st_size
    series = tif.series[0]
    declared = int((tif.imagej_metadata or {}).get("images", 0) or 0)
    page = tif.pages[0]
    if declared > 1 and page.is_contiguous and page.compression == 1:
        dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
        frame_shape, offset = tuple(page.shape), int(page.dataoffsets[0])
        n = min(declared, (size - offset) // (int(math.prod(frame_shape)) * dtype.itemsize))
    elif getattr(series, "dataoffset", None) is not None and len(series.shape) > 2:
        dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        frame_shape, offset = tuple(series.shape[1:]), int(series.dataoffset)
        n = (size - offset) // (int(math.prod(frame_shape)) * dtype.itemsize)
    else:
        n = None
    if n is not None:
        per = int(math.prod(frame_shape)) * dtype.itemsize
        if n < 1:
            raise ValueError("no complete frame")
        with open(tif.filehandle.path, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(n * per)
        return np.frombuffer(raw, dtype=dtype).reshape(n, *frame_shape).astype(dtype.newbyteorder("="))
    frames = []
    for page in tif.pages:
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        if any(int(o) + int(c) > size for o, c in zip(offsets, counts)):
            break
        frames.append(page.asarray())
    if not frames:
        raise ValueError("no complete page")
    return np.stack(frames) if len(frames) > 1 else frames[0]


def _pixel_size(tif) -> float | None:
    pixel_size = None
    ij = tif.imagej_metadata
    if tif.is_ome:
        try:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
                    unit = el.attrib.get("PhysicalSizeXUnit", "µm")
                    factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit, 1.0)
                    pixel_size = float(el.attrib["PhysicalSizeX"]) * factor
                    break
        except Exception:  # noqa: BLE001 - malformed OME: fall back to resolution tags
            pixel_size = None
    if pixel_size is None:
        unit = (ij or {}).get("unit", "")
        px = _pixel_size_from_tags(tif.pages[0]) if not ij else None
        if ij and "XResolution" in tif.pages[0].tags:
            num, den = tif.pages[0].tags["XResolution"].value
            if num:
                size = den / num
                factor = {"micron": 1.0, "um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "nm": 1e-3, "mm": 1e3}
                if unit in factor:
                    px = size * factor[unit]
        pixel_size = px
    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        pixel_size = None
    return pixel_size


def write_tiff(path: str | Path, data: np.ndarray, pixel_size_um: float | None = None, **metadata) -> Path:
    """Write ``data`` as an ImageJ TIFF, recording ``pixel_size_um`` so Fiji and napari read it back.

    The file is written atomically (temporary file, then renamed): an interrupted write or a full disk
    leaves the previous file (or none), never a truncated one.
    """
    from .atomic import atomic_path

    path = Path(path)
    data = np.asarray(data)
    if np.iscomplexobj(data):
        raise ValueError("write_tiff: complex data; write np.abs / np.angle or real and imaginary parts")
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype == np.int64:
        data = data.astype(np.int32 if data.max(initial=0) > 65535 else np.uint16)
    kwargs: dict = {"imagej": data.dtype != np.int32, "metadata": {"axes": _axes(data.ndim), **metadata}}
    if pixel_size_um:
        kwargs["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
        kwargs["metadata"]["unit"] = "um"
    if not kwargs["imagej"]:
        kwargs.pop("metadata")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def _axes(ndim: int) -> str:
    return {2: "YX", 3: "TYX", 4: "TZYX"}.get(ndim, "YX")
