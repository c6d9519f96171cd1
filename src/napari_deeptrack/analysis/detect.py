"""Probability or mask maps to detections: positions with sub-pixel accuracy, probability and area.

A detection network (DeepTrack's U-Net) outputs, per pixel, the probability that the pixel lies
within a few pixels of a particle centre. :func:`detect_from_map` turns such maps into a table with
one row per particle: ``frame, y, x, probability, area``.

Two ways to find particles:

- ``method="components"`` (default): pixels above ``threshold`` are grouped into connected
  components (8-connectivity); each component is one particle.
- ``method="maxima"``: local maxima of the map above ``threshold``, at least ``min_distance_px``
  apart; each maximum is one particle (separates touching disks).

Sub-pixel position: the probability-weighted centroid of the particle's *support*, which is the
component (or the window around the maximum) grown by ``support_px`` pixels into pixels whose value
is above ``support_threshold``. Growing the region matters: a disk rendered with a soft edge has
fractional edge pixels below the decision threshold, and leaving them out quantises the centroid
(up to a quarter pixel for a radius-3 disk); with them the centroid is the disk centre to a few
hundredths of a pixel.

Optional brightness filters (like trackpy's ``minmass``; both off by default):

- ``min_mass``: drop detections whose *mass*, the summed probability over the detection's support,
  is lower (adds a ``mass`` column). Faint noise clusters give small, weak blobs.
- ``image`` + ``min_signal``: ``signal`` is the sum of ``image`` (for instance the network input,
  normalised so that the background is 0 and the noise sigma 1) over a disk of ``signal_radius_px``
  around the detection (adds a ``signal`` column); detections with less are dropped. This is the
  background-subtracted integrated intensity in noise units, so a threshold tuned on frames of known
  brightness removes noise clusters that the network flags at high SNR. ``min_signal="auto"`` chooses
  the cut per frame (:func:`adaptive_min_signal`) from a noise model measured on object-free images
  (what ``train_task`` stores in a detection bundle, see ``analysis.tune_detection``).

Pixel convention: the centre of the top-left pixel is (y, x) = (0, 0). All frames are processed
together (no Python loop over frames).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from ..sim.params import check_range

__all__ = ["DETECTION_COLUMNS", "adaptive_min_signal", "as_stack", "detect_from_map", "empty_detections"]

#: Columns of every detection table, in order.
DETECTION_COLUMNS = ["frame", "y", "x", "probability", "area"]


def empty_detections(extra: list[str] | None = None) -> pd.DataFrame:
    """An empty detection table with the standard columns (and ``extra`` ones)."""
    cols = DETECTION_COLUMNS + list(extra or [])
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "frame" else "float64") for c in cols})


def as_stack(array, name: str = "prob_map") -> tuple[np.ndarray, bool]:
    """``[H, W]`` or ``[T, H, W]`` (numpy or torch) to a float ``[T, H, W]`` array; also whether it was 2D."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.ndim == 2:
        return a[None].astype(np.float64, copy=False), True
    if a.ndim == 3:
        return a.astype(np.float64, copy=False), False
    raise ValueError(f"{name} must be [H, W] or [T, H, W], got shape {a.shape}")


def _plane_structure(connectivity: int) -> np.ndarray:
    """3D structuring element that connects pixels within a frame only (never across frames)."""
    s2 = ndimage.generate_binary_structure(2, connectivity)
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = s2
    return s


def _grow(labels: np.ndarray, stack: np.ndarray, support_px: float, support_threshold: float) -> np.ndarray:
    """Grow labels by ``support_px`` px in-plane (nearest label wins) into pixels > ``support_threshold``."""
    if support_px <= 0:
        return labels
    # Distance in-plane only: a huge sampling along the frame axis keeps frames apart.
    dist, (it, iy, ix) = ndimage.distance_transform_edt(
        labels == 0, sampling=(1e6, 1.0, 1.0), return_indices=True
    )
    grown = labels[it, iy, ix]
    keep = (labels > 0) | ((dist <= support_px) & (stack > support_threshold))
    return np.where(keep, grown, 0)


def _table(frame, y, x, prob, area, extra: dict | None = None) -> pd.DataFrame:
    data = {
        "frame": np.asarray(frame, dtype=np.int64),
        "y": np.asarray(y, dtype=np.float64),
        "x": np.asarray(x, dtype=np.float64),
        "probability": np.asarray(prob, dtype=np.float64),
        "area": np.asarray(area, dtype=np.float64),
    }
    data.update(extra or {})
    df = pd.DataFrame(data)
    return df.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)


