"""Nuclei instance segmentation trained on simulation only, evaluated on real BBBC039 images.

A U-Net (preset ``nuclei-segment``) learns a three-class map (background / nucleus interior / 2-px
nucleus boundary) from simulated Hoechst-stained nuclei (:class:`~napari_deeptrack.sim.CellBody`,
matched to the real images as for ``cells-count``). On the real 520x696 images of
``shared/data/bbbc039_dev`` (never used for training) the class maps become instances with
:func:`napari_deeptrack.analysis.segment.instance_labels` (seeded watershed of the foreground
``1 - p(background)``, seeds at the maxima of the distance to the background) or as the network's
connected interior regions grown back over the boundary class. Scores against the real instance
labels (:mod:`napari_deeptrack.analysis.metrics`): F1 at IoU > 0.5, average precision
TP / (TP + FP + FN) at IoU 0.5 ... 0.9, panoptic quality; pooled over all objects of all images.
Baseline, side by side: Otsu threshold of the (lightly smoothed) image + the same distance-transform
watershed (scikit-image), no learning.

    python examples/nuclei_segment.py --quick      # a few minutes on 2 CPU cores
    python examples/nuclei_segment.py              # full setting
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _bbbc039 import load_bbbc039
from _common import Reporter, base_parser
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from napari_deeptrack.analysis.metrics import iou_matrix
from napari_deeptrack.analysis.predict import predict
from napari_deeptrack.analysis.segment import instance_labels
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.tasks.presets_cells import boundary_classes

CASE = "nuclei_segment"
IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
MIN_DISTANCE_PX = 7.0  # about half the real nuclei's radius (14 px)
MIN_AREA_PX = 30  # nuclei are > 150 px; smaller objects are debris or fragments


def class_probabilities(model: torch.nn.Module, task, images: np.ndarray, chunk: int = 2) -> np.ndarray:
    """Softmax class maps ``[N, 3, H, W]`` of raw images ``[N, H, W]`` from the one prediction path
    (:func:`napari_deeptrack.analysis.predict.predict`: each image normalised on its own, padded by
    reflection to a multiple of the U-Net's down-sampling and cropped back; no tiling)."""
    return predict(model, images, task=task, batch_size=chunk, tile_size=4096).maps


def network_instances(prob: np.ndarray, seeds: str = "distance", boundary_px: float = 2.0) -> np.ndarray:
    """Instance labels ``[N, H, W]`` from class maps ``[N, 3, H, W]``.

    ``seeds="distance"``: seeded watershed of the foreground ``1 - p(background)`` with seeds at the
    maxima of the distance to the background (what ``analysis.predict.predict`` does for segmentation
    tasks). ``seeds="interior"``: every connected region where the interior class wins is one
    nucleus (labelled with the same watershed, one seed per region), then grown back over the
    boundary class (``boundary_px`` + 1 px, inside the foreground), the preset's intended read-out.
    """
    from skimage.segmentation import expand_labels

    fg = 1.0 - prob[:, 0]
    if seeds == "distance":
        return instance_labels(fg, 0.5, min_distance_px=MIN_DISTANCE_PX, min_area_px=MIN_AREA_PX)
    if seeds != "interior":
        raise ValueError(f"seeds must be 'distance' or 'interior', got {seeds!r}")
    interior = ((prob.argmax(axis=1) == 1) & (fg > 0.5)).astype(np.float32)
    s = np.zeros((3, 3, 3), bool)
    s[1] = ndimage.generate_binary_structure(2, 1)
    comp, n_comp = ndimage.label(interior, structure=s)
    if n_comp == 0:
        return np.zeros(fg.shape, np.int32)
    ids = np.arange(1, n_comp + 1)
    # one seed per interior region, at its innermost pixel
    inner = ndimage.distance_transform_edt(interior, sampling=(1e6, 1.0, 1.0))
    pts = np.asarray(ndimage.maximum_position(inner, comp, ids), dtype=np.float64).reshape(-1, 3)
    core = instance_labels(interior, 0.5, min_distance_px=MIN_DISTANCE_PX, seeds=pts, smooth_sigma_px=0.0)
    grown = np.stack([expand_labels(c, distance=boundary_px + 1.0) for c in core]) * (fg > 0.5)
    if MIN_AREA_PX > 0 and grown.max() > 0:
        area = np.bincount(grown.ravel())
        small = area < MIN_AREA_PX
        small[0] = False
        grown[small[grown]] = 0
    return grown.astype(np.int32)


def otsu_watershed(images: np.ndarray, smooth_sigma_px: float = 1.0) -> np.ndarray:
    """Classical baseline: Otsu threshold per image, then the distance-transform seeded watershed."""
    from skimage.filters import threshold_otsu

    sm = ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, smooth_sigma_px, smooth_sigma_px))
    thr = np.array([threshold_otsu(im) for im in sm])  # one threshold per image
    fg = (sm > thr[:, None, None]).astype(np.float64)
    return instance_labels(fg, 0.5, min_distance_px=MIN_DISTANCE_PX, min_area_px=MIN_AREA_PX)


