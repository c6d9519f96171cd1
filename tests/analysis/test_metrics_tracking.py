"""Tracking metrics against simulated truth (analysis.metrics: match_truth_tracks, tracking_metrics)."""

import numpy as np
import pandas as pd
import pytest

from napari_deeptrack.analysis.metrics import match_truth_tracks, tracking_metrics


def test_detections_are_matched_to_true_tracks_frame_by_frame():
    truth = pd.DataFrame(
        {
            "frame": [0, 0, 1, 1],
            "y": [10.0, 30.0, 11.0, 31.0],
            "x": [10.0, 30.0, 10.0, 30.0],
            "track_id": [4, 7, 4, 7],
        }
    )
    # frame 1: the first detection is near particle 7, the second is far from everything (false)
    dets = pd.DataFrame({"frame": [0, 0, 1, 1], "y": [10.5, 29.0, 31.5, 50.0], "x": [10.0, 30.5, 30.0, 50.0]})
    assert match_truth_tracks(dets, truth, tolerance_px=2.0).tolist() == [4, 7, 7, -1]
    # a tolerance smaller than every offset matches nothing
    assert (match_truth_tracks(dets, truth, tolerance_px=0.1) == -1).all()


def test_tracking_metrics_on_matched_tracks():
    truth = pd.DataFrame({"frame": [0, 1, 0, 1], "track_id": [0, 0, 1, 1], "present": True})
    perfect = pd.DataFrame({"track_id": [1, 1, 2, 2], "frame": [0, 1, 0, 1], "truth_track_id": [0, 0, 1, 1]})
    m = tracking_metrics(perfect, truth)
    assert m["link_accuracy"] == 1.0 and m["track_purity"] == 1.0 and m["n_links"] == 2
    swapped = perfect.assign(truth_track_id=[0, 1, 1, 0])
    m = tracking_metrics(swapped, truth)
    assert m["link_accuracy"] == 0.0 and m["track_purity"] == pytest.approx(0.5)
    unmatched = perfect.assign(truth_track_id=-1)
    assert np.isnan(tracking_metrics(unmatched, truth)["link_accuracy"])
