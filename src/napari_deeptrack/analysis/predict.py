"""Apply a trained bundle to images: normalise, run the network (batched, padded, tiled), post-process.

:func:`predict` is the one entry point used by the command line (``napari-deeptrack apply``) and the
napari widgets. The input is normalised exactly as the training images were
(``sim.normalize_images(image, **task.input_normalization)``), the network runs on batches of frames,
fully convolutional networks see images padded to a multiple of their down-sampling factor (and
split into overlapping tiles when large), and the output is turned into measurements according to
``task.kind``:

=================  ===========================================================================
detection          probability map -> ``frame, y, x, probability, area`` (detect.py); optional
                   brightness filters ``postprocess["min_mass"]`` / ``["min_signal"]`` (see predict)
counting           density map -> counts per frame (integral) and peak positions (density.py)
segmentation       foreground map -> instance labels (seeded watershed) and their centroids
tracking-3d        z-binned volume -> ``frame, y, x, z_um, ...`` (volume3d.py)
localization       regression -> ``frame, y, x`` of the particle in each frame (crop)
characterization   regression -> ``frame`` + properties (``radius_um``, ``n_real``...)
classification     class probabilities -> ``frame, class_id, probability``
image-to-image     output images only (``maps``)
=================  ===========================================================================

Positions are in pixels of the input images (centre of the top-left pixel at (0, 0)).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from .density import counts_from_density, peaks_from_density
from .detect import detect_from_map, empty_detections
from .properties import aggregate_tracks, regression_to_table
from .segment import instance_labels
from .tracking import diffusion_coefficients, link_tracks
from .volume3d import positions_from_volume

__all__ = [
    "FULLY_CONVOLUTIONAL_KINDS",
    "PredictionResult",
    "dihedral_asymmetry",
    "dihedral_average",
    "normalize_input",
    "predict",
    "run_model",
]

FULLY_CONVOLUTIONAL_KINDS = ("detection", "counting", "segmentation", "tracking-3d", "image-to-image")


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
        Network outputs after the task's activation, ``[T, C, H, W]`` (or ``[T, K]`` for vectors).
    labels : ndarray or None
        Instance labels ``[T, H, W]`` (segmentation).
    counts : ndarray or None
        Objects per frame ``[T]`` (counting: the density integral; detection: number of detections).
    diffusion : dict or None
        Ensemble and per-track diffusion (when linked with a pixel size and frame interval).
    track_properties : DataFrame or None
        Characterisation linked into tracks: mean, std and standard error of every property per
        track (the paper averages the single-frame estimates of each particle).
    info : dict
        Settings used (threshold, tiling, ...).
    """

    kind: str
    detections: pd.DataFrame
    maps: np.ndarray | None = None
    labels: np.ndarray | None = None
    counts: np.ndarray | None = None
    diffusion: dict | None = None
    track_properties: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- network
def normalize_input(images: torch.Tensor, spec: dict | None) -> torch.Tensor:
    """Normalise ``[B, C, H, W]`` like the training images (``sim.normalize_images(..., **spec)``)."""
    spec = dict(spec or {})
    if not spec or spec.get("mode", "percentile") == "none":
        return images
    from ..sim import normalize_images

    return normalize_images(images, **spec)


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
    tiles = torch.stack([xp[..., y0 : y0 + th, x0 : x0 + tw] for y0 in ys for x0 in xs], dim=1)
    out_tiles = _batched(model, tiles.flatten(0, 1), batch_size, dev)
    out_tiles = out_tiles.view(t, len(ys) * len(xs), *out_tiles.shape[1:])
    out = torch.zeros(t, out_tiles.shape[2], hp, wp)
    k = 0
    for iy, y0 in enumerate(ys):  # assemble: a handful of tile positions
        for ix, x0 in enumerate(xs):
            a0 = 0 if iy == 0 else ov
            a1 = th if iy == len(ys) - 1 else th - ov
            b0 = 0 if ix == 0 else ov
            b1 = tw if ix == len(xs) - 1 else tw - ov
            out[..., y0 + a0 : y0 + a1, x0 + b0 : x0 + b1] = out_tiles[:, k, :, a0:a1, b0:b1]
            k += 1
    return out[..., :h, :w]


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


