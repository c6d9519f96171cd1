"""Self-supervised (LodeSTAR-style) training: transformations, crop checks, a short training run."""

import numpy as np
import pytest
import torch

from napari_deeptrack.io.bundle import load_bundle
from napari_deeptrack.nn.lodestar import detect_frames
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train import StopFlag
from napari_deeptrack.train.data import normalize
from napari_deeptrack.train.selfsupervised import (
    LodeSTARLoss,
    back_map,
    check_crop,
    parse_crop,
    prepare_crops,
    train_selfsupervised,
    transformed_copies,
)


def _spots(shape, centres, amp=200.0, sigma=1.5, bg=20.0, seed=0):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    img = np.full(shape, bg)
    for cy, cx in centres:
        img += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return np.random.default_rng(seed).poisson(img).astype(np.float32)


def _centroid(x):  # oracle position of one bright spot (background-subtracted, positive part)
    x = (x - np.median(x)).clip(min=0) ** 2
    yy, xx = np.mgrid[: x.shape[0], : x.shape[1]]
    return np.array([(x * yy).sum() / x.sum(), (x * xx).sum() / x.sum()])


def test_back_map_undoes_every_translation_flip_and_rotation():
    img = _spots((40, 40), [(17.3, 21.6)], amp=2000.0, bg=10.0)
    cs = prepare_crops(img, [(4, 4, 36, 36)], {"mode": "robust"})
    cfg = {"copies": 8, "translation": 0.2, "noise": 0.0, "gain": [1.0, 1.0]}
    x, meta = transformed_copies(cs, 4, 8, cfg, torch.Generator().manual_seed(1))
    assert x.shape == (32, 1, 32, 32) and meta.shape == (32, 9)
    est = torch.tensor(np.stack([_centroid(im[0].numpy()) for im in x]), dtype=torch.float32)
    back = back_map(est, meta).numpy()
    truth = np.array([17.3 - 4, 21.6 - 4])
    assert np.abs(back - truth).max() < 0.1  # every copy maps back onto the spot of the original crop
    # without the back-mapping the estimates are spread over the shifts and flips
    assert np.abs(est.numpy() - truth).max() > 2.0


def test_loss_is_zero_for_an_exact_equivariant_estimator_and_positive_otherwise():
    img = _spots((40, 40), [(19.0, 20.0)], amp=2000.0, bg=10.0)
    cs = prepare_crops(img, [(4, 4, 36, 36)], {"mode": "robust"})
    cfg = {"copies": 4, "translation": 0.2, "noise": 0.0, "gain": [1.0, 1.0]}
    x, meta = transformed_copies(cs, 2, 4, cfg, torch.Generator().manual_seed(2))
    # build network outputs in which every cell votes for the oracle position of its copy
    stride = 2
    out = torch.zeros(len(x), 3, 16, 16)
    cells = torch.arange(16.0) * stride + 0.5
    for i, im in enumerate(x):
        cy, cx = _centroid(im[0].numpy())
        out[i, 0] = (cy - cells[:, None]) / stride
        out[i, 1] = (cx - cells[None, :]) / stride
    loss = LodeSTARLoss({"copies": 4})
    equi, within, _ = loss.terms(out, meta)
    assert within.item() < 1e-4 and equi.item() < 0.1
    out[0, 0] += 0.5  # one copy of 8 off by a pixel in y: mean |deviation| rises by (0.75 + 3 * 0.25) / 8
    assert loss.terms(out, meta)[0].item() == pytest.approx(equi.item() + 0.1875, abs=0.02)


def test_parse_crop():
    assert parse_crop("1,2,30,40") == (1, 2, 30, 40)
    assert parse_crop("3, 1,2,30,40") == (3, 1, 2, 30, 40)
    with pytest.raises(ValueError, match="y0,x0,y1,x1"):
        parse_crop("1,2,3")
    with pytest.raises(ValueError, match="y0,x0,y1,x1"):
        parse_crop("a,b,c,d")


