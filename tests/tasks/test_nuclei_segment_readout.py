"""The nuclei-segment preset's read-out (issue 15, BBBC039 over-count): ``predict`` on a class map turns an
elongated nucleus into one instance and drops specks, through the preset's own ``postprocess``."""

import dataclasses

import numpy as np
import torch
from scipy import ndimage

from napari_deeptrack.analysis.metrics import segmentation_metrics
from napari_deeptrack.analysis.predict import predict
from napari_deeptrack.tasks import get_preset


class _Brightness(torch.nn.Module):
    """A stand-in network: logits (background, interior, boundary) from the normalised brightness."""

    def forward(self, x):
        z = 10.0 * (x - 0.5)
        return torch.cat([-z, z, torch.zeros_like(z)], dim=1)


def _scene(seed: int):
    yy, xx = np.mgrid[0:64, 0:112]
    gt = np.zeros(yy.shape, np.int32)
    gt[np.hypot(yy - 32, np.clip(xx, 20, 42) - xx) <= 11] = 1  # elongated nucleus, 44 x 22 px
    gt[np.hypot(yy - 32, xx - 72) <= 10] = 2  # two touching round nuclei
    gt[np.hypot(yy - 32, xx - 89) <= 10] = 3
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter((gt > 0).astype(float), 1.0) + 0.08 * rng.standard_normal(gt.shape)
    img[7:10, 7:10] = 0.7  # a speck of debris
    return (150.0 + 500.0 * img).astype(np.float32), gt


def test_preset_readout_keeps_elongated_nuclei_whole_and_drops_specks():
    task = get_preset("nuclei-segment")
    assert task.postprocess["seed_h_px"] > 0 and task.postprocess["min_probability"] > 0.5
    old = dataclasses.replace(
        task,
        postprocess={
            k: v
            for k, v in task.postprocess.items()
            if k not in ("seed_h_px", "min_area_px", "min_probability")
        },
    )
    model = _Brightness().eval()
    extra_old = 0
    for seed in range(4):
        img, gt = _scene(seed)
        lab = predict(model, img, task=task).labels[0]
        m = segmentation_metrics(lab, gt, 0.5)
        assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 0), (seed, m)
        extra_old += segmentation_metrics(predict(model, img, task=old).labels[0], gt, 0.5)["fp"]
    assert extra_old >= 6  # the old read-out over-counts these very maps (split nucleus, speck)