# ---------------------------------------------------------------------------- post-processing
def _target(task):
    return task.pipeline.targets[task.target]


def _segmentation(maps: np.ndarray, threshold: float, pp: dict):
    c = maps.shape[1]
    fg = maps[:, 0] if c == 1 else (maps[:, 1] if c == 2 else 1.0 - maps[:, 0])
    labels = instance_labels(
        fg,
        threshold,
        min_distance_px=float(pp.get("min_distance_px", 3.0)),
        min_area_px=int(pp.get("min_area_px", 0)),
    )
    ids = np.unique(labels[labels > 0])
    if len(ids) == 0:
        return labels, empty_detections()
    com = np.asarray(ndimage.center_of_mass(np.ones_like(fg), labels, ids)).reshape(-1, 3)
    area = ndimage.sum_labels(np.ones_like(fg), labels, ids)
    prob = ndimage.mean(fg, labels, ids)
    df = pd.DataFrame(
        {
            "frame": np.round(com[:, 0]).astype(np.int64),
            "y": com[:, 1],
            "x": com[:, 2],
            "probability": prob,
            "area": area,
            "label": ids.astype(np.int64),
        }
    )
    return labels, df.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)


def _regression(task, vec: np.ndarray, image_shape) -> pd.DataFrame:
    tgt = _target(task)
    fields = list(getattr(tgt, "fields", [f"value_{i}" for i in range(vec.shape[1])]))
    df = regression_to_table(
        vec,
        fields,
        getattr(tgt, "offset", None),
        getattr(tgt, "scale", None),
        image_shape=image_shape,
        relative_to_center=getattr(tgt, "relative_to_center", True),
    )
    if "y" not in df.columns:
        df.insert(1, "y", (image_shape[0] - 1) / 2.0)
    if "x" not in df.columns:
        df.insert(2, "x", (image_shape[1] - 1) / 2.0)
    return df


