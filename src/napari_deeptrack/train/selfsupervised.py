"""Self-supervised training of the LodeSTAR-style detector from one or a few crops of real objects.

The user draws a rectangle around one object (napari Shapes, ``--crop y0,x0,y1,x1`` on the command
line). No position is annotated: the network (:class:`~napari_deeptrack.nn.lodestar.LodeSTAR`) is
trained so that its estimate of the object's position *moves with the object*. Every training step
takes a crop, makes ``copies`` transformed versions of it (a random sub-pixel translation by a
Fourier shift, which keeps the noise statistics; one of the 8 flips / 90-degree rotations; fresh
background noise outside the crop; optional extra noise and gain), predicts the position in each
copy, maps each prediction back through its own transformation, and penalises

- *equivariance*: the spread of the back-mapped predictions around their mean (L1, px), and
- *within-crop consistency*: the weight-averaged distance of every pixel's vote from the crop's
  weighted-mean position (L1, px), which makes the votes pile up on one point.

The losses have the same meaning as in Midtvedt et al. (Nat. Commun. 2022); the implementation,
transformations and detection post-processing are our own. Training runs through the common
:class:`~.trainer.Trainer` (progress events, Stop, time budget, best checkpoint); the validation set
is a fixed draw of transformed copies and its metric ``consistency_px`` is the RMS disagreement of
the back-mapped positions (px).

After training, the *reference mass* (summed vote weight that one training object collects in its
image) is stored in the bundle's ``postprocess``; detections on new frames keep piles of at least
``threshold * reference_mass``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .api import TrainResult
from .data import ValidationSet, normalize
from .events import Callback, StopFlag
from .losses import LOSSES, Loss
from .seeding import INIT_STREAM, TRAIN_STREAM, VALIDATION_STREAM, derive_seed, make_generator
from .trainer import Trainer, schedule_from_settings

__all__ = [
    "CropSet",
    "LodeSTARLoss",
    "TransformedCrops",
    "check_crop",
    "crop_trainer",
    "parse_crop",
    "prepare_crops",
    "reference_mass",
    "train_selfsupervised",
]

#: loss / augmentation settings of a self-supervised task (``task.loss``); missing keys take these
LOSS_DEFAULTS: dict[str, Any] = {
    "type": "lodestar",
    "copies": 4,  # transformed copies of the same crop per group (a divisor of 64)
    "translation": 0.25,  # maximum shift as a fraction of the crop size
    "within_weight": 1.0,  # weight of the within-crop consistency term
    "noise": 1.0,  # extra Gaussian noise, up to this many background-noise sigmas
    "gain": [0.4, 2.5],  # random contrast gain about the background: dimmer / brighter objects
    "mass_weight": 0.1,  # anchors each crop's summed vote weight near 1 (see LodeSTARLoss)
}

MIN_OBJECT_SNR = 5.0  # the crop's object must stand this many (smoothed) noise sigmas above background


# ---------------------------------------------------------------------------- crops
def parse_crop(text: str) -> tuple[int, ...]:
    """``"y0,x0,y1,x1"`` or ``"frame,y0,x0,y1,x1"`` -> integers (rows ``y0:y1``, columns ``x0:x1``)."""
    try:
        vals = tuple(int(round(float(v))) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ValueError(
            f"--crop expects y0,x0,y1,x1 (or frame,y0,x0,y1,x1) in pixels, got {text!r}"
        ) from None
    if len(vals) not in (4, 5):
        raise ValueError(f"--crop expects 4 numbers y0,x0,y1,x1 (or 5 with the frame first), got {text!r}")
    return vals


def _box(spec: Sequence[int], n_frames: int, shape: tuple[int, int]) -> tuple[int, int, int, int, int]:
    spec = tuple(int(v) for v in spec)
    if len(spec) == 4:
        spec = (0, *spec)
    if len(spec) != 5:
        raise ValueError(f"a crop is (y0, x0, y1, x1) or (frame, y0, x0, y1, x1), got {spec}")
    t, y0, x0, y1, x1 = spec
    h, w = shape
    if not 0 <= t < n_frames:
        raise ValueError(f"crop {spec}: frame {t} is outside the image's {n_frames} frame(s)")
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"crop {spec}: empty rectangle (need y0 < y1 and x0 < x1)")
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        raise ValueError(
            f"crop {spec}: the rectangle rows {y0}:{y1}, columns {x0}:{x1} is outside the {h}x{w} image"
        )
    if min(y1 - y0, x1 - x0) < 5:
        raise ValueError(
            f"crop {spec}: too small ({y1 - y0}x{x1 - x0} px); draw at least 5x5 px around the object"
        )
    return t, y0, x0, y1, x1


def _border_stats(crop: np.ndarray) -> tuple[float, float]:
    """Background level (median) and noise sigma (1.4826 MAD) of the crop's outer ring."""
    b = max(1, min(crop.shape) // 8)
    ring = np.concatenate(
        [crop[:b].ravel(), crop[-b:].ravel(), crop[b:-b, :b].ravel(), crop[b:-b, -b:].ravel()]
    )
    med = float(np.median(ring))
    sig = 1.4826 * float(np.median(np.abs(ring - med)))
    if not sig > 0:
        sig = float(np.std(ring)) or float(np.std(crop)) or 1.0
    return med, sig


def check_crop(crop: np.ndarray, name: str = "crop") -> dict[str, float]:
    """Refuse a crop that shows no object or several; return its statistics.

    The crop is smoothed (Gaussian, 1 px), compared with its outer ring (median: background; MAD:
    noise), and the pixels deviating by more than ``max(5 sigma, 30 % of the strongest deviation)``
    (bright or dark) are grouped into connected parts after a 2-px closing (so a bright centre and
    its dark ring are one object). No part -> no object; two or more parts each with at least a
    quarter of the strongest one's summed deviation -> several objects.

    Raises
    ------
    ValueError
        With the measured numbers and what to do.
    """
    from scipy import ndimage

    c = np.asarray(crop, dtype=np.float64)
    med, sig = _border_stats(c)
    z = ndimage.gaussian_filter((c - med) / sig, 1.0)
    _, sig_s = _border_stats(z)
    z = z / sig_s
    peak = float(np.abs(z).max())
    if peak < MIN_OBJECT_SNR:
        raise ValueError(
            f"{name} shows no object: its strongest deviation from the background (the crop's border) "
            f"is {peak:.1f} noise sigmas, below {MIN_OBJECT_SNR:g}. Draw the rectangle around one "
            "clearly visible object with some background around it."
        )
    mask = np.abs(z) > max(MIN_OBJECT_SNR, 0.3 * peak)
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2, border_value=0) | mask
    labels, n = ndimage.label(mask)
    strength = ndimage.sum_labels(np.abs(z), labels, np.arange(1, n + 1)) if n else np.zeros(0)
    big = int((strength >= 0.25 * strength.max()).sum()) if n else 0
    if big > 1:
        raise ValueError(
            f"{name} shows {big} objects (separate regions deviating from the background); the "
            "self-supervised detector learns from crops of ONE object each. Draw a tighter rectangle."
        )
    return {"background": med, "noise_sigma": sig, "peak_snr": peak}


