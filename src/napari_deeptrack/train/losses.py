"""Losses built from JSON-able configs, some with a schedule over training.

``build_loss({"type": ...})`` with ``type`` one of:

- ``mae`` / ``mse``: mean absolute / squared error (regression, density maps).
- ``bce``: binary cross-entropy on logits. ``pos_weight`` multiplies the loss of positive pixels
  (missing a particle); a number, or a schedule ``[[start, value], ...]`` that is piecewise constant
  from each ``start`` on. ``schedule_unit`` is ``fraction`` (of the whole run, default) or ``epoch``.
  The DeepTrack 2.0 paper trains the particle detector with positives weighted 10:1 for the first 10
  of 110 epochs, then 1:1: ``{"type": "bce", "pos_weight": [[0, 10.0], [0.09, 1.0]]}``.
- ``ce``: cross-entropy on class logits ``[B, K, ...]`` with integer targets ``[B, ...]``.
- ``dice``: soft Dice loss on ``sigmoid(logits)`` (binary masks).
- ``sum``: weighted sum of ``terms`` (``[{"type": "bce", "weight": 1}, {"type": "dice", "weight": 1}]``).
- ``pix2pix``: adversarial + L1 for the conditional GAN (see :class:`Pix2PixLoss`).
- ``gaussian_nll``: heteroscedastic regression. The model outputs ``2K`` values per sample, the
  K estimates then K log standard deviations; the loss is the Gaussian negative log-likelihood
  ``log(sigma) + (target - estimate)^2 / (2 sigma^2)`` (see :class:`GaussianNLLLoss`). Each sample is
  weighted by its own ``1 / sigma^2``, so bright particles, whose errors are tiny, are not drowned by
  dim ones as they are under MAE or MSE, and the network reports a per-sample uncertainty.

Validation always uses :meth:`Loss.validation`, which for weighted BCE is the unweighted BCE so that
validation losses stay comparable when the weight schedule switches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "BCELoss", "GaussianNLLLoss", "Loss", "Pix2PixLoss", "build_loss", "scheduled_value"]


def scheduled_value(schedule: Any, progress: float, epoch: int, unit: str = "fraction") -> float:
    """Value of a number or ``[[start, value], ...]`` schedule at ``progress`` (0..1) / ``epoch``."""
    if isinstance(schedule, int | float):
        return float(schedule)
    if not isinstance(schedule, list | tuple) or not schedule:
        raise ValueError(f"schedule must be a number or a list of [start, value] pairs, got {schedule!r}")
    if unit not in ("fraction", "epoch"):
        raise ValueError(f"schedule_unit must be 'fraction' or 'epoch', got {unit!r}")
    t = progress if unit == "fraction" else epoch
    points = sorted((float(s), float(v)) for s, v in schedule)
    value = points[0][1]
    for start, v in points:
        if t >= start:
            value = v
    return value


def _match(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target.to(pred.device)
    if target.dim() == pred.dim() - 1 and pred.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != pred.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match model output {tuple(pred.shape)}"
        )
    return target.to(pred.dtype)


class Loss:
    """Base: ``loss(pred, target)`` for training, ``validation(pred, target)`` for validation."""

    name = "loss"

    def __init__(self, config: dict[str, Any]):
        self.config = dict(config)
        self.progress = 0.0
        self.epoch = 0

    def set_progress(self, epoch: int, progress: float) -> None:
        """Called by the trainer at the start of every epoch (``progress`` = epoch / epochs)."""
        self.epoch, self.progress = int(epoch), float(progress)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def validation(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self(pred, target)

    def state(self) -> dict[str, float]:
        """Scheduled values now (recorded in events and history)."""
        return {}


class MAELoss(Loss):
    name = "mae"

    def __call__(self, pred, target):
        return F.l1_loss(pred, _match(pred, target))


class MSELoss(Loss):
    name = "mse"

    def __call__(self, pred, target):
        return F.mse_loss(pred, _match(pred, target))


class BCELoss(Loss):
    """Binary cross-entropy on logits with a (scheduled) positive-class weight."""

    name = "bce"

    def __init__(self, config):
        super().__init__(config)
        self.schedule = config.get("pos_weight", 1.0)
        self.unit = config.get("schedule_unit", "fraction")
        w = self.pos_weight
        if not w > 0:
            raise ValueError(f"bce pos_weight must be > 0, got {w}")

    @property
    def pos_weight(self) -> float:
        return scheduled_value(self.schedule, self.progress, self.epoch, self.unit)

    def __call__(self, pred, target):
        w = torch.tensor(self.pos_weight, device=pred.device, dtype=pred.dtype)
        return F.binary_cross_entropy_with_logits(pred, _match(pred, target), pos_weight=w)

    def validation(self, pred, target):
        return F.binary_cross_entropy_with_logits(pred, _match(pred, target))

    def state(self):
        return {"pos_weight": self.pos_weight}


class CELoss(Loss):
    name = "ce"

    def __call__(self, pred, target):
        weight = self.config.get("class_weight")
        w = torch.tensor(weight, dtype=pred.dtype, device=pred.device) if weight is not None else None
        target = target.to(pred.device).long()
        if target.dim() == pred.dim():  # [B, 1, H, W] labels
            target = target[:, 0]
        return F.cross_entropy(
            pred, target, weight=w, label_smoothing=float(self.config.get("label_smoothing", 0))
        )


class DiceLoss(Loss):
    name = "dice"

    def __call__(self, pred, target):
        p = torch.sigmoid(pred)
        t = _match(pred, target)
        dims = tuple(range(1, p.dim()))
        inter = (p * t).sum(dims)
        eps = float(self.config.get("smooth", 1.0))
        return (1 - (2 * inter + eps) / (p.sum(dims) + t.sum(dims) + eps)).mean()


class SumLoss(Loss):
    name = "sum"

    def __init__(self, config):
        super().__init__(config)
        terms = config.get("terms")
        if not terms:
            raise ValueError("loss 'sum' needs a non-empty 'terms' list")
        self.terms = [
            (float(t.get("weight", 1.0)), build_loss({k: v for k, v in t.items() if k != "weight"}))
            for t in terms
        ]

    def set_progress(self, epoch, progress):
        super().set_progress(epoch, progress)
        for _, t in self.terms:
            t.set_progress(epoch, progress)

    def __call__(self, pred, target):
        return sum(w * t(pred, target) for w, t in self.terms)

    def validation(self, pred, target):
        return sum(w * t.validation(pred, target) for w, t in self.terms)

    def state(self):
        out: dict[str, float] = {}
        for _, t in self.terms:
            out.update(t.state())
        return out


class Pix2PixLoss(Loss):
    """Conditional GAN objective (DeepTrack 2.0 paper, section IV.7).

    Generator: ``adv(D(x, G(x)), real) + l1_weight * |G(x) - y|``; discriminator:
    ``(adv(D(x, y), real) + adv(D(x, G(x)), fake)) / 2``. ``adversarial`` is ``mse`` (least squares,
    the default) or ``bce``; ``l1_weight`` defaults to 0.8, the regularisation weight of the paper.
    Validation is the L1 error of the generator output.
    """

    name = "pix2pix"

    def __init__(self, config):
        super().__init__(config)
        self.l1_weight = float(config.get("l1_weight", 0.8))
        self.adversarial = config.get("adversarial", "mse")
        if self.adversarial not in ("mse", "bce"):
            raise ValueError(f"pix2pix adversarial must be 'mse' or 'bce', got {self.adversarial!r}")
        if self.l1_weight < 0:
            raise ValueError(f"pix2pix l1_weight must be >= 0, got {self.l1_weight}")

    def adv(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        t = torch.full_like(logits, 1.0 if real else 0.0)
        if self.adversarial == "mse":
            return F.mse_loss(logits, t)
        return F.binary_cross_entropy_with_logits(logits, t)

    def generator_loss(self, d_fake, fake, target):
        return self.adv(d_fake, True) + self.l1_weight * F.l1_loss(fake, _match(fake, target))

    def discriminator_loss(self, d_real, d_fake):
        return 0.5 * (self.adv(d_real, True) + self.adv(d_fake, False))

    def __call__(self, pred, target):
        return F.l1_loss(pred, _match(pred, target))


class GaussianNLLLoss(Loss):
    """Gaussian negative log-likelihood of ``K`` targets from ``2K`` outputs (estimates, log sigmas).

    ``log_sigma`` is clamped to ``[min_log_sigma, max_log_sigma]`` (default -9 and 5, i.e. sigma from
    1e-4 to 150 target units) so that a sample the network has learned exactly cannot drive the loss
    to minus infinity. Validation is the same likelihood (it rewards calibrated uncertainties as
    well as accurate estimates).
    """

    name = "gaussian_nll"

    def __init__(self, config):
        super().__init__(config)
        self.lo = float(config.get("min_log_sigma", -9.0))
        self.hi = float(config.get("max_log_sigma", 5.0))
        if not self.lo < self.hi:
            raise ValueError(f"gaussian_nll needs min_log_sigma < max_log_sigma, got {self.lo}, {self.hi}")

    def __call__(self, pred, target):
        target = target.to(pred.device).to(pred.dtype).reshape(len(pred), -1)
        k = target.shape[1]
        if pred.dim() != 2 or pred.shape[1] != 2 * k:
            raise ValueError(
                f"gaussian_nll needs the model to output 2 x {k} values (estimates, log sigmas) per "
                f"sample for {k} targets, got output shape {tuple(pred.shape)}; set the model's "
                f"out_features to {2 * k} (or use the mae loss)"
            )
        mu, log_sigma = pred[:, :k], pred[:, k:].clamp(self.lo, self.hi)
        return (log_sigma + 0.5 * ((target - mu) * torch.exp(-log_sigma)) ** 2).mean()


LOSSES: dict[str, type[Loss]] = {
    c.name: c
    for c in (MAELoss, MSELoss, BCELoss, CELoss, DiceLoss, SumLoss, Pix2PixLoss, GaussianNLLLoss)
}


def build_loss(config: dict[str, Any] | str) -> Loss:
    """A loss from ``{"type": name, ...}`` (or just the name); see the module docstring."""
    if isinstance(config, str):
        config = {"type": config}
    if not isinstance(config, dict) or config.get("type") not in LOSSES:
        got = config.get("type") if isinstance(config, dict) else config
        raise ValueError(f"loss type must be one of {sorted(LOSSES)}, got {got!r}")
    return LOSSES[config["type"]](config)