def predict(
    bundle,
    images,
    threshold: float | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    tile_size: int = 512,
    tile_overlap: int = 32,
    link: bool = False,
    search_range_px: float | None = None,
    memory: int = 0,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    min_signal: float | None = None,
    test_time_augmentation: str | None = None,
) -> PredictionResult:
    """Run a trained bundle on images and post-process its output according to ``task.kind``.

    Parameters
    ----------
    bundle : Bundle
        From :func:`napari_deeptrack.io.bundle.load_bundle` (``.model``, ``.task``).
    images : array [H, W], [T, H, W] or [T, C, H, W]
        Raw images (camera counts); any size for fully convolutional tasks.
    threshold : float or None
        Detection / segmentation threshold; default ``task.postprocess["threshold"]`` (or 0.5).
    batch_size : int
        Frames (or tiles) per forward pass.
    device : str
        ``cpu``, ``cuda``...
    tile_size, tile_overlap : int
        Images larger than ``tile_size`` are processed in overlapping tiles.
    link : bool
        Link detections into tracks (adds ``track_id``).
    search_range_px : float or None
        Linking search range; default ``task.postprocess["search_range_px"]`` or 5 px.
    memory : int
        Frames a particle may vanish and keep its track.
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

    Returns
    -------
    PredictionResult
    """
    task = bundle.task
    model = bundle.model
    kind = task.kind
    pp = dict(task.postprocess or {})
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim != 4:
        raise ValueError(f"images must be [H, W], [T, H, W] or [T, C, H, W], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("images: no frames")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    t_n, _, h, w = x.shape
    fully_conv = kind in FULLY_CONVOLUTIONAL_KINDS
    if not fully_conv and tuple(task.pipeline.image_shape) != (h, w):
        th, tw = task.pipeline.image_shape
        raise ValueError(
            f"the {kind} model of task {task.name!r} takes {th}x{tw} crops (its training size); "
            f"got images of {h}x{w}. Crop the images around the particle to {th}x{tw} first."
        )
    model.eval()
    model.to(torch.device(device))
    xn = normalize_input(x, task.input_normalization)
    explicit = test_time_augmentation is not None
    tta = test_time_augmentation if explicit else pp.get("test_time_augmentation", "none")
    if tta not in ("none", "dihedral", False, True):
        raise ValueError(f"test_time_augmentation must be 'none' or 'dihedral', got {tta!r}")
    dihedral = tta in ("dihedral", True) and kind == "localization"
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
            stacklevel=2,
        )
        dihedral = False
    if dihedral:
        fields = list(getattr(_target(task), "fields", []))
        raw = dihedral_average(model, xn, fields, int(batch_size), device)
    else:
        raw = run_model(
            model,
            xn,
            fully_conv,
            _down_factor(task.model),
            int(batch_size),
            int(tile_size),
            int(tile_overlap),
            device,
        )
    out = _activation(raw, pp.get("activation", "none")).numpy()
    thr = float(threshold if threshold is not None else pp.get("threshold", 0.5))
    labels = counts = None
    info: dict[str, Any] = {
        "threshold": thr,
        "tile_size": int(tile_size),
        "n_frames": int(t_n),
        "image_shape": [int(h), int(w)],
        "test_time_augmentation": "dihedral" if dihedral else "none",
    }
    if kind == "detection":
        # optional brightness filters (off unless the task's postprocess sets them): summed
        # probability ("min_mass") and the integrated normalised input around the detection
        # ("min_signal", in background-noise units with robust normalisation), like trackpy's minmass
        min_signal = min_signal if min_signal is not None else pp.get("min_signal")
        det = detect_from_map(
            out[:, 0],
            thr,
            method=pp.get("method", "components"),
            min_distance_px=float(pp.get("disk_radius_px", 3.0)),
            min_mass=None if pp.get("min_mass") is None else float(pp["min_mass"]),
            image=None if min_signal is None else xn[:, 0].numpy(),
            min_signal=None if min_signal is None else float(min_signal),
            signal_radius_px=float(pp.get("signal_radius_px", pp.get("disk_radius_px", 3.0))),
        )
        counts = np.bincount(det["frame"].to_numpy(), minlength=t_n).astype(np.float64)
    elif kind == "counting":
        sigma = float(getattr(_target(task), "sigma_px", pp.get("sigma_px", 2.0)))
        counts = counts_from_density(out[:, 0])
        det = peaks_from_density(out[:, 0], sigma)
    elif kind == "segmentation":
        labels, det = _segmentation(out, thr, pp)
        counts = np.bincount(det["frame"].to_numpy(), minlength=t_n).astype(np.float64)
    elif kind == "tracking-3d":
        tgt = _target(task)
        det = positions_from_volume(
            out, tgt.z_min_um, tgt.z_max_um, tgt.radius_px, thr, method=pp.get("z_method", "fit")
        )
        counts = np.bincount(det["frame"].to_numpy(), minlength=t_n).astype(np.float64)
    elif kind in ("localization", "characterization"):
        det = _regression(task, out.reshape(t_n, -1), (h, w))
    elif kind == "classification":
        p = out.reshape(t_n, -1)
        det = pd.DataFrame(
            {
                "frame": np.arange(t_n),
                "y": (h - 1) / 2.0,
                "x": (w - 1) / 2.0,
                "class_id": p.argmax(1).astype(np.int64),
                "probability": p.max(1),
            }
        )
    else:  # image-to-image
        det = empty_detections()
    diffusion = None
    if link and len(det) and t_n > 1:
        sr = float(search_range_px if search_range_px is not None else pp.get("search_range_px", 5.0))
        det = link_tracks(det, sr, memory=int(memory))
        info.update({"search_range_px": sr, "memory": int(memory)})
        if pixel_size_um is not None and frame_interval_s is not None:
            d = diffusion_coefficients(det, float(pixel_size_um), float(frame_interval_s))
            diffusion = {"ensemble": d["ensemble"], "per_track": d["per_track"]}
    elif link and len(det):
        det = det.assign(track_id=np.arange(len(det), dtype=np.int64))
    track_props = None
    if kind == "characterization" and "track_id" in det.columns:
        props = [
            c for c in det.columns if c not in ("frame", "y", "x", "track_id") and not c.endswith("_sigma")
        ]
        track_props = aggregate_tracks(det, props)
    maps = out if out.ndim == 4 else out.reshape(t_n, -1)
    return PredictionResult(
        kind=kind,
        detections=det,
        maps=maps,
        labels=labels,
        counts=counts,
        diffusion=diffusion,
        track_properties=track_props,
        info=info,
    )
