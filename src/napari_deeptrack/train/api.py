"""One call that trains a task: :func:`train_task` (used by the command line and the napari widget).

It builds the model (or starts from a bundle for fine-tuning), simulates the validation set once
from a separate seed, streams training batches from an :class:`~.data.OnlineDataset` (or any dataset
of real images), runs the :class:`~.trainer.Trainer`, and saves the best checkpoint as a bundle
whenever the validation loss improves.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import OnlineDataset, ValidationSet, make_validation_set
from .events import Callback, StopFlag
from .seeding import INIT_STREAM, derive_seed
from .trainer import Trainer, schedule_from_settings

__all__ = ["TrainResult", "default_metrics", "train_task"]


@dataclass
class TrainResult:
    """What :func:`train_task` returns: the model (best weights), history, bundle path, validation set."""

    model: torch.nn.Module
    history: dict[str, Any]
    bundle_path: Path | None
    validation: ValidationSet
    settings: dict[str, Any]
    #: the task as saved in the bundle (detection: post-processing tuned on the validation set)
    task: Any = None


def localization_metrics(pred: torch.Tensor, val: ValidationSet) -> dict[str, float]:
    """RMSE of the predicted (y, x) in pixels: radial ``sqrt(mean(dy^2 + dx^2))`` and per axis."""
    t = val.targets.to(pred.dtype).reshape(len(pred), -1)  # models with log sigmas output more
    d = pred[:, :2] - t[:, :2]
    return {
        "rmse_px": float(d.pow(2).sum(1).mean().sqrt()),
        "rmse_y_px": float(d[:, 0].pow(2).mean().sqrt()),
        "rmse_x_px": float(d[:, 1].pow(2).mean().sqrt()),
    }


def default_metrics(task) -> Any:
    """Validation metrics recorded for a task kind (None when there is no cheap generic one)."""
    if task.kind == "localization":
        return localization_metrics
    return None


def _check_before_training(task, s: dict[str, Any], out, device, builds_model: bool) -> None:
    """Everything that can be checked before simulating or building anything (see issue 14)."""
    import math

    from ..errors import InputError
    from ..io.bundle import check_bundle_destination
    from ..sim import budget
    from .seeding import resolve_device

    if out is not None:
        check_bundle_destination(out)
    for key in ("epochs", "steps_per_epoch", "batch_size", "validation_size"):
        v = s.get(key)
        if v is None:
            continue
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or v < 1
            or v != int(v)
        ):
            raise InputError(f"training.{key} must be a whole number >= 1, got {v!r}", parameter=key)
    lr = s.get("lr")
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and 0 < lr <= 10):
        raise InputError(
            f"training.lr (--lr) must be in (0, 10], got {lr!r}; typical: 1e-4 to 1e-2", parameter="lr"
        )
    resolve_device(device)
    if builds_model and isinstance(getattr(task, "model", None), dict):
        budget.estimate_model(task.model).check()
        h, w = task.pipeline.image_shape
        ch = int(getattr(task.pipeline.optics, "n_channels", 1) or 1)
        budget.estimate_training(task.model, (int(s["batch_size"]), ch, h, w)).check()


def train_task(
    task,
    out: str | Path | None = None,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    seed: int | None = None,
    num_workers: int | None = None,
    deterministic: bool | None = None,
    init: str | Path | None = None,
    model: torch.nn.Module | None = None,
    train_data=None,
    validation: ValidationSet | None = None,
    callbacks: Sequence[Callback] = (),
    stop_flag: StopFlag | None = None,
    metrics=None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train ``task`` and (when ``out`` is given) save the best checkpoint as a bundle there.

    Parameters
    ----------
    task : Task
        What to train (see :func:`napari_deeptrack.tasks.get_preset`).
    out : path, optional
        Bundle folder or ``.zip``; rewritten atomically whenever the validation loss improves, so after
        a Stop or a crash it holds the best checkpoint so far.
    epochs, steps_per_epoch, batch_size, lr, seed, num_workers, deterministic
        Override the task's training settings (``None`` keeps them).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``mps``.
    init : path, optional
        Bundle to start from (fine-tuning / transfer learning); its model config and weights are used.
    model : torch.nn.Module, optional
        A user's own module instead of ``task.model``.
    train_data : iterable, optional
        Training batches instead of the online simulation (e.g. an :class:`~.data.ArrayDataset`).
    validation : ValidationSet, optional
        Instead of simulating one.
    callbacks, stop_flag, metrics
        See :class:`~.trainer.Trainer`; ``metrics`` defaults to :func:`default_metrics`.
    max_seconds : float, optional
        Wall-clock budget: the run is shortened to the epochs that fit, with the learning-rate
        schedule compressed to still decay to its end (see :class:`~.trainer.Trainer`).
    """
    from ..io.bundle import load_bundle, save_bundle

    if (task.loss or {}).get("type") == "lodestar":
        raise ValueError(
            f"task {task.name!r} is self-supervised: it trains from crops of your own images, not from "
            "simulated batches. Use train.selfsupervised.train_selfsupervised(task, images, crops) or "
            "`napari-deeptrack train particles-selfsupervised IMAGE --crop y0,x0,y1,x1 --out BUNDLE`."
        )
    from ..nn import build_model

    s = task.training_settings(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        num_workers=num_workers,
        deterministic=deterministic,
    )
    seed = int(s["seed"])
    _check_before_training(task, s, out, device, model is None and init is None)
    if model is None and init is not None:
        model = load_bundle(init).model
        model.train()
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, INIT_STREAM))
            model = build_model(task.model)
    if validation is None:
        validation = make_validation_set(
            task.pipeline, task.target, int(s["validation_size"]), seed, task.input_normalization
        )
    if train_data is None:
        train_data = OnlineDataset(
            task.pipeline,
            task.target,
            batch_size=int(s["batch_size"]),
            steps_per_epoch=int(s["steps_per_epoch"]),
            epochs=int(s["epochs"]),
            seed=seed,
            normalization=task.input_normalization,
            replay_max_uses=int(s["replay_max_uses"]),
            replay_capacity=int(s["replay_capacity"]),
        )
    bundle_path = Path(out) if out is not None else None
    settings = {k: v for k, v in s.items()}
    if init is not None:
        settings["init"] = str(init)
    if max_seconds is not None:
        settings["max_seconds"] = float(max_seconds)

    def checkpoint(m: torch.nn.Module, history: dict[str, Any]) -> None:
        if bundle_path is None:
            return
        last = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v and k not in ("epoch",)}
        save_bundle(bundle_path, m, task, history, seed=seed, training=settings, metrics=last)

    trainer = Trainer(
        model,
        task.loss,
        train_data,
        validation,
        **schedule_from_settings(s),
        device=device,
        callbacks=callbacks,
        stop_flag=stop_flag,
        checkpoint=checkpoint,
        metrics=metrics if metrics is not None else default_metrics(task),
        seed=seed,
        deterministic=bool(s["deterministic"]),
        num_workers=int(s["num_workers"]),
        max_seconds=max_seconds,
    )
    history = trainer.fit()
    task = _with_tuned_postprocess(task, trainer.model, validation)
    if bundle_path is not None and trainer.best_state is not None:
        # final save: same best weights, complete history (reason, epochs after the best one)
        best_i = history["epoch"].index(trainer.best_epoch)
        best_metrics = {
            k: v[best_i]
            for k, v in history.items()
            if isinstance(v, list) and len(v) == len(history["epoch"]) and k != "epoch"
        }
        save_bundle(
            bundle_path, trainer.model, task, history, seed=seed, training=settings, metrics=best_metrics
        )
    return TrainResult(trainer.model.to("cpu").eval(), history, bundle_path, validation, settings, task)


def _with_tuned_postprocess(task, model, validation):
    """A detection task's threshold / min_signal tuned on the validation set (a copy; others unchanged)."""
    from ..analysis.tune_detection import tunable, tune_on_validation

    if not tunable(task):
        return task
    device = next(model.parameters(), torch.empty(0)).device
    tuned = tune_on_validation(task, model, validation, device=device)
    if not tuned:
        return task
    task = copy.copy(task)
    task.postprocess = {**(task.postprocess or {}), **tuned}
    return task
