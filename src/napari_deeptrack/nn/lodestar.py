"""LodeSTAR-style self-supervised detector: a small CNN that lets every (reduced-resolution) pixel vote
for the position of the object it sees, and the extraction of positions from those votes.

The idea (Midtvedt et al., Nat. Commun. 2022, "Single-shot self-supervised object detection in
microscopy") in our own implementation: the network maps an image ``[B, C, H, W]`` to three maps at
``1 / stride`` of the resolution, ``(dy, dx, logit)``. Output cell ``(i, j)`` covers the input pixels
``stride * i ... stride * i + stride - 1``; its *vote* is the absolute position

    ``y = stride * i + (stride - 1) / 2 + stride * dy``   (likewise x),

in pixels of the input (centre of the top-left pixel at 0), and its *weight* is ``sigmoid(logit)``.
On a crop showing one object the weighted mean of the votes is the object's position
(:func:`crop_positions`); the network is trained so that this estimate moves with the object under
translations, flips and rotations (``train/selfsupervised.py``). On a whole frame the votes pile up on
the objects: :func:`vote_map` accumulates the weights at the voted positions, and
:func:`locate_from_votes` finds the piles, refines each position as the weighted mean of the votes
it received (sub-pixel) and reports its *mass*, the summed weight of those votes (proportional to how
much of the object the network saw: it separates populations of different sizes or brightness).

Everything here is plain torch / numpy (no napari, no pandas); ``analysis`` turns the arrays into a
detection table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model, store_config

__all__ = [
    "LodeSTAR",
    "crop_positions",
    "describe",
    "detect_frames",
    "frame_votes",
    "locate_from_votes",
    "vote_map",
    "votes",
]


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


@register_model
class LodeSTAR(nn.Module):
    """Fully convolutional vote network: ``[B, C, H, W]`` -> ``[B, 3, H / stride, W / stride]``.

    Parameters
    ----------
    in_channels : int
        Image channels.
    channels : list of int
        Width of the 3x3 convolutions at full resolution (before the first pooling).
    pooled_channels : list of int
        Width of the 3x3 convolutions after each 2x2 max-pooling (one block per pooling level).
    pools : int
        Number of 2x2 max-poolings (the output has ``1 / 2**pools`` of the resolution).
    binning : int
        The input is first averaged over ``binning x binning`` blocks (large objects: nuclei, cells),
        so the receptive field covers the whole object at a modest cost.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: list[int] | tuple[int, ...] = (32, 32),
        pooled_channels: list[int] | tuple[int, ...] = (64, 64, 64),
        pools: int = 1,
        binning: int = 1,
    ):
        super().__init__()
        store_config(self, locals())
        if int(pools) < 0 or int(binning) < 1:
            raise ValueError(f"pools must be >= 0 and binning >= 1, got {pools}, {binning}")
        if not channels or not pooled_channels:
            raise ValueError("channels and pooled_channels need at least one entry each")
        self.binning, self.pools = int(binning), int(pools)
        layers: list[nn.Module] = []
        c = int(in_channels)
        for w in channels:
            layers.append(_conv(c, int(w)))
            c = int(w)
        for _ in range(self.pools):
            layers.append(nn.MaxPool2d(2))
            for w in pooled_channels:
                layers.append(_conv(c, int(w)))
                c = int(w)
        if self.pools == 0:
            for w in pooled_channels:
                layers.append(_conv(c, int(w)))
                c = int(w)
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 3, 1)

    @property
    def stride(self) -> int:
        """Input pixels per output cell along each axis."""
        return self.binning * 2**self.pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binning > 1:
            x = F.avg_pool2d(x, self.binning)
        return self.head(self.features(x))


def _stride_of(out: torch.Tensor, input_shape: tuple[int, int] | None, stride: int | None) -> int:
    if stride is not None:
        return int(stride)
    if input_shape is None:
        raise ValueError("give the model stride or the input shape")
    return max(1, int(round(input_shape[-1] / out.shape[-1])))


