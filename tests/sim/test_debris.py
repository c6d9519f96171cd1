"""Debris: faint unlabelled specks in the image only (the negatives behind the BBBC039 over-count fix)."""

import numpy as np
import pytest
import torch

from napari_deeptrack.sim import Debris, IntUniform, from_json, to_json
from napari_deeptrack.tasks import get_preset


def test_debris_changes_the_image_not_the_targets():
    task = get_preset("nuclei-segment")
    assert any(isinstance(t, Debris) for t in task.pipeline.transforms)
    clean = task.pipeline.with_(transforms=[t for t in task.pipeline.transforms if not isinstance(t, Debris)])
    a, b = clean(6, seed=4), task.pipeline(6, seed=4)
    # same scenes and labels (Debris draws its random numbers after everything else)
    assert torch.equal(a.targets["classes"], b.targets["classes"])
    diff = (b.image - a.image)[:, 0].numpy()
    n = b.scene.image_params["debris_count"].numpy()
    assert (diff >= 0).all() and n.max() <= 4
    for i in range(6):
        if n[i] == 0:
            assert np.abs(diff[i]).max() == 0
        else:  # specks peak at 5-50 % of the background; they are small (a few px)
            peak = diff[i].max() / np.median(a.image[i, 0].numpy())
            assert 0.02 < peak < 0.6, peak
            assert (diff[i] > 0.5 * diff[i].max()).sum() < n[i] * 40


def test_debris_count_amplitude_and_serialisation():
    from napari_deeptrack.sim.pipeline import SimBatch
    from napari_deeptrack.sim.scene import Scene

    img = torch.full((3, 1, 32, 40), 100.0)
    batch = SimBatch(img.clone(), Scene.empty(3, 1, (32, 40)))
    out = Debris(count=IntUniform(2, 2), sigma_px=1.5, contrast=0.3)(batch, torch.Generator().manual_seed(0))
    assert out.scene.image_params["debris_count"].tolist() == [2, 2, 2]
    extra = (out.image - img)[:, 0]
    # two specks of peak 30 (0.3 x the median 100), Gaussian sigma 1.5 px: integral 2 x 30 x 2 pi 1.5^2
    # (less what falls off the edge), peaks at most 60 where two overlap
    total = extra.sum(dim=(1, 2)).numpy()
    assert np.all(total <= 2 * 30 * 2 * np.pi * 1.5**2 * 1.001) and np.all(
        total > 0.3 * 2 * 30 * 2 * np.pi * 1.5**2
    )
    assert 25.0 < float(extra.amax(dim=(1, 2)).min()) and float(extra.max()) <= 60.0 + 1e-3
    none = Debris(count=0)(SimBatch(img.clone(), Scene.empty(3, 1, (32, 40))), torch.Generator())
    assert torch.equal(none.image, img)
    assert from_json(to_json(Debris())) == Debris()
    with pytest.raises(ValueError, match="count"):
        Debris(count=IntUniform(0, 1000))
    with pytest.raises(ValueError, match="sigma_px"):
        Debris(sigma_px=0.0)
