"""The headless demo (the product's main job) and its report."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeptrack.analysis.metrics import tracking_metrics
from napari_deeptrack.cli import main
from napari_deeptrack.demo import demo_settings, simulate_movie
from napari_deeptrack.io.tiff import read_tiff
from napari_deeptrack.report import jsonable, plot_overlay, write_report

torch.set_num_threads(1)


@pytest.mark.slow
def test_quick_demo_cli_reaches_f1_floor_and_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "F1" in text and "D measured" in text and str(out / "report.md") in text
    assert "[1/6] simulating" in captured.err and "[6/6] writing the report" in captured.err
    assert "epoch 6/6" in captured.err  # the training progress

    stored = json.loads((out / "metrics.json").read_text())
    m = stored["metrics"]
    det = m["detection"]
    # quick setting (4800 training images, threshold 0.9) measured over seeds 0-4: F1 0.980-0.997,
    # precision >= 0.99, recall >= 0.96, RMSE 0.20-0.33 px. A detector that was not trained (or
    # trained too little: 2560 images gave F1 0.946 for seed 1), normalised differently from
    # training or post-processed wrongly (merging touching particles: F1 0.92) scores lower
    assert det["f1"] >= 0.95, det
    assert det["precision"] >= 0.95 and det["recall"] >= 0.93, det
    assert det["rmse_xy"] < 0.45, det  # px
    # no systematic offset: a half-pixel convention error between truth and detections shows here
    assert abs(det["mean_dy"]) < 0.15 and abs(det["mean_dx"]) < 0.15, det
    assert det["n_truth"] > 500 and det["tp"] + det["fn"] == det["n_truth"]
    assert m["tracking"]["link_accuracy"] > 0.95
    # the ISBI 2012 particle tracking challenge scores (5 px gate), in metrics.json and the report
    isbi = m["tracking (ISBI 2012)"]
    for key in ("alpha", "beta", "jaccard_tracks", "jaccard_points"):
        assert 0.0 <= isbi[key] <= 1.0, (key, isbi)
    assert isbi["beta"] <= isbi["alpha"] and isbi["gate_px"] == 5.0
    assert 0.0 <= isbi["rmse_px"] <= isbi["gate_px"], isbi  # px, over point pairs inside the gate
    assert isbi["n_true_tracks"] == m["tracking"]["n_true_tracks"]
    assert isbi["n_pred_tracks"] == m["tracking"]["n_tracks"]
    # every true point is a TP or an FN, every detection a TP or an FP (spurious tracks included)
    assert isbi["tp_points"] + isbi["fn_points"] == det["n_truth"]
    assert isbi["tp_points"] + isbi["fp_points"] == det["n_pred"]
    # seed 0 measured alpha 0.88, beta 0.83, track Jaccard 0.77, point Jaccard 0.85 (track fragments
    # beyond the one paired with a true track count as spurious); untrained or mislinked tracks score lower
    assert isbi["alpha"] > 0.7 and isbi["jaccard_points"] > 0.7, isbi
    # the diffusion measured from the detected tracks agrees with the same estimator on the true
    # tracks (measured: 0 to -10 %, detected tracks slightly low), and with the simulated D within
    # the sampling error of one short movie (the true tracks themselves give -6 % to +17 %)
    dif = m["diffusion"]
    assert dif["true_um2_s"] == pytest.approx(0.1)
    assert dif["measured_um2_s"] == pytest.approx(dif["from_true_tracks_um2_s"], rel=0.15)
    assert dif["measured_um2_s"] == pytest.approx(dif["true_um2_s"], rel=0.35)
    assert m["training"]["epochs_run"] == 6 and stored["config"]["settings"]["quick"] is True

    for name in ("report.md", "metrics.json", "overlay.png", "loss_curve.png", "tracks.png", "msd.png",
                 "movie.tif", "truth.csv", "detections.csv", "tracks.csv", "model/config.json",
                 "model/weights.safetensors", "tracks_trackmate.xml", "model_bioimageio.zip"):
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "F1 = " in report and "![detections on frame 1](overlay.png)" in report
    assert "## tracking (ISBI 2012)" in report and "ISBI 2012 tracking scores alpha" in report
    section = report.split("## tracking (ISBI 2012)")[1].split("\n## ")[0]
    assert all(k in section for k in ("alpha", "beta", "jaccard_tracks", "jaccard_points", "rmse_px"))
    movie, meta = read_tiff(out / "movie.tif")
    assert movie.shape == (30, 128, 128) and meta["pixel_size_um"] == pytest.approx(0.1)
    dets = pd.read_csv(out / "detections.csv")
    assert {"frame", "y", "x", "probability", "track_id", "true_track_id"} <= set(dets.columns)
    assert len(dets) == det["n_pred"]
    cfg = json.loads((out / "model" / "config.json").read_text())
    # the bundle records how it post-processes, so applying it again gives the same detections
    assert cfg["postprocess"]["method"] == "maxima" and cfg["postprocess"]["threshold"] == 0.9
    sweep = m["detection vs threshold"]
    assert sweep["f1 at 0.9"] == pytest.approx(det["f1"])
    assert sweep["recall at 0.5"] >= sweep["recall at 0.9"]  # a lower threshold never finds fewer


def test_movie_matches_its_ground_truth():
    s = demo_settings(quick=True, n_frames=4, n_particles=6, image_shape=(48, 48), background_photons=5.0)
    images, truth, movie = simulate_movie(s, seed=1)
    assert images.shape == (4, 48, 48) and images.dtype == np.float32
    assert (images >= 0).all() and np.array_equal(images, np.round(images))  # Poisson photon counts
    present = truth[truth["present"]]
    assert set(truth["frame"]) == {0, 1, 2, 3} and present["track_id"].nunique() <= 6
    # every visible particle is a bright spot: the pixel under it is far above the background
    iy = present["y"].round().astype(int).clip(0, 47).to_numpy()
    ix = present["x"].round().astype(int).clip(0, 47).to_numpy()
    peak = images[present["frame"].to_numpy(), iy, ix]
    assert np.median(peak) > 5 * 5.0
    again, truth2, _ = simulate_movie(s, seed=1)
    assert np.array_equal(images, again) and truth.equals(truth2)
    assert not np.array_equal(images, simulate_movie(s, seed=2)[0])
    assert movie.diffusion_um2_s == 0.1


def test_demo_settings_validate():
    assert demo_settings(quick=True).epochs < demo_settings().epochs
    with pytest.raises(ValueError, match="n_frames"):
        demo_settings(n_frames=1)
    with pytest.raises(ValueError, match="unknown demo setting"):
        demo_settings(n_frame=10)
    with pytest.raises(ValueError, match="detection_method"):
        demo_settings(detection_method="blobs")
    with pytest.raises(ValueError, match="threshold"):
        demo_settings(threshold=1.5)


def test_tracking_metrics_count_wrong_links():
    truth = pd.DataFrame({"frame": [0, 1, 2, 0, 1, 2], "track_id": [0, 0, 0, 1, 1, 1], "present": True})
    # measured track 5 follows particle 0, then jumps to particle 1; track 6 has a false detection
    tracks = pd.DataFrame({"track_id": [5, 5, 5, 6, 6], "frame": [0, 1, 2, 0, 1],
                           "truth_track_id": [0, 0, 1, 1, -1]})
    m = tracking_metrics(tracks, truth)
    assert m["n_tracks"] == 2 and m["n_true_tracks"] == 2 and m["n_links"] == 3
    assert m["link_accuracy"] == pytest.approx(1 / 2)  # links between two matched detections: 0-0, 0-1
    assert m["track_purity"] == pytest.approx((2 / 3 + 1) / 2)


def test_report_files(tmp_path):
    image = np.zeros((32, 40))
    truth = pd.DataFrame({"y": [5.0, 20.0], "x": [5.0, 30.0]})
    dets = pd.DataFrame({"y": [5.5, 10.0], "x": [5.2, 10.0]})
    overlay = plot_overlay(image, truth, dets, tmp_path / "o.png", tolerance_px=2.0, pixel_size_um=0.1)
    history = {"epoch": [0, 1], "train_loss": [1.0, 0.5], "val_loss": [0.9, 0.6], "best_epoch": 1}
    metrics = {"detection": {"f1": 0.5, "rmse_xy": float("nan")}, "note": "x"}
    paths = write_report(tmp_path, metrics, history, {"seed": 3, "shape": (2, 2)}, {"overlay": overlay},
                         files={"movie": tmp_path / "m.tif"}, summary="hello")
    stored = json.loads(paths["metrics"].read_text())
    assert stored["metrics"]["detection"] == {"f1": 0.5, "rmse_xy": None}  # NaN is stored as null
    assert stored["config"] == {"seed": 3, "shape": [2, 2]} and stored["history"]["best_epoch"] == 1
    md = paths["report"].read_text()
    assert "| f1 | 0.5 |" in md and "| rmse_xy | n/a |" in md and "](o.png)" in md and "](m.tif)" in md
    assert "| 2 (best) | 0.5 | 0.6 |" in md and "hello" in md
    assert paths["loss curve"].stat().st_size > 0
    assert jsonable({"a": np.float32(1.5), "b": np.arange(2), "c": float("inf")}) == {
        "a": 1.5, "b": [0, 1], "c": None}


@pytest.mark.gui
def test_gui_shows_demo_layers_and_widgets(tmp_path, make_napari_viewer):
    from napari_deeptrack._napari._demo_viewer import plugin_widget_names, show_demo
    from napari_deeptrack.io.tiff import write_tiff

    write_tiff(tmp_path / "movie.tif", np.zeros((3, 32, 32), np.float32), pixel_size_um=0.1)
    pd.DataFrame({"frame": [0, 1, 2], "track_id": 0, "y": [5.0, 6.0, 7.0], "x": [9.0, 9.5, 10.0],
                  "z_um": 0.0, "visible": True, "present": [True, True, False]}).to_csv(
        tmp_path / "truth.csv", index=False)
    pd.DataFrame({"frame": [0, 1], "y": [5.1, 6.2], "x": [9.0, 9.4], "probability": 0.9, "area": 20.0,
                  "track_id": 0, "true_track_id": 0}).to_csv(tmp_path / "detections.csv", index=False)
    viewer = show_demo(tmp_path, viewer=make_napari_viewer(), widgets=True)
    names = [layer.name for layer in viewer.layers]
    assert names == ["demo movie", "ground truth", "detections", "tracks"]
    assert tuple(viewer.layers["demo movie"].scale) == pytest.approx((1.0, 0.1, 0.1))
    assert tuple(viewer.layers["tracks"].scale) == pytest.approx((1.0, 0.1, 0.1))
    assert len(viewer.layers["ground truth"].data) == 2  # only particles in the field of view
    assert viewer.layers["detections"].features["true_track_id"].tolist() == [0, 0]
    assert plugin_widget_names() == ["Simulate", "Train", "Apply", "Review", "Diffusion (MSD)"]
    docked = " ".join(viewer.window.dock_widgets)
    for name in plugin_widget_names():
        assert name in docked, (name, list(viewer.window.dock_widgets))
