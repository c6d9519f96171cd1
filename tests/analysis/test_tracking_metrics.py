"""ISBI 2012 particle-tracking measures (Chenouard et al. 2014) on hand-made cases whose values follow
from the paper's definitions, and CTC / MOT measures through py-ctcmetrics."""

import numpy as np
import pandas as pd
import pytest

from napari_deeptrack.analysis.tracking_metrics import ctc_tracking_metrics, isbi_tracking_scores


def track(tid, frames, y, x):
    frames = list(frames)
    return pd.DataFrame(
        {
            "frame": frames,
            "y": np.broadcast_to(y, len(frames)).astype(float),
            "x": np.broadcast_to(x, len(frames)).astype(float),
            "track_id": tid,
        }
    )


GT = pd.concat([track(0, range(4), 10.0, [10, 11, 12, 13])])


def test_perfect_and_empty():
    s = isbi_tracking_scores(GT, GT)
    assert (s["alpha"], s["beta"], s["jaccard_tracks"], s["jaccard_points"], s["rmse_px"]) == (1, 1, 1, 1, 0)
    e = isbi_tracking_scores(GT.iloc[:0], GT)
    assert (e["alpha"], e["beta"], e["jaccard_tracks"], e["jaccard_points"]) == (0, 0, 0, 0)
    assert e["fn_tracks"] == 1 and e["fn_points"] == 4 and np.isnan(e["rmse_px"])


def test_offset_within_gate():
    # every point 3 px off: d = 4 * 3 = 12, d(X, 0) = 4 * 5 = 20 -> alpha = beta = 1 - 12/20 = 0.4
    s = isbi_tracking_scores(GT.assign(y=GT["y"] + 3.0), GT)
    assert s["alpha"] == pytest.approx(0.4) and s["beta"] == pytest.approx(0.4)
    assert s["jaccard_points"] == 1 and s["rmse_px"] == pytest.approx(3.0) and s["jaccard_tracks"] == 1


def test_offset_beyond_gate_is_no_match():
    # 6 px > 5 px gate: the pairing is no better than the dummy -> unpaired, spurious
    s = isbi_tracking_scores(GT.assign(x=GT["x"] + 6.0), GT)
    assert s["alpha"] == 0 and s["beta"] == 0
    assert (s["tp_tracks"], s["fn_tracks"], s["fp_tracks"]) == (0, 1, 1) and s["jaccard_tracks"] == 0
    assert (s["tp_points"], s["fn_points"], s["fp_points"]) == (0, 4, 4)


def test_spurious_track_lowers_beta_not_alpha():
    pred = pd.concat([GT, track(5, [1, 2], 40.0, 40.0)])
    s = isbi_tracking_scores(pred, GT)
    # d(X, Y*) = 0, d(X, 0) = 20, d(Y_bar, 0) = 2 * 5 = 10 -> beta = 20 / 30
    assert s["alpha"] == 1 and s["beta"] == pytest.approx(2 / 3)
    assert s["jaccard_tracks"] == pytest.approx(1 / 2) and s["jaccard_points"] == pytest.approx(4 / 6)


def test_missed_point_and_extra_point():
    pred = GT[GT["frame"] != 2]  # one point missing: d = 5 -> alpha = 0.75
    s = isbi_tracking_scores(pred, GT)
    assert s["alpha"] == pytest.approx(0.75) and s["jaccard_points"] == pytest.approx(3 / 4)
    longer = pd.concat([GT, track(0, [4], 10.0, 14.0)])  # one extra point on the paired track: d = 5
    s = isbi_tracking_scores(longer, GT)
    assert s["alpha"] == pytest.approx(0.75) and s["beta"] == pytest.approx(0.75)
    assert s["fp_points"] == 1 and s["jaccard_points"] == pytest.approx(4 / 5)


def test_identity_switch_pairs_each_truth_with_its_best_track():
    # two true tracks; the tracker swaps identities after frame 1
    a = track(0, range(4), 10.0, 10.0)
    b = track(1, range(4), 20.0, 10.0)
    p1 = pd.concat([track(7, [0, 1], 10.0, 10.0), track(7, [2, 3], 20.0, 10.0)])
    p2 = pd.concat([track(8, [0, 1], 20.0, 10.0), track(8, [2, 3], 10.0, 10.0)])
    s = isbi_tracking_scores(pd.concat([p1, p2]), pd.concat([a, b]))
    # each true track pairs with a half-right track: d = 2 * 5 (wrong half, 10 px > gate) per track
    assert s["alpha"] == pytest.approx(1 - 20 / 40) and s["beta"] == pytest.approx(0.5)
    assert s["jaccard_points"] == pytest.approx(4 / 12) and s["jaccard_tracks"] == 1


def test_gate_and_columns_checked():
    with pytest.raises(ValueError, match="gate_px"):
        isbi_tracking_scores(GT, GT, gate_px=0)
    with pytest.raises(ValueError, match="track_id"):
        isbi_tracking_scores(GT.drop(columns="track_id"), GT)


def test_ctc_metrics_through_py_ctcmetrics():
    gt = pd.concat([track(0, range(5), 10.0, 10.0), track(1, range(5), 30.0, [10, 12, 14, 16, 18])])
    perfect = ctc_tracking_metrics(gt, gt, radius_px=2.0, metrics=("DET", "TRA", "MOTA", "IDF1"))
    assert perfect["DET"] == pytest.approx(1) and perfect["TRA"] == pytest.approx(1)
    assert perfect["MOTA"] == pytest.approx(1) and perfect["IDF1"] == pytest.approx(1)
    # identity switch in the middle of track 1 and a missed point: every score drops below 1
    bad = gt.copy()
    bad.loc[(bad["track_id"] == 1) & (bad["frame"] >= 3), "track_id"] = 2
    bad = bad[~((bad["track_id"] == 0) & (bad["frame"] == 2))]
    worse = ctc_tracking_metrics(bad, gt, radius_px=2.0, metrics=("DET", "TRA", "MOTA", "IDF1"))
    assert worse["DET"] < 1 and worse["TRA"] < 1 and worse["MOTA"] < 1 and worse["IDF1"] < 1
