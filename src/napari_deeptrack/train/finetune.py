"""Fine-tuning on corrected real images: targets from annotations, and batches mixing real and simulated.

The Review widget (and scripts) fine-tune a trained model on frames the user corrected in napari:

- :func:`targets_from_points` renders the task's own training target (``DiskMask``, ``DensityMap``,
  ``RegressionVector``...) from annotated positions, with the same code as for simulated scenes;
  :func:`points_per_frame` turns a points table (``frame, y, x[, z_um]``) into its per-image input;
- :func:`targets_from_labels` turns corrected instance labels into the task's segmentation target;
- :class:`mixed_batches` alternates batches of random crops of the corrected frames with batches of the
  task's online simulation, so the model adapts to the real images without forgetting the simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..sim.scene import Scene
from ..sim.targets import InstanceLabels
from .data import OnlineDataset, normalize

__all__ = ["mixed_batches", "points_per_frame", "targets_from_labels", "targets_from_points"]


def targets_from_points(task, points: Sequence[Any], image_shape: tuple[int, int]) -> torch.Tensor:
    """Training targets for real images from annotated positions (e.g. corrected napari Points).

    Parameters
    ----------
    task : Task
        Its pipeline target ``task.target`` (``DiskMask``, ``DensityMap``...) is applied to a scene
        built from the points, exactly as for simulated images.
    points : sequence of arrays [N_i, 2] or [N_i, 3]
        Per image: (y, x) in pixels (and z in um). Annotated particles have intensity 1.
    image_shape : (H, W)

    Returns
    -------
    Tensor [B, ...]
        Targets for :class:`~napari_deeptrack.train.data.ArrayDataset` or :class:`mixed_batches`.
    """
    pts = [
        torch.as_tensor(np.asarray(p, dtype=np.float32)).reshape(-1, np.shape(p)[-1] if len(p) else 2)
        for p in points
    ]
    n_max = max([len(p) for p in pts] + [1])
    scene = Scene.empty(len(pts), n_max, tuple(int(s) for s in image_shape))
    for i, p in enumerate(pts):  # annotations are small; this runs once per fine-tuning session
        if len(p):
            if p.shape[1] not in (2, 3):
                raise ValueError(f"points must be [N, 2] (y, x) or [N, 3] (y, x, z_um), got {tuple(p.shape)}")
            scene.position[i, : len(p), : p.shape[1]] = p
            scene.present[i, : len(p)] = True
            scene.intensity[i, : len(p)] = 1.0
    return task.pipeline.targets[task.target](scene)


def points_per_frame(table, frames: Sequence[int]) -> list[np.ndarray]:
    """Points table (``frame, y, x`` px, optional ``z_um``) -> per frame an array [N, 3]: y, x, z_um."""
    out = []
    for f in np.asarray(frames, dtype=int):
        g = table[table["frame"] == f]
        z = g["z_um"].fillna(0).to_numpy(dtype=np.float32) if "z_um" in g else np.zeros(len(g), np.float32)
        yx = [g["y"].to_numpy(dtype=np.float32), g["x"].to_numpy(dtype=np.float32)]
        out.append(np.stack([*yx, z], axis=1))
    return out


def targets_from_labels(task, labels: np.ndarray) -> np.ndarray:
    """Corrected labels ``[B, H, W]`` -> the task's target ``[B, 1, H, W]``.

    Instance labels (int64) when the task learns :class:`~napari_deeptrack.sim.targets.InstanceLabels`,
    else the foreground mask (float32).
    """
    lab = np.asarray(labels)[:, None].astype(np.int64)
    if isinstance(task.pipeline.targets[task.target], InstanceLabels):
        return lab
    return (lab > 0).astype(np.float32)


class mixed_batches:  # noqa: N801 - used like a function returning an iterable
    """Alternate batches of corrected real frames (random crops, flips) and simulated images.

    Real batches: random crops of the task's training size (or whole frames when smaller) of the
    corrected frames and their targets, normalised as at inference. Simulated batches: the task's own
    online simulation. ``steps`` batches in total, a fraction ``real_fraction`` of them real (spread
    evenly; 0.5 alternates).
    """

    def __init__(
        self,
        task,
        frames: np.ndarray,
        targets: np.ndarray,
        batch_size: int,
        steps: int,
        seed: int = 0,
        real_fraction: float = 0.5,
    ):
        if not 0.0 < float(real_fraction) <= 1.0:
            raise ValueError(f"real_fraction must be in (0, 1], got {real_fraction}")
        self.task, self.frames, self.targets = task, frames.astype(np.float32), targets
        self.batch_size, self.steps, self.seed = int(batch_size), int(steps), int(seed)
        self.real_fraction = float(real_fraction)

    def is_real(self, step: int) -> bool:
        """Whether batch ``step`` is a real one (``real_fraction`` of the batches, spread evenly)."""
        f, off = self.real_fraction, 1.0 - self.real_fraction + 1e-9  # the first batch is real
        return int((step + 1) * f + off) > int(step * f + off)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        sim = iter(
            OnlineDataset(
                self.task.pipeline,
                self.task.target,
                batch_size=self.batch_size,
                steps_per_epoch=self.steps,
                epochs=1,
                seed=self.seed,
                normalization=self.task.input_normalization,
            )
        )
        rng = np.random.default_rng(self.seed)
        h, w = self.frames.shape[-2:]
        ch, cw = (min(h, s) for s in self.task.pipeline.image_shape)
        for step in range(self.steps):
            if not self.is_real(step):
                yield next(sim)
                continue
            idx = rng.integers(0, len(self.frames), self.batch_size)
            y0 = rng.integers(0, h - ch + 1, self.batch_size)
            x0 = rng.integers(0, w - cw + 1, self.batch_size)
            xs = np.stack([self.frames[i, a : a + ch, b : b + cw] for i, a, b in zip(idx, y0, x0)])
            ys = np.stack([self.targets[i, ..., a : a + ch, b : b + cw] for i, a, b in zip(idx, y0, x0)])
            flip = rng.random(self.batch_size) < 0.5
            xs[flip] = xs[flip][..., ::-1]
            ys[flip] = ys[flip][..., ::-1]
            x = normalize(torch.from_numpy(np.ascontiguousarray(xs))[:, None], self.task.input_normalization)
            yield x, torch.from_numpy(np.ascontiguousarray(ys))
