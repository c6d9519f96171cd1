"""Diverging training: non-finite / exploding losses are skipped with a lower learning rate a bounded
number of times, then training stops with TrainingDiverged (never a raw traceback, never a saved
diverged model)."""

import math

import pytest
import torch

from napari_deeptrack.errors import DeepTrackError, InputError, TrainingDiverged
from napari_deeptrack.nn import build_model
from napari_deeptrack.train import Trainer, ValidationSet
from napari_deeptrack.train.trainer import MAX_RECOVERIES


def _batches(n, bad=()):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(4, 1, 8, 8, generator=g)
        y = torch.randn(4, 2, generator=g)
        if i in bad:
            y = torch.full_like(y, math.nan)
        out.append((x, y))
    return out


def _trainer(batches, epochs, steps, lr=1e-3, checkpoint=None):
    torch.manual_seed(0)
    model = build_model({"type": "CNN", "channels": [4], "dense": [], "pool_to": 1, "norm": "none"})
    x, y = batches[0]
    return Trainer(
        model,
        {"type": "mse"},
        batches,
        ValidationSet(x, y),
        epochs=epochs,
        steps_per_epoch=steps,
        lr=lr,
        checkpoint=checkpoint,
    )


def test_a_few_bad_batches_are_skipped_and_the_rate_lowered(one_torch_thread):
    t = _trainer(_batches(8, bad={2, 5}), epochs=2, steps=4)
    with pytest.warns(RuntimeWarning, match="batch skipped"):
        h = t.fit()
    assert h["reason"] == "completed" and len(h["epoch"]) == 2
    assert [r["step"] for r in h["recoveries"]] == [2, 5]
    assert all(math.isfinite(v) for v in h["train_loss"] + h["val_loss"])
    assert t.opt.param_groups[0]["lr"] < 1e-3 / 50  # divided by 10 twice (and the cosine decay)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_persistent_nan_stops_with_a_message_and_no_diverged_checkpoint(one_torch_thread):
    saved = []
    t = _trainer(
        _batches(12, bad=set(range(2, 12))),
        epochs=3,
        steps=4,
        checkpoint=lambda m, h: saved.append([p.detach().clone() for p in m.parameters()]),
    )
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingDiverged) as info:
        t.fit()
    msg = str(info.value)
    assert "--lr" in msg and "grad_clip" in msg and f"{MAX_RECOVERIES} times" in msg
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, DeepTrackError)
    for params in saved:  # anything checkpointed is finite
        assert all(torch.isfinite(p).all() for p in params)


def test_spoiled_weights_are_restored():
    t = _trainer(_batches(4), epochs=1, steps=4)
    t.opt = torch.optim.Adam(t.model.parameters(), lr=1e-3)
    t.sched = t._scheduler(t.opt)
    t._step_count = 0
    t._good_state = {k: v.clone() for k, v in t.model.state_dict().items()}
    with torch.no_grad():
        next(t.model.parameters()).fill_(math.nan)
    with pytest.warns(RuntimeWarning):
        t._recover("test")
    assert t._params_finite()


@pytest.mark.parametrize("lr", [math.inf, math.nan, 0.0, -1.0, 1e6])
def test_unusable_learning_rates_are_refused_upfront(lr):
    with pytest.raises(InputError, match="lr"):
        _trainer(_batches(1), epochs=1, steps=1, lr=lr)
