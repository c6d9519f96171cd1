"""Training on data simulated on the fly: datasets, trainer, losses, events."""

from .api import TrainResult, default_metrics, train_task
from .data import (
    ArrayDataset,
    OnlineDataset,
    ReplayBuffer,
    ValidationSet,
    make_loader,
    make_validation_set,
    normalize,
)
from .events import ProgressBar, StopFlag, format_event
from .finetune import mixed_batches, targets_from_points
from .losses import LOSSES, build_loss
from .seeding import derive_seed, deterministic_mode, resolve_device
from .trainer import Trainer

__all__ = [
    "LOSSES",
    "ArrayDataset",
    "OnlineDataset",
    "ProgressBar",
    "ReplayBuffer",
    "StopFlag",
    "TrainResult",
    "Trainer",
    "ValidationSet",
    "build_loss",
    "default_metrics",
    "derive_seed",
    "deterministic_mode",
    "format_event",
    "make_loader",
    "make_validation_set",
    "mixed_batches",
    "normalize",
    "resolve_device",
    "targets_from_points",
    "train_task",
]
