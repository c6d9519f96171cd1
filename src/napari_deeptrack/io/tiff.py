"""TIFF in and out with the pixel size in micrometres (ImageJ and OME metadata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

__all__ = ["read_tiff", "write_tiff"]


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


def read_tiff(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a TIFF file (2D image or stack).

    Returns
    -------
    data : ndarray
    meta : dict
        ``pixel_size_um`` (float or None), ``unit`` and raw ``metadata`` (ImageJ dict, OME XML flag).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        pixel_size = None
        meta: dict = {}
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
            except Exception:  # malformed OME: fall back to resolution tags
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
        if ij:
            meta = {k: v for k, v in ij.items() if isinstance(v, str | int | float)}
    return data, {"pixel_size_um": pixel_size, "metadata": meta}


def write_tiff(path: str | Path, data: np.ndarray, pixel_size_um: float | None = None, **metadata) -> Path:
    """Write ``data`` as an ImageJ TIFF, recording ``pixel_size_um`` so Fiji and napari read it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
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
    tifffile.imwrite(path, data, **kwargs)
    return path


def _axes(ndim: int) -> str:
    return {2: "YX", 3: "TYX", 4: "TZYX"}.get(ndim, "YX")
