"""LodeSTAR vote network: geometry of the votes, vote map, positions and masses from votes."""

import numpy as np
import pytest
import torch

from napari_deeptrack.nn import build_model, model_config
from napari_deeptrack.nn.lodestar import crop_positions, describe, locate_from_votes, vote_map, votes


def test_model_builds_from_config_and_has_the_stated_stride():
    m = build_model({"type": "LodeSTAR", "channels": [4], "pooled_channels": [8], "pools": 1, "binning": 2})
    assert m.stride == 4
    out = m(torch.zeros(2, 1, 32, 48))
    assert out.shape == (2, 3, 8, 12)
    assert model_config(m)["binning"] == 2
    assert describe(m)["receptive_field_px"] > m.stride


def test_zero_offsets_vote_for_the_cell_centres():
    out = torch.zeros(1, 3, 4, 5)
    pos, w = votes(out, 2)
    assert torch.allclose(pos[0, 0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert torch.allclose(pos[0, 1, 0], torch.tensor([0.5, 2.5, 4.5, 6.5, 8.5]))
    assert torch.allclose(w, torch.full_like(w, 0.5))
    # equal weights: the crop estimate is the mean cell centre = the image centre
    assert torch.allclose(crop_positions(out, 2)[0], torch.tensor([3.5, 4.5]))


def _all_vote_for(point, shape=(16, 16), stride=2, logit=0.0):
    h, w = shape[0] // stride, shape[1] // stride
    out = torch.zeros(1, 3, h, w)
    pos, _ = votes(out, stride)
    out[0, 0] = (point[0] - pos[0, 0]) / stride
    out[0, 1] = (point[1] - pos[0, 1]) / stride
    out[0, 2] = logit
    return out


def test_vote_map_conserves_weight_and_piles_up_at_the_voted_point():
    out = _all_vote_for((7.25, 9.75))
    vm = vote_map(*votes(out, 2), (16, 16))
    assert vm.sum().item() == pytest.approx(64 * 0.5, rel=1e-5)
    iy, ix = np.unravel_index(vm[0].argmax().item(), (16, 16))
    assert (iy, ix) == (7, 10)


def test_locate_from_votes_finds_subpixel_position_and_mass():
    a = _all_vote_for((7.25, 9.75), shape=(32, 32))
    b = _all_vote_for((20.6, 4.1), shape=(32, 32))
    cells, _ = votes(torch.zeros_like(a), 2)
    near_a = (cells[0, 0] < 14).float()  # upper cells vote for a, lower cells for b
    out = a * near_a + b * (1 - near_a)
    found = locate_from_votes(*votes(out, 2), (32, 32), min_mass=1.0, radius_px=1.5)[0]
    assert len(found["y"]) == 2
    np.testing.assert_allclose(found["y"], [7.25, 20.6], atol=1e-4)
    np.testing.assert_allclose(found["x"], [9.75, 4.1], atol=1e-4)
    n_a = int(near_a.sum())
    np.testing.assert_allclose(found["mass"], [0.5 * n_a, 0.5 * (256 - n_a)], rtol=1e-5)
    assert found["spread"].max() < 1e-3
    # a mass threshold above both piles finds nothing
    assert len(locate_from_votes(*votes(out, 2), (32, 32), min_mass=1000.0)[0]["y"]) == 0


def test_scattered_votes_make_no_detection():
    g = torch.Generator().manual_seed(0)
    out = torch.zeros(1, 3, 16, 16)
    out[0, :2] = 4 * torch.randn(2, 16, 16, generator=g)  # every cell votes somewhere else
    found = locate_from_votes(*votes(out, 2), (32, 32), min_mass=5.0, radius_px=1.5)[0]
    assert len(found["y"]) == 0
