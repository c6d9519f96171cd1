"""Density maps to counts and positions.

A counting network (the paper's cell-counting study) outputs a density map in which every object is
a Gaussian of width ``sigma_px`` whose pixel values sum to one, so the integral of the map is the
number of objects (:func:`counts_from_density`), and the Gaussians' peaks are their positions
(:func:`peaks_from_density`). Peaks are refined to sub-pixel accuracy with a three-point Gaussian
fit (a parabola through the logarithm of the peak pixel and its neighbours), exact for an isolated
sampled Gaussian.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

from ..sim.params import check_range
from .detect import as_stack, empty_detections

__all__ = ["counts_from_density", "peaks_from_density"]


def counts_from_density(density_map, roi: tuple[slice, slice] | None = None) -> np.ndarray:
    """Number of objects per frame: the integral (pixel sum) of the density map.

    Parameters
    ----------
    density_map : array [H, W] or [T, H, W]
    roi : (slice, slice) or None
        Count only inside this region (rows, columns).

    Returns
    -------
    ndarray [T] float64
        Counts are not rounded: the fractional part tells how sure the network is.
    """
    stack, _ = as_stack(density_map, "density_map")
    if roi is not None:
        stack = stack[(slice(None), *roi)]
    return stack.sum(axis=(1, 2))


def peaks_from_density(
    density_map,
    sigma_px: float,
    threshold: float | None = None,
    min_distance_px: float | None = None,
) -> pd.DataFrame:
    """Positions of the objects in a density map: its local maxima, refined to sub-pixel accuracy.

    Parameters
    ----------
    density_map : array [H, W] or [T, H, W]
    sigma_px : float
        Width of one object's Gaussian (the :class:`~napari_deeptrack.sim.targets.DensityMap` sigma).
    threshold : float or None
        Smallest peak value; default half the peak of an isolated object, ``0.5 / (2 pi sigma^2)``.
    min_distance_px : float or None
        Smallest distance between two peaks; default ``sigma_px``.

    Returns
    -------
    DataFrame
        ``frame, y, x, probability, area, mass``: ``probability`` is the peak value relative to an
        isolated object's peak (clipped to 1), ``area`` the pixels above ``threshold`` within
        ``2 sigma`` and ``mass`` the map's integral within ``2 sigma`` (about 0.86 for one object).
    """
    check_range("sigma_px", sigma_px, 0.0, None, low_inclusive=False)
    stack, _ = as_stack(density_map, "density_map")
    peak1 = 1.0 / (2.0 * math.pi * sigma_px * sigma_px)
    threshold = 0.5 * peak1 if threshold is None else float(threshold)
    check_range("threshold", threshold, 0.0, None, low_inclusive=False)
    md = float(sigma_px if min_distance_px is None else min_distance_px)
    check_range("min_distance_px", md, 0.0, None, low_inclusive=False)
    r = max(int(math.floor(md)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    fp = ((yy * yy + xx * xx) <= max(md, 1.0) ** 2)[None]
    mx = ndimage.maximum_filter(stack, footprint=fp, mode="constant", cval=-np.inf)
    peaks = (stack == mx) & (stack > threshold)
    t, i, j = np.nonzero(peaks)
    if len(t) == 0:
        return empty_detections(["mass"])
    h, w = stack.shape[1:]
    # three-point Gaussian refinement along y and x (log-parabola), clamped to half a pixel
    logs = np.log(np.clip(stack, 1e-30, None))

    def refine(axis_len, idx, minus, centre, plus):
        den = minus - 2 * centre + plus
        off = np.where(np.abs(den) > 1e-12, 0.5 * (minus - plus) / np.where(den == 0, 1, den), 0.0)
        edge = (idx == 0) | (idx == axis_len - 1)
        return np.where(edge, 0.0, np.clip(off, -0.5, 0.5))

    c = logs[t, i, j]
    ym = logs[t, np.clip(i - 1, 0, h - 1), j]
    yp = logs[t, np.clip(i + 1, 0, h - 1), j]
    xm = logs[t, i, np.clip(j - 1, 0, w - 1)]
    xp = logs[t, i, np.clip(j + 1, 0, w - 1)]
    y = i + refine(h, i, ym, c, yp)
    x = j + refine(w, j, xm, c, xp)
    # mass and area within 2 sigma (vectorised over peaks with a patch gather)
    half = int(math.ceil(2 * sigma_px))
    off = np.arange(-half, half + 1)
    py = i[:, None, None] + off[None, :, None]
    px = j[:, None, None] + off[None, None, :]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    near = ((py - y[:, None, None]) ** 2 + (px - x[:, None, None]) ** 2) <= (2 * sigma_px) ** 2
    vals = stack[t[:, None, None], np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]
    sel = inside & near
    mass = (vals * sel).sum(axis=(1, 2))
    area = ((vals > threshold) & sel).sum(axis=(1, 2))
    df = pd.DataFrame(
        {
            "frame": t.astype(np.int64),
            "y": y.astype(np.float64),
            "x": x.astype(np.float64),
            "probability": np.clip(stack[t, i, j] / peak1, 0.0, 1.0),
            "area": area.astype(np.float64),
            "mass": mass,
        }
    )
    return df.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)
