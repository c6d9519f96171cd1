"""Upfront time estimates: simulate, train and apply time a small sample, print a long estimate to
stderr and refuse one beyond the limit (24 h, NAPARI_DEEPTRACK_MAX_HOURS) unless --force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from napari_deeptrack.cli import main
from napari_deeptrack.errors import TimeBudgetError
from napari_deeptrack.sim import budget


def _fake_clock(step_s: float):
    """A clock that advances ``step_s`` seconds every time it is read."""
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def test_estimate_messages_and_limit(monkeypatch):
    est = budget.extrapolate_time(0.5, 10, 1e6, "simulation", ["`--frames` (1000000)"])
    assert est.seconds == pytest.approx(5e4)
    assert est.message() == "simulation: about 13.9 h (0.05 s per frame x 1,000,000 frames)"
    assert est.check() is est  # 13.9 h < 24 h
    monkeypatch.setenv(budget.ENV_MAX_HOURS, "10")
    with pytest.raises(TimeBudgetError, match="--frames") as info:
        est.check()
    assert info.value.parameter == "--frames" and info.value.limit_seconds == 36000
    assert "--force" in str(info.value) and budget.ENV_MAX_HOURS in str(info.value)
    assert est.check(force=True) is est
    assert budget.format_duration(30) == "30 s" and budget.format_duration(3 * 86400) == "3 days"


def test_simulate_refuses_an_absurd_run_before_writing(tmp_path, capsys, monkeypatch):
    from napari_deeptrack.commands import simulate

    monkeypatch.setenv(budget.ENV_MAX_HOURS, "1")
    monkeypatch.setattr(simulate, "_clock", _fake_clock(1000.0))  # every batch "takes" 1000 s
    out = tmp_path / "s.tif"
    args = ["simulate", "particles-2d", "--frames", "12", "--batch-size", "2", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "estimated time: simulation: about 1.7 h" in err and "--force" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main([*args, "--force"]) == 0
    err = capsys.readouterr().err
    assert "running anyway" in err and out.exists()


def test_simulate_short_run_prints_no_estimate(tmp_path, capsys):
    out = tmp_path / "s.tif"
    assert main(["simulate", "particles-2d", "--frames", "4", "--batch-size", "2", "--out", str(out)]) == 0
    assert "estimated time" not in capsys.readouterr().err


def test_training_guard_stops_after_the_first_batches(capsys):
    from napari_deeptrack.commands.train import TimeGuard

    guard = TimeGuard()
    ev = {"type": "batch", "epochs": 100, "steps_per_epoch": 1000, "total_steps": 100000, "elapsed_s": 3.0}
    guard({**ev, "step": 1})  # too early to judge
    assert guard.estimate is None
    with pytest.raises(TimeBudgetError, match="--epochs"):
        guard({**ev, "step": 3})  # 1 s per batch x 100000 batches = 27.8 h
    err = capsys.readouterr().err
    assert "estimated time: training: about 27.8 h (1 s per batch x 100,000 batches)" in err
    forced = TimeGuard(force=True)
    forced({**ev, "step": 3})
    assert forced.estimate.seconds == pytest.approx(1e5)


def test_train_cli_refuses_before_the_first_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(budget.ENV_MAX_HOURS, "1e-9")  # any run is too long
    out = tmp_path / "b"
    model = '{"type": "CNN", "out_features": 4, "channels": [4, 8], "dense": [8], "pool_to": 2}'
    tiny = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--device", "cpu", "--quiet",
            "--set", "training.validation_size=8", "--set", "pipeline.image_shape=[28,28]",
            "--set", f"model={model}"]  # fmt: skip
    assert main(["train", "particle-localize", "--out", str(out), *tiny]) == 2
    err = capsys.readouterr().err
    assert "training: about" in err and "--force" in err
    assert not out.exists()


def test_apply_times_one_frame_and_refuses(tmp_path, capsys, monkeypatch):
    import torch

    from napari_deeptrack.commands import apply
    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.io.tiff import write_tiff
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.tasks import get_preset

    torch.manual_seed(0)
    model = build_model({"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 2})
    bundle = save_bundle(tmp_path / "b", model.eval(), get_preset("particles-2d"))
    write_tiff(tmp_path / "stack.tif", np.random.default_rng(0).random((12, 32, 32), np.float32))
    monkeypatch.setenv(budget.ENV_MAX_HOURS, "1")
    monkeypatch.setattr(apply, "_clock", _fake_clock(1000.0))  # one frame "takes" 1000 s
    out = tmp_path / "r.csv"
    args = ["apply", str(bundle), str(tmp_path / "stack.tif"), "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "estimated time: apply: about 3.3 h (17 min per frame x 12 frames)" in err
    assert not out.exists()
    assert main([*args, "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 12 and out.exists()