def _as_frames(images) -> np.ndarray:
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"images must be [H, W], [T, H, W] or [T, 1, H, W], got shape {a.shape}")
    return a.astype(np.float32, copy=False)


class CropSet:
    """Normalised crops of single objects, padded to one square size, with their context.

    Attributes
    ----------
    crops : Tensor [N, S, S]
        The crops (normalised like whole frames), each centred in an ``S x S`` square; pixels outside
        the drawn rectangle are synthetic background (the rectangle's border level plus noise).
    valid : Tensor [N, S, S] bool
        Which pixels are real.
    background, noise_sigma : Tensor [N]
        Border median and noise sigma of each crop (normalised units).
    boxes : list of (frame, y0, x0, y1, x1)
    contexts : list of (ndarray, (oy, ox))
        The normalised frame region around each crop (for the reference mass) and its origin.
    size : int
        ``S``.
    """

    def __init__(self, crops, valid, background, noise_sigma, boxes, contexts, size):
        self.crops, self.valid = crops, valid
        self.background, self.noise_sigma = background, noise_sigma
        self.boxes, self.contexts, self.size = boxes, contexts, int(size)

    def __len__(self) -> int:
        return len(self.crops)


def prepare_crops(
    images,
    boxes: Sequence[Sequence[int]],
    normalization: dict | None,
    multiple: int = 4,
    check: bool = True,
) -> CropSet:
    """Normalise the frames (as at inference), cut the crops, check each shows one object.

    Parameters
    ----------
    images : array [H, W] or [T, H, W]
        Raw frames.
    boxes : sequence of (y0, x0, y1, x1) or (frame, y0, x0, y1, x1)
        Rectangles around single objects (rows ``y0:y1``, columns ``x0:x1``).
    normalization : dict
        The task's ``input_normalization`` (applied to each whole frame).
    multiple : int
        The common crop size is rounded up to a multiple of this (the model's stride).
    check : bool
        Run :func:`check_crop` on every crop.
    """
    frames = _as_frames(images)
    if not len(boxes):
        raise ValueError("no crop given: draw at least one rectangle around a single object")
    if len(boxes) > 16:
        raise ValueError(f"{len(boxes)} crops given; use at most 16 (one to three usually suffice)")
    t_n, h, w = frames.shape
    bx = [_box(b, t_n, (h, w)) for b in boxes]
    used = sorted({b[0] for b in bx})
    norm = {t: normalize(torch.from_numpy(frames[t])[None, None], normalization)[0, 0].numpy() for t in used}
    side = max(max(b[3] - b[1], b[4] - b[2]) for b in bx)
    size = int(math.ceil(side / multiple) * multiple)
    crops, valid, bgs, sigs, contexts = [], [], [], [], []
    g = np.random.default_rng(0)
    for i, (t, y0, x0, y1, x1) in enumerate(bx):
        c = norm[t][y0:y1, x0:x1]
        if check:
            check_crop(frames[t][y0:y1, x0:x1], name=f"crop {i + 1} ({t},{y0},{x0},{y1},{x1})")
        med, sig = _border_stats(c)
        out = (med + sig * g.standard_normal((size, size))).astype(np.float32)
        v = np.zeros((size, size), bool)
        oy, ox = (size - c.shape[0]) // 2, (size - c.shape[1]) // 2
        out[oy : oy + c.shape[0], ox : ox + c.shape[1]] = c
        v[oy : oy + c.shape[0], ox : ox + c.shape[1]] = True
        crops.append(out)
        valid.append(v)
        bgs.append(med)
        sigs.append(sig)
        m = size // 2 + 4
        cy0, cx0 = max(0, y0 - m), max(0, x0 - m)
        contexts.append((norm[t][cy0 : min(h, y1 + m), cx0 : min(w, x1 + m)], (cy0, cx0)))
    return CropSet(
        torch.from_numpy(np.stack(crops)),
        torch.from_numpy(np.stack(valid)),
        torch.tensor(bgs, dtype=torch.float32),
        torch.tensor(sigs, dtype=torch.float32),
        bx,
        contexts,
        size,
    )


