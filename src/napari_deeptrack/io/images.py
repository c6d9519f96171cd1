"""Read the images to analyse: a TIFF stack, a PNG/TIFF file, or a folder of frames.

:func:`read_images` always returns a ``[T, H, W]`` float32 stack plus metadata: the pixel size when
the file records it (TIFF), the source files, and notes about conversions. Colour images are turned
into one channel: identical channels (grey saved as RGB) are used as they are; otherwise the
requested ``channel`` is taken, or, by default, the luminance ``0.2125 R + 0.7154 G + 0.0721 B``
(scikit-image's ``rgb2gray``); an alpha channel is dropped. Every such conversion is written to
``meta["notes"]`` so the command line can tell the user.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .tiff import read_tiff

__all__ = ["IMAGE_SUFFIXES", "fill_nonfinite", "nonfinite_report", "read_images", "to_single_channel"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
_CHANNELS = {"r": 0, "red": 0, "g": 1, "green": 1, "b": 2, "blue": 2}


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def to_single_channel(
    rgb: np.ndarray, channel: int | str | None = None, notes: list[str] | None = None
) -> np.ndarray:
    """``[..., H, W, 3 or 4]`` colour data to ``[..., H, W]``; see the module docstring."""
    notes = notes if notes is not None else []
    c = rgb.shape[-1]
    if c not in (3, 4):
        raise ValueError(f"colour images must have 3 (RGB) or 4 (RGBA) channels, got {c}")
    if c == 4:
        notes.append("alpha channel dropped")
        rgb = rgb[..., :3]
    if channel is not None:
        idx = _CHANNELS.get(str(channel).lower(), channel)
        try:
            idx = int(idx)
        except (TypeError, ValueError):
            raise ValueError(f"channel must be 0, 1, 2 or r, g, b, got {channel!r}") from None
        if not 0 <= idx <= 2:
            raise ValueError(f"channel must be 0, 1, 2 or r, g, b, got {channel!r}")
        notes.append(f"RGB image: using channel {'RGB'[idx]} only")
        return rgb[..., idx]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        notes.append("RGB image with identical channels: used as greyscale")
        return rgb[..., 0]
    notes.append(
        "RGB image converted to greyscale luminance (0.2125 R + 0.7154 G + 0.0721 B); "
        "pass channel= to use one channel instead"
    )
    w = np.array([0.2125, 0.7154, 0.0721])
    return (rgb.astype(np.float64) * w).sum(-1)


def _check_pixels(path: Path, n_pixels: int, itemsize: int = 4) -> None:
    """Refuse an image whose declared size would not fit the memory budget (before decoding it)."""
    from ..errors import MemoryBudgetError
    from ..sim.budget import format_bytes, memory_budget

    need, limit = int(n_pixels) * itemsize, memory_budget()
    if need > limit:
        raise MemoryBudgetError(
            f"{path}: the image declares {n_pixels} pixels ({format_bytes(need)} as float32), more than "
            f"the {format_bytes(limit)} memory budget; crop it (or raise NAPARI_DEEPTRACK_MEMORY_GB)",
            need_bytes=need,
            budget_bytes=limit,
        )


def _read_other(path: Path) -> np.ndarray:
    """PNG / JPEG / BMP through Pillow (header checked first), then imageio as a fallback."""
    from ..errors import ImageReadError, MemoryBudgetError

    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
            frames = int(getattr(im, "n_frames", 1) or 1)
        _check_pixels(path, w * h * bands * frames)
    except MemoryBudgetError:
        raise
    except ImportError:  # pragma: no cover - Pillow is a scikit-image dependency
        pass
    except Exception as exc:  # noqa: BLE001 - Pillow cannot parse the header: a corrupt file
        raise ImageReadError(f"{path}: cannot read this image ({type(exc).__name__}: {exc})") from None
    try:
        import warnings

        from skimage.io import imread

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(imread(str(path)))
    except MemoryError:
        raise MemoryBudgetError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - decoder errors of a corrupt or truncated file
        raise ImageReadError(f"{path}: cannot read this image ({type(exc).__name__}: {exc})") from None


def _read_one(
    path: Path, channel, notes: list[str], allow_partial: bool = False
) -> tuple[np.ndarray, float | None]:
    from ..errors import ImageReadError

    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        data, meta = read_tiff(path, allow_partial=allow_partial)
        px = meta.get("pixel_size_um")
        if meta.get("partial"):
            notes.append(f"PARTIAL FILE {path.name}: {meta['partial']}; only the complete frames were read")
    elif suffix in IMAGE_SUFFIXES:
        data, px = _read_other(path), None
    else:
        raise ImageReadError(f"unsupported image file {path.name}; supported: {', '.join(IMAGE_SUFFIXES)}")
    data = np.asarray(data)
    if np.iscomplexobj(data):
        raise ImageReadError(
            f"{path.name} holds complex pixels; save the magnitude (np.abs), the phase (np.angle) or the "
            "real and imaginary parts as separate files"
        )
    if data.dtype == object or data.dtype.kind not in "biuf":
        raise ImageReadError(f"{path.name}: unsupported pixel type {data.dtype}")
    if data.size == 0:
        raise ImageReadError(f"{path.name} holds an empty image (shape {data.shape})")
    if data.ndim >= 3 and data.shape[-1] in (3, 4) and data.shape[-2] > 4:
        data = to_single_channel(data, channel, notes)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ImageReadError(
            f"{path.name}: expected a 2D image or a [T, H, W] stack, got shape {data.shape} "
            "(split multi-channel or z stacks into single-channel time series first)"
        )
    return data, px


def nonfinite_report(stack: np.ndarray) -> dict[int, int]:
    """``{frame: number of NaN/Inf pixels}`` for the frames of ``[T, H, W]`` that have any."""
    bad = ~np.isfinite(stack.reshape(len(stack), -1))
    counts = bad.sum(axis=1)
    return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}


def fill_nonfinite(stack: np.ndarray, policy: str = "replace") -> tuple[np.ndarray, dict[int, int]]:
    """Apply the NaN/Inf policy to a float ``[T, H, W]`` stack (in place); return it and the report.

    ``"replace"`` (default): each NaN/Inf pixel becomes the median of its frame's finite pixels; a
    frame with no finite pixel is an error. ``"error"``: any NaN/Inf pixel is an error. The report
    ``{frame: count}`` names the frames and how many pixels were replaced.
    """
    from ..errors import ImageReadError

    if policy not in ("replace", "error"):
        raise ValueError(f"nonfinite must be 'replace' or 'error', got {policy!r}")
    report = nonfinite_report(stack)
    if not report:
        return stack, report
    listing = ", ".join(f"frame {k}: {v}" for k, v in list(report.items())[:5])
    more = f" and {len(report) - 5} more frames" if len(report) > 5 else ""
    if policy == "error":
        raise ImageReadError(f"the images hold NaN/Inf pixels ({listing}{more})")
    for t in report:
        frame = stack[t]
        finite = np.isfinite(frame)
        if not finite.any():
            raise ImageReadError(f"frame {t} holds no finite pixel (all NaN/Inf)")
        frame[~finite] = np.median(frame[finite])
    return stack, report


def read_images(
    path: str | Path,
    channel: int | str | None = None,
    allow_partial: bool = False,
    nonfinite: str = "replace",
) -> tuple[np.ndarray, dict]:
    """Read IMAGE (TIFF stack, single PNG/TIFF, or a folder of frames sorted by name) as ``[T, H, W]``.

    Parameters
    ----------
    path : str or Path
        File or folder. In a folder, every image file is one or more frames, in natural name order
        (``frame2`` before ``frame10``).
    channel : int, str or None
        For colour images: 0/1/2 or r/g/b; None: see the module docstring.
    allow_partial : bool
        Read the complete frames of a truncated TIFF (noted loudly in ``meta["notes"]``) instead of
        refusing it.
    nonfinite : {"replace", "error"}
        NaN/Inf pixel policy (see :func:`fill_nonfinite`): by default they are replaced by their frame's
        median and reported in ``meta["nonfinite"]`` (``{frame: count}``) and ``meta["notes"]``.

    Returns
    -------
    images : ndarray [T, H, W] float32
    meta : dict
        ``pixel_size_um`` (float or None), ``files`` (list of str), ``notes`` (list of str),
        ``nonfinite`` (dict frame -> count of replaced pixels).

    Raises
    ------
    ImageReadError
        Unreadable, truncated, complex, empty or unsupported files (a ``ValueError``).
    MemoryBudgetError
        Images larger than the memory budget (checked from the headers before decoding).
    """
    from ..errors import ImageReadError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    notes: list[str] = []
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=_natural_key,
        )
        if not files:
            raise ImageReadError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    else:
        files = [path]
    frames, px = [], None
    for f in files:
        data, p = _read_one(f, channel, notes, allow_partial)
        frames.append(data)
        px = px if px is not None else p
    shapes = {fr.shape[1:] for fr in frames}
    if len(shapes) > 1:
        raise ImageReadError(f"frames in {path} have different sizes: {sorted(shapes)}")
    _check_pixels(path, sum(fr.size for fr in frames))
    stack = np.concatenate(frames, axis=0).astype(np.float32)
    stack, report = fill_nonfinite(stack, nonfinite)
    if report:
        listing = ", ".join(f"frame {k}: {v}" for k, v in list(report.items())[:5])
        more = f" and {len(report) - 5} more frames" if len(report) > 5 else ""
        notes.append(
            f"{sum(report.values())} NaN/Inf pixels replaced by their frame's median ({listing}{more})"
        )
    meta = {
        "pixel_size_um": px,
        "files": [str(f) for f in files],
        "notes": sorted(set(notes)),
        "nonfinite": report,
    }
    return stack, meta
