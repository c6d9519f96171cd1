"""The training loop: optimiser, learning-rate schedule, validation every epoch, history, early
stopping, best checkpoint, events, cooperative stop, deterministic mode.

The trainer is data-agnostic: ``train_data`` is any iterable of ``(image, target)`` batches (an
:class:`~.data.OnlineDataset` is wrapped in a DataLoader with ``num_workers`` simulation processes;
an :class:`~.data.ArrayDataset` of real images works the same way) and ``validation`` is a fixed
:class:`~.data.ValidationSet`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from ..errors import InputError, TrainingDiverged
from .data import ValidationSet, make_loader
from .events import Callback, StopFlag
from .losses import Loss, Pix2PixLoss, build_loss
from .seeding import derive_seed, deterministic_mode, resolve_device

__all__ = ["MAX_RECOVERIES", "Trainer"]

MetricsFn = Callable[[torch.Tensor, ValidationSet], dict[str, float]]
CheckpointFn = Callable[[torch.nn.Module, dict[str, Any]], None]

OPTIMIZERS = ("adam", "adamw")
#: Times a non-finite or exploding loss may be recovered from (skip the batch, restore the last good
#: weights if needed, divide the learning rate by ``RECOVERY_LR_FACTOR``) before training stops.
MAX_RECOVERIES = 3
RECOVERY_LR_FACTOR = 10.0
#: A training loss this many times the median of the recent losses counts as exploding.
EXPLODE_FACTOR = 1e4
#: Largest learning rate accepted (Adam steps of size ~lr: beyond this nothing trains).
MAX_LR = 10.0
SCHEDULES = ("cosine", "step", "none")


class Trainer:
    """Train ``model`` on ``train_data``, validate on ``validation`` after every epoch.

    Parameters
    ----------
    model : torch.nn.Module
        Any module (a :func:`~napari_deeptrack.nn.build_model` model or the user's own).
    loss : Loss or dict
        A :class:`~.losses.Loss` or its config.
    train_data : iterable
        Yields ``(image, target)`` batches; an ``IterableDataset`` gets a DataLoader with ``num_workers``.
        It is iterated once for the whole run, so it must yield ``epochs * steps_per_epoch`` batches.
    validation : ValidationSet
        Fixed validation data.
    epochs, steps_per_epoch : int
        Length of training.
    optimizer : str
        ``adam`` or ``adamw``.
    lr, weight_decay : float
        Learning rate and weight decay.
    lr_schedule : str
        ``cosine`` (per step down to 1 % of ``lr``), ``step`` (halve at 1/2 and 3/4 of the run) or ``none``.
    grad_clip : float
        Maximum gradient norm (0: no clipping).
    device : str
        ``auto``, ``cpu``, ``cuda``, ``mps``.
    callbacks : sequence of callables
        Receive every event dict (see :mod:`~.events`).
    stop_flag : StopFlag
        Checked after every batch.
    early_stopping_patience : int
        Stop after this many epochs without a better validation loss (0: never).
    checkpoint : callable(model, history)
        Called whenever the validation loss improves, with the model holding the best weights
        (e.g. to save a bundle).
    metrics : callable(predictions, validation) -> dict
        Extra validation metrics (e.g. localisation RMSE in pixels), recorded in history and events.
    seed : int or None
        Seeds dropout and any other torch randomness inside the loop.
    deterministic : bool
        Deterministic algorithms (same seed -> same weights).
    num_workers : int
        DataLoader worker processes when ``train_data`` is a dataset.
    val_batch_size : int
        Batch size for validation.
    Divergence: a batch whose loss or gradients are not finite, or whose loss explodes (more than
    ``EXPLODE_FACTOR`` times the median of the recent losses), is skipped; the weights go back to the
    last good ones if they were spoiled, the optimiser state is reset and the learning rate divided
    by ``RECOVERY_LR_FACTOR``. After ``MAX_RECOVERIES`` such recoveries (or a non-finite validation
    loss that recurs) training stops with :class:`~napari_deeptrack.errors.TrainingDiverged`, whose
    message says what to change; the diverged weights are never checkpointed.
    ``history["recoveries"]`` lists what happened.

    max_seconds : float or None
        Wall-clock budget for the run. After every epoch the trainer projects the time per epoch
        and, when ``epochs`` would not fit, shortens the run to the epochs that do, compressing the
        learning-rate schedule so that it still decays to its end (stopping a cosine run half-way
        leaves the learning rate high and the network imprecise). An epoch that would overrun the
        budget on its own is cut short; the best checkpoint is kept. ``history["reason"]`` is
        ``time_limit`` when the budget shortened the run.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: Loss | dict[str, Any],
        train_data: Iterable,
        validation: ValidationSet,
        *,
        epochs: int = 10,
        steps_per_epoch: int = 100,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "cosine",
        grad_clip: float = 0.0,
        device: str | torch.device = "cpu",
        callbacks: Sequence[Callback] = (),
        stop_flag: StopFlag | None = None,
        early_stopping_patience: int = 0,
        checkpoint: CheckpointFn | None = None,
        metrics: MetricsFn | None = None,
        seed: int | None = None,
        deterministic: bool = False,
        num_workers: int = 0,
        val_batch_size: int = 64,
        max_seconds: float | None = None,
    ):
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if not (math.isfinite(float(lr)) and 0 < float(lr) <= MAX_LR):
            raise InputError(
                f"lr (learning rate) must be in (0, {MAX_LR:g}], got {lr}; typical values are 1e-4 to 1e-2",
                parameter="lr",
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {lr_schedule!r}")
        if max_seconds is not None and not float(max_seconds) > 0:
            raise ValueError(f"max_seconds must be > 0 (or None), got {max_seconds}")
        if int(early_stopping_patience) < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {early_stopping_patience}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.loss = loss if isinstance(loss, Loss) else build_loss(loss)
        if isinstance(train_data, IterableDataset) and not isinstance(train_data, DataLoader):
            train_data = make_loader(train_data, num_workers, pin_memory=self.device.type == "cuda")
        self.train_data = train_data
        self.validation = validation
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)
        self.lr, self.weight_decay, self.optimizer_name = float(lr), float(weight_decay), optimizer
        self.lr_schedule, self.grad_clip = lr_schedule, float(grad_clip)
        self.callbacks = list(callbacks)
        self.stop_flag = stop_flag if stop_flag is not None else StopFlag()
        self.patience = int(early_stopping_patience)
        self.checkpoint, self.metrics = checkpoint, metrics
        self.seed, self.deterministic = seed, bool(deterministic)
        self.val_batch_size = int(val_batch_size)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.planned_epochs = self.epochs  # may shrink to fit max_seconds
        self.gan = isinstance(self.loss, Pix2PixLoss)
        if self.gan and not (hasattr(model, "generator") and hasattr(model, "discriminator")):
            raise ValueError("the pix2pix loss needs a model with .generator and .discriminator (nn.Pix2Pix)")
        self.history: dict[str, Any] = {
            "epoch": [],
            "train_loss": [],
            "val_loss": [],
            "lr": [],
            "samples_per_s": [],
            "time_s": [],
        }
        self.recoveries = 0
        self._recent: list[float] = []
        self._good_state: dict[str, torch.Tensor] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.best_val_loss = math.inf

    # ------------------------------------------------------------------ setup
    def _optimizer(self, params) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        betas = (0.5, 0.999) if self.gan else (0.9, 0.999)
        return cls(params, lr=self.lr, weight_decay=self.weight_decay, betas=betas)

    @property
    def total_steps(self) -> int:
        """Steps of the (possibly time-shortened) run; the schedule spans exactly these."""
        return self.planned_epochs * self.steps_per_epoch

    def _lr_factor(self, s: int) -> float:
        total = self.total_steps
        if self.lr_schedule == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        if self.lr_schedule == "step":
            return 0.5 ** ((s >= total // 2) + (s >= 3 * total // 4))
        return 1.0

    def _scheduler(self, opt: torch.optim.Optimizer):
        return torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)

    def _fit_to_budget(self, epochs_done: int, elapsed_s: float) -> None:
        """Shorten the planned run so that it ends within ``max_seconds`` (see the class docstring)."""
        per_epoch = elapsed_s / max(epochs_done, 1)
        fits = epochs_done + int((self.max_seconds - elapsed_s) // max(per_epoch, 1e-9))
        self.planned_epochs = max(epochs_done, min(self.planned_epochs, fits))

    def _emit(self, ev: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb(ev)

    # ------------------------------------------------------------------ steps
    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.gan:
            fake = self.model.generator(x)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss = self.loss.discriminator_loss(
                self.model.discriminator(x, y.to(fake.dtype)), self.model.discriminator(x, fake.detach())
            )
            d_loss.backward()
            self.opt_d.step()
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss.generator_loss(self.model.discriminator(x, fake), fake, y)
        else:
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(self.model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return self._skip(f"training loss is {value}")
        if len(self._recent) >= 10:
            median = sorted(self._recent)[len(self._recent) // 2]
            if value > EXPLODE_FACTOR * max(abs(median), 1e-3):
                return self._skip(f"training loss exploded to {value:.4g} (recent median {median:.4g})")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.grad_clip if self.grad_clip > 0 else math.inf
        )
        if not bool(torch.isfinite(norm)):
            self.opt.zero_grad(set_to_none=True)
            return self._skip("gradients are not finite")
        self.opt.step()
        self.sched.step()
        self._recent = (self._recent + [value])[-50:]
        return value

    # ------------------------------------------------------------------ divergence
    def _params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _skip(self, why: str) -> float:
        """Recover from a bad batch (see the class docstring); NaN is returned as its loss."""
        self._recover(why)
        self.sched.step()  # the schedule advances with the step count, skipped or not
        return math.nan

    def _recover(self, why: str) -> None:
        import warnings

        self.recoveries += 1
        lr_now = self.opt.param_groups[0]["lr"]
        record = self.history.setdefault("recoveries", [])
        record.append({"step": int(self._step_count), "problem": why, "lr": float(lr_now)})
        if self.recoveries > MAX_RECOVERIES:
            raise TrainingDiverged(
                f"training diverged: {why} (step {self._step_count}), still after lowering the learning rate "
                f"{MAX_RECOVERIES} times (from {self.lr:.3g} to {lr_now:.3g}). Lower the learning rate "
                "(--lr, e.g. 1e-4), clip gradients (--set training.grad_clip=1.0), or check the simulation "
                "and its normalisation (targets, intensities) for extreme values."
                + (
                    " The bundle keeps the best checkpoint from before the divergence."
                    if self.best_state
                    else " No model was saved."
                ),
                parameter="lr",
            )
        if not self._params_finite() and self._good_state is not None:
            self.model.load_state_dict(self._good_state)
        for opt in [self.opt] + ([self.opt_d] if self.gan else []):
            opt.state.clear()  # Adam moments may hold the blow-up
            for g in opt.param_groups:
                g["lr"] = g["lr"] / RECOVERY_LR_FACTOR
        self.sched.base_lrs = [b / RECOVERY_LR_FACTOR for b in self.sched.base_lrs]
        self._recent = []
        warnings.warn(
            f"{why} at step {self._step_count}: batch skipped, learning rate lowered to "
            f"{lr_now / RECOVERY_LR_FACTOR:.3g} (recovery {self.recoveries} of {MAX_RECOVERIES})",
            RuntimeWarning,
            stacklevel=3,
        )

    @torch.no_grad()
    def validate(self) -> tuple[float, dict[str, float]]:
        """Validation loss (sample-weighted mean) and metrics on the fixed validation set."""
        was_training = self.model.training
        self.model.eval()
        total, n, preds = 0.0, 0, []
        for x, y in self.validation.batches(self.val_batch_size):
            p = self.model(x.to(self.device))
            total += float(self.loss.validation(p, y)) * len(x)
            n += len(x)
            if self.metrics is not None:
                preds.append(p.cpu())
        metrics = self.metrics(torch.cat(preds), self.validation) if self.metrics is not None else {}
        self.model.train(was_training)
        return total / max(n, 1), {k: float(v) for k, v in metrics.items()}

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train; return the history. The model ends up holding the best (lowest val_loss) weights."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with deterministic_mode(self.deterministic), torch.random.fork_rng(devices=devices):
            if self.seed is not None:
                torch.manual_seed(derive_seed(int(self.seed), 3))
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        params = self.model.generator.parameters() if self.gan else self.model.parameters()
        self.opt = self._optimizer(params)
        if self.gan:
            self.opt_d = self._optimizer(self.model.discriminator.parameters())
        self.sched = self._scheduler(self.opt)
        self.planned_epochs = self.epochs
        self.model.train()
        self._step_count = 0
        self._good_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        it = iter(self.train_data)
        t_start = time.perf_counter()
        step, reason, epoch, bad_epochs = 0, "completed", -1, 0
        val_loss = math.nan
        try:
            while epoch + 1 < self.planned_epochs:
                epoch += 1
                self.loss.set_progress(epoch, epoch / self.planned_epochs)
                t_epoch, samples, losses = time.perf_counter(), 0, []
                for b in range(self.steps_per_epoch):
                    try:
                        x, y = next(it)
                    except StopIteration:
                        reason = "data_exhausted"
                        break
                    lr = self.opt.param_groups[0]["lr"]
                    self._step_count = step
                    loss = self._step(x, y)
                    if math.isfinite(loss):
                        losses.append(loss)
                    step += 1
                    samples += len(x)
                    now = time.perf_counter()
                    elapsed = now - t_start
                    self._emit(
                        {
                            "type": "batch",
                            "epoch": epoch,
                            "epochs": self.planned_epochs,
                            "batch": b,
                            "steps_per_epoch": self.steps_per_epoch,
                            "step": step,
                            "total_steps": self.total_steps,
                            "loss": loss,
                            "val_loss": val_loss,
                            "lr": lr,
                            "samples_per_s": samples / max(now - t_epoch, 1e-9),
                            "elapsed_s": elapsed,
                            "eta_s": elapsed / step * (self.total_steps - step),
                            **self.loss.state(),
                        }
                    )
                    if self.stop_flag:
                        reason = "stopped"
                        break
                    if self.max_seconds is not None and elapsed > self.max_seconds:
                        reason = "time_limit"
                        break
                if reason != "completed" and self.best_state is not None:
                    break  # keep the best checkpoint; a partial epoch is not validated
                if not losses:
                    break
                dt = time.perf_counter() - t_epoch
                val_loss, metrics = self.validate()
                if not math.isfinite(val_loss) or not self._params_finite():
                    # a spoiled model: never recorded as best, never checkpointed
                    self._recover(f"validation loss is {val_loss}")
                    if not self._params_finite() and self._good_state is not None:
                        self.model.load_state_dict(self._good_state)
                improved = math.isfinite(val_loss) and val_loss < self.best_val_loss
                self._record(epoch, losses, val_loss, metrics, lr, samples / max(dt, 1e-9), dt)
                if improved:
                    self.best_val_loss, self.best_epoch, bad_epochs = val_loss, epoch, 0
                    self.best_state = {
                        k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                    }
                    self._good_state = self.best_state
                    self.history["best_epoch"], self.history["best_val_loss"] = epoch, val_loss
                    if self.checkpoint is not None:
                        self.checkpoint(self.model, self.history)
                else:
                    bad_epochs += 1
                elapsed = time.perf_counter() - t_start
                self._emit(
                    {
                        "type": "epoch",
                        "epoch": epoch,
                        "epochs": self.planned_epochs,
                        "batch": len(losses) - 1,
                        "steps_per_epoch": self.steps_per_epoch,
                        "step": step,
                        "total_steps": self.total_steps,
                        "loss": float(sum(losses) / len(losses)),
                        "val_loss": val_loss,
                        "lr": lr,
                        "samples_per_s": samples / max(dt, 1e-9),
                        "elapsed_s": elapsed,
                        "eta_s": elapsed / step * (self.total_steps - step),
                        "best": improved,
                        "best_val_loss": self.best_val_loss,
                        "metrics": metrics,
                        **metrics,
                        **self.loss.state(),
                    }
                )
                if reason != "completed":
                    break
                if self.max_seconds is not None:
                    self._fit_to_budget(epoch + 1, time.perf_counter() - t_start)
                if self.patience and bad_epochs >= self.patience:
                    reason = "early_stopping"
                    break
        finally:
            del it  # shuts down DataLoader workers
        if reason == "completed" and self.planned_epochs < self.epochs:
            reason = "time_limit"  # all planned epochs ran, but the budget had cut the plan
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.history["reason"] = reason
        self.history["epochs_planned"] = self.planned_epochs
        self.history["steps"] = step
        self._emit(
            {
                "type": "end",
                "epoch": epoch,
                "epochs": self.planned_epochs,
                "step": step,
                "total_steps": self.total_steps,
                "reason": reason,
                "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss,
                "loss": self.history["train_loss"][-1] if self.history["train_loss"] else math.nan,
                "val_loss": val_loss,
                "lr": self.opt.param_groups[0]["lr"],
                "samples_per_s": self.history["samples_per_s"][-1] if self.history["samples_per_s"] else 0.0,
                "eta_s": 0.0,
                "elapsed_s": time.perf_counter() - t_start,
                "history": copy.deepcopy(self.history),
            }
        )
        return self.history

    def _record(self, epoch, losses, val_loss, metrics, lr, sps, dt) -> None:
        h = self.history
        h["epoch"].append(epoch)
        h["train_loss"].append(float(sum(losses) / len(losses)))
        h["val_loss"].append(float(val_loss))
        h["lr"].append(float(lr))
        h["samples_per_s"].append(float(sps))
        h["time_s"].append(float(dt))
        for k, v in {**metrics, **self.loss.state()}.items():
            h.setdefault(k, []).append(float(v))


def schedule_from_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The :class:`Trainer` keywords for epochs, optimiser, learning rate and its schedule, gradient clipping
    and early stopping, read from a task's training settings (``Task.training_settings``)."""
    s = settings
    return {
        "epochs": int(s["epochs"]),
        "steps_per_epoch": int(s["steps_per_epoch"]),
        "optimizer": s["optimizer"],
        "lr": float(s["lr"]),
        "weight_decay": float(s["weight_decay"]),
        "lr_schedule": s["lr_schedule"],
        "grad_clip": float(s["grad_clip"]),
        "early_stopping_patience": int(s["early_stopping_patience"]),
    }
