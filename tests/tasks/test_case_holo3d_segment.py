"""Case studies 5 (holography-3d) and nuclei-segment (issue 7), and the CellBody instance labels.

- InstanceLabels of CellBody nuclei follow the irregular outline the renderer draws (checked against
  an independent brute-force polar rasterisation, and shown to differ from a disk);
- the nuclei-segment evaluation and post-processing on REAL BBBC039 labels, with known answers (a
  perfect class map recovers the real nuclei; removing nuclei lowers the scores by exactly that
  many) and the classical Otsu + watershed baseline above a floor on a real image crop;
- the holography-3d read-out: exact z-binned volume targets -> 3D positions recovers x, y, z without
  the edge bias of the centroid, in the first and last z bins too (no training needed).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deeptrack.sim import BoundaryClasses, CellBody, Particles, Pipeline, Uniform, boundary_classes
from napari_deeptrack.sim.optics.fluorescence import Fluorescence
from napari_deeptrack.sim.scene import Scene
from napari_deeptrack.sim.targets import InstanceLabels
from napari_deeptrack.tasks import get_preset

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BBBC039 = ROOT.parent / "shared" / "data" / "bbbc039_dev"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _examples():
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---------------------------------------------------------------------------- CellBody instance labels
def test_instance_labels_follow_the_irregular_cellbody_outline():
    """Each nucleus's label matches a brute-force polar rasterisation of
    r(theta) = R (1 + sum_m a_m cos(m theta + phi_m)) written out here independently (IoU > 0.95),
    and is clearly not the disk of radius R that a mismatched target would draw."""
    px = 0.5
    k = 4
    cell = CellBody(radius_um=Uniform(5.0, 8.0), irregularity=0.4, n_harmonics=k, texture=0.0)
    pipe = Pipeline(
        image_shape=(112, 112),
        particles=[Particles(cell, count=3, margin_px=22, intensity=1e4)],
        optics=Fluorescence(NA=0.8, wavelength_um=0.5, pixel_size_um=px, oversample=1),
        targets={"labels": InstanceLabels(pixel_size_um=px)},
        min_distance_px=45,
    )
    gen = torch.Generator().manual_seed(4)
    scene = pipe.sample_scene(3, gen)
    lab = InstanceLabels(pixel_size_um=px)(scene)[:, 0].numpy()
    coeffs = scene.attributes["shape_coeffs"].double().numpy()
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float64)
    ious, disk_ious = [], []
    for b, n in zip(*np.nonzero(scene.present.numpy())):
        y0, x0, _ = scene.position[b, n].double().numpy()
        r0 = float(scene.radius_um[b, n]) / px
        theta = np.arctan2(yy - y0, xx - x0)
        edge = np.full_like(theta, 1.0)
        for j in range(k):  # the outline formula, term by term
            edge += coeffs[b, n, j] * np.cos((j + 2) * theta + coeffs[b, n, k + j])
        rho = np.hypot(yy - y0, xx - x0)
        brute = rho <= r0 * edge
        mine = lab[b] == n + 1
        ious.append(_iou(mine, brute))
        disk_ious.append(_iou(mine, rho <= r0))
    assert len(ious) == 9
    assert min(ious) > 0.95, ious
    assert np.mean(disk_ious) < 0.9, disk_ious  # the outline is irregular enough to tell


def test_cellbody_populations_must_share_n_harmonics():
    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[
            Particles(CellBody(radius_um=2.0, n_harmonics=3), count=1),
            Particles(CellBody(radius_um=2.0, n_harmonics=4), count=1),
        ],
        optics=Fluorescence(NA=0.8, wavelength_um=0.5, pixel_size_um=0.25, oversample=1),
    )
    with pytest.raises(ValueError, match="n_harmonics"):
        pipe.sample_scene(1, torch.Generator().manual_seed(0))


def test_boundary_classes_split_touching_objects():
    """Two overlapping disks: the contact is boundary on both sides, the interiors stay apart, the
    outer ring is boundary_px wide, and the image border is no boundary."""
    s = Scene.empty(1, 3, (40, 60))
    s.position[0, 0, :2] = torch.tensor([20.0, 20.0])
    s.position[0, 1, :2] = torch.tensor([20.0, 34.0])
    s.position[0, 2, :2] = torch.tensor([20.0, 57.0])  # cut by the right border
    s.present[0] = True
    s.radius_um[0] = 8.0 * 0.5  # 8 px
    cls = BoundaryClasses(pixel_size_um=0.5, boundary_px=2.0)(s)[0, 0]
    assert cls[20, 27] == 2 and cls[20, 26] == 2  # contact
    assert cls[20, 20] == 1 and cls[20, 34] == 1
    from scipy import ndimage

    _, n_interior = ndimage.label((cls == 1).numpy())
    assert n_interior == 3
    ring = (cls[20, 8:20] == 2).sum().item()  # left edge of the first disk (x = 12): a 2-3 px ring
    assert 2 <= ring <= 3, cls[20, 8:20]
    assert (cls[20, 8:12] == 0).all() and cls[20, 12] == 2
    assert cls[20, 59] == 1  # border-cut object: interior up to the image edge


# ---------------------------------------------------------------------------- nuclei-segment, real data
def _real_crop():
    if not (BBBC039 / "counts.csv").exists():
        pytest.fail(f"real BBBC039 development data missing at {BBBC039}")
    _examples()
    from _bbbc039 import load_bbbc039

    names, images, labels, _ = load_bbbc039(BBBC039)
    return images[0, :256, :256], labels[0, :256, :256]


def test_segmentation_scores_on_real_labels_known_answers():
    _examples()
    from nuclei_segment import network_instances, pooled_scores

    _, lab = _real_crop()
    ids = np.unique(lab[lab > 0])
    assert len(ids) >= 15
    perfect = pooled_scores(lab[None], lab[None])
    assert perfect["f1"]["0.5"] == 1.0 and perfect["panoptic_quality"] == 1.0
    # dropping every third nucleus: TP = kept, FN = dropped, FP = 0 at every IoU threshold
    dropped = ids[::3]
    pred = np.where(np.isin(lab, dropped), 0, lab)
    s = pooled_scores(pred[None], lab[None])
    expected = (len(ids) - len(dropped)) / len(ids)
    for t in ("0.5", "0.7", "0.9"):
        assert s["average_precision"][t] == pytest.approx(expected)
    assert s["fn"] == len(dropped) and s["fp"] == 0
    # a perfect network output (classes of the real labels, as one-hot probabilities) gives the
    # real nuclei back through the interior-seeded watershed, touching nuclei included
    cls = boundary_classes(torch.from_numpy(lab.astype(np.int64)), 2.0).numpy()
    prob = np.stack([(cls == c).astype(np.float32) for c in range(3)])[None]
    rec = pooled_scores(network_instances(prob, "interior"), lab[None])
    assert rec["f1"]["0.5"] > 0.95, rec["f1"]
    assert rec["mean_matched_iou"] > 0.85


def test_otsu_baseline_on_a_real_crop_beats_a_floor():
    _examples()
    from nuclei_segment import otsu_watershed, pooled_scores

    img, lab = _real_crop()
    base = otsu_watershed(img[None])
    s = pooled_scores(base, lab[None])
    assert s["f1"]["0.5"] > 0.75, s["f1"]
    # a broken pipeline (labels shifted by half a nucleus) would miss the floor
    shifted = np.roll(base, 12, axis=2)
    assert pooled_scores(shifted, lab[None])["f1"]["0.5"] < 0.5


def test_nuclei_segment_network_is_fully_convolutional_on_real_sizes():
    """The preset's U-Net runs on a real image size that is not a multiple of 8 (padding path)."""
    _examples()
    from nuclei_segment import class_probabilities

    from napari_deeptrack.nn import build_model

    task = get_preset("nuclei-segment")
    img, _ = _real_crop()
    prob = class_probabilities(build_model(task.model).eval(), task, img[None, :100, :60])
    assert prob.shape == (1, 3, 100, 60)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------- holography-3d read-out
