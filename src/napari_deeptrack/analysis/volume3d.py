"""z-binned volumes to 3D positions, without the edge bias of the plain centroid.

The 3D-tracking network outputs a volume ``[n_bins, H, W]`` in which every particle is a ball of
``radius_px`` (pixels in-plane, bins along z; see
:class:`~napari_deeptrack.sim.targets.ZBinnedVolume`). The paper reads z as the centroid of the
ball and notes a bias near the ends of the z range: a ball that sticks out of the volume is cut, and
the centroid of the part that is left is pulled towards the inside.

Here the in-plane position comes from the maximum projection along z (a cut ball still projects to
a disk centred on the particle), and z comes from fitting the known ball profile: for each particle
the voxels around it are compared with a soft-edged ball ``clip(radius + 0.5 - distance, 0, 1)``
centred at (u, y, x), and u (the continuous bin coordinate) is chosen to minimise the squared
difference, with a free amplitude. Only voxels inside the volume enter the comparison, so a cut
ball is compared with a cut model and its centre is found even when it lies in the first or last
bin, or slightly outside the range. ``method="centroid"`` gives the paper's estimate for
comparison. Everything is vectorised over particles and candidate z values.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..sim.params import check_range
from ..sim.targets import bin_to_z
from .detect import detect_from_map, empty_detections

__all__ = ["positions_from_volume", "z_from_volume"]


def _as_volume_stack(volume) -> np.ndarray:
    if hasattr(volume, "detach"):
        volume = volume.detach().cpu().numpy()
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim == 3:
        return v[None]
    if v.ndim == 4:
        return v
    raise ValueError(f"volume must be [n_bins, H, W] or [T, n_bins, H, W], got shape {v.shape}")


def _patches(vol: np.ndarray, frame, y, x, radius_px: float):
    """Voxel patches [D, n_bins, P, P] around (y, x), in-plane offsets squared and an in-frame mask."""
    _, nb, h, w = vol.shape
    half = int(math.ceil(radius_px)) + 1
    off = np.arange(-half, half + 1)
    iy = np.round(y).astype(np.int64)[:, None] + off[None, :]
    ix = np.round(x).astype(np.int64)[:, None] + off[None, :]
    inside = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :]
    d2 = (iy - y[:, None])[:, :, None] ** 2 + (ix - x[:, None])[:, None, :] ** 2
    t = np.asarray(frame, dtype=np.int64)[:, None, None, None]
    kk = np.arange(nb)[None, :, None, None]
    vals = vol[t, kk, np.clip(iy, 0, h - 1)[:, None, :, None], np.clip(ix, 0, w - 1)[:, None, None, :]]
    # only the particle's own column of voxels: in-plane distance up to radius + 1
    use = inside & (d2 <= (radius_px + 1.0) ** 2)
    return vals * use[:, None], d2, use


def _soft_ball(u: torch.Tensor, d2: torch.Tensor, nb: int, radius_px: float) -> torch.Tensor:
    """Soft ball model [D, C, nb, P, P] for candidates ``u [D, C]`` and offsets ``d2 [D, P, P]``."""
    k = torch.arange(nb, dtype=u.dtype)
    dz2 = (k[None, None, :] - u[..., None]) ** 2  # [D, C, nb]
    dist = torch.sqrt(dz2[..., None, None] + d2[:, None, None])
    return (radius_px + 0.5 - dist).clamp(0.0, 1.0)


def _score(cands, v, d2, use, nb: int, radius_px: float) -> torch.Tensor:
    """<V, M>^2 / <M, M> per candidate: maximising it minimises the residual with a free amplitude."""
    m = _soft_ball(cands, d2, nb, radius_px) * use
    vm = (m * v[:, None]).sum(dim=(-3, -2, -1))
    mm = (m * m).sum(dim=(-3, -2, -1)).clamp_min(1e-12)
    return vm * vm.clamp_min(0) / mm


def _fit_u(
    vals: np.ndarray, d2: np.ndarray, use: np.ndarray, radius_px: float, chunk: int = 16
) -> np.ndarray:
    """Least-squares ball centre along z (bins) for every patch; amplitude free, coarse-to-fine grid."""
    d_all, nb = vals.shape[0], vals.shape[1]
    out = np.empty(d_all)
    lo, hi = -radius_px, nb - 1 + radius_px
    coarse = torch.arange(lo, hi + 1e-9, 0.125, dtype=torch.float64)
    fine_off = torch.linspace(-0.125, 0.125, 51, dtype=torch.float64)
    for s in range(0, d_all, chunk):
        v = torch.from_numpy(vals[s : s + chunk])
        dd = torch.from_numpy(d2[s : s + chunk]).to(torch.float64)
        m_use = torch.from_numpy(use[s : s + chunk])[:, None, None]  # [D,1,1,P,P]

        c = coarse[None].expand(v.shape[0], -1)
        best = c.gather(1, _score(c, v, dd, m_use, nb, radius_px).argmax(dim=1, keepdim=True))
        cf = (best + fine_off[None]).clamp(lo, hi)
        sc = _score(cf, v, dd, m_use, nb, radius_px)
        i = sc.argmax(dim=1, keepdim=True)
        # parabolic interpolation between fine-grid neighbours
        i0 = i.clamp(1, cf.shape[1] - 2)
        s_m, s_0, s_p = sc.gather(1, i0 - 1), sc.gather(1, i0), sc.gather(1, i0 + 1)
        den = s_m - 2 * s_0 + s_p
        step = float(fine_off[1] - fine_off[0])
        frac = torch.where(den < 0, 0.5 * (s_m - s_p) / den.where(den != 0, torch.ones_like(den)), 0.0)
        u = cf.gather(1, i0) + frac.clamp(-0.5, 0.5) * step
        out[s : s + chunk] = u[:, 0].numpy()
    return out


def z_from_volume(
    volume,
    detections: pd.DataFrame,
    radius_px: float,
    method: str = "fit",
) -> np.ndarray:
    """Continuous bin coordinate u of each detection (bin k's centre is at k).

    Parameters
    ----------
    volume : array [n_bins, H, W] or [T, n_bins, H, W]
    detections : DataFrame
        ``frame, y, x`` of the particles (e.g. from the maximum projection).
    radius_px : float
        Ball radius of the target (pixels / bins).
    method : {"fit", "centroid"}
        Least-squares ball fit (unbiased at the ends of the z range) or the plain centroid of the
        voxels around the particle (the paper's estimate, biased towards the inside near the ends).
    """
    check_range("radius_px", radius_px, 0.0, None, low_inclusive=False)
    if method not in ("fit", "centroid"):
        raise ValueError(f"method must be 'fit' or 'centroid', got {method!r}")
    vol = _as_volume_stack(volume)
    if len(detections) == 0:
        return np.zeros(0)
    y = detections["y"].to_numpy(np.float64)
    x = detections["x"].to_numpy(np.float64)
    frame = detections["frame"].to_numpy(np.int64) if "frame" in detections else np.zeros(len(y), np.int64)
    vals, d2, use = _patches(vol, frame, y, x, float(radius_px))
    if method == "centroid":
        k = np.arange(vol.shape[1])[None, :, None, None]
        w = np.clip(vals, 0, None)
        return (w * k).sum(axis=(1, 2, 3)) / np.clip(w.sum(axis=(1, 2, 3)), 1e-12, None)
    return _fit_u(vals, d2, use, float(radius_px))


def positions_from_volume(
    volume,
    z_min_um: float,
    z_max_um: float,
    radius_px: float,
    threshold: float = 0.5,
    method: str = "fit",
    **detect_kwargs,
) -> pd.DataFrame:
    """3D positions from z-binned volumes.

    Parameters
    ----------
    volume : array [n_bins, H, W] or [T, n_bins, H, W]
        Per-voxel probabilities (network output after the sigmoid) or the target itself.
    z_min_um, z_max_um : float
        z range covered by the bins (as in the target).
    radius_px : float
        Ball radius of the target.
    threshold : float
        Detection threshold on the maximum projection along z.
    method : {"fit", "centroid"}
        See :func:`z_from_volume`.
    **detect_kwargs
        Passed to :func:`~napari_deeptrack.analysis.detect.detect_from_map`.

    Returns
    -------
    DataFrame
        ``frame, y, x, z_um, z_bin, probability, area``; ``z_bin`` is the continuous bin coordinate.
    """
    if not float(z_min_um) < float(z_max_um):
        raise ValueError(f"z_min_um ({z_min_um}) must be < z_max_um ({z_max_um})")
    vol = _as_volume_stack(volume)
    det = detect_from_map(vol.max(axis=1), threshold, **detect_kwargs)
    if len(det) == 0:
        out = empty_detections(["z_um", "z_bin"])
        return out[["frame", "y", "x", "z_um", "z_bin", "probability", "area"]]
    u = z_from_volume(vol, det, radius_px, method)
    nb = vol.shape[1]
    z = bin_to_z(torch.from_numpy(u), z_min_um, z_max_um, nb).numpy()
    det.insert(3, "z_um", z)
    det.insert(4, "z_bin", u)
    return det