def _weighted_centroids(stack: np.ndarray, support: np.ndarray, n: int, weight_floor: float):
    """Weighted centroids (frame, y, x) of labels 1..n of ``support`` with weights ``stack - floor``."""
    idx = np.arange(1, n + 1)
    w = np.clip(stack - weight_floor, 0.0, None) * (support > 0)
    t, yy, xx = np.indices(stack.shape, dtype=np.float64, sparse=True)
    sw = ndimage.sum_labels(w, support, idx)
    sw = np.where(sw > 0, sw, np.nan)
    cy = ndimage.sum_labels(w * yy, support, idx) / sw
    cx = ndimage.sum_labels(w * xx, support, idx) / sw
    ct = ndimage.minimum(np.broadcast_to(t, stack.shape), support, idx)
    return np.asarray(ct), np.asarray(cy), np.asarray(cx)


def detect_from_map(
    prob_map,
    threshold: float = 0.5,
    method: str = "components",
    min_distance_px: float = 3.0,
    min_area_px: float = 0.0,
    support_px: float = 1.5,
    support_threshold: float | None = None,
    weight_floor: float = 0.0,
    connectivity: int = 2,
    exclude_border_px: float = 0.0,
    min_mass: float | None = None,
    image=None,
    min_signal: float | str | None = None,
    signal_radius_px: float = 3.0,
    noise_model: dict | None = None,
) -> pd.DataFrame:
    """Detections from probability (or mask) maps.

    Parameters
    ----------
    prob_map : array [H, W] or [T, H, W]
        Per-pixel probability (e.g. sigmoid of the network output) or a 0/1 mask.
    threshold : float
        Decision threshold in (0, 1]; pixels above it belong to a particle.
    method : {"components", "maxima"}
        Connected components of the thresholded map, or local maxima at least ``min_distance_px``
        apart (use "maxima" when particles touch).
    min_distance_px : float
        ``method="maxima"``: smallest distance between two particles; also the radius of the window
        whose pixels form a maximum's support.
    min_area_px : float
        Detections whose area (pixels above ``threshold``) is smaller are dropped.
    support_px : float
        The region used for the centroid is grown by this many pixels (in-plane) into pixels above
        ``support_threshold``. 0 uses only pixels above ``threshold``.
    support_threshold : float or None
        Lowest value of a pixel included in the centroid; default ``threshold / 10``.
    weight_floor : float
        Centroid weights are ``max(p - weight_floor, 0)``; a floor at the background level of a map
        removes the pull of a uniform background towards the window centre.
    connectivity : {1, 2}
        Pixel connectivity of components: 1 (edges) or 2 (edges and corners).
    exclude_border_px : float
        Detections whose centre is closer than this to the image border are dropped.
    min_mass : float or None
        If given, a ``mass`` column (summed probability over the detection's support) is added and
        detections with a smaller mass are dropped (0 keeps all).
    image : array [H, W] or [T, H, W], optional
        Image of the same shape as ``prob_map`` (e.g. the normalised network input, background 0);
        if given, a ``signal`` column is added: the sum of ``image`` within ``signal_radius_px`` of
        the detection's centre pixel.
    min_signal : float, "auto" or None
        Detections with a smaller ``signal`` are dropped (needs ``image``). ``"auto"``: chosen per
        frame by :func:`adaptive_min_signal` from the frame's own detections and ``noise_model``.
    signal_radius_px : float
        Radius of the disk over which ``signal`` is summed.
    noise_model : dict, optional
        For ``min_signal="auto"``: ``{"signals": [...], "pixels": n}``, the signals of the detections
        the same network and threshold make in ``n`` pixels of images without any object.

    Returns
    -------
    DataFrame
        ``frame, y, x, probability, area`` (+ ``mass`` / ``signal`` when asked for): frame index,
        centre in pixels, highest probability of the detection, and its number of pixels above
        ``threshold``. Sorted by frame, y, x.
    """
    check_range("threshold", threshold, 0.0, 1.0, low_inclusive=False)
    check_range("min_distance_px", min_distance_px, 0.0, None, low_inclusive=False)
    check_range("support_px", support_px, 0.0, None)
    check_range("min_area_px", min_area_px, 0.0, None)
    if method not in ("components", "maxima"):
        raise ValueError(f"method must be 'components' or 'maxima', got {method!r}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity}")
    check_range("signal_radius_px", signal_radius_px, 0.0, None)
    if min_mass is not None:
        check_range("min_mass", min_mass, 0.0, None)
    stack, _ = as_stack(prob_map)
    if not np.isfinite(stack).all():
        raise ValueError("prob_map contains NaN or infinite values")
    img = None
    if image is not None:
        img, _ = as_stack(image, "image")
        if img.shape != stack.shape:
            raise ValueError(f"image must have the shape of prob_map {stack.shape}, got {img.shape}")
    elif min_signal is not None:
        raise ValueError("min_signal needs image (the image the signal is measured in)")
    if isinstance(min_signal, str) and (min_signal != "auto" or not noise_model):
        raise ValueError(
            f"min_signal must be a number, None or 'auto' with a noise_model, got {min_signal!r}"
            + ("" if noise_model else " without noise_model")
        )
    extra_cols = (["mass"] if min_mass is not None else []) + (["signal"] if img is not None else [])
    support_threshold = threshold / 10.0 if support_threshold is None else float(support_threshold)
    above = stack > threshold
    if method == "components":
        labels, n = ndimage.label(above, structure=_plane_structure(connectivity))
        if n == 0:
            return empty_detections(extra_cols)
        idx = np.arange(1, n + 1)
        area = ndimage.sum_labels(above, labels, idx)
        prob = ndimage.maximum(stack, labels, idx)
        seeds = labels
    else:
        seeds, n, prob = _maxima_seeds(stack, above, float(min_distance_px))
        if n == 0:
            return empty_detections(extra_cols)
        # a maximum's own region: pixels above threshold within min_distance_px of it
        dist, (it, iy, ix) = ndimage.distance_transform_edt(
            seeds == 0, sampling=(1e6, 1.0, 1.0), return_indices=True
        )
        own = np.where(above & (dist <= min_distance_px), seeds[it, iy, ix], 0)
        idx = np.arange(1, n + 1)
        area = ndimage.sum_labels(own > 0, own, idx)
        seeds = own
    support = _grow(seeds, stack, float(support_px), support_threshold)
    frame, y, x = _weighted_centroids(stack, support, n, float(weight_floor))
    ok = np.isfinite(y) & (area >= float(min_area_px))
    if exclude_border_px > 0:
        h, w = stack.shape[1:]
        b = float(exclude_border_px)
        ok &= (y >= b - 0.5) & (y <= h - 0.5 - b) & (x >= b - 0.5) & (x <= w - 0.5 - b)
    extra = {}
    if min_mass is not None:
        mass = np.asarray(ndimage.sum_labels(stack, support, np.arange(1, n + 1)))
        ok &= mass >= float(min_mass)
        extra["mass"] = mass
    if img is not None:
        signal = _disk_sums(img, frame, y, x, float(signal_radius_px))
        if min_signal == "auto":
            h, w = stack.shape[1:]
            for f in np.unique(frame[ok]):
                sel = ok & (frame == f)
                cut = adaptive_min_signal(signal[sel], h * w, noise_model["signals"], noise_model["pixels"])
                ok &= (frame != f) | (signal >= cut)
        elif min_signal is not None:
            ok &= signal >= float(min_signal)
        extra["signal"] = signal
    extra = {k: v[ok] for k, v in extra.items()}
    return _table(frame[ok], y[ok], x[ok], np.asarray(prob)[ok], np.asarray(area)[ok], extra)


