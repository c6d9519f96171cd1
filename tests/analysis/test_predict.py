"""The one prediction path (analysis/predict.py): chunking, the kind table, lazy reads, linking after
thresholding."""

import types

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeptrack.analysis.predict import KIND_RULES, predict, predict_chunks
from napari_deeptrack.sim import DensityMap, DiskMask, Fluorescence, Particles, Pipeline, PointParticle
from napari_deeptrack.tasks.base import KINDS, Task


class Logits(torch.nn.Module):
    """``gain * (x - 0.5)``: a stand-in detector on images in [0, 1]."""

    def __init__(self, gain=8.0):
        super().__init__()
        self.gain = gain

    def forward(self, x):
        return self.gain * (x - 0.5)


def _task(kind="detection", target=None, postprocess=None):
    pipe = Pipeline(
        image_shape=(48, 48),
        particles=[Particles(PointParticle(), count=3)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"t": target or DiskMask(radius_px=3)},
    )
    return Task(name="t", kind=kind, description="test", pipeline=pipe, target="t",
                model={"type": "UNet", "depth": 0}, input_normalization={"mode": "none"},
                postprocess=postprocess or {"activation": "sigmoid", "threshold": 0.5})  # fmt: skip


def _disks(frames=7, shape=(40, 56), amps=(1.0, 0.8, 0.45), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros((frames, *shape), np.float32)
    for t in range(frames):
        for k, amp in enumerate(amps):
            y, x = 8 + 12 * k + rng.uniform(-1, 1), 10 + 3 * t + rng.uniform(-1, 1)
            out[t] += amp * ((yy - y) ** 2 + (xx - x) ** 2 <= 9)
    return out


def test_every_task_kind_has_one_rule():
    assert set(KIND_RULES) == set(KINDS)
    assert not KIND_RULES["localization"].fully_convolutional and KIND_RULES["detection"].fully_convolutional
    assert not KIND_RULES["image-to-image"].has_detections


def test_chunks_give_the_same_result_as_one_pass_and_link_after_thresholding():
    task = _task()
    bundle = types.SimpleNamespace(model=Logits(), task=task, config={})
    images = _disks()
    whole = predict(bundle, images, link=True, search_range_px=6.0, chunk_frames=100)
    gen = predict_chunks(bundle, images, link=True, search_range_px=6.0, chunk_frames=3)
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as done:
            chunked = done.value
            break
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 6), (6, 7)]
    assert parts[1].detections["frame"].between(3, 5).all()  # global frame numbers
    pd.testing.assert_frame_equal(chunked.detections, whole.detections)
    np.testing.assert_array_equal(chunked.maps, whole.maps)
    # sigmoid(8 * (0.45 - 0.5)) < 0.5: the faint row is never detected, so never linked
    assert len(whole.detections) == 7 * 2 and whole.detections["track_id"].nunique() == 2
    assert whole.info["memory"] == 0 and whole.info["search_range_px"] == 6.0
    # a lower threshold detects it; the same call with a bare model and task= gives the same
    low = predict(Logits(), images, task=task, threshold=0.3, link=True, search_range_px=6.0)
    assert low.detections["track_id"].nunique() == 3


def test_segmentation_label_ids_are_unique_across_chunks():
    task = _task("segmentation", postprocess={"activation": "sigmoid", "threshold": 0.5})
    bundle = types.SimpleNamespace(model=Logits(), task=task, config={})
    images = _disks(frames=4)
    one = predict(bundle, images, chunk_frames=4)
    many = predict(bundle, images, chunk_frames=1)
    np.testing.assert_array_equal(one.labels, many.labels)
    pd.testing.assert_frame_equal(one.detections, many.detections)
    assert len(np.unique(many.labels[many.labels > 0])) == len(many.detections)


def test_counts_are_in_objects_not_in_the_training_density_scale():
    task = _task("counting", DensityMap(sigma_px=2.0),
                 {"activation": "none", "sigma_px": 2.0, "density_scale": 100.0})  # fmt: skip

    class Density(torch.nn.Module):
        def forward(self, x):  # the training density (objects / px) times density_scale
            return 100.0 * x / 29.0

    images = _disks(frames=2, amps=(1.0, 1.0, 1.0))
    res = predict(Density(), images, task=task)
    np.testing.assert_allclose(res.counts, images.sum(axis=(1, 2)) / 29.0, rtol=1e-5)


def test_lazy_input_is_read_one_chunk_at_a_time():
    class Lazy:
        """An array that records which frames were read."""

        def __init__(self, a):
            self.a, self.shape, self.reads = a, a.shape, []

        def __getitem__(self, key):
            self.reads.append((key.start, key.stop))
            return self.a[key]

    images = _disks(frames=5)
    lazy = Lazy(images)
    res = predict(Logits(), lazy, task=_task(), chunk_frames=2, keep_maps=False)
    assert lazy.reads == [(0, 2), (2, 4), (4, 5)] and res.maps is None
    pd.testing.assert_frame_equal(res.detections, predict(Logits(), images, task=_task()).detections)


def test_bad_inputs_are_refused_clearly():
    task = _task()
    with pytest.raises(ValueError, match="task="):
        predict(Logits(), np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="input channel"):
        predict(Logits(), np.zeros((2, 3, 8, 8)), task=task)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        predict(Logits(), np.zeros((1, 1, 1, 8, 8)), task=task)
    loc = _task("localization", postprocess={"activation": "none"})
    with pytest.raises(ValueError, match="48x48 crops"):
        predict(Logits(), np.zeros((2, 64, 64)), task=loc)


def test_large_frames_are_post_processed_in_bands_with_the_same_detections(monkeypatch):
    import napari_deeptrack.analysis.predict as pr

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:300, :220]
    img = np.zeros((2, 300, 220), np.float32)
    for t in range(2):
        for y, x in rng.uniform(4, [296, 216], (60, 2)):
            img[t] += (yy - y) ** 2 + (xx - x) ** 2 <= 9
    img = np.minimum(img, 1.0)
    whole = predict(Logits(), img, task=_task(), tile_size=64, tile_overlap=16)
    monkeypatch.setattr(pr, "BAND_PIXELS", 64 * 220)  # bands of 128 rows (the least) + 32 of context
    assert len(pr._bands(300, 220)) == 3
    banded = predict(Logits(), img, task=_task(), tile_size=64, tile_overlap=16)
    assert len(whole.detections) > 100
    pd.testing.assert_frame_equal(banded.detections, whole.detections)
