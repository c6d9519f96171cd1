"""The one prediction path: a trained model (or bundle) applied to images, chunk by chunk, then linked.

:func:`predict` (everything at once) and :func:`predict_chunks` (a generator over chunks of frames,
for progress bars, cancelling and streaming) are what the command line (``napari-deeptrack apply``),
the napari Apply widget, the examples and the benchmarks call. For every chunk of frames the input is
normalised exactly as the training images were (:func:`napari_deeptrack.train.data.normalize`), the
network runs on batches of frames (fully convolutional networks see images padded to a multiple of
their down-sampling factor, and split into overlapping tiles when large), the task's activation is
applied and the output is thresholded and turned into measurements by the rule of ``task.kind``
(:data:`KIND_RULES`):

=================  ===========================================================================
detection          probability map -> ``frame, y, x, probability, area`` (detect.py); optional
                   brightness filters ``postprocess["min_mass"]`` / ``["min_signal"]`` (see predict)
counting           density map -> counts per frame (integral, divided by the task's
                   ``postprocess["density_scale"]``) and peak positions (density.py)
segmentation       foreground map -> instance labels (seeded watershed) and their centroids
tracking-3d        z-binned volume -> ``frame, y, x, z_um, ...`` (volume3d.py)
localization       regression -> ``frame, y, x`` of the particle in each frame (crop)
characterization   regression -> ``frame`` + properties (``radius_um``, ``n_real``...)
classification     class probabilities -> ``frame, class_id, probability``
image-to-image     output images only (``maps``)
=================  ===========================================================================

The chunks' tables are merged (frame numbers and label ids made global) and only then linked into
tracks: linking always sees the thresholded detections of the whole stack, with the same
``search_range_px`` and ``memory`` whoever calls. Positions are in pixels of the input images (centre
of the top-left pixel at (0, 0)).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..sim.noise import normalize_input as normalize
from ..sim.task import KINDS
from .density import counts_from_density, peaks_from_density
from .detect import detect_from_map, empty_detections
from .properties import aggregate_tracks, regression_to_table
from .segment import instance_labels
from .tracking import diffusion_coefficients, link_tracks
from .volume3d import positions_from_volume

__all__ = [
    "KIND_RULES",
    "ChunkResult",
    "KindRule",
    "kind_rule",
    "link_detections",
    "linking_settings",
    "PredictionResult",
    "auto_tile_size",
    "check_images_fit",
    "dihedral_asymmetry",
    "dihedral_average",
    "predict",
    "predict_chunks",
    "run_model",
]

#: Frames per chunk when the caller does not say (at least ``batch_size``).
DEFAULT_CHUNK_FRAMES = 64


@dataclass
class PredictionResult:
    """What :func:`predict` returns.

    Attributes
    ----------
    kind : str
        The task kind.
    detections : DataFrame
        One row per detection (or per frame for single-particle tasks), results-CSV layout.
    maps : ndarray or None
        Network outputs after the task's activation, ``[T, C, H, W]`` (or ``[T, K]`` for vectors);
        None when not kept (``keep_maps=False``).
    labels : ndarray or None
        Instance labels ``[T, H, W]`` (segmentation), unique over the stack.
    counts : ndarray or None
        Objects per frame ``[T]`` (counting: the density integral; detection: number of detections).
    diffusion : dict or None
        Ensemble and per-track diffusion (when linked with a pixel size and frame interval).
    track_properties : DataFrame or None
        Characterisation linked into tracks: mean, std and standard error of every property per
        track (the paper averages the single-frame estimates of each particle).
    info : dict
        Settings used (threshold, tiling, linking, ...).
    """

    kind: str
    detections: pd.DataFrame
    maps: np.ndarray | None = None
    labels: np.ndarray | None = None
    counts: np.ndarray | None = None
    diffusion: dict | None = None
    track_properties: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChunkResult:
    """One chunk of frames ``start:stop`` as :func:`predict_chunks` yields it (frames and label ids
    already global; not linked)."""

    start: int
    stop: int
    detections: pd.DataFrame
    maps: np.ndarray | None = None
    labels: np.ndarray | None = None
    counts: np.ndarray | None = None


# ---------------------------------------------------------------------------- network
def _down_factor(model_config: dict) -> int:
    depth = model_config.get("depth") if isinstance(model_config, dict) else None
    if isinstance(depth, int) and depth >= 0:
        return 2**depth
    return 32


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - 2 * overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


@torch.no_grad()
def _batched(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    outs = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


@torch.no_grad()
def run_model(
    model: torch.nn.Module,
    x: torch.Tensor,
    fully_convolutional: bool = True,
    multiple: int = 16,
    batch_size: int = 8,
    tile_size: int = 512,
    tile_overlap: int = 32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Run ``model`` on normalised images ``[T, C, H, W]``.

    Fully convolutional models get the images padded (reflection) to a multiple of ``multiple`` and,
    when larger than ``tile_size``, cut into overlapping tiles whose central parts are stitched (the
    ``tile_overlap`` border of every tile is discarded, so tiles join without seams). The output is
    cropped back to ``[T, C_out, H, W]``. Other models run on the images as they are.
    """
    dev = torch.device(device)
    if not fully_convolutional:
        return _batched(model, x, batch_size, dev)
    t, _, h, w = x.shape
    tile = max(multiple, (int(tile_size) // multiple) * multiple)
    ov = min(int(tile_overlap), tile // 4)
    xp = _pad_to(x, multiple)
    hp, wp = xp.shape[-2:]
    if hp <= tile and wp <= tile:
        return _batched(model, xp, batch_size, dev)[..., :h, :w]
    ys, xs = _tile_starts(hp, tile, ov), _tile_starts(wp, tile, ov)
    th, tw = min(tile, hp), min(tile, wp)
    # (frame, tile position) pairs run ``batch_size`` at a time and are written straight into the
    # output, so memory holds the image, the output and one batch of tiles (whole slides fit)
    jobs = [(f, iy, ix) for f in range(t) for iy in range(len(ys)) for ix in range(len(xs))]
    out = None
    for i in range(0, len(jobs), max(1, int(batch_size))):
        part = jobs[i : i + max(1, int(batch_size))]
        batch = torch.stack([xp[f, :, ys[iy] : ys[iy] + th, xs[ix] : xs[ix] + tw] for f, iy, ix in part])
        res = model(batch.to(dev)).float().cpu()
        if out is None:
            out = torch.zeros(t, res.shape[1], hp, wp)
        for (f, iy, ix), r in zip(part, res):
            y0, x0 = ys[iy], xs[ix]
            a0 = 0 if iy == 0 else ov
            a1 = th if iy == len(ys) - 1 else th - ov
            b0 = 0 if ix == 0 else ov
            b1 = tw if ix == len(xs) - 1 else tw - ov
            out[f, :, y0 + a0 : y0 + a1, x0 + b0 : x0 + b1] = r[:, a0:a1, b0:b1]
    return out[..., :h, :w]


#: Tile sizes :func:`auto_tile_size` tries below the whole frame (largest first).
AUTO_TILE_SIZES = (8192, 6144, 4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64)
#: Bytes per pixel of one frame held while a chunk is applied: raw and normalised input, output map,
#: float64 post-processing temporaries and labels (as ``analysis.batch.check_chunk_memory``).
FRAME_BYTES_PER_PX = 4 + 4 + 4 + 8 + 4


def auto_tile_size(
    model_or_bundle,
    image_shape,
    memory_budget_bytes: int | None = None,
    batch_size: int = 8,
    frames_in_memory: int = 1,
) -> int:
    """The tile size (px) to apply a model with: the largest that fits the memory budget.

    The whole frame (no tiling) when its forward pass fits; else the largest of
    :data:`AUTO_TILE_SIZES` (a multiple of the network's down-sampling factor) whose estimated peak fits:
    the network on ``batch_size`` tiles (weights, activations, tile input and output;
    :func:`napari_deeptrack.sim.budget.estimate_apply`) plus the ``frames_in_memory`` whole frames a
    chunk holds (input, output map, post-processing: :data:`FRAME_BYTES_PER_PX` per pixel). Models
    trained on crops (localisation, classification...) are never tiled: their frame size is returned.

    Parameters
    ----------
    model_or_bundle : Bundle, dict or torch.nn.Module
        A loaded bundle, a model config (``{"type": "UNet", ...}``) or a model.
    image_shape : tuple
        ``(H, W)`` or any shape whose last two entries are the frame's rows and columns.
    memory_budget_bytes : int or None
        Default :func:`napari_deeptrack.nn.memory.memory_budget` (``NAPARI_DEEPTRACK_MEMORY_GB``, 4 GB, or
        a fraction of the free memory).
    batch_size : int
        Tiles per forward pass (``--batch-size``).
    frames_in_memory : int
        Whole frames held at once (the chunk: ``--chunk-frames``).

    Returns
    -------
    int
        The tile size; ``max(H, W)`` rounded up to the down-sampling factor means no tiling.

    Raises
    ------
    MemoryBudgetError
        Not even whole frames plus 64-px tiles fit: names ``--batch-size``, ``--chunk-frames`` and the
        budget's variable.
    """
    from ..errors import MemoryBudgetError
    from ..nn.memory import format_bytes, memory_budget
    from ..sim.budget import estimate_apply

    budget = memory_budget() if memory_budget_bytes is None else int(memory_budget_bytes)
    h, w = (int(v) for v in tuple(image_shape)[-2:])
    batch = max(1, int(batch_size))
    if hasattr(model_or_bundle, "model") and hasattr(model_or_bundle, "task"):
        task = model_or_bundle.task
        if not kind_rule(task.kind).fully_convolutional:
            return max(h, w)
        cfg = (getattr(model_or_bundle, "config", None) or {}).get("model") or getattr(task, "model", None)
        known = isinstance(cfg, dict) and cfg.get("type") not in (None, "custom")
        model = cfg if known else model_or_bundle.model
    else:
        model, cfg = model_or_bundle, model_or_bundle
    if isinstance(cfg, dict) and isinstance(model, torch.nn.Module):  # a bare model: its config if known
        model = cfg if cfg.get("type") not in (None, "custom") else model
    multiple = _down_factor(cfg if isinstance(cfg, dict) else {})
    whole = -(-max(h, w) // multiple) * multiple
    fixed = int(frames_in_memory) * h * w * FRAME_BYTES_PER_PX
    # the network's activations grow with the tile's pixels: count them once (a meta-tensor forward
    # pass on a reference tile), then scale, as estimate_apply does for each size
    ref = max(multiple, min(256 // multiple * multiple, whole))
    est = estimate_apply(model, (1, ref, ref), 1, 1)
    act_per_px = est.detail["activations_per_frame"] / float(ref * ref)
    weights = est.detail["parameters"] * 4
    need = None
    for tile in [whole] + [t for t in AUTO_TILE_SIZES if t < whole and t % multiple == 0]:
        px = min(tile, h) * min(tile, w)
        need = int(weights + batch * px * (act_per_px * 4 / 2 + 4 * 2)) + fixed
        if need <= budget:
            return int(tile)
    raise MemoryBudgetError(
        f"applying to {h}x{w} frames needs about {format_bytes(need)} even in the smallest tiles, over "
        f"the memory budget of {format_bytes(budget)}: lower `--batch-size` ({batch}) or `--chunk-frames` "
        f"({frames_in_memory}), or raise NAPARI_DEEPTRACK_MEMORY_GB",
        parameter="batch_size",
        need_bytes=int(need or 0),
        budget_bytes=budget,
    )


def dihedral_asymmetry(optics: Any) -> str | None:
    """Why ``optics`` gives a PSF that flips or 90-degree rotations change, or None when they do not.

    Aberration-free pupils with defocus (and rotationally symmetric Zernike terms, ``m = 0``, such as
    spherical aberration) are symmetric. Any other Zernike term whose coefficient is not fixed at 0
    (coma, astigmatism, trefoil...) and any engineered phase mask (astigmatic lens, double helix,
    tetrapod) breaks the symmetry, and with it :func:`dihedral_average`.
    """
    reasons = []
    for ab in list(getattr(optics, "aberrations", None) or []):
        coef = getattr(ab, "coefficient", 0.0)
        fixed_zero = coef == 0 if isinstance(coef, int | float) else getattr(coef, "value", None) == 0
        if int(getattr(ab, "m", 0)) != 0 and not fixed_zero:
            reasons.append(f"Zernike n={ab.n}, m={ab.m}")
    if getattr(optics, "phase_mask", None) is not None:
        reasons.append(f"phase mask {type(optics.phase_mask).__name__}")
    return ", ".join(reasons) or None


@torch.no_grad()
def dihedral_average(
    model: torch.nn.Module,
    x: torch.Tensor,
    fields: list[str],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Test-time augmentation of a crop regressor over the 8 flips and 90-degree rotations.

    Each crop ``[T, C, S, S]`` is transposed and/or flipped, the model's ``(y, x)`` offsets from the
    crop centre are mapped back, and the 8 estimates are averaged (other fields, and log sigmas of
    ``gaussian_nll`` models, are averaged as they are; sigmas follow their axis through a transpose).
    Averaging cancels the part of the network's error that does not follow the symmetry, which
    dominates for bright particles. Only valid when the point-spread function and the task are
    symmetric under these operations (in-focus or defocused aberration-free optics; not with coma
    or astigmatism), which is why it is opt-in (``postprocess["test_time_augmentation"]``).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral test-time augmentation needs square crops, got {tuple(x.shape[-2:])}")
    if "y" not in fields or "x" not in fields:
        raise ValueError(f"dihedral test-time augmentation needs 'y' and 'x' fields, got {fields}")
    k = len(fields)
    iy, ix = fields.index("y"), fields.index("x")
    dev = torch.device(device)
    total = None
    for transpose in (False, True):
        for flip_y in (False, True):
            for flip_x in (False, True):
                xt = x.transpose(-1, -2) if transpose else x
                dims = [d for d, f in ((-2, flip_y), (-1, flip_x)) if f]
                xt = xt.flip(dims) if dims else xt
                out = _batched(model, xt.contiguous(), batch_size, dev).reshape(len(x), -1).clone()
                if flip_y:
                    out[:, iy] = -out[:, iy]
                if flip_x:
                    out[:, ix] = -out[:, ix]
                if transpose:
                    cols = [iy, ix] + ([k + iy, k + ix] if out.shape[1] == 2 * k else [])
                    swapped = [ix, iy] + ([k + ix, k + iy] if out.shape[1] == 2 * k else [])
                    out[:, cols] = out[:, swapped].clone()
                total = out if total is None else total + out
    return total / 8.0


def _activation(out: torch.Tensor, name: str) -> torch.Tensor:
    if name == "sigmoid":
        return torch.sigmoid(out)
    if name == "softmax":
        return torch.softmax(out, dim=1)
    if name in ("none", None, ""):
        return out
    raise ValueError(f"postprocess activation must be 'sigmoid', 'softmax' or 'none', got {name!r}")


# ---------------------------------------------------------------------------- post-processing rules
@dataclass
class RawOutput:
    """What a post-processing rule gets: one chunk's network output and what it needs besides."""

    task: Any
    maps: np.ndarray  # after activation, [T, C, H, W] or [T, K]
    normalized: torch.Tensor  # the network input [T, C, H, W]
    threshold: float
    postprocess: dict
    min_signal: float | None
    labels_out: Any = None  # segmentation: an array [T, H, W] to write labels into, band by band
    label_offset: int = 0  # added to the label ids written to labels_out
    frame_offset: int = 0  # frame of labels_out where this chunk starts

    @property
    def n_frames(self) -> int:
        return int(self.maps.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.normalized.shape[-2]), int(self.normalized.shape[-1])

    @property
    def target(self):
        return self.task.pipeline.targets[self.task.target]


#: (detections, labels or None, counts per frame or None)
Measured = tuple[pd.DataFrame, np.ndarray | None, np.ndarray | None]


def _per_frame(det: pd.DataFrame, n: int) -> np.ndarray:
    return np.bincount(det["frame"].to_numpy(), minlength=n).astype(np.float64)


#: Frames with more pixels are post-processed (detection) in bands of rows overlapping by
#: :data:`BAND_OVERLAP_PX` (whole slides: memory of one band, not of the whole frame).
BAND_PIXELS = 2048 * 2048
BAND_OVERLAP_PX = 32


def _bands(h: int, w: int, overlap: int = BAND_OVERLAP_PX) -> list[tuple[int, int, int, int]]:
    """Row bands ``(read_from, read_to, own_from, own_to)`` covering ``h`` rows: each band is read with
    ``overlap`` rows of context and owns the detections whose centre lies in its own rows."""
    rows = max(4 * overlap, BAND_PIXELS // max(w, 1))
    if h * w <= BAND_PIXELS or h <= rows:
        return [(0, h, 0, h)]
    edges = list(range(0, h, rows)) + [h]
    return [(max(a - overlap, 0), min(b + overlap, h), a, b) for a, b in zip(edges[:-1], edges[1:])]


def _detection(r: RawOutput) -> Measured:
    # optional brightness filters (off unless the task's postprocess sets them): summed probability
    # ("min_mass") and the integrated normalised input around the detection ("min_signal", in
    # background-noise units with robust normalisation), like trackpy's minmass
    pp = r.postprocess
    min_signal = r.min_signal if r.min_signal is not None else pp.get("min_signal")
    h, w = r.image_shape
    tables = []
    for lo, hi, own_lo, own_hi in _bands(h, w):
        det = detect_from_map(
            r.maps[:, 0, lo:hi],
            r.threshold,
            method=pp.get("method", "components"),
            min_distance_px=float(pp.get("disk_radius_px", 3.0)),
            min_mass=None if pp.get("min_mass") is None else float(pp["min_mass"]),
            image=None if min_signal is None else r.normalized[:, 0, lo:hi].numpy(),
            min_signal=min_signal if min_signal in (None, "auto") else float(min_signal),
            signal_radius_px=float(pp.get("signal_radius_px", pp.get("disk_radius_px", 3.0))),
            noise_model=pp.get("noise_model"),  # min_signal "auto" (analysis.detect.adaptive_min_signal)
        )
        if (lo, hi) != (0, h):
            det["y"] += lo
            keep = (det["y"] >= own_lo - 0.5) & (det["y"] < own_hi - 0.5)
            det = det[keep.to_numpy()]
        tables.append(det)
    det = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
    if len(tables) > 1:
        det = det.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)
    return det, None, _per_frame(det, r.n_frames)


def _counting(r: RawOutput) -> Measured:
    # the network is trained on the density map times postprocess["density_scale"] (default 1)
    density = r.maps[:, 0] / float(r.postprocess.get("density_scale", 1.0))
    sigma = float(getattr(r.target, "sigma_px", r.postprocess.get("sigma_px", 2.0)))
    return peaks_from_density(density, sigma), None, counts_from_density(density)


#: Row bands of segmentation overlap by this much: an object up to this size across is labelled
#: whole by the band that owns its centre (so instances crossing a band border are never cut).
SEG_BAND_OVERLAP_PX = 64


def _foreground(maps: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    c = maps.shape[1]
    return maps[:, 0, rows] if c == 1 else (maps[:, 1, rows] if c == 2 else 1.0 - maps[:, 0, rows])


def _segment_block(r: RawOutput, fg: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """Labels of a block of rows ``[T, rows, W]`` (ids from 1) and their table (block coordinates)."""
    pp = r.postprocess
    labels = instance_labels(
        fg,
        r.threshold,
        min_distance_px=float(pp.get("min_distance_px", 3.0)),
        min_area_px=int(pp.get("min_area_px", 0)),
        seed_h_px=float(pp.get("seed_h_px", 0.0)),
        min_probability=float(pp.get("min_probability", 0.0)),
    )
    ids = np.unique(labels[labels > 0])
    if len(ids) == 0:
        return labels, empty_detections()
    com = np.asarray(ndimage.center_of_mass(np.ones_like(fg), labels, ids)).reshape(-1, 3)
    df = pd.DataFrame(
        {
            "frame": np.round(com[:, 0]).astype(np.int64),
            "y": com[:, 1],
            "x": com[:, 2],
            "probability": ndimage.mean(fg, labels, ids),
            "area": ndimage.sum_labels(np.ones_like(fg), labels, ids),
            "label": ids.astype(np.int64),
        }
    )
    return labels, df


def _segmentation(r: RawOutput) -> Measured:
    """Seeded watershed of the foreground; frames larger than :data:`BAND_PIXELS` are labelled in row
    bands overlapping by :data:`SEG_BAND_OVERLAP_PX`, each band keeping the instances whose centre lies
    in its own rows (whole, up to the overlap's size), so a whole slide never needs the watershed's
    memory for the whole frame. With ``r.labels_out`` (an array ``[T, H, W]``: Zarr...) the labels are
    written there band by band (global ids: ``r.label_offset`` added, frames shifted by
    ``r.frame_offset``) and no label image of the whole chunk is kept: the returned labels are None."""
    h, w = r.image_shape
    bands = _bands(h, w, SEG_BAND_OVERLAP_PX)
    sink = r.labels_out
    if len(bands) == 1 and sink is None:
        labels, det = _segment_block(r, _foreground(r.maps))
        det = det.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)
        return det, labels, _per_frame(det, r.n_frames)
    whole = None if sink is not None else np.zeros((r.n_frames, h, w), np.int32)
    tables, next_id = [], 0
    f0, f1 = r.frame_offset, r.frame_offset + r.n_frames
    for lo, hi, own_lo, own_hi in bands:
        labels, det = _segment_block(r, _foreground(r.maps, slice(lo, hi)))
        det["y"] += lo
        keep = ((det["y"] >= own_lo - 0.5) & (det["y"] < own_hi - 0.5)).to_numpy()
        det = det[keep].reset_index(drop=True)
        if not len(det):
            continue
        lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
        new_ids = next_id + 1 + np.arange(len(det))
        lut[det["label"].to_numpy()] = new_ids + (r.label_offset if sink is not None else 0)
        det["label"] = new_ids
        next_id += len(det)
        band = lut[labels]  # the kept instances only, whole (they may reach into the neighbours' rows)
        if sink is None:
            region = whole[:, lo:hi]
            np.copyto(region, band.astype(np.int32), where=band > 0)
        else:
            region = np.asarray(sink[f0:f1, lo:hi])
            np.copyto(region, band.astype(region.dtype), where=band > 0)
            sink[f0:f1, lo:hi] = region
        tables.append(det)
    det = pd.concat(tables, ignore_index=True) if tables else empty_detections()
    det = det.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)
    return det, whole, _per_frame(det, r.n_frames)


def _tracking_3d(r: RawOutput) -> Measured:
    tgt = r.target
    det = positions_from_volume(
        r.maps,
        tgt.z_min_um,
        tgt.z_max_um,
        tgt.radius_px,
        r.threshold,
        method=r.postprocess.get("z_method", "fit"),
    )
    return det, None, _per_frame(det, r.n_frames)


def _regression(r: RawOutput) -> Measured:
    tgt, vec, shape = r.target, r.maps.reshape(r.n_frames, -1), r.image_shape
    fields = list(getattr(tgt, "fields", [f"value_{i}" for i in range(vec.shape[1])]))
    df = regression_to_table(
        vec,
        fields,
        getattr(tgt, "offset", None),
        getattr(tgt, "scale", None),
        image_shape=shape,
        relative_to_center=getattr(tgt, "relative_to_center", True),
    )
    if "y" not in df.columns:
        df.insert(1, "y", (shape[0] - 1) / 2.0)
    if "x" not in df.columns:
        df.insert(2, "x", (shape[1] - 1) / 2.0)
    return df, None, None


def _classification(r: RawOutput) -> Measured:
    p = r.maps.reshape(r.n_frames, -1)
    h, w = r.image_shape
    det = pd.DataFrame(
        {
            "frame": np.arange(r.n_frames),
            "y": (h - 1) / 2.0,
            "x": (w - 1) / 2.0,
            "class_id": p.argmax(1).astype(np.int64),
            "probability": p.max(1),
        }
    )
    return det, None, None


def _image_to_image(r: RawOutput) -> Measured:
    return empty_detections(), None, None


@dataclass(frozen=True)
class KindRule:
    """How the network output of one task kind becomes measurements.

    Attributes
    ----------
    measure : callable
        :class:`RawOutput` of one chunk -> (detections, labels or None, counts per frame or None).
    fully_convolutional : bool
        Images of any size (padded, tiled); otherwise the model takes crops of its training size.
    maps_are_images : bool
        The output maps are a result to show or save as an image (density maps, restored images).
    has_detections : bool
        The detections table means something (not for image-to-image).
    """

    measure: Callable[[RawOutput], Measured]
    fully_convolutional: bool
    maps_are_images: bool = False
    has_detections: bool = True


#: Task kind -> its post-processing rule (one entry per :data:`napari_deeptrack.tasks.base.KINDS`).
KIND_RULES: dict[str, KindRule] = {
    "detection": KindRule(_detection, fully_convolutional=True),
    "counting": KindRule(_counting, fully_convolutional=True, maps_are_images=True),
    "segmentation": KindRule(_segmentation, fully_convolutional=True),
    "tracking-3d": KindRule(_tracking_3d, fully_convolutional=True),
    "localization": KindRule(_regression, fully_convolutional=False),
    "characterization": KindRule(_regression, fully_convolutional=False),
    "classification": KindRule(_classification, fully_convolutional=False),
    "image-to-image": KindRule(
        _image_to_image, fully_convolutional=True, maps_are_images=True, has_detections=False
    ),
}
assert set(KIND_RULES) == set(KINDS), "every task kind needs a post-processing rule"


def kind_rule(kind: str) -> KindRule:
    """The :class:`KindRule` of a task kind (a clear error for an unknown one)."""
    if kind not in KIND_RULES:
        raise ValueError(f"no prediction rule for task kind {kind!r}; known kinds: {list(KIND_RULES)}")
    return KIND_RULES[kind]


# ---------------------------------------------------------------------------- inputs
def _model_and_task(model_or_bundle, task):
    if hasattr(model_or_bundle, "model") and hasattr(model_or_bundle, "task"):
        cfg = (getattr(model_or_bundle, "config", None) or {}).get("model")
        task = task if task is not None else model_or_bundle.task
        return model_or_bundle.model, task, cfg or getattr(task, "model", {}) or {}
    if isinstance(model_or_bundle, torch.nn.Module):
        if task is None:
            raise ValueError("predict(model, images) needs task=: it says how to normalise and post-process")
        return model_or_bundle, task, getattr(task, "model", {}) or {}
    raise ValueError(
        "predict needs a Bundle (load_bundle) or a torch.nn.Module with task=, "
        f"got {type(model_or_bundle).__name__}"
    )


@dataclass
class _TaskModel:
    """A model with its task and config, shaped like a bundle (for :func:`auto_tile_size`)."""

    model: Any
    task: Any
    model_config: dict

    @property
    def config(self) -> dict:
        return {"model": self.model_config}


class _Frames:
    """A view of ``images`` as frames ``[T, C, H, W]`` that reads only the frames asked for.

    Works for NumPy arrays, torch tensors and lazy arrays with NumPy-style slicing (dask, zarr,
    memory maps): only ``images[start:stop]`` is ever converted to memory.
    """

    def __init__(self, images):
        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        if not hasattr(images, "shape") or not hasattr(images, "__getitem__"):
            images = np.asarray(images)
        self.images = images
        self.ndim = len(images.shape)
        if self.ndim not in (2, 3, 4):
            raise ValueError(
                f"images must be [H, W], [T, H, W] or [T, C, H, W], got shape {tuple(images.shape)}"
            )
        shape = tuple(int(s) for s in images.shape)
        self.n = 1 if self.ndim == 2 else shape[0]
        self.channels = shape[1] if self.ndim == 4 else 1
        self.frame_shape = shape[-2:]
        if self.n == 0:
            raise ValueError("images: no frames")

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self.ndim == 2:
            a = _materialise(self.images)[None, None]
        elif self.ndim == 3:
            a = _materialise(self.images[start:stop])[:, None]
        else:
            a = _materialise(self.images[start:stop])
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _materialise(block) -> np.ndarray:
    """A block of frames as NumPy; a dask block is computed in this thread (synchronous scheduler), so
    reading works inside a Dask distributed worker too, where a nested cluster compute would fail."""
    compute = getattr(block, "compute", None)
    if callable(compute) and hasattr(block, "dask"):
        return np.asarray(compute(scheduler="synchronous"))
    return np.asarray(block)


def check_images_fit(task, model_config: dict, frame_shape, channels: int = 1) -> None:
    """Refuse images the model cannot take: another number of channels, or (for models trained on
    crops: localisation, characterisation, classification) another size than the training crops.

    Raises
    ------
    ValueError
        Saying what the model takes and what to do.
    """
    in_ch = int((model_config or {}).get("in_channels", 1) or 1)
    if int(channels) != in_ch:
        raise ValueError(f"the model expects {in_ch} input channel(s); the images have {channels}")
    h, w = (int(s) for s in frame_shape)
    if not kind_rule(task.kind).fully_convolutional and tuple(task.pipeline.image_shape) != (h, w):
        th, tw = task.pipeline.image_shape
        raise ValueError(
            f"the {task.kind} model of task {task.name!r} takes {th}x{tw} crops (its training size); "
            f"got images of {h}x{w}. Crop the images around the particle to {th}x{tw} first, "
            "or use a detection model."
        )


def _use_dihedral(task, test_time_augmentation) -> bool:
    pp = task.postprocess or {}
    explicit = test_time_augmentation is not None
    tta = test_time_augmentation if explicit else pp.get("test_time_augmentation", "none")
    if tta not in ("none", "dihedral", False, True):
        raise ValueError(f"test_time_augmentation must be 'none' or 'dihedral', got {tta!r}")
    dihedral = tta in ("dihedral", True) and task.kind == "localization"
    why = dihedral_asymmetry(getattr(task.pipeline, "optics", None)) if dihedral else None
    if why and explicit:
        raise ValueError(
            f"test_time_augmentation='dihedral' needs a PSF that flips and 90-degree rotations leave "
            f"unchanged; this task's optics break that symmetry ({why}). Use 'none'."
        )
    if why:  # the task asks for it but its (edited) optics do not allow it: one pass instead
        warnings.warn(
            f"test-time augmentation switched off: the optics of task {task.name!r} are not symmetric "
            f"({why})",
            stacklevel=3,
        )
        return False
    return dihedral


# ---------------------------------------------------------------------------- the prediction path
def predict_chunks(
    model_or_bundle,
    images,
    *,
    task=None,
    chunk_frames: int | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    tile_size: int | str = 512,
    tile_overlap: int = 32,
    link: bool = False,
    search_range_px: float | None = None,
    memory: int | None = None,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    min_signal: float | None = None,
    test_time_augmentation: str | None = None,
    keep_maps: bool = True,
    frame_range: tuple[int, int] | None = None,
    labels_out=None,
) -> Generator[ChunkResult, None, PredictionResult]:
    """Predict ``images`` chunk by chunk: yield every chunk's thresholded result, return the merged,
    linked :class:`PredictionResult`.

    Parameters are those of :func:`predict`, plus ``chunk_frames`` (frames read and run at a time;
    default ``max(64, batch_size)``) and ``keep_maps`` (keep every chunk's output maps in the merged
    result; switch off to bound memory when streaming long stacks) and ``frame_range`` (only frames
    ``start:stop`` of the stack, numbered as in the whole stack; label ids start at 1 in every call:
    what a worker of a distributed run does with its share) and ``labels_out`` (segmentation: an
    array ``[T, H, W]`` of the whole stack, e.g. Zarr, receiving the labels band by band, so no label
    image of a chunk is held; the chunks' and the result's ``labels`` are then None). Only
    ``images[start:stop]`` of one chunk is in memory at a time, so lazy arrays (dask, zarr, memory
    maps) are read chunk by chunk. Use it as a generator (``for chunk in gen: ...``; the merged result is the
    ``StopIteration`` value, which napari's ``thread_worker`` passes to ``returned``).

    Yields
    ------
    ChunkResult
        Detections (global frame numbers, not linked), labels (global ids), counts and maps of one chunk.

    Returns
    -------
    PredictionResult
    """
    model, task, model_cfg = _model_and_task(model_or_bundle, task)
    rule = kind_rule(task.kind)
    pp = dict(task.postprocess or {})
    frames = _Frames(images)
    check_images_fit(task, model_cfg, frames.frame_shape, frames.channels)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk = int(chunk_frames) if chunk_frames is not None else max(DEFAULT_CHUNK_FRAMES, int(batch_size))
    if chunk < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if isinstance(tile_size, str) and tile_size == "auto":  # the largest tile the memory budget allows
        tile_size = (
            auto_tile_size(
                _TaskModel(model, task, model_cfg), frames.frame_shape, None, batch_size, min(chunk, frames.n)
            )  # fmt: skip
            if rule.fully_convolutional
            else 512
        )
    elif isinstance(tile_size, str) or not int(tile_size) >= 1:
        raise ValueError(f"tile_size must be a number of pixels >= 1 or 'auto', got {tile_size!r}")
    thr = float(threshold if threshold is not None else pp.get("threshold", 0.5))
    dihedral = _use_dihedral(task, test_time_augmentation)
    try:
        dev = torch.device(device)
        model.eval()
        model.to(dev)
    except (RuntimeError, AssertionError, TypeError) as exc:  # "bogus", "cuda" without CUDA...
        from ..errors import DeviceError

        raise DeviceError(f"device {device!r} is not usable here ({exc})", parameter="device") from None
    tables, label_parts, count_parts, map_parts = [], [], [], []
    label_offset = 0
    lo, hi = (0, frames.n) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
    if not 0 <= lo < hi <= frames.n:
        raise ValueError(f"frame_range must lie within 0..{frames.n} and not be empty, got {frame_range}")
    for start in range(lo, hi, chunk):
        stop = min(start + chunk, hi)
        x = frames.read(start, stop)
        xn = normalize(x, task.input_normalization)
        lodestar = pp.get("method") == "lodestar"  # self-supervised vote detector (nn/lodestar.py)
        if lodestar:
            from ..nn.lodestar import detect_frames

            table, out = detect_frames(model, xn, pp, threshold, int(batch_size), dev)
        elif dihedral:
            fields = list(getattr(_target(task), "fields", []))
            raw = dihedral_average(model, xn, fields, int(batch_size), dev)
        else:
            raw = run_model(
                model,
                xn,
                rule.fully_convolutional,
                _down_factor(model_cfg),
                int(batch_size),
                int(tile_size),
                int(tile_overlap),
                dev,
            )
        if not lodestar:
            out = _activation(raw, pp.get("activation", "none")).numpy()
        maps = out if out.ndim == 4 else out.reshape(len(out), -1)
        if lodestar:
            det, labels, counts = pd.DataFrame(table), None, _per_frame(pd.DataFrame(table), len(xn))
        else:
            sink = labels_out if task.kind == "segmentation" else None
            raw_out = RawOutput(task, out, xn, thr, pp, min_signal, sink, label_offset, start)
            det, labels, counts = rule.measure(raw_out)
        det = det.copy()
        det["frame"] = det["frame"].to_numpy().astype(np.int64) + start
        if labels is None and labels_out is not None and "label" in det.columns:  # written band by band
            det["label"] = det["label"].to_numpy() + label_offset
            label_offset = int(det["label"].max()) if len(det) else label_offset
        if labels is not None:
            labels = np.where(labels > 0, labels.astype(np.int64) + label_offset, 0)
            if "label" in det.columns:
                det["label"] = det["label"].to_numpy() + label_offset
            label_offset = int(labels.max(initial=label_offset))
            label_parts.append(labels)
        if counts is not None:
            count_parts.append(np.atleast_1d(np.asarray(counts, dtype=np.float64)))
        if keep_maps:
            map_parts.append(maps)
        tables.append(det)
        yield ChunkResult(start, stop, det, maps, labels, counts)
    det = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0].reset_index(drop=True)
    info: dict[str, Any] = {
        "threshold": thr,
        "tile_size": int(tile_size),
        "chunk_frames": chunk,
        "n_frames": int(frames.n),
        "image_shape": [int(s) for s in frames.frame_shape],
        "test_time_augmentation": "dihedral" if dihedral else "none",
    }
    det, diffusion, track_props = _link(
        task, det, frames.n, info, link, search_range_px, memory, pixel_size_um, frame_interval_s
    )
    if frame_range is not None:
        info["frame_range"] = [lo, hi]
    return PredictionResult(
        kind=task.kind,
        detections=det,
        maps=np.concatenate(map_parts) if map_parts else None,
        labels=np.concatenate(label_parts).astype(np.int32 if label_offset < 2**31 else np.int64)
        if label_parts
        else None,
        counts=np.concatenate(count_parts) if count_parts else None,
        diffusion=diffusion,
        track_properties=track_props,
        info=info,
    )


def linking_settings(
    task, search_range_px: float | None = None, memory: int | None = None
) -> tuple[float, int]:
    """The search range (px) and memory (frames) used to link: the given ones, else the task's
    ``postprocess["search_range_px"]`` (5 px) and ``postprocess["memory"]`` (0)."""
    pp = task.postprocess or {}
    sr = float(search_range_px if search_range_px is not None else pp.get("search_range_px", 5.0))
    mem = int(memory if memory is not None else pp.get("memory", 0))
    return sr, mem


def link_detections(
    task,
    detections: pd.DataFrame,
    n_frames: int,
    search_range_px: float | None = None,
    memory: int | None = None,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
) -> tuple[pd.DataFrame, dict | None, pd.DataFrame | None, dict]:
    """Link merged, thresholded detections of a whole stack into tracks, as :func:`predict` does with
    ``link=True`` (for results gathered chunk by chunk: streaming, distributed runs).

    Returns
    -------
    (detections with ``track_id``, diffusion or None, per-track properties or None, settings used)
    """
    info: dict[str, Any] = {}
    out = _link(
        task, detections, n_frames, info, True, search_range_px, memory, pixel_size_um, frame_interval_s
    )
    return (*out, info)


def _link(task, det, n_frames, info, link, search_range_px, memory, pixel_size_um, frame_interval_s):
    """Link the merged, thresholded detections into tracks (plus diffusion and per-track properties)."""
    diffusion = track_props = None
    if link and len(det) and n_frames > 1:
        sr, mem = linking_settings(task, search_range_px, memory)
        det = link_tracks(det, sr, memory=mem)
        info.update({"search_range_px": sr, "memory": mem})
        if pixel_size_um is not None and frame_interval_s is not None:
            d = diffusion_coefficients(det, float(pixel_size_um), float(frame_interval_s))
            diffusion = {"ensemble": d["ensemble"], "per_track": d["per_track"]}
    elif link and len(det):
        det = det.assign(track_id=np.arange(len(det), dtype=np.int64))
    if task.kind == "characterization" and "track_id" in det.columns:
        props = [
            c for c in det.columns if c not in ("frame", "y", "x", "track_id") and not c.endswith("_sigma")
        ]
        track_props = aggregate_tracks(det, props)
    return det, diffusion, track_props


def predict(
    model_or_bundle,
    images,
    threshold: float | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    tile_size: int | str = 512,
    tile_overlap: int = 32,
    link: bool = False,
    search_range_px: float | None = None,
    memory: int | None = None,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    min_signal: float | None = None,
    test_time_augmentation: str | None = None,
    *,
    task=None,
    chunk_frames: int | None = None,
    keep_maps: bool = True,
) -> PredictionResult:
    """Run a trained model on images and post-process its output according to ``task.kind``.

    Parameters
    ----------
    model_or_bundle : Bundle or torch.nn.Module
        From :func:`napari_deeptrack.io.bundle.load_bundle` (``.model``, ``.task``), or a model with
        ``task=`` (e.g. ``train_task(...).model``).
    images : array [H, W], [T, H, W] or [T, C, H, W]
        Raw images (camera counts); any size for fully convolutional tasks. NumPy, torch, or a lazy
        array (dask, zarr) read one chunk of frames at a time.
    threshold : float or None
        Detection / segmentation threshold; default ``task.postprocess["threshold"]`` (or 0.5).
    batch_size : int
        Frames (or tiles) per forward pass.
    device : str
        ``cpu``, ``cuda``...
    tile_size, tile_overlap : int (or ``"auto"``), int
        Images larger than ``tile_size`` are processed in overlapping tiles; ``"auto"``: the largest
        tile the memory budget allows (:func:`auto_tile_size`), the whole frame when it fits.
    link : bool
        Link the thresholded detections of all frames into tracks (adds ``track_id``).
    search_range_px, memory : float, int or None
        Linking search range and the frames a particle may vanish and keep its track; default the
        task's ``postprocess["search_range_px"]`` (5 px) and ``["memory"]`` (0), see
        :func:`linking_settings`.
    pixel_size_um, frame_interval_s : float or None
        With ``link``, both given: diffusion coefficients from the MSD (``result.diffusion``).
    min_signal : float or None
        Detection tasks: drop detections whose ``signal`` (sum of the *normalised* input within
        ``postprocess["signal_radius_px"]``, default ``disk_radius_px``, of the detection; with
        robust normalisation, background 0 and noise sigma 1) is lower, and add a ``signal`` column.
        Like trackpy's ``minmass``: tune it on frames with known particles of the data's brightness
        (it removes noise clusters that a detector trained down to SNR ~1 flags in bright data).
        Default ``task.postprocess["min_signal"]`` (absent: no filter). Likewise
        ``postprocess["min_mass"]`` drops detections whose summed probability is lower.
    test_time_augmentation : {'none', 'dihedral'} or None
        Localization tasks: ``dihedral`` averages the estimates over the 8 flips and 90-degree
        rotations of each crop (:func:`dihedral_average`; only for symmetric PSFs: asking for it
        with asymmetric optics, see :func:`dihedral_asymmetry`, is an error). Default
        ``task.postprocess["test_time_augmentation"]`` (absent: none), which is switched off with a
        warning when the task's optics are not symmetric.
    task : Task, optional
        The task, when ``model_or_bundle`` is a bare model.
    chunk_frames, keep_maps
        See :func:`predict_chunks`.

    Returns
    -------
    PredictionResult
    """
    gen = predict_chunks(
        model_or_bundle,
        images,
        task=task,
        chunk_frames=chunk_frames,
        threshold=threshold,
        batch_size=batch_size,
        device=device,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        link=link,
        search_range_px=search_range_px,
        memory=memory,
        pixel_size_um=pixel_size_um,
        frame_interval_s=frame_interval_s,
        min_signal=min_signal,
        test_time_augmentation=test_time_augmentation,
        keep_maps=keep_maps,
    )
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def _target(task):
    return task.pipeline.targets[task.target]
