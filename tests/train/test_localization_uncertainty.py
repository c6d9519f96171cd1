"""Heteroscedastic localisation: the Gaussian likelihood loss, sigma columns, dihedral test-time averaging."""

import math

import numpy as np
import pytest
import torch

from napari_deeptrack.analysis.predict import dihedral_average
from napari_deeptrack.analysis.properties import regression_to_table
from napari_deeptrack.train.losses import build_loss


def test_gaussian_nll_matches_the_formula_and_weights_precise_samples():
    loss = build_loss({"type": "gaussian_nll"})
    target = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    mu = torch.tensor([[0.5, 1.0], [2.0, 0.0]])
    log_s = torch.tensor([[0.0, math.log(0.5)], [math.log(2.0), 0.0]])
    pred = torch.cat([mu, log_s], 1)
    expect = (log_s + 0.5 * ((target - mu) / log_s.exp()) ** 2).mean()
    torch.testing.assert_close(loss(pred, target), expect)
    # the same error costs 100x more (in gradient) for a sample that claims a 10x smaller sigma
    p = torch.tensor([[0.1, 0.1, math.log(0.01), math.log(0.1)]], requires_grad=True)
    loss(p, torch.zeros(1, 2)).backward()
    g = p.grad[0, :2]
    assert float(g[0] / g[1]) == pytest.approx(100.0, rel=1e-4)
    # minimised over sigma at sigma = |error|
    s = torch.linspace(-4, 1, 501)
    values = torch.stack([loss(torch.tensor([[0.3, s_], ]), torch.zeros(1, 1)) for s_ in s])
    assert float(s[values.argmin()].exp()) == pytest.approx(0.3, rel=0.02)


def test_gaussian_nll_rejects_a_model_without_sigma_outputs():
    with pytest.raises(ValueError, match="out_features to 4"):
        build_loss("gaussian_nll")(torch.zeros(3, 2), torch.zeros(3, 2))


def test_regression_table_adds_sigma_columns_in_field_units():
    out = np.array([[0.5, -1.0, math.log(0.2), math.log(0.05)]])
    df = regression_to_table(out, ["y", "x"], scale=[2.0, 1.0], image_shape=(9, 9))
    assert df["y"].iloc[0] == pytest.approx(4.0 + 1.0) and df["x"].iloc[0] == pytest.approx(3.0)
    assert df["y_sigma"].iloc[0] == pytest.approx(0.4) and df["x_sigma"].iloc[0] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="log sigmas"):
        regression_to_table(np.zeros((1, 3)), ["y", "x"])


class _BiasedCentroid(torch.nn.Module):
    """Intensity centroid offset from the crop centre, plus an error that breaks the symmetry.

    Its "log sigma" per axis is the log of the spot's variance along that axis: an axis-bound
    quantity that must follow the axes through a transpose.
    """

    def __init__(self, bias=(0.3, -0.2)):
        super().__init__()
        self.bias = torch.tensor(bias)

    def forward(self, x):
        img = x[:, 0]
        s = img.shape[-1]
        grid = torch.arange(s, dtype=img.dtype) - (s - 1) / 2
        m = img.sum((-1, -2))
        cy = (img.sum(-1) * grid).sum(-1) / m
        cx = (img.sum(-2) * grid).sum(-1) / m
        vy = (img.sum(-1) * (grid - cy[:, None]) ** 2).sum(-1) / m
        vx = (img.sum(-2) * (grid - cx[:, None]) ** 2).sum(-1) / m
        c = torch.stack([cy, cx], 1) + self.bias.to(x.dtype)
        return torch.cat([c, torch.stack([vy, vx], 1).log()], 1)


def test_dihedral_average_cancels_a_non_equivariant_bias_and_keeps_axes():
    s = 15
    yy, xx = np.mgrid[:s, :s]
    pos = np.array([[8.3, 5.6], [6.1, 9.2]])
    imgs = np.stack([np.exp(-((yy - y) ** 2) / 2.0 - (xx - x) ** 2 / 8.0) for y, x in pos])  # wide in x
    x = torch.tensor(imgs, dtype=torch.float64)[:, None]
    model = _BiasedCentroid().double()
    raw = model(x)
    assert not torch.allclose(raw[:, :2], torch.tensor(pos) - (s - 1) / 2, atol=0.1)  # biased
    out = dihedral_average(model, x, ["y", "x"])
    unbiased = _BiasedCentroid(bias=(0.0, 0.0)).double()(x)  # (the crop edge truncates the wide spot)
    torch.testing.assert_close(out[:, :2], unbiased[:, :2].float(), atol=1e-4, rtol=0)
    # the per-axis widths stay with their axes (y narrow, x wide) although half the transforms swap them
    torch.testing.assert_close(out[:, 2:], raw[:, 2:].float(), atol=1e-3, rtol=0)
    assert bool((out[:, 3] > out[:, 2] + 0.5).all())
    with pytest.raises(ValueError, match="square"):
        dihedral_average(model, x[..., :-1], ["y", "x"])
    with pytest.raises(ValueError, match="'y' and 'x'"):
        dihedral_average(model, x, ["radius_um", "n_real"])


def test_dihedral_averaging_is_refused_or_switched_off_for_asymmetric_optics():
    from napari_deeptrack.analysis.predict import dihedral_asymmetry, predict
    from napari_deeptrack.io.bundle import Bundle
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.sim import Astigmatism, Fluorescence, Uniform, Zernike
    from napari_deeptrack.tasks import get_preset

    task = get_preset("particle-localize")
    assert task.postprocess["test_time_augmentation"] == "dihedral"
    assert dihedral_asymmetry(task.pipeline.optics) is None
    optics = dict(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1)
    sym = Fluorescence(**optics, aberrations=[Zernike.named("spherical", 0.5), Zernike.named("coma_x", 0.0)])
    assert dihedral_asymmetry(sym) is None  # m = 0, or a term fixed at zero
    coma = Fluorescence(**optics, aberrations=[Zernike.named("coma_x", Uniform(-0.3, 0.3))])
    assert "m=1" in dihedral_asymmetry(coma)
    assert "Astigmatism" in dihedral_asymmetry(Fluorescence(**optics, phase_mask=Astigmatism()))

    torch.manual_seed(0)
    model = build_model(task.model).eval()
    crops = task.pipeline(4, seed=1).image[:, 0].numpy()
    ok = predict(Bundle(model, task), crops)
    assert ok.info["test_time_augmentation"] == "dihedral"
    task.pipeline.optics = coma  # a user edited the optics after choosing the preset
    with pytest.warns(UserWarning, match="switched off"):
        res = predict(Bundle(model, task), crops)
    assert res.info["test_time_augmentation"] == "none"
    single = predict(Bundle(model, task), crops, test_time_augmentation="none")
    np.testing.assert_allclose(res.detections[["y", "x"]], single.detections[["y", "x"]])
    with pytest.raises(ValueError, match="coma|m=1"):
        predict(Bundle(model, task), crops, test_time_augmentation="dihedral")
