"""The four dock widgets end to end in a real napari viewer (pytest-qt, Xvfb), on tiny images.

Apply and Review use a hand-made detector network (a fixed Gaussian blur and a steep sigmoid: a
stand-in whose output is known) so the tests check the plumbing (coordinates, scale, threshold,
metrics) rather than how well a 3-step training run works; Train runs the real trainer for a few steps.
"""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeptrack._napari._simulate_widget import _grid

TINY_UNET = {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4}


# ---------------------------------------------------------------------------- helpers
def open_widget(viewer, name):
    """The widget as napari opens it (Plugins > DeepTrack > name): it gets a proxy of the viewer."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeptrack", name)
    return widget


def ApplyWidget(viewer):  # noqa: N802 - reads like the class it opens
    return open_widget(viewer, "Apply")


def ReviewWidget(viewer):  # noqa: N802
    return open_widget(viewer, "Review")


def SimulateWidget(viewer):  # noqa: N802
    return open_widget(viewer, "Simulate")


def TrainWidget(viewer):  # noqa: N802
    return open_widget(viewer, "Train")


def spots(n=6, shape=(64, 64), frames=1, sigma=1.6, seed=0):
    """Poisson images of isolated Gaussian spots; returns images [T, H, W] and truth (frame, y, x)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out, rows = [], []
    g = int(np.ceil(np.sqrt(n)))
    for t in range(frames):
        cells = rng.permutation(g * g)[:n]
        cy = (cells // g + 0.5) * h / g + rng.uniform(-1.5, 1.5, n)
        cx = (cells % g + 0.5) * w / g + rng.uniform(-1.5, 1.5, n)
        img = np.full(shape, 20.0)
        for y, x in zip(cy, cx):
            img += 3000 / (2 * np.pi * sigma**2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
            rows.append((t, y, x))
        out.append(rng.poisson(img))
    return np.asarray(out, np.float32), np.asarray(rows)


class BlobDetector(torch.nn.Module):
    """Fixed Gaussian blur + steep sigmoid logits: high where the normalised image has a bright spot."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 7, padding=3)
        r = torch.arange(7.0) - 3
        k = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5**2))
        with torch.no_grad():
            self.conv.weight.copy_((k / k.sum())[None, None])
            self.conv.bias.fill_(-0.3)

    def forward(self, x):
        return 8.0 * self.conv(x)


def detector_bundle():
    from napari_deeptrack.io.bundle import Bundle
    from napari_deeptrack.tasks import get_preset

    task = get_preset("particles-2d")
    task.training = {**task.training, "validation_size": 4, "batch_size": 2}
    task.model = {"type": "custom"}
    # the hand-made detector expects inputs scaled to ~[0, 1] (percentile normalisation)
    task.input_normalization = {"mode": "percentile", "low": 1.0, "high": 99.8}
    return Bundle(model=BlobDetector().eval(), task=task, config={"history": {}}, path=None)


def errors(msgs):
    return [m for m, s in msgs if "error" in s.lower()]


def wait_worker(qtbot, widget_attr_owner, attr="worker", timeout=60_000):
    qtbot.waitUntil(lambda: getattr(widget_attr_owner, attr) is None, timeout=timeout)


# ---------------------------------------------------------------------------- Simulate
def test_simulate_match_preview_and_files(make_napari_viewer, qtbot, tmp_path):
    from napari_deeptrack.sim.serialize import to_dict

    viewer = make_napari_viewer()
    images, _ = spots(n=8, shape=(64, 48))
    real = viewer.add_image(
        images[0], scale=(0.08, 0.08), translate=(3, 4), units=("um", "um"), contrast_limits=(0, 400)
    )
    w = SimulateWidget(viewer)
    w.auto_preview.value = False
    w.layer.value = real
    assert w.match_to_layer()
    wait_worker(qtbot, w, "_match_worker")
    assert w.pixel_size_um.value == pytest.approx(0.08)
    assert 4 <= w.count_max.value and w.count_min.value <= 8
    w.preview()
    qtbot.waitUntil(lambda: w.last_result is not None and w._worker is None, timeout=30_000)
    prev = viewer.layers["DeepTrack simulation"]
    assert prev.data.shape == real.data.shape
    np.testing.assert_allclose(prev.scale, real.scale)
    np.testing.assert_allclose(prev.translate, real.translate)
    # the simulation lives in the real grey-value range: the real contrast limits, brightness compares
    assert tuple(prev.contrast_limits) == pytest.approx((0, 400))
    assert not _grid(viewer).enabled
    assert "distance" in w.stats_label.value
    assert w.last_result["comparison"]["distance"] < 0.5  # matched simulation resembles the data
    # debounced live preview: several changes -> the preview layer is updated, not duplicated
    w.auto_preview.value = True
    w.last_result = None
    w.background.value = 5.0
    w.NA.value = 1.0
    assert w._timer.isActive()
    qtbot.waitUntil(lambda: w.last_result is not None and w._worker is None, timeout=30_000)
    assert [lyr.name for lyr in viewer.layers].count("DeepTrack simulation") == 1
    # "compare" shows data and preview side by side; unticking restores the grid and the camera
    viewer.camera.zoom, viewer.camera.center = 3.0, (0.0, 1.0, 2.0)
    w.compare.value = True
    assert _grid(viewer).enabled
    viewer.camera.zoom = 0.5
    w.compare.value = False
    assert not _grid(viewer).enabled
    assert viewer.camera.zoom == pytest.approx(3.0)
    assert tuple(viewer.camera.center)[-2:] == pytest.approx((1.0, 2.0))
    # JSON round trip and Python export
    before = to_dict(w.build_pipeline())
    path = w.save_config(tmp_path / "sim.json")
    w.NA.value = 0.5
    w.load_config(path)
    assert to_dict(w.build_pipeline()) == before
    script = w.export_python(tmp_path / "sim.py").read_text()
    ns: dict = {}
    exec(script, ns)  # the exported script rebuilds the same pipeline
    assert to_dict(ns["pipeline"]) == before


# ---------------------------------------------------------------------------- Train
def _tiny_train_widget(viewer, epochs, steps):
    w = TrainWidget(viewer)
    w.preset.value = "particles-2d"
    w.model_config.value = json.dumps(TINY_UNET)
    w.epochs.value, w.steps.value, w.batch_size.value = epochs, steps, 2
    w.validation_size.value = 4
    w.device.value = "cpu"
    return w


def test_train_runs_in_worker_without_stalling_the_event_loop(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    w = _tiny_train_widget(viewer, epochs=2, steps=2)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    worker = w.start_training()
    assert worker is not None
    wait_worker(qtbot, w)
    timer.stop()
    assert w.model is not None and w.history["reason"] == "completed"
    assert w.progress.value == 4
    assert len(w.plot.batch_loss) == 4 and len(w.plot.epoch_val) == 2  # the loss plot updated
    gaps = np.diff(ticks)
    print(json.dumps({"what": "train_event_loop", "max_gap_ms": round(float(gaps.max()) * 1000, 1)}))
    assert len(gaps) > 5
    assert gaps.max() < 0.1, f"event loop stalled {gaps.max() * 1000:.0f} ms"
    out = w.save_bundle(tmp_path / "tiny.zip")
    from napari_deeptrack.io.bundle import load_bundle

    assert load_bundle(out).task.name == "particles-2d"
    # Apply can use the model just trained (no file needed)
    aw = ApplyWidget(viewer)
    aw.layer.value = viewer.add_image(spots(n=4, shape=(32, 32))[0][0])
    assert aw.source.value == "model trained / fine-tuned in this viewer"  # switched by the session
    assert aw.run() is not None
    wait_worker(qtbot, aw)
    assert "DeepTrack detections" in viewer.layers


def test_train_stop_keeps_best_checkpoint(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = _tiny_train_widget(viewer, epochs=50, steps=3)
    w.start_training()
    qtbot.waitUntil(lambda: w.last_event is not None, timeout=30_000)
    w.stop()
    wait_worker(qtbot, w)
    assert w.history["reason"] == "stopped"
    assert w.history["steps"] < 150
    assert w.history.get("best_epoch") is not None  # the validated best checkpoint is kept
    assert w.trained_bundle() is not None


def test_train_time_limit_shortens_the_run(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = _tiny_train_widget(viewer, epochs=500, steps=3)
    w.time_limit.value = 0.05  # minutes: 3 s for a run planned far longer
    w.start_training()
    wait_worker(qtbot, w, timeout=60_000)
    assert w.settings["max_seconds"] == pytest.approx(3.0)
    assert w.history["reason"] == "time_limit"
    assert len(w.history["epoch"]) < 500 and w.history["epochs_planned"] == len(w.history["epoch"])
    assert w.progress.max == 3 * w.history["epochs_planned"]  # the bar follows the shortened plan
    assert w.progress.value == w.progress.max
    assert "time_limit" in w.status.value


# ---------------------------------------------------------------------------- Apply
def test_apply_points_land_on_particles_and_threshold_filters(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    images, truth = spots(n=6, shape=(64, 64), frames=3)
    src = viewer.add_image(images, scale=(1.0, 0.1, 0.1), translate=(0, 2.0, 1.0), units=("s", "um", "um"))
    w = ApplyWidget(viewer)
    w.set_bundle(detector_bundle())
    w.layer.value = src
    w.link.value = True
    w.batch_size.value = 2
    assert w.run() is not None
    wait_worker(qtbot, w)
    pts = viewer.layers["DeepTrack detections"]
    np.testing.assert_allclose(pts.scale, src.scale)
    np.testing.assert_allclose(pts.translate, src.translate)
    assert {"probability", "frame"} <= set(pts.features.columns)
    # every true particle has a detection within 1 px in its frame
    shown = pts.data[pts.shown]
    for t, y, x in truth:
        d = np.hypot(shown[:, 1] - y, shown[:, 2] - x)[shown[:, 0] == t]
        assert d.min() < 1.0
    assert "DeepTrack tracks" in viewer.layers
    counts = w.counts_table()
    assert list(counts["count"]) == [int((pts.features["frame"][pts.shown] == t).sum()) for t in range(3)]
    # the threshold changes what is shown, without re-running the network
    n_before = int(pts.shown.sum())
    prob = pts.features["probability"].to_numpy()
    w.threshold.value = float(np.round(np.median(prob), 2))
    assert int(pts.shown.sum()) == int((prob >= w.threshold.value).sum()) < n_before
    assert w.counts_table()["count"].sum() == int(pts.shown.sum())
    w.threshold.value = 0.5
    assert int(pts.shown.sum()) == n_before
    # running again updates the same layer
    w.run()
    wait_worker(qtbot, w)
    assert [lyr.name for lyr in viewer.layers].count("DeepTrack detections") == 1
    assert w.export_counts(tmp_path / "counts.csv").exists()


def test_threshold_refilter_10000_points_under_50ms(make_napari_viewer):
    from napari_deeptrack._napari._threshold import DetectionCache

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    n = 10_000
    table = pd.DataFrame(
        {
            "frame": rng.integers(0, 100, n),
            "y": rng.uniform(0, 512, n),
            "x": rng.uniform(0, 512, n),
            "probability": rng.uniform(0, 1, n),
        }
    )
    viewer.add_image(np.zeros((100, 512, 512), np.uint8))
    w = ApplyWidget(viewer)
    w.cache = DetectionCache(table, 100)
    w._points_layer = viewer.add_points(table[["frame", "y", "x"]].to_numpy(), features=table)
    times = []
    for thr in (0.2, 0.5, 0.8, 0.3):
        t0 = time.perf_counter()
        w.threshold.value = thr  # slider -> apply_threshold
        times.append(time.perf_counter() - t0)
        assert int(w._points_layer.shown.sum()) == int((table["probability"] >= thr).sum())
    assert max(times) < 0.05, f"threshold re-filter took {max(times) * 1000:.1f} ms"


# ---------------------------------------------------------------------------- Review
def test_review_metrics_finetune_report(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    images, truth = spots(n=6, shape=(64, 64), frames=2, seed=3)
    src = viewer.add_image(images)
    aw = ApplyWidget(viewer)
    aw.set_bundle(detector_bundle())
    aw.layer.value = src
    aw.link.value = False
    aw.run()
    wait_worker(qtbot, aw)
    rw = ReviewWidget(viewer)
    rw.image.value = src
    rw.prediction.value = viewer.layers["DeepTrack detections"]
    corrected = rw.copy_for_correction()
    n = len(corrected.data)
    assert n == int(viewer.layers["DeepTrack detections"].shown.sum())
    # the user deletes one point and adds a missed one far from any detection
    data = np.asarray(corrected.data)[1:]
    corrected.data = np.vstack([data, [[0, 1.0, 1.0]]])
    m = rw.evaluate()
    assert m["model"]["tp"] == n - 1 and m["model"]["fp"] == 1 and m["model"]["fn"] == 1
    assert m["model"]["f1"] == pytest.approx((n - 1) / n)
    assert "baseline (trackpy)" in m and m["baseline (trackpy)"]["tp"] >= n - 3
    worker = rw.fine_tune()
    assert worker is not None
    rw.epochs.value = 1
    wait_worker(qtbot, rw, timeout=120_000)
    assert rw.finetuned is not None and rw.finetune_history["steps"] > 0
    report = rw.write_report(tmp_path / "report.md")
    text = report.read_text()
    assert "f1" in text and "baseline (trackpy)" in text and "particles-2d" in text and "torch" in text
    html = rw.write_report(tmp_path / "report.html").read_text()
    assert "<table" in html


class ThresholdSegmenter(torch.nn.Module):
    """Per-pixel 3-class logits (background, interior, boundary) from the normalised image: interior
    where the pixel is above 0.5, never boundary. A stand-in whose segmentation is known exactly."""

    def forward(self, x):
        s = 12.0 * (x - 0.5)
        return torch.cat([-s, s, torch.full_like(x, -20.0)], dim=1)


def segmenter_bundle():
    from napari_deeptrack.io.bundle import Bundle
    from napari_deeptrack.tasks import get_preset

    task = get_preset("nuclei-segment")
    task.model = {"type": "custom"}
    task.input_normalization = {"mode": "minmax"}
    return Bundle(model=ThresholdSegmenter().eval(), task=task, config={"history": {}}, path=None)


def test_review_scores_corrected_labels(make_napari_viewer, qtbot, messages):
    """Apply writes Labels; the user erases a false object, paints a missed one and enlarges another;
    Review's IoU, F1 and PQ equal the values worked out by hand from the square areas."""
    viewer = make_napari_viewer()
    sq = 11  # 11 x 11 squares: 121 px each
    corners = {"A": (5, 5), "B": (5, 40), "C": (40, 5), "D": (40, 40), "E": (25, 25)}
    img = np.zeros((64, 64), np.float32)
    for name, (y, x) in corners.items():
        img[y : y + sq, x : x + sq] = 0.2 if name == "E" else 1.0  # E is a dim cell the model misses
    img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
    src = viewer.add_image(img, scale=(0.65, 0.65), units=("um", "um"))  # the preset's pixel size
    aw = ApplyWidget(viewer)
    aw.set_bundle(segmenter_bundle())
    aw.layer.value = src
    aw.run()
    wait_worker(qtbot, aw)
    out = viewer.layers["DeepTrack labels"]
    model_labels = np.asarray(out.data)
    assert model_labels.shape == (64, 64) and tuple(out.scale) == pytest.approx((0.65, 0.65))
    # the stand-in finds exactly the four bright squares A-D, one label each
    assert len(np.unique(model_labels[model_labels > 0])) == 4
    for name in "ABCD":
        y, x = corners[name]
        patch = model_labels[y : y + sq, x : x + sq]
        assert patch.min() > 0 and len(np.unique(patch)) == 1
    assert (model_labels > 0).sum() == 4 * sq * sq

    rw = ReviewWidget(viewer)
    rw.image.value = src
    rw.prediction.value = out
    corrected = rw.copy_for_correction()
    assert corrected is not out and rw.reference.value is corrected
    # the user's corrections with napari's label tools (fill bucket, paint):
    corrected.fill((10, 45), 0)  # B was debris: erase it
    label_a = int(model_labels[10, 10])
    corrected.data_setitem(tuple(np.mgrid[16:21, 5:16].reshape(2, -1)), label_a)  # A is 5 rows taller
    new_id = int(model_labels.max()) + 1
    corrected.data_setitem(tuple(np.mgrid[25:36, 25:36].reshape(2, -1)), new_id)  # E was missed
    np.testing.assert_array_equal(np.asarray(out.data), model_labels)  # the model output is untouched
    m = rw.evaluate()
    model = m["model"]
    # by hand: matches A (IoU 121/176), C, D (IoU 1); B is a false positive, E a false negative
    iou_a = 121 / (121 + 55)
    assert (model["tp"], model["fp"], model["fn"]) == (3, 1, 1)
    assert model["precision"] == pytest.approx(3 / 4) and model["recall"] == pytest.approx(3 / 4)
    assert model["f1"] == pytest.approx(3 / 4)
    assert model["panoptic_quality"] == pytest.approx((iou_a + 2) / (3 + 0.5 + 0.5))
    # pixel IoU of the foregrounds: 3 x 121 shared, 4 x 121 model, 3 x 121 + 55 + 121 corrected
    assert model["iou"] == pytest.approx(363 / (484 + 539 - 363))
    assert model["n_frames"] == 1
    # the classical baseline (Otsu + connected components) on the same image finds A, C, D, keeps B and
    # misses E (Otsu's threshold lands at E's brightest noise pixels, which may add 1-px false objects)
    base = m["baseline (Otsu)"]
    assert base["tp"] == 3 and base["fn"] == 1 and base["fp"] >= 1
    assert "iou" in rw.results_label.value and "panoptic_quality" in rw.results_label.value
    # a corrected layer of another shape: a clear message, no metrics
    other = viewer.add_labels(
        np.zeros((32, 32), np.int32), name="other shape", scale=(0.65, 0.65), units=("um", "um")
    )
    rw.reference.value = other
    n_layers = len(viewer.layers)
    assert rw.evaluate() is None
    msg = errors(messages)[-1]
    assert "(64, 64)" in msg and "(32, 32)" in msg and "other shape" in msg
    assert len(viewer.layers) == n_layers


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_notify_and_never_overwrite_user_layers(make_napari_viewer, messages, tmp_path):
    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.tasks import get_preset

    viewer = make_napari_viewer()
    aw = ApplyWidget(viewer)
    sw = SimulateWidget(viewer)
    sw.auto_preview.value = False
    aw.set_bundle(detector_bundle())
    # no image layer
    assert aw.run() is None
    assert any("No image layer" in m for m in errors(messages))
    # RGB
    rgb = viewer.add_image(np.random.default_rng(0).uniform(0, 1, (32, 32, 3)), rgb=True)
    sw.layer.value = rgb
    assert not sw.match_to_layer()
    assert any("RGB" in m for m in errors(messages))
    # 4D
    four = viewer.add_image(np.random.default_rng(0).uniform(0, 1, (2, 2, 16, 16)))
    aw.layer.value = four
    assert aw.run() is None
    assert any("4 dimensions" in m for m in errors(messages))
    # empty (constant) layer
    empty = viewer.add_image(np.zeros((32, 32)))
    aw.layer.value = empty
    assert aw.run() is None
    assert any("empty" in m for m in errors(messages))
    # a bundle for another task (a 32x32 localisation CNN on a 64x64 layer)
    loc = get_preset("particle-localize")
    path = save_bundle(tmp_path / "loc.zip", build_model(loc.model), loc, {})
    assert aw.load_bundle(path) is not None
    aw.layer.value = viewer.add_image(spots(shape=(64, 64))[0][0])
    assert aw.run() is None
    assert any("crops" in m for m in errors(messages))
    # not a bundle at all
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    assert aw.load_bundle(bad) is None
    assert any("bundle" in m.lower() for m in errors(messages))
    # Review: a points layer against a segmentation-kind model
    rw = ReviewWidget(viewer)
    a = viewer.add_points([[1, 1]], name="a")
    b = viewer.add_points([[1, 1]], name="b")
    rw.prediction.value, rw.reference.value = a, b
    seg = detector_bundle()
    seg.task.kind = "segmentation"
    from napari_deeptrack._napari._session import ApplyResult

    rw.session.set_result(ApplyResult(bundle=seg, source_layer="a", kind="segmentation"))  # as after Apply
    assert rw.evaluate() is None
    assert any("segmentation" in m for m in errors(messages))
    assert len(viewer.layers) == 6  # nothing was added by the failures


def test_user_layer_with_output_name_is_not_overwritten(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    images, _ = spots(n=4, shape=(48, 48))
    src = viewer.add_image(images[0])
    mine = viewer.add_points([[5.0, 5.0]], name="DeepTrack detections")
    aw = ApplyWidget(viewer)
    aw.set_bundle(detector_bundle())
    aw.layer.value = src
    aw.run()
    wait_worker(qtbot, aw)
    assert len(mine.data) == 1 and np.allclose(mine.data, [[5.0, 5.0]])
    out = viewer.layers["DeepTrack detections [2]"]
    assert len(out.data) >= 3


def test_loss_plot_switches_to_a_linear_axis_for_negative_likelihood_losses(qtbot):
    from napari_deeptrack._napari._plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 160)
    for step, loss in enumerate([2.0, 0.5, 0.1]):
        plot.add_event({"type": "batch", "step": step, "loss": loss})
    plot.grab()  # paints
    assert plot.log_y
    plot.add_event({"type": "epoch", "step": 3, "loss": -1.5, "val_loss": -2.4})  # gaussian_nll
    image = plot.grab().toImage()
    assert not plot.log_y
    # the orange validation point at the minimum is drawn inside the plot, at its bottom edge
    h = image.height()
    orange = [
        (x, y)
        for x in range(image.width())
        for y in range(h - 40, h - 18)
        if image.pixelColor(x, y).red() > 200 and 120 < image.pixelColor(x, y).green() < 180
    ]
    assert orange, "the negative validation loss is not drawn"
