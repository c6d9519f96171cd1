"""Post-processing tuned on known truth: threshold and min_signal (analysis.tune_detection), and a freshly
trained detection bundle storing the values chosen on its validation set."""

import numpy as np
import pandas as pd
import pytest

from napari_deeptrack.analysis.detect import adaptive_min_signal, detect_from_map
from napari_deeptrack.analysis.tune_detection import tune_detection
from napari_deeptrack.io.bundle import load_bundle
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train import train_task
from napari_deeptrack.train.data import make_validation_set


def _disk(shape, cy, cx, r=3.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _maps():
    """Two frames: true objects (probability 0.95) and noise blobs the network is half sure of (0.65)."""
    shape = (64, 64)
    maps = np.zeros((2, *shape))
    image = np.zeros((2, *shape))
    rows = []
    for f in range(2):
        for cy, cx in ((12, 12), (12, 50), (50, 30)):
            maps[f][_disk(shape, cy, cx)] = 0.95
            image[f][_disk(shape, cy, cx)] = 3.0  # bright: signal ~ 3 x 29 px
            rows.append((f, float(cy), float(cx)))
        maps[f][_disk(shape, 32, 12)] = 0.65
        image[f][_disk(shape, 32, 12)] = 0.3
    return maps, image, pd.DataFrame(rows, columns=["frame", "y", "x"])


def test_threshold_rejects_half_sure_noise_blobs():
    maps, _, truth = _maps()
    best = tune_detection(maps, truth, 2.0)
    assert best["f1"] == 1.0 and best["threshold"] >= 0.7 and best["min_signal"] is None
    assert best["n_truth"] == 6


def test_min_signal_rejects_faint_blobs_the_network_is_sure_of():
    maps, image, truth = _maps()
    maps[maps == 0.65] = 0.95  # the network is as sure of the noise blobs: only the signal tells them apart
    assert tune_detection(maps, truth, 2.0)["f1"] < 1.0
    best = tune_detection(maps, truth, 2.0, image=image)
    assert best["f1"] == 1.0 and best["min_signal"] is not None
    assert 0.3 * 29 < best["min_signal"] <= 3.0 * 29


def test_trained_detection_bundle_stores_postprocessing_tuned_on_validation(tmp_path, one_torch_thread):
    task = get_preset("particles-2d")
    val = make_validation_set(task.pipeline, task.target, 16, 0, task.input_normalization)
    res = train_task(task, tmp_path / "m.zip", epochs=1, steps_per_epoch=2, batch_size=4, device="cpu",
                     seed=0, validation=val)  # fmt: skip
    pp = load_bundle(tmp_path / "m.zip").task.postprocess
    assert "simulated validation set" in pp["tuned_on"] and "F1" in pp["tuned_on"]
    assert 0.0 < pp["threshold"] < 1.0 and "min_signal" in pp
    if pp["min_signal"] == "auto":
        assert pp["noise_model"]["pixels"] == 32 * 128 * 128  # twice the 16 validation images
    assert res.task.postprocess == pp
    assert task.postprocess["threshold"] == 0.5 and "tuned_on" not in task.postprocess  # caller's copy


def test_adaptive_min_signal_cuts_between_noise_clusters_and_bright_particles_only():
    rng = np.random.default_rng(0)
    noise = {"signals": np.sort(rng.uniform(4, 25, 100)).tolist(), "pixels": 1_000_000}
    bright = rng.normal(200, 20, 50)
    clusters = rng.uniform(4, 25, 6)  # the ~6.5 expected in a 256 x 256 frame
    cut = adaptive_min_signal(np.r_[bright, clusters], 256 * 256, noise["signals"], noise["pixels"])
    assert clusters.max() < cut <= bright.min()
    faint = rng.uniform(8, 30, 50)  # particles as faint as the noise clusters: no cut can tell them apart
    cut = adaptive_min_signal(np.r_[faint, clusters], 256 * 256, noise["signals"], noise["pixels"])
    assert np.mean(np.r_[faint, clusters] >= cut) > 0.8
    assert adaptive_min_signal([], 100, noise["signals"], noise["pixels"]) == -np.inf


def test_detect_from_map_auto_min_signal_is_per_frame():
    maps, image, truth = _maps()
    maps[maps == 0.65] = 0.95
    image[1] *= 0.1  # frame 1: everything faint, the noise blob as bright as the objects relative to noise
    image[1][maps[1] == 0.95] = 0.3
    noise = {"signals": [0.3 * 29] * 20, "pixels": 64 * 64 * 20}  # one noise blob of signal ~9 per frame
    det = detect_from_map(maps, 0.5, image=image, min_signal="auto", noise_model=noise)
    assert (det.frame == 0).sum() == 3  # bright frame: the faint blob is cut
    assert (det.frame == 1).sum() == 4  # faint frame: nothing can be told apart, nothing is cut
    with pytest.raises(ValueError, match="noise_model"):
        detect_from_map(maps, 0.5, image=image, min_signal="auto")


def test_a_threshold_the_user_set_is_kept_not_retuned(tmp_path, one_torch_thread):
    from napari_deeptrack.cli import main

    out = tmp_path / "m.zip"
    assert main(["train", "particles-2d", "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "4", "--device", "cpu", "--quiet", "--set", "training.validation_size=8",
                 "--set", "postprocess.threshold=0.83"]) == 0  # fmt: skip
    pp = load_bundle(out).task.postprocess
    assert pp["threshold"] == 0.83 and pp["tune"] is False and "tuned_on" not in pp