# ---------------------------------------------------------------------------- transformations
# the 8 flips / 90-degree rotations as 2x2 matrices acting on (y, x) offsets from the crop centre,
# with the image operation that realises each: (transpose, flip_y, flip_x) applied in that order
_D4 = [(t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)]


def _d4_matrix(t: bool, fy: bool, fx: bool) -> torch.Tensor:
    a = torch.eye(2)
    if t:
        a = torch.tensor([[0.0, 1.0], [1.0, 0.0]]) @ a
    f = torch.diag(torch.tensor([-1.0 if fy else 1.0, -1.0 if fx else 1.0]))
    return f @ a


def _d4_image(x: torch.Tensor, t: bool, fy: bool, fx: bool) -> torch.Tensor:
    if t:
        x = x.transpose(-1, -2)
    dims = [d for d, f in ((-2, fy), (-1, fx)) if f]
    return x.flip(dims) if dims else x


def fourier_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift images ``[B, H, W]`` by ``shift [B, 2]`` (y, x) pixels (periodic, band-limited, unitary)."""
    h, w = x.shape[-2:]
    ky = torch.fft.fftfreq(h, dtype=torch.float32)[None, :, None]
    kx = torch.fft.fftfreq(w, dtype=torch.float32)[None, None, :]
    phase = torch.exp(-2j * math.pi * (ky * shift[:, 0, None, None] + kx * shift[:, 1, None, None]))
    return torch.fft.ifft2(torch.fft.fft2(x) * phase).real.to(x.dtype)


def transformed_copies(
    crops: CropSet, groups: int, copies: int, cfg: dict[str, Any], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``groups`` random crops, ``copies`` random transformations of each.

    Returns images ``[groups * copies, 1, S, S]`` and targets ``[groups * copies, 9]``: the inverse
    2x2 matrix (4), the shift (2), the crop centre, ``copies`` and ``S`` — what :class:`LodeSTARLoss`
    needs to map each prediction back to the original crop.
    """
    s = crops.size
    m = int(math.ceil(float(cfg["translation"]) * s)) + 2
    p = s + 2 * m
    n = groups * copies
    idx = torch.randint(0, len(crops), (groups,), generator=g).repeat_interleave(copies)
    bg, sig = crops.background[idx], crops.noise_sigma[idx]
    canvas = bg[:, None, None] + sig[:, None, None] * torch.randn(n, p, p, generator=g)
    inner = torch.where(crops.valid[idx], crops.crops[idx], canvas[:, m : m + s, m : m + s])
    canvas[:, m : m + s, m : m + s] = inner
    lo, hi = (float(v) for v in cfg["gain"])
    gain = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g))
    canvas = bg[:, None, None] + gain[:, None, None] * (canvas - bg[:, None, None])
    tmax = float(cfg["translation"]) * s
    shift = (2 * torch.rand(n, 2, generator=g) - 1) * tmax
    shifted = fourier_shift(canvas, shift)[:, m : m + s, m : m + s]
    ops = torch.randint(0, 8, (n,), generator=g)
    out = torch.empty(n, s, s)
    inv = torch.empty(n, 4)
    for k, (t, fy, fx) in enumerate(_D4):  # 8 groups of images, whole-batch operations
        sel = ops == k
        if sel.any():
            out[sel] = _d4_image(shifted[sel], t, fy, fx)
            inv[sel] = _d4_matrix(t, fy, fx).T.reshape(4)
    noise = float(cfg["noise"]) * torch.rand(n, generator=g) * sig
    out = out + noise[:, None, None] * torch.randn(n, s, s, generator=g)
    c = (s - 1) / 2.0
    meta = torch.cat(
        [inv, shift, torch.full((n, 1), c), torch.full((n, 1), float(copies)), torch.full((n, 1), float(s))],
        1,
    )
    return out[:, None].contiguous(), meta