def test_volume_targets_give_unbiased_positions_at_the_z_edges():
    """Exact ZBinnedVolume targets of the preset's scenes -> positions_from_volume: the least-squares
    ball fit recovers x, y, z without bias in every z bin, the first and last included, whereas the
    paper's centroid is pulled inwards by more than a third of a bin there."""
    _examples()
    from holography_3d import evaluate, truth_table

    task = get_preset("holography-3d")
    target = task.pipeline.targets[task.target]
    scene = task.pipeline.sample_scene(48, torch.Generator().manual_seed(7))
    # half of the particles in the outer 1 um at either end of the -4 ... +4 um range
    g = torch.Generator().manual_seed(8)
    z = scene.position[..., 2]
    edge = torch.rand(z.shape, generator=g) < 0.5
    sign = torch.where(torch.rand(z.shape, generator=g) < 0.5, -1.0, 1.0)
    scene.position[..., 2] = torch.where(edge, sign * (3.0 + torch.rand(z.shape, generator=g)), z)
    vol = target(scene)
    truth = truth_table(scene)
    fit = evaluate(vol, truth, target, task.pixel_size_um, "fit")
    cen = evaluate(vol, truth, target, task.pixel_size_um, "centroid")
    assert fit["overall"]["recall"] == 1.0 and fit["overall"]["precision"] == 1.0
    assert fit["overall"]["rmse_x_um"] < 0.03 and fit["overall"]["rmse_y_um"] < 0.03
    bins = fit["per_z_bin"]
    assert bins[0]["n_true"] > 20 and bins[-1]["n_true"] > 20
    for b in bins:
        assert abs(b["bias_z_um"]) < 0.06, b
        assert b["rmse_z_um"] < 0.08, b
    half_bin = (target.z_max_um - target.z_min_um) / target.n_bins / 2
    assert cen["per_z_bin"][0]["bias_z_um"] > half_bin * 0.66  # pulled up at the bottom
    assert cen["per_z_bin"][-1]["bias_z_um"] < -half_bin * 0.66  # pulled down at the top


def test_matched_errors_known_shift():
    _examples()
    import pandas as pd
    from holography_3d import matched_errors, per_z_bin

    truth = pd.DataFrame(
        {"frame": [0, 0, 1], "y": [10.0, 30.0, 5.0], "x": [10.0, 30.0, 5.0], "z_um": [-3.9, 0.1, 3.9]}
    )
    pred = truth.copy()
    pred["y"] += 1.0
    pred["z_um"] += 0.2
    pred = pred.iloc[[0, 2]]  # the middle particle is missed
    err = matched_errors(pred, truth, 3.0)
    r = per_z_bin(err, len(pred), -4.0, 4.0, 8, 0.15)
    assert r["overall"]["recall"] == pytest.approx(2 / 3) and r["overall"]["precision"] == 1.0
    assert r["overall"]["rmse_y_um"] == pytest.approx(0.15) and r["overall"]["rmse_x_um"] == 0.0
    assert r["per_z_bin"][0]["bias_z_um"] == pytest.approx(0.2) and r["per_z_bin"][4]["recall"] == 0.0
    assert math.isnan(r["per_z_bin"][4]["rmse_z_um"])
