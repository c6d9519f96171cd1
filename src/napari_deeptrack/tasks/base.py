"""The :class:`Task` (simulation + target + model + loss + normalisation + post-processing).

The class lives in :mod:`napari_deeptrack.sim.task`, so that task files and bundles decode without
importing ``tasks/``; this module re-exports it for the preset factories and existing scripts.
"""

from __future__ import annotations

from ..sim.task import KINDS, TRAINING_DEFAULTS, Task

__all__ = ["KINDS", "TRAINING_DEFAULTS", "Task"]
