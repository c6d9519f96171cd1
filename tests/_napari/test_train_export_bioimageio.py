"""Train widget > Export bioimage.io...: the model trained in the viewer becomes a bioimage.io package
(written by a child process, so napari's event loop keeps running) that loads back and predicts what
the trained model predicts."""

import io
import json
import time
import zipfile

import numpy as np
import pytest
import yaml

TINY_UNET = {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4}


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeptrack", name)
    return widget


def test_export_bioimageio_button_writes_a_package_that_loads(make_napari_viewer, qtbot, tmp_path, messages):
    from qtpy.QtCore import QTimer

    from napari_deeptrack.analysis.predict import predict
    from napari_deeptrack.io.bioimageio import load_model

    viewer = make_napari_viewer()
    w = open_widget(viewer, "Train")
    assert not w.export_btn.enabled  # nothing to export before training
    assert w.export_bioimageio(tmp_path / "early.zip") is None
    assert not (tmp_path / "early.zip").exists()

    w.preset.value = "particles-2d"
    w.model_config.value = json.dumps(TINY_UNET)
    w.epochs.value, w.steps.value, w.batch_size.value = 1, 2, 2
    w.validation_size.value = 4
    w.device.value = "cpu"
    w.train_btn.changed.emit(True)  # the Train button
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.model is not None and w.export_btn.enabled

    assert w.export_bioimageio(tmp_path / "model.txt") is None  # not a zip: refused, nothing written
    assert not (tmp_path / "model.txt").exists()
    assert any("zip" in m for m, s in messages if "error" in s.lower())

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    out = tmp_path / "model.zip"
    worker = w.export_bioimageio(out)  # what the button does after its file dialog
    assert worker is not None and not w.export_btn.enabled
    qtbot.waitUntil(lambda: w.export_worker is None, timeout=180_000)
    timer.stop()
    assert w.export_btn.enabled
    gaps = np.diff(ticks)
    assert len(gaps) > 5 and gaps.max() < 0.1, f"event loop stalled {gaps.max() * 1000:.0f} ms"
    assert any(str(out) in m for m, _ in messages), messages

    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        x = np.load(io.BytesIO(zf.read("test_input.npy")))
        y = np.load(io.BytesIO(zf.read("test_output.npy")))
    assert {"rdf.yaml", "weights_torchscript.pt", "README.md", "cover.png"} <= names
    assert rdf["config"]["napari_deeptrack"]["kind"] == "detection"
    assert rdf["inputs"][0]["axes"][2]["scale"] == pytest.approx(w.task.pixel_size_um)

    loaded = load_model(out)
    assert loaded.task.kind == "detection" and loaded.task.name == "particles-2d"
    # the package predicts what the model trained in the viewer predicts
    trained = w.session.model
    ours = predict(trained, x[0, 0]).maps
    theirs = predict(loaded, x[0, 0]).maps
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(ours).reshape(y.shape), y, atol=1e-5, rtol=0)

    # a package loaded back (Apply > file) is not exported again
    w.session.set_model(loaded, origin="file")
    assert w.export_bioimageio(tmp_path / "again.zip") is None
    assert not (tmp_path / "again.zip").exists()
    assert any("already a bioimage.io package" in m for m, _ in messages)
