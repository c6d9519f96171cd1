"""Segmentation maps to instance labels (seeded watershed) and to shapes for napari Shapes layers.

:func:`instance_labels` thresholds a foreground probability map, seeds one marker per object at the
maxima of the distance to the background (or at given seed points, e.g. detections), and grows the
markers with scikit-image's watershed on the inverted distance, so touching objects are split
along their neck. With ``seed_h_px`` the seeds are the distance map's *h-maxima*: a maximum counts only
when it rises ``seed_h_px`` above the saddle that joins it to a higher one, so an elongated or ragged
object (whose distance ridge has several shallow maxima) keeps one seed while two touching round
objects (a neck several px deep) keep two. All frames of a stack are labelled in one call (frames are
never connected).

:func:`labels_to_shapes` turns labels into polygons (outlines), ellipses (same second moments) or
bounding boxes, in napari's Shapes conventions (vertex arrays ``[n, 2]`` in (row, column), with a
leading frame coordinate for stacks).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from ..sim.params import check_range
from .detect import as_stack

__all__ = [
    "filter_instances",
    "instance_labels",
    "instance_table",
    "keep_lut",
    "labels_to_shapes",
    "relabel_per_frame",
]


def _plane_connectivity() -> np.ndarray:
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage.generate_binary_structure(2, 1)
    return s


def instance_labels(
    prob_map,
    threshold: float = 0.5,
    min_distance_px: float = 3.0,
    min_area_px: int = 0,
    seeds=None,
    smooth_sigma_px: float = 1.0,
    seed_h_px: float = 0.0,
    min_probability: float = 0.0,
) -> np.ndarray:
    """Instance labels from a foreground probability (or mask) map by seeded watershed.

    Parameters
    ----------
    prob_map : array [H, W] or [T, H, W]
        Foreground probability.
    threshold : float
        Foreground decision threshold.
    min_distance_px : float
        Smallest distance between two seeds (about the smallest object radius); not used with
        ``seed_h_px``.
    min_area_px : int
        Objects smaller than this are removed (set to background).
    seeds : DataFrame or array or None
        Seed points instead of distance maxima: a table with ``frame, y, x`` (``frame`` optional
        for 2D) or an array ``[N, 2]`` / ``[N, 3]`` (frame, y, x).
    smooth_sigma_px : float
        Gaussian smoothing of the distance map before finding seeds (suppresses spurious maxima on
        ragged outlines).
    seed_h_px : float
        When > 0: seeds are the connected h-maxima of the (smoothed) distance map of height
        ``seed_h_px`` (px): a neck between two objects must be at least this much narrower than the
        smaller object's half-width to split them. Elongated objects are then not cut across
        (with 0, every local maximum ``min_distance_px`` apart is a seed).

    Returns
    -------
    ndarray int32, same shape as ``prob_map``
        0 is background; labels are unique over the whole stack.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    check_range("threshold", threshold, 0.0, 1.0)
    check_range("min_distance_px", min_distance_px, 0.0, None, low_inclusive=False)
    check_range("min_area_px", min_area_px, 0, None)
    check_range("seed_h_px", seed_h_px, 0.0, None)
    check_range("min_probability", min_probability, 0.0, 1.0)
    stack, was_2d = as_stack(prob_map)
    fg = stack > threshold
    # in-plane distance to background; frames kept apart by a huge sampling along the frame axis
    dist = ndimage.distance_transform_edt(fg, sampling=(1e6, 1.0, 1.0))
    dist = np.where(fg, np.minimum(dist, 1e5), 0.0)
    if smooth_sigma_px > 0:
        dist = ndimage.gaussian_filter(dist, sigma=(0, smooth_sigma_px, smooth_sigma_px)) * fg
    markers = np.zeros(stack.shape, dtype=np.int32)
    if seeds is None:
        comp, _ = ndimage.label(fg, structure=_plane_connectivity())
        if seed_h_px > 0:
            from skimage.morphology import h_maxima

            # frames are kept apart by the in-plane footprint (no connection along the frame axis)
            peaks = h_maxima(dist, float(seed_h_px), footprint=_plane_connectivity()).astype(bool) & fg
            markers, n_pk = ndimage.label(peaks, structure=_plane_connectivity())
        else:
            r = max(int(round(min_distance_px)), 1)
            pk = peak_local_max(
                dist, footprint=np.ones((1, 2 * r + 1, 2 * r + 1), bool), labels=comp, exclude_border=False
            )
            n_pk = len(pk)
            if n_pk:
                markers[pk[:, 0], pk[:, 1], pk[:, 2]] = np.arange(1, n_pk + 1)
        # every foreground component gets at least one seed (flat or tiny objects)
        unseeded = np.setdiff1d(np.unique(comp[comp > 0]), np.unique(comp[markers > 0]))
        if len(unseeded):
            cms = np.asarray(ndimage.maximum_position(dist, comp, unseeded), dtype=np.int64).reshape(-1, 3)
            markers[cms[:, 0], cms[:, 1], cms[:, 2]] = n_pk + 1 + np.arange(len(cms))
    else:
        pts = _seed_points(seeds, stack.shape)
        if len(pts):
            markers[pts[:, 0], pts[:, 1], pts[:, 2]] = np.arange(1, len(pts) + 1)
            markers = markers * fg
    labels = watershed(-dist, markers, mask=fg, connectivity=_plane_connectivity())
    if (min_area_px > 0 or min_probability > 0) and labels.max() > 0:
        area = np.bincount(labels.ravel())
        drop = area < int(min_area_px)
        if min_probability > 0:
            psum = np.bincount(labels.ravel(), weights=stack.ravel().astype(np.float64), minlength=len(area))
            drop |= psum < float(min_probability) * area
        drop[0] = False
        labels[drop[labels]] = 0
    labels = labels.astype(np.int32)
    return labels[0] if was_2d else labels


