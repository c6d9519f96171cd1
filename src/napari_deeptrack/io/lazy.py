"""Image stacks opened lazily: frames are read from disk only when a chunk of them is asked for.

:func:`open_lazy` turns a path into a dask array ``[T, H, W]`` (frames, rows, columns) plus metadata,
without reading the pixels:

==========================  ================================================================
Zarr / OME-Zarr folder      ``zarr`` (and ``ome-zarr`` for the NGFF ``multiscales`` metadata:
                            axes, pixel size, frame interval); its own chunks
multi-page TIFF             tifffile's Zarr store over the file (``TiffFile.aszarr``): pages
                            are read when a frame is asked for
folder of frames            one delayed read per file (sorted by name, natural order)
dask / zarr / NumPy array   :func:`as_lazy_stack` (the Python API)
==========================  ================================================================

Axes: the last two must be Y, X. Leading axes T, Z (stacks of frames), I/Q (TIFF pages) and C
(channels: pick one with ``channel``) are allowed; size-1 axes are dropped; T and Z together are
read as T*Z frames. Anything else is refused with a message naming the axes found.

A TIFF keeps the policies of :func:`~napari_deeptrack.io.images.read_images`: a truncated file is
refused (read it in memory with ``allow_partial``), complex pixels are refused, NaN/Inf pixels are
replaced by their frame's median when a chunk is read (with a warning naming the frames), a corrupt
page is one :class:`~napari_deeptrack.errors.ImageReadError`, and tifffile's log is kept off stderr.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FRAME_AXES", "as_lazy_stack", "is_lazy_source", "open_lazy"]

#: Axes read as frames (time, z, TIFF pages / sequences).
FRAME_AXES = ("T", "Z", "I", "Q")
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def is_lazy_source(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr / OME-Zarr store (always opened lazily)."""
    p = Path(path)
    return p.is_dir() and (
        p.suffix.lower() == ".zarr" or any((p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
    )


def _to_frames(arr, axes: str, channel: int | None, where: str):
    """A dask array with named ``axes`` -> ``[T, H, W]`` (drop size-1 axes, pick the channel)."""
    import dask.array as da

    axes = axes.upper()
    if len(axes) != arr.ndim or len(set(axes)) != len(axes):
        raise ValueError(f"{where}: axes {axes!r} do not describe an array of shape {tuple(arr.shape)}")
    if not axes.endswith("YX"):
        raise ValueError(
            f"{where}: the last two axes must be Y, X (rows, columns); this array's axes are {axes!r} "
            f"(shape {tuple(arr.shape)}). Re-save it with Y, X last (e.g. TYX)."
        )
    bad = [a for a in axes[:-2] if a not in (*FRAME_AXES, "C")]
    if bad:
        raise ValueError(f"{where}: unsupported axis {bad[0]!r} in {axes!r}; allowed before Y, X: T, Z, C")
    if "C" in axes:
        ci = axes.index("C")
        n_ch = arr.shape[ci]
        if n_ch > 1 and channel is None:
            raise ValueError(
                f"{where} has {n_ch} channels (axes {axes!r}): choose one with channel / --channel"
            )
        c = 0 if channel is None else int(channel)
        if not 0 <= c < n_ch:
            raise ValueError(f"{where}: channel {c} does not exist (the data has {n_ch})")
        arr = da.take(arr, c, axis=ci) if n_ch > 1 else arr[(slice(None),) * ci + (0,)]
        axes = axes.replace("C", "")
    keep = [i for i, a in enumerate(axes[:-2]) if arr.shape[i] > 1]
    squeeze = tuple(i for i in range(len(axes) - 2) if i not in keep)
    if squeeze:
        arr = arr.squeeze(axis=squeeze)
    lead = arr.shape[:-2]
    n = int(np.prod(lead)) if lead else 1
    return arr.reshape((n, *arr.shape[-2:]))


def as_lazy_stack(array, axes: str | None = None, channel: int | None = None, where: str = "images"):
    """A NumPy, zarr or dask array as a lazy dask ``[T, H, W]`` stack (no pixels are read).

    ``axes`` names the dimensions (e.g. ``"TCYX"``); without it 2D is YX and 3D is TYX, and more
    dimensions are refused (their meaning is ambiguous).
    """
    import dask.array as da

    arr = array if isinstance(array, da.Array) else da.from_array(array, chunks=_frame_chunks(array))
    if axes is None:
        if arr.ndim not in (2, 3):
            raise ValueError(
                f"{where} has {arr.ndim} dimensions {tuple(arr.shape)} and no axis names: "
                "give axes (e.g. 'TCYX') or save it as [T, Y, X]"
            )
        axes = "YX" if arr.ndim == 2 else "TYX"
    return _to_frames(arr, axes, channel, where)


def _frame_chunks(array) -> tuple:
    chunks = getattr(array, "chunks", None)
    if (
        isinstance(chunks, tuple)
        and len(chunks) == len(array.shape)
        and all(isinstance(c, int) for c in chunks)
    ):
        return chunks
    return (1,) * (len(array.shape) - 2) + tuple(array.shape[-2:])


def _open_zarr(path: Path, channel: int | None):
    import dask.array as da
    import zarr

    meta: dict[str, Any] = {"pixel_size_um": None, "frame_interval_s": None, "source": str(path)}
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for a bad store
        raise ValueError(f"{path} is not a readable Zarr store: {exc}") from None
    if isinstance(node, zarr.Array):
        names = node.attrs.get("_ARRAY_DIMENSIONS")  # xarray's convention
        axes = "".join(str(n)[:1].upper() for n in names) if names else None
        meta["axes"] = axes
        return as_lazy_stack(da.from_zarr(node), axes, channel, str(path)), meta
    multiscales = node.attrs.get("multiscales") or (node.attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        arrays = sorted(k for k, _ in node.arrays())
        raise ValueError(
            f"{path} is a Zarr group without OME-Zarr 'multiscales' metadata; open one of its arrays "
            f"({', '.join(arrays) or 'none'}) instead"
        )
    ms = multiscales[0]
    axes_md = ms.get("axes") or []
    names = [str(a.get("name") if isinstance(a, dict) else a) for a in axes_md]
    dataset = ms["datasets"][0]
    arr = da.from_zarr(node[dataset["path"]])
    axes = "".join(n[:1].upper() for n in names) if names else None
    meta["axes"] = axes
    scale = next(
        (t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"), None
    )
    if scale and names:
        from .ome import LENGTH_UM, TIME_S

        for i, a in enumerate(axes_md):
            unit = a.get("unit") if isinstance(a, dict) else None
            if names[i].lower() == "x" and unit in LENGTH_UM:
                meta["pixel_size_um"] = float(scale[i]) * LENGTH_UM[unit]
            if names[i].lower() == "t" and unit in TIME_S:
                meta["frame_interval_s"] = float(scale[i]) * TIME_S[unit]
    return as_lazy_stack(arr, axes, channel, str(path)), meta


class _QuietFrames:
    """A tifffile Zarr store read with tifffile's log silenced; a corrupt page is one clear error."""

    def __init__(self, array, path: Path):
        self._array, self._path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, len(array.shape)

    def __getitem__(self, key):
        from ..errors import ImageReadError
        from .tiff import quiet_tifffile

        try:
            with quiet_tifffile():
                return np.asarray(self._array[key])
        except Exception as exc:  # noqa: BLE001 - tifffile/zlib/struct errors of a corrupt page
            raise ImageReadError(f"{self._path}: cannot read frames ({type(exc).__name__}: {exc})") from None


def _fill_frames(block: np.ndarray, where: str, block_info=None) -> np.ndarray:
    """The NaN/Inf policy of :func:`~napari_deeptrack.io.images.fill_nonfinite` on whole frames."""
    from .images import fill_nonfinite

    if block.dtype.kind != "f" or np.isfinite(block).all():
        return block
    first = int(block_info[0]["array-location"][0][0]) if block_info else 0
    block, report = fill_nonfinite(np.array(block, copy=True), "replace")
    listing = ", ".join(f"frame {first + k}: {v}" for k, v in list(report.items())[:5])
    warnings.warn(f"{where}: NaN/Inf pixels replaced by their frame's median ({listing})", stacklevel=2)
    return block


def _apply_pixel_policies(stack, where: str):
    """Complex pixels refused; NaN/Inf replaced frame by frame, as :func:`read_images` does."""
    from ..errors import ImageReadError

    if np.dtype(stack.dtype).kind == "c":
        raise ImageReadError(
            f"{where} holds complex pixels; save the magnitude (np.abs), the phase (np.angle) or the "
            "real and imaginary parts as separate files"
        )
    if np.dtype(stack.dtype).kind not in "biuf":
        raise ImageReadError(f"{where}: unsupported pixel type {stack.dtype}")
    if np.dtype(stack.dtype).kind != "f":
        return stack
    whole = stack.rechunk({1: -1, 2: -1})  # the policy needs whole frames
    return whole.map_blocks(_fill_frames, where, dtype=stack.dtype)


def _open_tiff(path: Path, channel: int | None):
    import dask.array as da
    import tifffile
    import zarr

    from ..errors import ImageReadError
    from .tiff import _pixel_size, _truncation, quiet_tifffile

    meta: dict[str, Any] = {"pixel_size_um": None, "frame_interval_s": None, "source": str(path)}
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            if not tif.pages or not tif.series:
                raise ImageReadError(f"{path}: the TIFF holds no image")
            partial = _truncation(tif, path)  # the in-memory reader's policy; never streamed
            if partial is not None:
                raise ImageReadError(
                    f"{path} is truncated: {partial}; re-copy the file, or read it in memory with "
                    "--allow-partial (without --chunk-frames) to use the frames it holds"
                )
            series = tif.series[0]
            axes = series.axes.upper().replace("S", "C")
            if axes.endswith("YXC"):  # RGB samples last: move the channel axis before Y, X
                axes = axes[:-3] + "CYX"
                rgb = True
            else:
                rgb = False
            store = tif.aszarr()
            meta["pixel_size_um"] = _pixel_size(tif)
    except ImageReadError:
        raise
    except (tifffile.TiffFileError, OSError, IndexError, ValueError, KeyError, EOFError) as exc:
        raise ImageReadError(f"{path} is not a readable TIFF: {exc}") from None
    z = zarr.open(store, mode="r")
    arr = da.from_array(_QuietFrames(z, path), chunks=z.chunks, asarray=False)
    if rgb:
        arr = da.moveaxis(arr, -1, -3)
    meta["axes"] = axes
    return _apply_pixel_policies(as_lazy_stack(arr, axes, channel, str(path)), str(path)), meta


def _open_folder(path: Path, channel: int | None):
    import dask
    import dask.array as da

    from .images import read_images

    files = sorted(
        (f for f in path.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES), key=_natural_key
    )
    if not files:
        raise ValueError(f"{path}: no image files ({', '.join(_IMAGE_SUFFIXES)}) in this folder")
    first, _ = read_images(files[0], channel=channel)
    if first.ndim != 3 or first.shape[0] != 1:
        raise ValueError(f"{files[0]}: a folder of frames needs one 2D image per file, got {first.shape}")
    shape, dtype = first.shape[1:], first.dtype

    def _read(f: Path) -> np.ndarray:
        img, _ = read_images(f, channel=channel)
        if img.shape[1:] != shape:
            raise ValueError(f"{f}: frame of shape {img.shape[1:]}, but the first frame is {shape}")
        return img[0]

    frames = [da.from_delayed(dask.delayed(_read)(f), shape=shape, dtype=dtype) for f in files]
    meta = {"pixel_size_um": None, "frame_interval_s": None, "source": str(path), "axes": "TYX"}
    return da.stack(frames), meta


def open_lazy(path: str | Path, channel: int | str | None = None):
    """Open a stack without reading its pixels: ``(dask array [T, H, W], meta)``.

    Parameters
    ----------
    path : str or Path
        A Zarr or OME-Zarr folder, a (multi-page) TIFF, or a folder of frames.
    channel : int or None
        The channel to use when the data has several.

    Returns
    -------
    (dask.array.Array, dict)
        ``meta`` holds ``axes`` (as found), ``pixel_size_um`` and ``frame_interval_s`` (or None) and
        ``source``.

    Raises
    ------
    FileNotFoundError
        No such path.
    ValueError
        Not an image stack, or axes that are not ``[..., Y, X]``, or several channels and no ``channel``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    ch = None if channel is None else _channel_index(channel)
    if is_lazy_source(p):
        return _open_zarr(p, ch)
    if p.is_dir():
        return _open_folder(p, ch)
    if p.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(p, ch)
    raise ValueError(f"{p}: lazy reading needs a Zarr/OME-Zarr folder, a TIFF or a folder of frames")


def _channel_index(channel) -> int:
    names = {"r": 0, "g": 1, "b": 2}
    if isinstance(channel, str) and channel.lower() in names:
        return names[channel.lower()]
    try:
        return int(channel)
    except (TypeError, ValueError):
        raise ValueError(f"channel must be r, g, b or an index, got {channel!r}") from None