def votes(out: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes of every output cell: positions ``[B, 2, h, w]`` (y, x in input px), weights ``[B, h, w]``."""
    if out.dim() != 4 or out.shape[1] != 3:
        raise ValueError(f"LodeSTAR output must be [B, 3, h, w], got {tuple(out.shape)}")
    s = float(stride)
    h, w = out.shape[-2:]
    gy = torch.arange(h, device=out.device, dtype=out.dtype) * s + (s - 1) / 2
    gx = torch.arange(w, device=out.device, dtype=out.dtype) * s + (s - 1) / 2
    pos = torch.stack([gy[:, None] + s * out[:, 0], gx[None, :] + s * out[:, 1]], dim=1)  # [B, 2, h, w]
    return pos, torch.sigmoid(out[:, 2])


def crop_positions(out: torch.Tensor, stride: int) -> torch.Tensor:
    """Weighted mean of the votes of each image ``[B, 2]``: the object position when a crop shows one."""
    pos, w = votes(out, stride)
    wn = w / w.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (pos * wn[:, None]).sum(dim=(-2, -1))


@torch.no_grad()
def vote_map(pos: torch.Tensor, w: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """Accumulate the weights ``w [B, ...]`` at the voted positions ``pos [B, 2, ...]`` (bilinear
    splatting) into ``[B, H, W]``.

    Votes outside the image are dropped. The map's integral over an object's neighbourhood is its mass.
    """
    b = pos.shape[0]
    hh, ww = int(image_shape[0]), int(image_shape[1])
    pos = pos.float().reshape(b, 2, -1)
    py, px = pos[:, 0], pos[:, 1]
    wf = w.float().reshape(b, -1)
    y0, x0 = torch.floor(py), torch.floor(px)
    fy, fx = py - y0, px - x0
    acc = torch.zeros(b, hh * ww, dtype=torch.float32, device=pos.device)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = (y0 + dy).long(), (x0 + dx).long()
            ok = (yy >= 0) & (yy < hh) & (xx >= 0) & (xx < ww)
            idx = torch.where(ok, yy * ww + xx, torch.zeros_like(yy))
            acc.scatter_add_(1, idx, torch.where(ok, wf * wy * wx, torch.zeros_like(wf)))
    return acc.view(b, hh, ww)


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2 <= radius**2 + 1e-9).astype(np.float32)


def locate_from_votes(
    pos: torch.Tensor,
    w: torch.Tensor,
    image_shape: tuple[int, int],
    *,
    min_mass: float,
    radius_px: float = 2.0,
    min_distance_px: float = 3.0,
    iterations: int = 2,
) -> list[dict[str, np.ndarray]]:
    """Object positions and masses from the network output on whole frames.

    Parameters
    ----------
    pos, w : Tensor [T, 2, ...], [T, ...]
        Voted positions (y, x in input pixels) and weights (:func:`votes`, :func:`frame_votes`).
    image_shape : (H, W)
        Size of the input frames.
    min_mass : float
        Keep objects whose summed vote weight within ``radius_px`` is at least this.
    radius_px : float
        Votes within this distance of a pile belong to it (position refinement and mass).
    min_distance_px : float
        Piles closer than this are one object (the lighter one is dropped).
    iterations : int
        Mean-shift refinements of each position (weighted mean of the votes within ``radius_px``).

    Returns
    -------
    list of dict per frame with ``y``, ``x``, ``mass`` (and ``spread``, the weighted RMS distance of
    the votes from the position, px: low for a consistent object).
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    if not radius_px > 0 or not min_distance_px > 0:
        raise ValueError(f"radius_px and min_distance_px must be > 0, got {radius_px}, {min_distance_px}")
    hh, ww = int(image_shape[0]), int(image_shape[1])
    vm = vote_map(pos, w, (hh, ww)).cpu().numpy()
    pos_np = pos.float().cpu().numpy().reshape(pos.shape[0], 2, -1)
    w_np = w.float().cpu().numpy().reshape(w.shape[0], -1)
    disk = _disk(radius_px)
    size = 2 * int(np.floor(min_distance_px)) + 1
    results = []
    for t in range(vm.shape[0]):
        mass_map = ndimage.convolve(vm[t], disk, mode="constant")
        peaks = (mass_map == ndimage.maximum_filter(mass_map, size=size, mode="constant")) & (
            mass_map >= min_mass
        )
        cand = np.argwhere(peaks).astype(np.float64)
        p = pos_np[t].T  # [N, 2]
        wt = w_np[t]
        keep = wt > 1e-6 * max(float(wt.max(initial=0.0)), 1e-30)
        p, wt = p[keep], wt[keep]
        empty = {k: np.zeros(0) for k in ("y", "x", "mass", "spread")}
        if len(cand) == 0 or len(p) == 0:
            results.append(empty)
            continue
        tree = cKDTree(p)
        cur = cand
        for _ in range(max(1, int(iterations))):
            cur, mass, spread = _refine(tree, p, wt, cur, radius_px)
        ok = mass >= min_mass
        cur, mass, spread = cur[ok], mass[ok], spread[ok]
        # merge piles that converged onto the same object: keep the heaviest
        order = np.argsort(-mass)
        cur, mass, spread = cur[order], mass[order], spread[order]
        taken = np.zeros(len(cur), bool)
        sel = []
        if len(cur):
            ctree = cKDTree(cur)
            for i in range(len(cur)):
                if taken[i]:
                    continue
                sel.append(i)
                for j in ctree.query_ball_point(cur[i], r=min_distance_px):
                    taken[j] = True
        sel = np.asarray(sel, dtype=np.int64)
        cur, mass, spread = cur[sel], mass[sel], spread[sel]
        inside = (cur[:, 0] >= -0.5) & (cur[:, 0] <= hh - 0.5) & (cur[:, 1] >= -0.5) & (cur[:, 1] <= ww - 0.5)
        cur, mass, spread = cur[inside], mass[inside], spread[inside]
        o = np.lexsort((cur[:, 1], cur[:, 0])) if len(cur) else np.zeros(0, np.int64)
        results.append({"y": cur[o, 0], "x": cur[o, 1], "mass": mass[o], "spread": spread[o]})
    return results


def _refine(tree, p: np.ndarray, wt: np.ndarray, centres: np.ndarray, radius: float):
    """One mean-shift step: weighted mean, summed weight and RMS spread of the votes near each centre."""
    n = len(centres)
    sy, sx, sw, s2 = (np.zeros(n) for _ in range(4))
    lists = tree.query_ball_point(centres, r=radius)
    lens = np.fromiter((len(li) for li in lists), dtype=np.int64, count=n)
    if lens.sum():
        owner = np.repeat(np.arange(n), lens)
        idx = np.concatenate([np.asarray(li, dtype=np.int64) for li in lists if len(li)])
        ww = wt[idx]
        sw = np.bincount(owner, ww, minlength=n)
        sy = np.bincount(owner, ww * p[idx, 0], minlength=n)
        sx = np.bincount(owner, ww * p[idx, 1], minlength=n)
    safe = np.maximum(sw, 1e-30)
    new = np.where(sw[:, None] > 0, np.stack([sy / safe, sx / safe], 1), centres)
    if lens.sum():
        d2 = ((p[idx] - new[owner]) ** 2).sum(1)
        s2 = np.bincount(owner, ww * d2, minlength=n)
    return new, sw, np.sqrt(s2 / safe)


def describe(model: LodeSTAR) -> dict[str, Any]:
    """Stride and receptive field (input pixels) of a :class:`LodeSTAR` model, for messages and docs."""
    rf, jump = model.binning, model.binning
    for m in model.features:
        if isinstance(m, nn.MaxPool2d):
            rf += jump
            jump *= 2
        elif isinstance(m, nn.Sequential):
            rf += 2 * jump
    return {"stride": model.stride, "receptive_field_px": int(rf)}


@torch.no_grad()
def frame_votes(
    model: torch.nn.Module, x: torch.Tensor, dihedral: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes ``pos [B, 2, N]``, ``w [B, N]`` of a :class:`LodeSTAR` on normalised frames ``[B, C, H, W]``.

    Frames are padded (edge values) to a multiple of the stride. With ``dihedral`` the model also
    runs on the 7 other flips / transpositions of each frame, every vote is mapped back to the
    original frame and all votes are pooled with weight 1/8 each (test-time augmentation: averages
    out the part of the network's error that does not follow the symmetry; objects must look the
    same flipped, which holds for spots, rings and blobs of random orientation).
    """
    stride = int(getattr(model, "stride", 1))
    h, w = x.shape[-2:]
    ops = [(t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)]
    poss, ws = [], []
    for t, fy, fx in ops if dihedral else ops[:1]:
        xt = x.transpose(-1, -2) if t else x
        dims = [d for d, f in ((-2, fy), (-1, fx)) if f]
        xt = xt.flip(dims) if dims else xt
        ht, wt = xt.shape[-2:]
        ph, pw = (-ht) % stride, (-wt) % stride
        if ph or pw:
            xt = F.pad(xt, (0, pw, 0, ph), mode="replicate")
        p, wgt = votes(model(xt.contiguous()).float(), stride)
        p = p.reshape(len(x), 2, -1).clone()
        if fy:
            p[:, 0] = ht - 1 - p[:, 0]
        if fx:
            p[:, 1] = wt - 1 - p[:, 1]
        if t:
            p = p.flip(1)
        poss.append(p)
        ws.append(wgt.reshape(len(x), -1))
    scale = 1.0 / len(poss)
    return torch.cat(poss, 2), torch.cat(ws, 1) * scale


@torch.no_grad()
def detect_frames(
    model: torch.nn.Module,
    images: torch.Tensor,
    postprocess: dict[str, Any],
    threshold: float | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run a trained :class:`LodeSTAR` on normalised frames ``[T, C, H, W]`` and locate the objects.

    ``postprocess`` holds ``reference_mass`` (the mass of one training object, set by training),
    ``threshold`` (default when ``threshold`` is None: keep piles of at least this fraction of the
    reference mass), ``radius_px`` and ``min_distance_px`` (:func:`locate_from_votes`), and
    ``test_time_augmentation`` (``dihedral``: pool the votes of the 8 flips / transpositions,
    :func:`frame_votes`).

    Returns
    -------
    table : dict of arrays
        ``frame, y, x, mass, spread, probability`` — ``probability`` is the mass relative to the
        reference object's, clipped to 1 (a confidence for display and thresholds, not a calibrated
        probability).
    vote_maps : ndarray [T, 1, H, W]
        The accumulated votes (for display).
    """
    ref = postprocess.get("reference_mass")
    if ref is None or not float(ref) > 0:
        raise ValueError(
            "this self-supervised bundle has no reference_mass in its postprocess; it was not trained to "
            "the end (train it again with train_selfsupervised / `train ... --crop`)"
        )
    thr = float(threshold if threshold is not None else postprocess.get("threshold", 0.5))
    if not 0 < thr <= 10:
        raise ValueError(f"threshold (fraction of the reference mass) must lie in (0, 10], got {thr}")
    dev = torch.device(device)
    model.eval().to(dev)
    t_n, _, h, w = images.shape
    dihedral = postprocess.get("test_time_augmentation", "none") in ("dihedral", True)
    cols: dict[str, list] = {k: [] for k in ("frame", "y", "x", "mass", "spread")}
    maps = []
    for i in range(0, t_n, max(1, int(batch_size))):
        pos, wgt = frame_votes(model, images[i : i + batch_size].to(dev), dihedral)
        pos, wgt = pos.cpu(), wgt.cpu()
        maps.append(vote_map(pos, wgt, (h, w)).numpy())
        found = locate_from_votes(
            pos,
            wgt,
            (h, w),
            min_mass=thr * float(ref),
            radius_px=float(postprocess.get("radius_px", 2.0)),
            min_distance_px=float(postprocess.get("min_distance_px", 3.0)),
        )
        for k, f in enumerate(found):
            cols["frame"].append(np.full(len(f["y"]), i + k, dtype=np.int64))
            for key in ("y", "x", "mass", "spread"):
                cols[key].append(f[key])
    table = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    table["frame"] = table["frame"].astype(np.int64)
    table["probability"] = np.minimum(table["mass"] / float(ref), 1.0)
    return table, np.concatenate(maps)[:, None]