def _seed_points(seeds, shape) -> np.ndarray:
    t_n, h, w = shape
    if hasattr(seeds, "columns"):
        y = seeds["y"].to_numpy()
        x = seeds["x"].to_numpy()
        f = seeds["frame"].to_numpy() if "frame" in seeds.columns else np.zeros(len(y))
        pts = np.stack([f, y, x], 1)
    else:
        pts = np.asarray(seeds, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] not in (2, 3):
            raise ValueError(f"seeds must be [N, 2] (y, x) or [N, 3] (frame, y, x), got shape {pts.shape}")
        if pts.shape[1] == 2:
            pts = np.concatenate([np.zeros((len(pts), 1)), pts], 1)
    pts = np.round(pts).astype(np.int64)
    ok = (
        (pts[:, 0] >= 0)
        & (pts[:, 0] < t_n)
        & (pts[:, 1] >= 0)
        & (pts[:, 1] < h)
        & (pts[:, 2] >= 0)
        & (pts[:, 2] < w)
    )
    return pts[ok]


def relabel_per_frame(labels: np.ndarray) -> np.ndarray:
    """Make labels consecutive (1..n) within every frame of a ``[T, H, W]`` stack."""
    lab = np.asarray(labels)
    if lab.ndim == 2:
        from skimage.segmentation import relabel_sequential

        return relabel_sequential(lab)[0]
    t = np.arange(lab.shape[0])[:, None, None] * np.ones_like(lab)
    key = np.where(lab > 0, t.astype(np.int64) * (int(lab.max()) + 1) + lab, -1).ravel()
    uniq, inv = np.unique(key, return_inverse=True)
    # rank of each label inside its frame
    frame_of = np.where(uniq >= 0, uniq // (int(lab.max()) + 1), -1)
    first = np.searchsorted(frame_of, frame_of)
    rank = np.arange(len(uniq)) - first + 1
    out = np.where(uniq >= 0, rank, 0)[inv].reshape(lab.shape)
    return out.astype(lab.dtype)


def labels_to_shapes(
    labels, kind: str = "polygon", tolerance_px: float = 0.5
) -> tuple[list[np.ndarray], list[str]]:
    """Instance labels to shapes for a napari Shapes layer.

    Parameters
    ----------
    labels : int array [H, W] or [T, H, W]
    kind : {"polygon", "ellipse", "box"}
        Outline polygon (simplified to ``tolerance_px``), the ellipse with the object's second
        moments (4 corners of its rotated bounding rectangle, napari's ellipse format), or the
        axis-aligned bounding box (4 corners).
    tolerance_px : float
        Polygon simplification tolerance (Douglas-Peucker).

    Returns
    -------
    data : list of arrays [n, 2] (or [n, 3] with the frame first for stacks)
    shape_type : list of str
        ``"polygon"``, ``"ellipse"`` or ``"rectangle"`` per shape.
    """
    from skimage import measure

    if kind not in ("polygon", "ellipse", "box"):
        raise ValueError(f"kind must be 'polygon', 'ellipse' or 'box', got {kind!r}")
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"labels must be [H, W] or [T, H, W], got shape {lab.shape}")
    frames = lab[None] if lab.ndim == 2 else lab
    data: list[np.ndarray] = []
    types: list[str] = []
    for t, frame in enumerate(frames):  # output conversion, one object at a time (not a hot path)
        for rp in measure.regionprops(frame):
            if kind == "box":
                r0, c0, r1, c1 = rp.bbox
                verts = np.array(
                    [[r0 - 0.5, c0 - 0.5], [r0 - 0.5, c1 - 0.5], [r1 - 0.5, c1 - 0.5], [r1 - 0.5, c0 - 0.5]]
                )
                st = "rectangle"
            elif kind == "ellipse":
                cy, cx = rp.centroid
                a = max(rp.axis_major_length / 2.0, 0.5)
                b = max(rp.axis_minor_length / 2.0, 0.5)
                th = rp.orientation  # angle between the row axis and the major axis
                ua = np.array([np.cos(th), np.sin(th)])  # major axis direction in (row, col)
                ub = np.array([-np.sin(th), np.cos(th)])
                c = np.array([cy, cx])
                verts = np.array(
                    [c + a * ua + b * ub, c + a * ua - b * ub, c - a * ua - b * ub, c - a * ua + b * ub]
                )
                st = "ellipse"
            else:
                r0, c0, _, _ = rp.bbox
                mask = np.pad(rp.image, 1)
                contours = measure.find_contours(mask.astype(float), 0.5)
                if not contours:
                    continue
                cont = max(contours, key=len)
                cont = measure.approximate_polygon(cont, tolerance_px)[:-1]
                verts = cont + np.array([r0 - 1, c0 - 1])
                st = "polygon"
            if lab.ndim == 3:
                verts = np.concatenate([np.full((len(verts), 1), float(t)), verts], axis=1)
            data.append(verts)
            types.append(st)
    return data, types