def back_map(pred_pos: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Positions predicted in transformed copies ``[B, 2]`` -> positions in the original crop."""
    inv = meta[:, :4].reshape(-1, 2, 2).to(pred_pos.dtype)
    shift, c = meta[:, 4:6].to(pred_pos.dtype), meta[:, 6:7].to(pred_pos.dtype)
    return torch.einsum("bij,bj->bi", inv, pred_pos - c) + c - shift


class TransformedCrops(IterableDataset):
    """Endless-enough stream of transformed-copy batches (``epochs * steps_per_epoch`` of them)."""

    def __init__(
        self, crops: CropSet, cfg: dict, batch_size: int, steps_per_epoch: int, epochs: int, seed: int
    ):
        super().__init__()
        self.crops, self.cfg = crops, dict(cfg)
        self.copies = int(cfg["copies"])
        self.groups = max(1, int(batch_size) // self.copies)
        self.n = int(steps_per_epoch) * int(epochs)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = make_generator(derive_seed(self.seed, TRAIN_STREAM))
        for _ in range(self.n):
            yield transformed_copies(self.crops, self.groups, self.copies, self.cfg, g)


# ---------------------------------------------------------------------------- loss
class LodeSTARLoss(Loss):
    """Equivariance + within-crop consistency (both L1, in pixels; see the module docstring), plus a
    mass anchor ``mass_weight * log(sum of the crop's weights)^2``.

    The two consistency terms only see *normalised* weights, so nothing fixes their absolute level:
    left free, the logits drift until the weights of a slightly dimmer object underflow to zero and
    those of a brighter one spread over the background. The anchor keeps one training object's mass
    near 1, so masses of other objects scale smoothly with their brightness and size.
    """

    name = "lodestar"

    def __init__(self, config: dict[str, Any]):
        super().__init__({**LOSS_DEFAULTS, **dict(config)})
        copies = int(self.config["copies"])
        if copies < 2 or 64 % copies:
            raise ValueError(f"lodestar loss: copies must be 2, 4, 8, 16, 32 or 64, got {copies}")
        self.last: dict[str, float] = {}

    def terms(self, pred: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from ..nn.lodestar import votes

        meta = meta.to(pred.device)
        copies, s = int(meta[0, 7]), float(meta[0, 8])
        if len(pred) % copies:
            raise ValueError(
                f"lodestar loss: batch of {len(pred)} is not a whole number of {copies}-copy groups"
            )
        stride = max(1, int(round(s / pred.shape[-1])))
        pos, w = votes(pred, stride)
        mass = w.sum(dim=(-2, -1), keepdim=True)
        wn = w / mass.clamp_min(1e-12)
        p = (pos * wn[:, None]).sum(dim=(-2, -1))
        within = (wn * (pos - p[:, :, None, None]).abs().sum(1)).sum(dim=(-2, -1)).mean()
        u = back_map(p, meta).view(-1, copies, 2)
        equi = (u - u.mean(1, keepdim=True)).abs().sum(-1).mean()
        anchor = torch.log(mass.clamp_min(1e-12)).pow(2).mean()
        return equi, within, anchor

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        equi, within, anchor = self.terms(pred, target)
        c = self.config
        return equi + float(c["within_weight"]) * within + float(c["mass_weight"]) * anchor


LOSSES.setdefault("lodestar", LodeSTARLoss)


def consistency_metrics(pred: torch.Tensor, val: ValidationSet) -> dict[str, float]:
    """RMS disagreement (px) of the back-mapped positions of copies of the same crop."""
    from ..nn.lodestar import crop_positions

    meta = val.targets
    copies, s = int(meta[0, 7]), float(meta[0, 8])
    stride = max(1, int(round(s / pred.shape[-1])))
    u = back_map(crop_positions(pred, stride), meta).view(-1, copies, 2)
    return {"consistency_px": float((u - u.mean(1, keepdim=True)).pow(2).sum(-1).mean().sqrt())}


# ---------------------------------------------------------------------------- calibration
@torch.no_grad()
def reference_mass(model: torch.nn.Module, crops: CropSet, postprocess: dict[str, Any]) -> float:
    """Median summed vote weight that each training object collects in its own image region."""
    from ..nn.lodestar import frame_votes, locate_from_votes

    was = model.training
    model.eval()
    dev = next(iter(model.parameters())).device
    dihedral = postprocess.get("test_time_augmentation", "none") in ("dihedral", True)
    masses = []
    for (region, (oy, ox)), (_, y0, x0, y1, x1) in zip(crops.contexts, crops.boxes, strict=True):
        x = torch.from_numpy(np.ascontiguousarray(region))[None, None].to(dev)
        pos, w = frame_votes(model, x, dihedral)
        found = locate_from_votes(
            pos.cpu(),
            w.cpu(),
            region.shape,
            min_mass=0.0,
            radius_px=float(postprocess.get("radius_px", 2.0)),
            min_distance_px=float(postprocess.get("min_distance_px", 3.0)),
        )[0]
        if len(found["y"]):
            cy, cx = (y0 + y1 - 1) / 2.0 - oy, (x0 + x1 - 1) / 2.0 - ox
            inside = (np.abs(found["y"] - cy) <= (y1 - y0) / 2) & (np.abs(found["x"] - cx) <= (x1 - x0) / 2)
            if inside.any():
                masses.append(float(found["mass"][inside].max()))
    model.train(was)
    if not masses:
        raise ValueError(
            "the trained detector finds no object in its own training crops; train longer or draw the "
            "rectangles around clearer objects"
        )
    return float(np.median(masses))


# ---------------------------------------------------------------------------- training
def train_selfsupervised(
    task,
    images,
    crops: Sequence[Sequence[int]],
    out: str | Path | None = None,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str = "cpu",
    init: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    stop_flag: StopFlag | None = None,
    max_seconds: float | None = None,
    validation_groups: int = 16,
) -> TrainResult:
    """Train a self-supervised (LodeSTAR-style) detector from crops of single objects.

    Parameters
    ----------
    task : Task
        A self-supervised task (``loss["type"] == "lodestar"``, e.g. preset ``particles-selfsupervised``);
        its model, input normalisation, loss / augmentation settings and post-processing are used.
    images : array [H, W] or [T, H, W]
        The user's raw frames.
    crops : sequence of (y0, x0, y1, x1) or (frame, y0, x0, y1, x1)
        Rectangles, each around ONE object (checked: see :func:`check_crop`).
    out : path, optional
        Bundle to write (best checkpoint, with the reference mass for detection).
    epochs, steps_per_epoch, batch_size, lr, seed
        Override the task's training settings; ``batch_size`` counts images (groups x copies).
    device : str
        ``cpu``, ``cuda``, ``auto``...
    init : path, optional
        Start from this bundle's weights (same model config).
    callbacks, stop_flag, max_seconds
        As for :func:`napari_deeptrack.train.train_task` (progress events, Stop, time budget).
    validation_groups : int
        Crops x ``copies`` images in the fixed validation draw.

    Returns
    -------
    TrainResult
        ``settings`` includes the crops; the task's ``postprocess["reference_mass"]`` is set.
    """
    from ..io.bundle import load_bundle, save_bundle
    from ..nn import build_model

    if task.loss.get("type") != "lodestar":
        raise ValueError(
            f"task {task.name!r} is not self-supervised (its loss is {task.loss.get('type')!r}); use the "
            "particles-selfsupervised preset"
        )
    task = copy.deepcopy(task)
    cfg = {**LOSS_DEFAULTS, **task.loss}
    task.loss = dict(cfg)
    s = task.training_settings(
        epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, seed=seed
    )
    seed = int(s["seed"])
    if init is not None:
        model = load_bundle(init).model
        model.train()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, INIT_STREAM))
            model = build_model(task.model)
    stride = int(getattr(model, "stride", 1))
    cropset = prepare_crops(images, crops, task.input_normalization, multiple=max(4, stride))
    loss = LodeSTARLoss(cfg)
    copies = int(cfg["copies"])
    vx, vy = transformed_copies(
        cropset, int(validation_groups), copies, cfg, make_generator(derive_seed(seed, VALIDATION_STREAM))
    )
    validation = ValidationSet(vx, vy, seed=seed)
    data = TransformedCrops(
        cropset, cfg, int(s["batch_size"]), int(s["steps_per_epoch"]), int(s["epochs"]), seed
    )
    settings = dict(s)
    settings["crops"] = [list(b) for b in cropset.boxes]
    settings["crop_size_px"] = cropset.size
    if init is not None:
        settings["init"] = str(init)
    if max_seconds is not None:
        settings["max_seconds"] = float(max_seconds)
    bundle_path = Path(out) if out is not None else None

    def calibrated(m: torch.nn.Module) -> Any:
        t = copy.deepcopy(task)
        t.postprocess = {**t.postprocess, "reference_mass": reference_mass(m, cropset, t.postprocess)}
        return t

    def checkpoint(m: torch.nn.Module, history: dict[str, Any]) -> None:
        if bundle_path is None:
            return
        last = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v and k != "epoch"}
        try:
            t = calibrated(m)
        except ValueError:
            return  # not yet a usable detector: keep the previous checkpoint
        save_bundle(bundle_path, m, t, history, seed=seed, training=settings, metrics=last)

    trainer = Trainer(
        model,
        loss,
        data,
        validation,
        **schedule_from_settings(s),
        device=device,
        callbacks=callbacks,
        stop_flag=stop_flag,
        checkpoint=checkpoint,
        metrics=consistency_metrics,
        seed=seed,
        val_batch_size=64,
        max_seconds=max_seconds,
    )
    history = trainer.fit()
    model = trainer.model.to("cpu").eval()
    task = calibrated(model)
    if bundle_path is not None and trainer.best_state is not None:
        i = history["epoch"].index(trainer.best_epoch)
        best = {
            k: v[i]
            for k, v in history.items()
            if isinstance(v, list) and len(v) == len(history["epoch"]) and k != "epoch"
        }
        save_bundle(bundle_path, model, task, history, seed=seed, training=settings, metrics=best)
    result = TrainResult(model, history, bundle_path, validation, settings)
    result.task = task  # the calibrated task (reference mass set)
    return result


def crop_trainer(image_paths: Sequence[str], crop_texts: Sequence[str], channel: int | str | None = None):
    """A function with :func:`~napari_deeptrack.train.train_task`'s signature that trains a
    self-supervised task from the crops ``crop_texts`` (``"y0,x0,y1,x1"`` or ``"frame,y0,x0,y1,x1"``)
    of the frames read from ``image_paths`` (used by ``napari-deeptrack train ... --crop``).

    Several paths are read in order and their frames concatenated (frame numbers in the crops count
    over all of them).
    """

    def run(
        task,
        out=None,
        *,
        epochs=None,
        steps_per_epoch=None,
        batch_size=None,
        lr=None,
        device="cpu",
        seed=None,
        init=None,
        callbacks=(),
        stop_flag=None,
        max_seconds=None,
        **_ignored,
    ):
        from ..io.images import read_images

        if task.loss.get("type") != "lodestar":
            raise ValueError(
                f"--crop and IMAGE are for self-supervised tasks (e.g. particles-selfsupervised); task "
                f"{task.name!r} trains on simulated images: drop them"
            )
        if not image_paths or not crop_texts:
            raise ValueError(
                f"task {task.name!r} is self-supervised: it learns from your own image, so give the IMAGE "
                "and at least one --crop y0,x0,y1,x1 drawn around a single object"
            )
        frames = []
        for p in image_paths:
            img, meta = read_images(p, channel=channel)
            if frames and img.shape[1:] != frames[0].shape[1:]:
                raise ValueError(
                    f"{p}: frames of {img.shape[1:]} px; the first image has {frames[0].shape[1:]}"
                )
            frames.append(img)
        images = np.concatenate(frames) if len(frames) > 1 else frames[0]
        return train_selfsupervised(
            task,
            images,
            [parse_crop(c) for c in crop_texts],
            out,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device="cpu" if device == "auto" else device,
            init=init,
            callbacks=callbacks,
            stop_flag=stop_flag,
            max_seconds=max_seconds,
        )

    return run
