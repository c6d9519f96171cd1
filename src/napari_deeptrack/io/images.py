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

__all__ = ["IMAGE_SUFFIXES", "read_images", "to_single_channel"]

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


def _read_one(path: Path, channel, notes: list[str]) -> tuple[np.ndarray, float | None]:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        data, meta = read_tiff(path)
        px = meta.get("pixel_size_um")
    elif suffix in IMAGE_SUFFIXES:
        from skimage.io import imread

        data, px = imread(str(path)), None
    else:
        raise ValueError(f"unsupported image file {path.name}; supported: {', '.join(IMAGE_SUFFIXES)}")
    data = np.asarray(data)
    if data.ndim >= 3 and data.shape[-1] in (3, 4) and data.shape[-2] > 4:
        data = to_single_channel(data, channel, notes)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(
            f"{path.name}: expected a 2D image or a [T, H, W] stack, got shape {data.shape} "
            "(split multi-channel or z stacks into single-channel time series first)"
        )
    return data, px


def read_images(path: str | Path, channel: int | str | None = None) -> tuple[np.ndarray, dict]:
    """Read IMAGE (TIFF stack, single PNG/TIFF, or a folder of frames sorted by name) as ``[T, H, W]``.

    Parameters
    ----------
    path : str or Path
        File or folder. In a folder, every image file is one or more frames, in natural name order
        (``frame2`` before ``frame10``).
    channel : int, str or None
        For colour images: 0/1/2 or r/g/b; None: see the module docstring.

    Returns
    -------
    images : ndarray [T, H, W] float32
    meta : dict
        ``pixel_size_um`` (float or None), ``files`` (list of str), ``notes`` (list of str).
    """
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
            raise ValueError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    else:
        files = [path]
    frames, px = [], None
    for f in files:
        data, p = _read_one(f, channel, notes)
        frames.append(data)
        px = px if px is not None else p
    shapes = {fr.shape[1:] for fr in frames}
    if len(shapes) > 1:
        raise ValueError(f"frames in {path} have different sizes: {sorted(shapes)}")
    stack = np.concatenate(frames, axis=0).astype(np.float32)
    return stack, {"pixel_size_um": px, "files": [str(f) for f in files], "notes": sorted(set(notes))}
