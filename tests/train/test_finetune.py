"""Fine-tuning helpers (train/finetune.py): targets_from_points, labels, mixed real / simulated batches."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train.finetune import (
    mixed_batches,
    points_per_frame,
    targets_from_labels,
    targets_from_points,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_targets_from_a_points_table_equal_the_simulated_targets():
    task = get_preset("particles-2d")
    batch = task.pipeline(3, seed=5)
    rows = []
    for i in range(3):
        for y, x, z in batch.scene.position[i, batch.scene.present[i]].tolist():
            rows.append({"frame": 10 + i, "y": y, "x": x, "z_um": z})
    table = pd.DataFrame(rows)
    points = points_per_frame(table, [10, 11, 12])
    assert [len(p) for p in points] == batch.scene.present.sum(dim=1).tolist()
    targets = targets_from_points(task, points, task.pipeline.image_shape)
    assert torch.equal(targets, batch.targets["mask"])
    # an unannotated frame has an empty target; a count target sees each annotated particle once
    assert points_per_frame(table, [99])[0].shape == (0, 3)
    counting = get_preset("cells-count")
    dens = targets_from_points(counting, [np.array([[60.0, 60.0], [20.0, 90.0]])], (128, 128))
    scale = counting.pipeline.targets["density"].scale
    assert float(dens.sum()) / scale == pytest.approx(2.0, rel=1e-4)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        targets_from_points(task, [np.zeros((2, 4))], (8, 8))


def test_targets_from_labels_follow_the_task_target():
    labels = np.zeros((2, 16, 16), np.int32)
    labels[0, 2:6, 2:6] = 3
    seg = targets_from_labels(get_preset("nuclei-segment"), labels)  # BoundaryClasses: foreground mask
    assert seg.dtype == np.float32 and seg.shape == (2, 1, 16, 16) and seg.sum() == 16


def test_mixed_batches_alternate_real_crops_and_simulation():
    task = get_preset("particles-2d")
    frames = np.random.default_rng(0).poisson(10.0, (2, 80, 90)).astype(np.float32)
    targets = targets_from_points(task, [np.array([[40.0, 45.0]]), np.zeros((0, 2))], (80, 90)).numpy()
    batches = list(mixed_batches(task, frames, targets, batch_size=3, steps=4))
    assert len(batches) == 4
    for x, y in batches:
        assert x.shape == (3, 1, 64, 64) and y.shape == (3, 1, 64, 64)
    # real crops are normalised like the simulation (robust z-score: background median near 0)
    assert abs(float(batches[0][0].median())) < 1.0
