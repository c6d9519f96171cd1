"""Metrics against ground truth on hand-built cases with known answers (analysis/metrics.py)."""

import math

import numpy as np
import pandas as pd
import pytest

from napari_deeptrack.analysis.metrics import (
    average_precision,
    classification_metrics,
    counting_metrics,
    detection_metrics,
    image_metrics,
    iou,
    match_points,
    rse_map,
    segmentation_metrics,
    ssim_map,
)


def test_match_points_maximises_pairs_before_distance():
    # greedy nearest-neighbour would pair p0-t0 (d=0.5) and leave p1 unmatched;
    # the optimal assignment pairs p0-t1 (1.5) and p1-t0 (1.5): two matches
    pred = np.array([[0.0, 0.0], [0.0, 2.0]])
    truth = np.array([[0.0, 0.5], [0.0, -1.5]])
    a, b, d = match_points(pred, truth, tolerance=1.6)
    assert len(a) == 2
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (1, 0)]
    assert np.allclose(np.sort(d), [1.5, 1.5])
    # beyond the tolerance nothing matches
    assert len(match_points(pred, truth + 10, 1.0)[0]) == 0
    assert len(match_points(np.zeros((0, 2)), truth, 1.0)[0]) == 0
    with pytest.raises(ValueError, match="tolerance"):
        match_points(pred, truth, 0.0)


def test_detection_metrics_hand_built_case():
    truth = pd.DataFrame(
        {
            "frame": [0, 0, 0, 1, 1],
            "y": [10.0, 20.0, 30.0, 5.0, 50.0],
            "x": [10.0, 20.0, 30.0, 5.0, 50.0],
            "z_um": [0.1, 0.2, 0.3, 0.0, 0.0],
        }
    )
    pred = pd.DataFrame(
        {
            # frame 0: two hits (errors (0.3, -0.4) and (0, 1.0)), one false positive far away
            # frame 1: one hit (error (-0.6, 0.8)), one miss; frame 2: a false positive (no truth)
            "frame": [0, 0, 0, 1, 2],
            "y": [10.3, 20.0, 90.0, 4.4, 1.0],
            "x": [9.6, 21.0, 90.0, 5.8, 1.0],
            "z_um": [0.15, 0.1, 0.0, 0.2, 0.0],
        }
    )
    m = detection_metrics(pred, truth, tolerance_px=2.0, per_frame=True)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 2, 2)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 2))
    assert m["jaccard"] == pytest.approx(3 / 7)
    dy = np.array([0.3, 0.0, -0.6])
    dx = np.array([-0.4, 1.0, 0.8])
    assert m["rmse_y"] == pytest.approx(math.sqrt(np.mean(dy**2)))
    assert m["rmse_x"] == pytest.approx(math.sqrt(np.mean(dx**2)))
    assert m["rmse_xy"] == pytest.approx(math.sqrt(np.mean(dy**2 + dx**2)))
    assert m["rmse_z_um"] == pytest.approx(math.sqrt(np.mean(np.array([0.05, -0.1, 0.2]) ** 2)))
    assert m["n_frames"] == 3
    per = {r["frame"]: r for r in m["per_frame"]}
    assert (per[0]["tp"], per[0]["fp"], per[0]["fn"]) == (2, 1, 1)
    assert (per[1]["tp"], per[1]["fp"], per[1]["fn"]) == (1, 0, 1)
    assert (per[2]["tp"], per[2]["fp"], per[2]["fn"]) == (0, 1, 0)
    # a tighter tolerance turns the 1-px error into a miss + a false positive
    m2 = detection_metrics(pred, truth, tolerance_px=0.9)
    assert (m2["tp"], m2["fp"], m2["fn"]) == (1, 4, 4)
    with pytest.raises(ValueError, match="lacks column"):
        detection_metrics(pred.drop(columns=["x"]), truth, 2.0)


def _labels():
    gt = np.zeros((20, 20), int)
    gt[2:8, 2:8] = 1  # 36 px
    gt[10:18, 10:18] = 2  # 64 px
    gt[2:6, 14:18] = 3  # 16 px, missed by the prediction
    pr = np.zeros_like(gt)
    pr[2:8, 3:9] = 5  # shifted by one column: IoU 30 / 42
    pr[10:18, 10:18] = 7  # perfect: IoU 1
    pr[12:15, 1:4] = 9  # false positive (touches nothing)
    return pr, gt