#: The noise-cluster rate used by :func:`adaptive_min_signal` is the measured one times this: measured
#: for one network (particles-2d) on object-free images at fixed backgrounds of 2, 5, 10 and 40 photons,
#: the rate was 3.8, 0.55, 2.4 and 1.7 per 256 x 256 frame, against 1.4 averaged over the training
#: backgrounds, so the average under-counts the noise of a given image by up to ~3x. Over-counting is
#: cheap (a cut is only made where the frame's detections are mostly noise-like), under-counting leaves
#: the noise clusters in.
NOISE_RATE_FACTOR = 3.0


def adaptive_min_signal(
    signals, n_pixels: int, noise_signals, noise_pixels: int, rate_factor: float = NOISE_RATE_FACTOR
) -> float:
    """The brightness cut (``min_signal``) of one frame's detections with the best *estimated* F1.

    The network flags some noise clusters in every image; how many, and how bright, is measured once
    on images without objects (``noise_signals`` in ``noise_pixels`` pixels, at the same threshold),
    so ``N(s)``, the expected number of noise detections with signal >= s in this frame, is known
    (times ``rate_factor``, :data:`NOISE_RATE_FACTOR`: the rate depends on the background level).
    With ``D(s)`` the frame's detections with signal >= s and ``T = D(-inf) - N(-inf)`` its estimated
    number of objects, a cut at ``s`` keeps about ``D(s) - N(s)`` objects and ``N(s)`` noise clusters:
    ``F1(s) = 2 (D(s) - N(s)) / (D(s) + T)``, maximised over the observed signals. Bright particles
    (signals far above the noise clusters') get a cut between the two populations; faint ones, whose
    signals overlap the noise clusters', get little or no cut: the same decision a trackpy user makes
    by looking at the mass histogram, per frame and without tuning.

    Returns
    -------
    float
        The cut (``-inf``: keep everything).
    """
    s = np.sort(np.asarray(signals, dtype=np.float64))
    if len(s) == 0 or noise_pixels <= 0:
        return -np.inf
    noise = np.sort(np.asarray(noise_signals, dtype=np.float64))
    scale = float(rate_factor) * float(n_pixels) / float(noise_pixels)
    d = len(s) - np.arange(len(s))  # detections with signal >= s[i]
    n = scale * (len(noise) - np.searchsorted(noise, s, side="left"))
    t = max(len(s) - scale * len(noise), 0.0)
    f1 = 2.0 * np.maximum(d - n, 0.0) / (d + t)
    i = int(np.argmax(f1))  # the first (lowest) cut among equals: keep what cannot be told apart
    return -np.inf if i == 0 else float(s[i])