def test_crop_checks_refuse_empty_crowded_and_outside_crops():
    one = _spots((24, 24), [(12, 11)])
    assert check_crop(one)["peak_snr"] > 5
    with pytest.raises(ValueError, match="no object"):
        check_crop(_spots((24, 24), []))
    with pytest.raises(ValueError, match="2 objects"):
        check_crop(_spots((24, 40), [(12, 10), (12, 29)]))
    # a bright centre with a dark ring is one object
    yy, xx = np.mgrid[:31, :31] - 15.0
    r = np.hypot(yy, xx)
    ring = 100 + 60 * np.exp(-(r**2) / 4) - 40 * np.exp(-((r - 5) ** 2) / 2)
    ring = np.random.default_rng(0).normal(ring, 2.0)
    check_crop(ring)
    img = _spots((40, 40), [(20, 20)])
    with pytest.raises(ValueError, match="outside"):
        prepare_crops(img, [(30, 30, 50, 50)], {"mode": "robust"})
    with pytest.raises(ValueError, match="frame 2"):
        prepare_crops(img, [(2, 0, 0, 20, 20)], {"mode": "robust"})
    with pytest.raises(ValueError, match="no object"):
        prepare_crops(_spots((40, 40), [(5, 5)]), [(20, 20, 36, 36)], {"mode": "robust"})


def test_short_training_makes_a_bundle_that_detects_the_objects(tmp_path, one_torch_thread):
    task = get_preset("particles-selfsupervised").edited(
        {"model.channels": [8], "model.pooled_channels": [16, 16], "training.batch_size": 16}
    )
    train_img = _spots((40, 40), [(20.0, 19.0)], seed=1)
    events = []
    res = train_selfsupervised(
        task,
        train_img,
        [(8, 8, 32, 32)],
        tmp_path / "ss.zip",
        epochs=4,
        steps_per_epoch=15,
        seed=0,
        callbacks=[events.append],
    )
    assert res.history["val_loss"][-1] < res.history["val_loss"][0]
    assert {"batch", "epoch", "end"} <= {e["type"] for e in events}
    assert res.task.postprocess["reference_mass"] > 0
    b = load_bundle(tmp_path / "ss.zip")
    assert b.task.postprocess["method"] == "lodestar" and b.config["training"]["crops"] == [[0, 8, 8, 32, 32]]
    truth = np.array([(15.3, 14.8), (40.6, 52.2), (60.1, 20.7)])
    frame = _spots((80, 72), truth, seed=5)
    x = normalize(torch.from_numpy(frame)[None, None], b.task.input_normalization)
    table, maps = detect_frames(b.model, x, b.task.postprocess, threshold=0.3)
    assert maps.shape == (1, 1, 80, 72)
    found = np.stack([table["y"], table["x"]], 1)
    d = np.linalg.norm(found[:, None] - truth[None], axis=-1)
    assert len(found) >= 3 and (d.min(0) < 1.5).all()  # all three found (short training: coarse)


def test_stop_flag_keeps_a_checkpoint(tmp_path, one_torch_thread):
    task = get_preset("particles-selfsupervised").edited(
        {"model.channels": [4], "model.pooled_channels": [8], "training.batch_size": 8}
    )
    stop = StopFlag()
    calls = []

    def cb(ev):
        calls.append(ev["type"])
        if ev["type"] == "epoch":
            stop.stop()

    res = train_selfsupervised(
        task,
        _spots((40, 40), [(20, 20)]),
        [(8, 8, 32, 32)],
        tmp_path / "b",
        epochs=5,
        steps_per_epoch=3,
        callbacks=[cb],
        stop_flag=stop,
    )
    assert res.history["reason"] == "stopped" and calls.count("epoch") == 1
    assert (tmp_path / "b" / "weights.safetensors").exists()


def test_train_task_points_self_supervised_tasks_to_their_own_training():
    from napari_deeptrack.train import train_task

    with pytest.raises(ValueError, match="--crop"):
        train_task(get_preset("particles-selfsupervised"))