def test_segmentation_metrics_hand_built_case():
    pr, gt = _labels()
    m = segmentation_metrics(pr, gt, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["average_precision"] == pytest.approx(2 / 4)
    assert m["mean_matched_iou"] == pytest.approx((30 / 42 + 1.0) / 2)
    assert m["panoptic_quality"] == pytest.approx((30 / 42 + 1.0) / (2 + 0.5 + 0.5))
    inter = 30 + 64
    union = (36 + 64 + 16) + (36 + 64 + 9) - inter
    assert m["iou"] == pytest.approx(inter / union)
    # at IoU 0.75 the shifted object no longer counts
    m75 = segmentation_metrics(pr, gt, 0.75)
    assert (m75["tp"], m75["fp"], m75["fn"]) == (1, 2, 2)
    ap = average_precision(pr, gt)
    assert ap["per_threshold"][0.5] == pytest.approx(0.5)
    assert ap["per_threshold"][0.9] == pytest.approx(1 / 5)
    assert 0.2 <= ap["mean"] <= 0.5
    assert iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_image_metrics_identical_and_noisy():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    truth = np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 50.0) + 0.5 * np.sin(xx / 5.0) ** 2
    same = image_metrics(truth, truth)
    assert same["ssim"] == pytest.approx(1.0)
    assert same["pearson"] == pytest.approx(1.0)
    assert same["nrmse"] == pytest.approx(0.0, abs=1e-12)
    assert same["psnr_db"] == math.inf
    assert np.allclose(rse_map(truth, truth), 0.0)
    assert np.allclose(ssim_map(truth, truth), 1.0)
    # additive noise of known size: PSNR = 10 log10(range^2 / MSE) on [0, 1]-normalised images
    noisy = truth + rng.normal(0, 0.05, truth.shape)
    m = image_metrics(noisy, truth, normalize=False, data_range=float(truth.max() - truth.min()))
    mse = np.mean((noisy - truth) ** 2)
    assert m["psnr_db"] == pytest.approx(10 * np.log10((truth.max() - truth.min()) ** 2 / mse), rel=1e-6)
    assert 0.5 < m["ssim"] < 0.99
    assert m["pearson"] == pytest.approx(np.corrcoef(noisy.ravel(), truth.ravel())[0, 1])
    assert m["mean_rse"] == pytest.approx(np.mean(np.abs(noisy - truth)))
    assert ssim_map(noisy, truth).shape == truth.shape
    with pytest.raises(ValueError, match="same shape"):
        image_metrics(truth, truth[:10])


def test_counting_and_classification_metrics():
    c = counting_metrics([10.2, 4.0, 0.0, 7.0], [10, 5, 0, 8])
    assert c["mae"] == pytest.approx((0.2 + 1 + 0 + 1) / 4)
    assert c["relative_error"] == pytest.approx((0.2 / 10 + 1 / 5 + 1 / 8) / 3)
    assert c["bias"] == pytest.approx((0.2 - 1 + 0 - 1) / 4)
    assert c["exact_fraction"] == pytest.approx(0.5)
    k = classification_metrics([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0], n_classes=3)
    assert k["accuracy"] == pytest.approx(4 / 6)
    assert k["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    with pytest.raises(ValueError, match="same length"):
        counting_metrics([1, 2], [1])


def test_uncertainty_calibration_of_gaussian_errors():
    from napari_deeptrack.analysis.metrics import uncertainty_calibration

    rng = np.random.default_rng(0)
    sig = rng.uniform(0.01, 0.5, size=(20000, 2))  # heteroscedastic, like localisations
    err = rng.normal(size=sig.shape) * sig
    good = uncertainty_calibration(err, sig)
    assert good["n"] == 40000
    assert good["z_std"] == pytest.approx(1.0, abs=0.02)
    assert good["coverage_1sigma"] == pytest.approx(0.683, abs=0.01)
    assert good["coverage_2sigma"] == pytest.approx(0.954, abs=0.005)
    assert good["ratio"] == pytest.approx(1.0, abs=0.03)
    over = uncertainty_calibration(err, sig / 2)  # claims twice the precision it has
    assert over["z_std"] == pytest.approx(2.0, abs=0.05) and over["coverage_1sigma"] < 0.4
    with pytest.raises(ValueError, match="> 0"):
        uncertainty_calibration([0.1], [0.0])
    with pytest.raises(ValueError, match="same shape"):
        uncertainty_calibration([0.1, 0.2], [0.1])