def pooled_scores(pred: np.ndarray, truth: np.ndarray, thresholds=IOU_THRESHOLDS) -> dict:
    """F1, average precision TP/(TP+FP+FN) and panoptic quality, pooled over all images' objects.

    Objects are paired per image as :func:`~napari_deeptrack.analysis.metrics.segmentation_metrics`
    pairs them (Hungarian on IoU; a pair is a TP when its IoU exceeds the threshold). The pairing
    does not depend on the threshold, so it is computed once per image and then thresholded. TP, FP,
    FN and the matched IoUs are summed over images before the ratios are taken.
    """
    pairs = []  # per image: IoUs of the Hungarian pairs, n_pred, n_true
    for p, g in zip(pred, truth):
        m, _, _ = iou_matrix(p, g)
        paired = m[linear_sum_assignment(-m)] if m.size else np.zeros(0)
        pairs.append((paired, m.shape[0], m.shape[1]))
    out: dict = {"average_precision": {}, "f1": {}}
    for t in thresholds:
        tps = [int((v > t).sum()) for v, _, _ in pairs]
        tp = sum(tps)
        fp = sum(n_p for _, n_p, _ in pairs) - tp
        fn = sum(n_t for _, _, n_t in pairs) - tp
        out["average_precision"][f"{t:.1f}"] = tp / max(tp + fp + fn, 1)
        out["f1"][f"{t:.1f}"] = 2 * tp / max(2 * tp + fp + fn, 1)
        if t == thresholds[0]:
            iou_sum = float(sum(v[v > t].sum() for v, _, _ in pairs))
            out.update(
                tp=tp,
                fp=fp,
                fn=fn,
                panoptic_quality=iou_sum / max(tp + 0.5 * fp + 0.5 * fn, 1e-12),
                mean_matched_iou=iou_sum / max(tp, 1),
                # 2 TP / (2 TP + FP + FN) = 2 TP / (n_pred + n_true); 1 for two empty images
                per_image_f1=[
                    round(2 * k / (n_p + n_t), 3) if n_p + n_t else 1.0
                    for k, (_, n_p, n_t) in zip(tps, pairs)
                ],
            )
    out["mean_average_precision"] = float(np.mean(list(out["average_precision"].values())))
    out["n_pred"] = int(sum(len(np.unique(p[p > 0])) for p in pred))
    return out


def main(argv: list[str] | None = None) -> int:
    p = base_parser(CASE, __doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="bbbc039_dev folder (default: ../shared/data/bbbc039_dev)")
    args = p.parse_args(argv)
    rep = Reporter(CASE, args)
    task = get_preset("nuclei-segment")
    if args.quick:
        # 150 steps of 4 images (CI budget; the first sessions' quick mode used batches of 8)
        epochs, steps, batch, nval = 6, 25, 4, 32
    else:
        epochs, steps, batch, nval = 40, 50, 8, 64
    task.training = {**task.training, "validation_size": nval}
    out = f"{args.out}/nuclei-segment" if args.out else None
    res = rep.train(task, out, args, epochs, steps, batch)
    model = res.model.eval().cpu()

    names, images, labels, counts = load_bbbc039(args.data)
    # ceiling of the read-out: a perfect network output (the classes of the real labels)
    cls = boundary_classes(torch.from_numpy(labels.astype(np.int64)), 2.0).numpy()
    perfect = np.stack([(cls == c).astype(np.float32) for c in range(3)], axis=1)
    rep.emit(
        "readout_ceiling",
        note="post-processing of the exact classes of the real labels (no network)",
        network_distance_seeds=pooled_scores(network_instances(perfect, "distance"), labels),
        network_interior_seeds=pooled_scores(network_instances(perfect, "interior"), labels),
    )
    prob = class_probabilities(model, task, images)
    results = {
        "network_distance_seeds": network_instances(prob, "distance"),
        "network_interior_seeds": network_instances(prob, "interior"),
        "otsu_watershed": otsu_watershed(images),
    }
    scores = {k: pooled_scores(v, labels) for k, v in results.items()}
    rep.emit(
        "real_images",
        n_images=len(names),
        n_true_nuclei=int(counts.sum()),
        iou_thresholds=list(IOU_THRESHOLDS),
        **scores,
    )
    best = max(("network_distance_seeds", "network_interior_seeds"), key=lambda k: scores[k]["f1"]["0.5"])
    rep.done(
        network_f1_05=scores[best]["f1"]["0.5"],
        network_seeds=best,
        network_pq=scores[best]["panoptic_quality"],
        baseline_f1_05=scores["otsu_watershed"]["f1"]["0.5"],
        baseline_pq=scores["otsu_watershed"]["panoptic_quality"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
