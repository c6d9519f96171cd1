"""Training: losses and schedules, online data in workers, replay buffer, validation set, trainer
events / stop / early stopping, determinism, fine-tuning, and a short particle-localize run."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_deeptrack.io.bundle import load_bundle
from napari_deeptrack.nn import build_model
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train import (
    ArrayDataset,
    OnlineDataset,
    ReplayBuffer,
    StopFlag,
    Trainer,
    ValidationSet,
    build_loss,
    make_loader,
    make_validation_set,
    resolve_device,
    targets_from_points,
    train_task,
)
from napari_deeptrack.train.losses import scheduled_value


def small_localize_task(size=16):
    """particle-localize shrunk for speed: 16x16 crops, a tiny CNN, a small validation set."""
    return get_preset("particle-localize").edited(
        {
            "pipeline.image_shape": [size, size],
            "pipeline.particles.0.y_px": {"type": "Uniform", "low": size / 2 - 2.5, "high": size / 2 + 1.5},
            "pipeline.particles.0.x_px": {"type": "Uniform", "low": size / 2 - 2.5, "high": size / 2 + 1.5},
            "model": {"type": "CNN", "out_features": 4, "channels": [4, 8], "dense": [16], "pool_to": 2},
            "training.validation_size": 16,
        }
    )


# ---------------------------------------------------------------------------- losses
def test_bce_pos_weight_follows_paper_schedule():
    loss = build_loss({"type": "bce", "pos_weight": [[0, 10.0], [0.1, 1.0]]})
    logits = torch.tensor([[-1.0, 2.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    pos = -F.logsigmoid(logits) * target
    neg = -F.logsigmoid(-logits) * (1 - target)
    for epoch, progress, w in [(0, 0.0, 10.0), (1, 0.05, 10.0), (2, 0.1, 1.0), (9, 0.9, 1.0)]:
        loss.set_progress(epoch, progress)
        assert loss.pos_weight == w
        assert torch.allclose(loss(logits, target), (w * pos + neg).mean())
        # validation is unweighted, so it stays comparable across the switch
        assert torch.allclose(loss.validation(logits, target), (pos + neg).mean())
    assert scheduled_value([[0, 5.0], [3, 2.0]], 0.0, 3, unit="epoch") == 2.0
    with pytest.raises(ValueError, match="schedule_unit"):
        scheduled_value([[0, 1.0]], 0, 0, unit="steps")


def test_other_losses_values():
    p = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    t = torch.tensor([[1.5, 2.0], [2.0, 5.0]])
    assert build_loss("mae")(p, t).item() == pytest.approx(0.375)
    assert build_loss("mse")(p, t).item() == pytest.approx((0.25 + 1.0) / 4)
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    assert build_loss("ce")(logits, torch.tensor([0])).item() == pytest.approx(
        -torch.log_softmax(logits, 1)[0, 0].item()
    )
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    dice = build_loss({"type": "dice", "smooth": 0.0})
    assert dice(torch.where(mask > 0, 20.0, -20.0), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert dice(torch.where(mask > 0, -20.0, 20.0), mask).item() == pytest.approx(1.0, abs=1e-6)
    combo = build_loss(
        {"type": "sum", "terms": [{"type": "bce", "pos_weight": 3.0}, {"type": "dice", "weight": 2}]}
    )
    assert combo.state() == {"pos_weight": 3.0}
    with pytest.raises(ValueError, match="loss type must be one of"):
        build_loss({"type": "hinge"})
    with pytest.raises(ValueError, match="does not match model output"):
        build_loss("mse")(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------- data
def test_online_batches_identical_with_0_and_2_workers_and_distinct_per_step():
    task = small_localize_task()
    ds = OnlineDataset(
        task.pipeline,
        task.target,
        batch_size=4,
        steps_per_epoch=3,
        epochs=2,
        seed=7,
        normalization=task.input_normalization,
    )
    serial = list(make_loader(ds, num_workers=0))
    parallel = list(make_loader(ds, num_workers=2))
    assert len(serial) == len(parallel) == 6
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # every step (also across epochs) gets fresh images
    targets = torch.cat([y for _, y in serial])
    assert len(torch.unique(targets[:, 0])) == len(targets)
    other = next(iter(OnlineDataset(task.pipeline, task.target, batch_size=4, seed=8)))
    assert not torch.equal(other[1], serial[0][1])


def test_replay_buffer_serves_each_sample_at_most_k_times():
    k, b = 3, 4
    buf = ReplayBuffer(max_uses=k, capacity=12)
    g = torch.Generator().manual_seed(0)
    counts: dict[int, int] = {}
    next_id, sims, steps = 0, 0, 60
    for _ in range(steps):
        if buf.needs_fresh(b):
            ids = torch.arange(next_id, next_id + b)
            buf.add(ids.float()[:, None], ids)
            next_id, sims = next_id + b, sims + 1
        _, y = buf.draw(b, g)
        assert len(torch.unique(y)) == b  # distinct samples within a batch
        for i in y.tolist():
            counts[i] = counts.get(i, 0) + 1
    assert max(counts.values()) <= k
    # steady state: about one simulation per k steps (plus filling the buffer)
    assert sims <= steps / k + 12 / b + 1
    assert sims < steps / 2


def test_online_dataset_with_replay_simulates_fewer_batches():
    task = small_localize_task()
    calls = []
    ds = OnlineDataset(
        task.pipeline,
        task.target,
        batch_size=4,
        steps_per_epoch=12,
        seed=1,
        replay_max_uses=4,
        replay_capacity=8,
    )
    orig = ds.simulate
    ds.simulate = lambda step: calls.append(step) or orig(step)
    batches = list(ds)
    assert len(batches) == 12 and all(x.shape == (4, 1, 16, 16) for x, _ in batches)
    assert len(calls) <= 12 / 4 + 2


def test_validation_set_fixed_and_separate_from_training():
    task = small_localize_task()
    v1 = make_validation_set(task.pipeline, task.target, 10, seed=3, normalization=task.input_normalization)
    v2 = make_validation_set(task.pipeline, task.target, 10, seed=3, normalization=task.input_normalization)
    assert torch.equal(v1.images, v2.images) and torch.equal(v1.targets, v2.targets)
    assert v1.scene.batch_size == 10
    train0 = OnlineDataset(task.pipeline, task.target, batch_size=10, seed=3).simulate(0)
    assert not torch.equal(train0[1], v1.targets)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------- trainer
def test_events_history_and_same_seed_deterministic(tmp_path):
    task = small_localize_task()
    events = []
    kw = dict(epochs=2, steps_per_epoch=3, batch_size=4, device="cpu", deterministic=True)
    r1 = train_task(task, tmp_path / "a", seed=5, callbacks=[events.append], **kw)
    r2 = train_task(task, None, seed=5, **kw)
    r3 = train_task(task, None, seed=6, **kw)
    s1, s2, s3 = r1.model.state_dict(), r2.model.state_dict(), r3.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1 if s1[k].is_floating_point())

    kinds = [e["type"] for e in events]
    assert kinds == ["batch"] * 3 + ["epoch"] + ["batch"] * 3 + ["epoch", "end"]
    for e in events:
        assert {"type", "epoch", "epochs", "step", "loss", "val_loss", "lr", "samples_per_s", "eta_s"} <= set(
            e
        )
    batches = [e for e in events if e["type"] == "batch"]
    assert [e["step"] for e in batches] == [1, 2, 3, 4, 5, 6]
    assert all(e["samples_per_s"] > 0 and math.isfinite(e["loss"]) and e["lr"] > 0 for e in batches)
    assert batches[-1]["eta_s"] == 0
    ep = [e for e in events if e["type"] == "epoch"]
    assert all("val_loss" in e and "rmse_px" in e for e in ep)
    assert events[-1]["reason"] == "completed"
    assert r1.history["epoch"] == [0, 1] and len(r1.history["val_loss"]) == 2
    assert r1.history["lr"][1] < r1.history["lr"][0]  # cosine schedule


def test_stop_mid_epoch_leaves_best_checkpoint(tmp_path):
    task = small_localize_task()
    out = tmp_path / "model.zip"
    stop = StopFlag()
    seen = []

    def cb(ev):
        seen.append(ev)
        if ev["type"] == "batch" and ev["epoch"] == 1 and ev["batch"] == 1:
            stop.stop()

    r = train_task(
        task,
        out,
        epochs=3,
        steps_per_epoch=4,
        batch_size=4,
        device="cpu",
        seed=0,
        callbacks=[cb],
        stop_flag=stop,
    )
    assert seen[-1]["type"] == "end" and seen[-1]["reason"] == "stopped"
    assert seen[-1]["step"] == 6  # stopped right after the batch that asked
    assert r.history["epoch"] == [0] and r.history["best_epoch"] == 0
    b = load_bundle(out)
    assert b.config["history"]["reason"] == "stopped"
    saved, best = b.model.state_dict(), r.model.state_dict()
    assert all(torch.equal(saved[k], best[k]) for k in saved)
    # the saved weights are epoch 0's, not the weights after the two extra batches
    x = r.validation.images[:4]
    with torch.no_grad():
        assert torch.equal(b.model(x), r.model.eval()(x))


def test_stop_before_first_validation_still_saves_a_checkpoint(tmp_path):
    task = small_localize_task()
    stop = StopFlag()
    stop.stop()
    r = train_task(
        task, tmp_path / "b", epochs=2, steps_per_epoch=5, batch_size=4, device="cpu", stop_flag=stop
    )
    assert r.history["reason"] == "stopped" and r.history["steps"] == 1
    assert load_bundle(tmp_path / "b").config["history"]["best_epoch"] == 0


def test_early_stopping_after_patience():
    class Worsening(Trainer):
        n = 0

        def validate(self):
            Worsening.n += 1
            return float(Worsening.n), {}

    x = torch.randn(8, 1, 8, 8)
    y = torch.randn(8, 2)
    model = build_model({"type": "CNN", "channels": [4], "dense": [], "pool_to": 1})
    data = ArrayDataset(x, y, batch_size=4, steps_per_epoch=2, epochs=10)
    t = Worsening(
        model,
        {"type": "mse"},
        data,
        ValidationSet(x, y),
        epochs=10,
        steps_per_epoch=2,
        early_stopping_patience=2,
    )
    h = t.fit()
    assert h["reason"] == "early_stopping" and h["epoch"] == [0, 1, 2] and h["best_epoch"] == 0


def test_time_budget_shortens_the_run_and_still_completes_the_lr_schedule():
    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build_model({"type": "CNN", "channels": [4], "dense": [], "pool_to": 1})

        def forward(self, x):
            time.sleep(0.02)  # ~0.1 s per 4-step epoch (plus validation)
            return self.net(x)

    x = torch.randn(8, 1, 8, 8)
    y = torch.randn(8, 2)
    data = ArrayDataset(x, y, batch_size=4, steps_per_epoch=4, epochs=100)
    t = Trainer(Slow(), {"type": "mse"}, data, ValidationSet(x, y), epochs=100, steps_per_epoch=4,
                lr=1e-2, max_seconds=1.0)  # fmt: skip
    t0 = time.perf_counter()
    h = t.fit()
    wall = time.perf_counter() - t0
    assert h["reason"] == "time_limit"
    assert 2 <= len(h["epoch"]) < 100 and h["epochs_planned"] == len(h["epoch"])
    assert wall < 2.0  # the budget plus at most about one epoch
    # the cosine schedule was compressed to the shortened run: it ended at its floor, not half-way
    assert t.opt.param_groups[0]["lr"] < 0.05 * 1e-2
    with pytest.raises(ValueError, match="max_seconds"):
        Trainer(Slow(), {"type": "mse"}, data, ValidationSet(x, y), max_seconds=0)


def test_fine_tuning_starts_from_bundle_on_real_images(tmp_path):
    task = small_localize_task()
    first = train_task(task, tmp_path / "base", epochs=1, steps_per_epoch=3, batch_size=4, device="cpu")
    # "real" labelled images: here simulated arrays stand in for corrected annotations
    val = first.validation
    real = ArrayDataset(
        val.images.numpy(), val.targets.numpy(), batch_size=4, steps_per_epoch=1, augment=False
    )
    tuned = train_task(
        task,
        tmp_path / "tuned",
        epochs=1,
        steps_per_epoch=1,
        lr=1e-12,
        device="cpu",
        init=tmp_path / "base",
        train_data=real,
        validation=val,
    )
    a, b = first.model.state_dict(), tuned.model.state_dict()
    floats = [k for k in a if a[k].is_floating_point() and "running" not in k]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in floats)
    fresh = train_task(
        task,
        None,
        epochs=1,
        steps_per_epoch=1,
        lr=1e-12,
        device="cpu",
        seed=99,
        train_data=real,
        validation=val,
    )
    assert any(not torch.allclose(a[k], fresh.model.state_dict()[k], atol=1e-6) for k in floats)
    assert load_bundle(tmp_path / "tuned").config["training"]["init"] == str(tmp_path / "base")


def test_targets_from_annotated_points_match_simulated_targets():
    task = get_preset("particles-2d")
    batch = task.pipeline(3, seed=4)
    points = [batch.scene.position[i, batch.scene.present[i], :2].numpy() for i in range(3)]
    masks = targets_from_points(task, points, task.pipeline.image_shape)
    assert torch.equal(masks, batch.targets["mask"])
    empty = targets_from_points(task, [np.zeros((0, 2))], (20, 30))
    assert empty.shape == (1, 1, 20, 30) and empty.sum() == 0


def test_pix2pix_trains_both_networks():
    torch.manual_seed(0)
    model = build_model({"type": "Pix2Pix", "base_channels": 4, "depth": 2, "disc_base_channels": 4})
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    y = torch.tanh(3 * x)
    before_g = [p.detach().clone() for p in model.generator.parameters()]
    before_d = [p.detach().clone() for p in model.discriminator.parameters()]
    data = ArrayDataset(x, y, batch_size=4, steps_per_epoch=3)
    t = Trainer(model, {"type": "pix2pix"}, data, ValidationSet(x, y), epochs=1, steps_per_epoch=3)
    h = t.fit()
    assert math.isfinite(h["train_loss"][0]) and math.isfinite(h["val_loss"][0])
    assert any(not torch.equal(a, p) for a, p in zip(before_g, model.generator.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(before_d, model.discriminator.parameters()))


@pytest.mark.slow
def test_particle_localize_short_run_reaches_subpixel_rmse(tmp_path):
    task = get_preset("particle-localize")
    r = train_task(task, tmp_path / "loc", epochs=6, steps_per_epoch=40, batch_size=32, device="cpu", seed=0)
    best = r.history["best_epoch"]
    rmse = r.history["rmse_px"][best]
    assert rmse < 0.5, f"validation RMSE {rmse:.3f} px"
    # independent check with the saved bundle on a fresh validation set
    b = load_bundle(tmp_path / "loc")
    val = make_validation_set(
        task.pipeline, task.target, 128, seed=123, normalization=task.input_normalization
    )
    with torch.no_grad():
        d = b.model(val.images)[:, :2] - val.targets
    assert d.pow(2).sum(1).mean().sqrt() < 0.5
