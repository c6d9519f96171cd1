"""The plugin as users launch it: widgets opened through napari's plugin manager
(``viewer.window.add_plugin_dock_widget``), each with its own proxy of the viewer, driven by their buttons.

Issue 11, defect 1: the widgets found each other in dicts keyed by ``id(viewer)``, which differ from proxy
to proxy, so Train could not take the Simulate widget's simulation, Apply could not use the model just
trained and Review could not fine-tune nor fill the report. These tests walk the user guide end to end.
"""

import json

import numpy as np
import pytest

PLUGIN = "napari-deeptrack"
TINY_UNET = {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4}


def open_widget(viewer, name):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def click(button):
    button.native.click()


def wait_none(qtbot, obj, attr, timeout=120_000):
    qtbot.waitUntil(lambda: getattr(obj, attr) is None, timeout=timeout)


@pytest.fixture
def movie_file(tmp_path):
    """The sample particle movie saved as an ImageJ TIFF with its pixel size, and its ground truth."""
    from napari_deeptrack._napari._sample_data import particle_movie
    from napari_deeptrack.io.tiff import write_tiff

    (img, ik, _), (pts, pk, _) = particle_movie(n_frames=4, shape=(64, 64))
    path = write_tiff(tmp_path / "movie.tif", img.astype(np.uint16), pixel_size_um=0.1)
    return path, np.asarray(pts)


def test_widgets_get_proxies_but_share_one_session(make_napari_viewer):
    from napari.utils._proxies import PublicOnlyProxy

    from napari_deeptrack._napari._session import session_for

    viewer = make_napari_viewer()
    widgets = [open_widget(viewer, n) for n in ("Simulate", "Train", "Apply", "Review")]
    assert all(isinstance(w.viewer, PublicOnlyProxy) for w in widgets)
    assert len({id(w.viewer) for w in widgets}) == 4  # napari hands each widget its own proxy
    assert len({id(w.session) for w in widgets}) == 1
    assert widgets[0].session is session_for(viewer)


@pytest.mark.slow
def test_user_guide_end_to_end_through_the_plugin(make_napari_viewer, qtbot, movie_file, tmp_path):
    """open data -> Match -> Train on the matched simulation -> Apply -> threshold -> Review: correct,
    Evaluate -> Fine-tune -> Apply uses the fine-tuned model -> report with training and configuration."""
    path, truth = movie_file
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin=PLUGIN)
    assert tuple(image.scale[-2:]) == pytest.approx((0.1, 0.1))

    sim = open_widget(viewer, "Simulate")
    train = open_widget(viewer, "Train")
    apply = open_widget(viewer, "Apply")
    review = open_widget(viewer, "Review")
    sim.auto_preview.value = False

    # Match (in a worker)
    sim.layer.value = image
    click(sim.match_btn)
    wait_none(qtbot, sim, "_match_worker", 60_000)
    assert "spots/frame" in sim.match_label.value
    assert sim.pixel_size_um.value == pytest.approx(0.1)
    # Train sees the matched simulation (ticked for the user)
    assert train.use_simulation.value
    assert "matched to" in train.simulation_info.value and "64x64" in train.simulation_info.value

    # Train on it, very short
    train.preset.value = "particles-2d"
    train.model_config.value = json.dumps(TINY_UNET)
    train.epochs.value, train.steps.value, train.batch_size.value = 1, 2, 2
    train.validation_size.value = 4
    train.device.value = "cpu"
    click(train.train_btn)
    assert train.worker is not None
    wait_none(qtbot, train, "worker")
    assert train.model is not None
    task = train.task
    assert task.pipeline.optics.pixel_size_um == pytest.approx(0.1)  # the matched simulation was used
    assert sim.session.model_origin == "trained"

    # Apply: switched to the model just trained
    assert apply.source.value == apply.source.choices[0]
    assert "trained" in apply.bundle_info.value
    apply.layer.value = image
    click(apply.run_btn)
    wait_none(qtbot, apply, "worker")
    det = viewer.layers["DeepTrack detections"]
    apply.threshold.value = 0.3
    assert int(np.asarray(det.shown).sum()) == int((det.features["probability"] >= 0.3).sum())

    # Review: follows the Apply result, the user corrects a copy (here: the ground truth), evaluates
    assert review.image.value is not None and review.image.value.name == image.name
    assert review.prediction.value is not None and review.prediction.value.name == "DeepTrack detections"
    click(review.copy_btn)
    corrected = review.reference.value
    assert corrected is not None
    corrected.data = truth
    click(review.eval_btn)
    assert "model" in review.metrics

    # Fine-tune on the corrections (short), Apply now uses the fine-tuned model
    review.epochs.value, review.steps.value = 1, 2
    click(review.finetune_btn)
    assert review.worker is not None
    wait_none(qtbot, review, "worker")
    assert review.finetuned is not None
    assert sim.session.model_origin == "fine-tuned"
    assert "fine-tuned" in apply.bundle_info.value
    assert apply.current_bundle() is review.finetuned

    # Report: metrics, training (settings + loss curves), fine-tuning and configuration are filled
    text = review.write_report(tmp_path / "report.md").read_text()
    training = text.split("## Training")[1].split("## Configuration")[0]
    assert '"epochs": 1' in training and '"steps_per_epoch": 2' in training
    assert "fine-tuning" in training and "corrected_frames" in training
    assert "loss curves" in training
    config = text.split("## Configuration")[1].split("## Versions")[0]
    assert "particles-2d" in config and "Fluorescence" in config and "pixel_size_um" in config