def instance_table(labels, probability=None) -> pd.DataFrame:
    """One row per instance of ``labels`` ([H, W] or [T, H, W], ids unique over the stack).

    Columns: ``label``, ``frame``, ``area`` (px), ``probability`` (mean of ``probability`` over the
    instance, 1 when not given) and ``border`` (touches the image edge). Vectorised (bincount), so it is
    cheap enough to recompute after every run.
    """
    lab, _ = as_stack(np.asarray(labels))
    lab = lab.astype(np.int64, copy=False)
    n = int(lab.max(initial=0)) + 1
    flat = lab.ravel()
    area = np.bincount(flat, minlength=n)
    frame_idx = np.repeat(np.arange(lab.shape[0]), lab.shape[1] * lab.shape[2])
    frame = np.zeros(n, np.int64)
    frame[flat] = frame_idx
    if probability is not None:
        prob_stack, _ = as_stack(np.asarray(probability, dtype=np.float64))
        psum = np.bincount(flat, weights=prob_stack.ravel(), minlength=n)
        prob = psum / np.maximum(area, 1)
    else:
        prob = np.ones(n)
    edge = np.concatenate(
        [lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]
    )
    border = np.zeros(n, bool)
    border[np.unique(edge)] = True
    ids = np.nonzero(area[1:])[0] + 1
    return pd.DataFrame(
        {
            "label": ids,
            "frame": frame[ids],
            "area": area[ids],
            "probability": prob[ids],
            "border": border[ids],
        }
    )


def filter_instances(
    table, threshold: float = 0.0, min_area_px: float = 0, exclude_border: bool = False
) -> np.ndarray:
    """Which instances of :func:`instance_table` to keep: mean probability >= ``threshold``, area >=
    ``min_area_px`` and, with ``exclude_border``, not touching the image edge (boolean per row)."""
    keep = (table["probability"].to_numpy() >= float(threshold)) & (
        table["area"].to_numpy() >= float(min_area_px)
    )
    if exclude_border:
        keep &= ~table["border"].to_numpy(dtype=bool)
    return keep


def keep_lut(table, keep: np.ndarray, max_label: int) -> np.ndarray:
    """Look-up table ``lut[label] -> label or 0`` that removes the instances not kept (``lut[labels]``)."""
    lut = np.zeros(int(max_label) + 1, np.int32)
    ids = table["label"].to_numpy()[np.asarray(keep, bool)]
    lut[ids] = ids
    return lut