def _disk_sums(img: np.ndarray, frame, y, x, radius: float) -> np.ndarray:
    """Sum of ``img`` [T, H, W] within ``radius`` px of each centre pixel (pixels outside count 0)."""
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = ((yy * yy + xx * xx) <= radius * radius).astype(np.float64)[None]
    sums = ndimage.correlate(img, disk, mode="constant", cval=0.0)
    t, h, w = img.shape
    safe = np.isfinite(y) & np.isfinite(x)
    fi = np.where(safe, frame, 0).astype(np.int64)
    iy = np.clip(np.round(np.where(safe, y, 0)).astype(np.int64), 0, h - 1)
    ix = np.clip(np.round(np.where(safe, x, 0)).astype(np.int64), 0, w - 1)
    return np.where(safe, sums[fi, iy, ix], np.nan)


def _maxima_seeds(stack: np.ndarray, above: np.ndarray, min_distance: float):
    """Label local maxima (plateaus count once) of a [T, H, W] stack above threshold."""
    r = int(np.floor(min_distance))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy * yy + xx * xx) <= min_distance * min_distance
    footprint = disk[None]
    # Maxima of the map smoothed by 1 px: a well-trained network's disk is a flat plateau of p ~ 1 whose
    # tiny ripples would otherwise give several "maxima" per particle. Centroids and probabilities still
    # come from the raw map.
    smooth = ndimage.gaussian_filter(stack.astype(np.float64, copy=False), sigma=(0, 1.0, 1.0))
    local_max = smooth == ndimage.maximum_filter(smooth, footprint=footprint, mode="constant", cval=-np.inf)
    peaks = local_max & above
    labels, n = ndimage.label(peaks, structure=_plane_structure(2))
    if n == 0:
        return labels, 0, np.zeros(0)
    idx = np.arange(1, n + 1)
    prob = np.asarray(ndimage.maximum(stack, labels, idx))
    # Plateau maxima closer than min_distance (e.g. two flat tops of one disk): keep the first.
    t, cy, cx = (np.asarray(c) for c in zip(*ndimage.center_of_mass(peaks, labels, idx), strict=True))
    pts = np.stack([t * 1e6, cy, cx], axis=1)
    from scipy.spatial import cKDTree

    tree = cKDTree(pts)
    pairs = tree.query_pairs(min_distance - 1e-9, output_type="ndarray")
    if len(pairs):
        order = np.lexsort((-np.arange(n), prob))[::-1]  # rank by probability, then first index
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        drop = np.zeros(n, dtype=bool)
        # greedy suppression in rank order
        nbrs: list[list[int]] = [[] for _ in range(n)]
        for a, b in pairs:
            nbrs[a].append(b)
            nbrs[b].append(a)
        for i in order:
            if drop[i]:
                continue
            for j in nbrs[i]:
                if rank[j] > rank[i]:
                    drop[j] = True
        keep = ~drop
        remap = np.zeros(n + 1, dtype=np.int64)
        remap[1:][keep] = np.arange(1, keep.sum() + 1)
        labels = remap[labels]
        prob = prob[keep]
        n = int(keep.sum())
    return labels, n, prob
