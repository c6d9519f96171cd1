"""Task presets: simulation + target + model + post-processing + metrics for one use case."""

from .base import KINDS, TRAINING_DEFAULTS, Task
from .registry import get_preset, list_presets, load_task, register_preset

__all__ = ["KINDS", "TRAINING_DEFAULTS", "Task", "get_preset", "list_presets", "load_task", "register_preset"]
