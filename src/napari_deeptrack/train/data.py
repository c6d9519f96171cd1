"""Training data: online simulation in DataLoader workers, a replay buffer, a fixed validation set,
and real labelled images for fine-tuning.

All datasets yield whole batches ``(image [B, C, H, W], target [B, ...])`` with the input already
normalised (the same :func:`normalize` is applied to real images at inference), so the DataLoader
is used with ``batch_size=None``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..sim.noise import normalize_input as normalize  # the one normaliser of network inputs
from ..sim.optics.generator import add_mask_noise
from ..sim.params import Uniform, check_range
from ..sim.pipeline import Pipeline
from ..sim.scene import Scene
from .seeding import TRAIN_STREAM, VALIDATION_STREAM, derive_seed, make_generator

__all__ = [
    "ArrayDataset",
    "RealPairCrops",
    "OnlineDataset",
    "ReplayBuffer",
    "ValidationSet",
    "make_loader",
    "make_validation_set",
    "normalize",
]


def _target(batch, key: str) -> torch.Tensor:
    if key not in batch.targets:
        raise ValueError(f"target {key!r} not produced by the pipeline; targets: {sorted(batch.targets)}")
    return batch.targets[key]


# ---------------------------------------------------------------------------- replay buffer
class ReplayBuffer:
    """Reuse expensive simulated samples a bounded number of times (DeepTrack's ContinuousGenerator idea).

    The buffer holds up to ``capacity`` samples. Each call to :meth:`draw` returns ``batch_size``
    distinct random samples and counts one use for each; a sample is dropped after ``max_uses``
    uses. :meth:`needs_fresh` says when a freshly simulated batch should be added: while the buffer
    is below capacity or holds fewer than ``batch_size`` samples. In steady state one new batch is
    simulated every ``max_uses`` steps.

    Parameters
    ----------
    max_uses : int
        Maximum number of times any sample is served (>= 1).
    capacity : int
        Samples kept (>= the batch size).
    """

    def __init__(self, max_uses: int, capacity: int):
        if int(max_uses) < 1:
            raise ValueError(f"replay max_uses must be >= 1, got {max_uses}")
        if int(capacity) < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.max_uses = int(max_uses)
        self.capacity = int(capacity)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.uses = torch.zeros(0, dtype=torch.long)
        self.n_added = 0
        self.n_served = 0

    def __len__(self) -> int:
        return int(self.uses.numel())

    def needs_fresh(self, batch_size: int) -> bool:
        return len(self) < max(self.capacity, batch_size)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of samples (first dimension is the sample index)."""
        if self.x is None:
            self.x, self.y = x, y
        else:
            self.x, self.y = torch.cat([self.x, x]), torch.cat([self.y, y])
        self.uses = torch.cat([self.uses, torch.zeros(len(x), dtype=torch.long)])
        self.n_added += len(x)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` distinct samples; each counts one use and is dropped after ``max_uses``."""
        if len(self) < batch_size:
            raise ValueError(f"replay buffer holds {len(self)} samples, fewer than batch_size={batch_size}")
        idx = torch.randperm(len(self), generator=generator)[:batch_size]
        x, y = self.x[idx], self.y[idx]
        self.uses[idx] += 1
        keep = self.uses < self.max_uses
        self.x, self.y, self.uses = self.x[keep], self.y[keep], self.uses[keep]
        self.n_served += batch_size
        return x, y


# ---------------------------------------------------------------------------- online simulation
class OnlineDataset(IterableDataset):
    """Batches simulated on the fly, in the calling process or in DataLoader worker processes.

    Batch ``k`` (counted over the whole training run, ``k = epoch * steps_per_epoch + step``) is
    simulated from its own generator seeded with ``derive_seed(seed, TRAIN_STREAM, k)``. With
    ``W`` workers, worker ``w`` makes batches ``k = w, w + W, ...`` and the DataLoader returns them in
    order, so each worker's seeds derive from (seed, worker id, epoch) and the training data are the
    same for any number of workers (without replay). Simulation in workers overlaps the optimiser step.

    Parameters
    ----------
    pipeline : Pipeline
        The simulation.
    target : str
        Key of ``pipeline.targets`` returned as the training target.
    batch_size : int
        Images per batch.
    steps_per_epoch, epochs : int
        Length of the stream (``epochs * steps_per_epoch`` batches); iterate once for the whole run.
    seed : int
        Root seed.
    normalization : dict or None
        Input normalisation (:func:`normalize`).
    replay_max_uses : int
        > 1 enables the :class:`ReplayBuffer`: each simulated sample is served at most this many times.
    replay_capacity : int
        Samples held by each worker's replay buffer (0: 8 batches).
    start_step : int
        First batch index (to resume).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        target: str,
        batch_size: int = 16,
        steps_per_epoch: int = 100,
        epochs: int = 1,
        seed: int = 0,
        normalization: dict[str, Any] | None = None,
        replay_max_uses: int = 1,
        replay_capacity: int = 0,
        start_step: int = 0,
    ):
        super().__init__()
        for name, v, lo in (
            ("batch_size", batch_size, 1),
            ("steps_per_epoch", steps_per_epoch, 1),
            ("epochs", epochs, 1),
            ("replay_max_uses", replay_max_uses, 1),
            ("seed", seed, 0),
            ("replay_capacity", replay_capacity, 0),
        ):
            if int(v) < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
        if target not in pipeline.targets:
            raise ValueError(
                f"target {target!r} is not a pipeline target; targets: {sorted(pipeline.targets)}"
            )
        self.pipeline = pipeline
        self.target = target
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.seed = int(seed)
        self.normalization = normalization
        self.replay_max_uses = int(replay_max_uses)
        self.replay_capacity = int(replay_capacity) or 8 * self.batch_size
        self.start_step = int(start_step)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def simulate(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``step``: normalised images and targets."""
        g = make_generator(derive_seed(self.seed, TRAIN_STREAM, step))
        batch = self.pipeline(self.batch_size, generator=g)
        return normalize(batch.image, self.normalization), _target(batch, self.target)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        steps = range(self.start_step + wid, self.total_steps, nw)
        if self.replay_max_uses <= 1:
            for k in steps:
                yield self.simulate(k)
            return
        buffer = ReplayBuffer(self.replay_max_uses, self.replay_capacity)
        for k in steps:
            if buffer.needs_fresh(self.batch_size):
                buffer.add(*self.simulate(k))
            yield buffer.draw(self.batch_size, make_generator(derive_seed(self.seed, TRAIN_STREAM, k, 1)))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one simulation thread per worker process: no oversubscription


def make_loader(dataset: IterableDataset, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a batch-yielding dataset, with ``num_workers`` simulation processes."""
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"worker_init_fn": _worker_init, "prefetch_factor": 2, "persistent_workers": False}
    return DataLoader(dataset, batch_size=None, num_workers=int(num_workers), pin_memory=pin_memory, **kwargs)


# ---------------------------------------------------------------------------- validation
@dataclass
class ValidationSet:
    """A fixed set of (normalised) images, targets and their ground-truth scene."""

    images: torch.Tensor
    targets: torch.Tensor
    scene: Scene | None = None
    seed: int | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.targets[i : i + batch_size]


def make_validation_set(
    pipeline: Pipeline,
    target: str,
    n_images: int = 256,
    seed: int = 0,
    normalization: dict[str, Any] | None = None,
    chunk: int = 64,
) -> ValidationSet:
    """Simulate a validation set once, from ``derive_seed(seed, VALIDATION_STREAM)``.

    The validation stream is separate from every training batch's stream, so validation images are
    never training images (evaluation data absent from training, as reporting guidelines ask).
    """
    if int(n_images) < 1:
        raise ValueError(f"validation_size must be >= 1, got {n_images}")
    g = make_generator(derive_seed(seed, VALIDATION_STREAM))
    xs, ys, scenes = [], [], []
    for i in range(0, n_images, chunk):
        b = pipeline(min(chunk, n_images - i), generator=g)
        xs.append(normalize(b.image, normalization))
        ys.append(_target(b, target))
        scenes.append(b.scene)
    return ValidationSet(torch.cat(xs), torch.cat(ys), Scene.concatenate(scenes), seed=seed)


# ---------------------------------------------------------------------------- real images
class ArrayDataset(IterableDataset):
    """Real labelled images (e.g. corrected annotations) for fine-tuning with the same trainer.

    Parameters
    ----------
    images : Tensor or ndarray [N, C, H, W] or [N, H, W]
        Raw images (normalised here with ``normalization``, as at inference).
    targets : Tensor or ndarray [N, ...]
        Targets in the format the task's pipeline target has.
    batch_size, steps_per_epoch, epochs, seed : int
        Each batch is a random draw of distinct images (reshuffled every pass).
    normalization : dict or None
        Input normalisation (:func:`normalize`).
    augment : bool
        Random flips and, for square images, 90-degree rotations, applied to images and to targets
        that have the same trailing (H, W) (masks, maps). Leave off for targets that encode
        coordinates.
    """

    def __init__(
        self,
        images,
        targets,
        batch_size: int = 8,
        steps_per_epoch: int = 10,
        epochs: int = 1,
        seed: int = 0,
        normalization: dict[str, Any] | None = None,
        augment: bool = False,
    ):
        super().__init__()
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W] or [N, H, W], got shape {tuple(x.shape)}")
        y = torch.as_tensor(targets)
        if y.is_floating_point():
            y = y.float()
        if len(y) != len(x):
            raise ValueError(f"images and targets must have the same length, got {len(x)} and {len(y)}")
        self.x = normalize(x, normalization)
        self.y = y
        self.batch_size = min(int(batch_size), len(x))
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.seed = int(seed)
        self.augment = bool(augment)

    def __len__(self) -> int:
        return self.epochs * self.steps_per_epoch

    def __iter__(self):
        g = make_generator(derive_seed(self.seed, TRAIN_STREAM))
        n = len(self.x)
        order = torch.randperm(n, generator=g)
        pos = 0
        for _ in range(len(self)):
            if pos + self.batch_size > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos : pos + self.batch_size]
            pos += self.batch_size
            x, y = self.x[idx], self.y[idx]
            if self.augment:
                x, y = _flip_rotate(x, y, g)
            yield x, y


def _flip_rotate(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    spatial = y.dim() >= 3 and tuple(y.shape[-2:]) == tuple(x.shape[-2:])
    r = torch.randint(0, 8, (1,), generator=g).item()
    if r & 1:
        x = x.flip(-1)
        y = y.flip(-1) if spatial else y
    if r & 2:
        x = x.flip(-2)
        y = y.flip(-2) if spatial else y
    if (r & 4) and x.shape[-1] == x.shape[-2]:
        x = x.transpose(-1, -2)
        y = y.transpose(-1, -2) if spatial else y
    return x.contiguous(), y.contiguous()


class RealPairCrops(IterableDataset):
    """Random crops of real (mask, image) pairs with flips / 90-degree rotations and mask noise.

    Yields ``(mask [B, 1, S, S], image [B, 1, S, S])`` batches, both in [-1, 1] (masks from
    :func:`semantic_mask` plus per-image noise of std ``noise_std``). Crop positions, augmentations
    and noise come from one seeded generator; crops are gathered for the whole batch at once.

    Parameters
    ----------
    masks, images : Tensor [N, 1, H, W]
        Semantic masks and signed images (:func:`to_signed`).
    crop_px, batch_size, steps : int
        Crop size, images per batch, batches in all.
    """

    def __init__(self, masks, images, crop_px=64, batch_size=8, steps=100, seed=0, noise_std=None):
        super().__init__()
        self.masks, self.images = torch.as_tensor(masks).float(), torch.as_tensor(images).float()
        if self.masks.shape != self.images.shape or self.masks.dim() != 4:
            raise ValueError(f"masks and images must both be [N, 1, H, W], got {tuple(self.masks.shape)}")
        h, w = self.masks.shape[-2:]
        check_range("crop_px", crop_px, 8, min(h, w))
        self.crop_px, self.batch_size, self.steps, self.seed = int(crop_px), int(batch_size), int(steps), seed
        self.noise_std = Uniform(0.0, 0.1) if noise_std is None else noise_std

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(int(self.seed))
        n, _, h, w = self.masks.shape
        s, b = self.crop_px, self.batch_size
        ar = torch.arange(s)
        for _ in range(self.steps):
            idx = torch.randint(0, n, (b,), generator=g)
            y0 = torch.randint(0, h - s + 1, (b,), generator=g)
            x0 = torch.randint(0, w - s + 1, (b,), generator=g)
            iy = (y0[:, None] + ar)[:, :, None].expand(b, s, s)
            ix = (x0[:, None] + ar)[:, None, :].expand(b, s, s)
            both = torch.stack(
                [self.masks[idx[:, None, None], 0, iy, ix], self.images[idx[:, None, None], 0, iy, ix]], 1
            )
            flip = torch.rand(b, 3, generator=g) < 0.5
            both = torch.where(flip[:, 0, None, None, None], both.flip(-1), both)
            both = torch.where(flip[:, 1, None, None, None], both.flip(-2), both)
            both = torch.where(flip[:, 2, None, None, None], both.transpose(-1, -2), both)
            mask = add_mask_noise(both[:, :1].contiguous(), self.noise_std, g)
            yield mask, both[:, 1:].contiguous()
