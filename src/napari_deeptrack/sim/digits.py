"""Real images as a simulation source: scikit-learn's bundled 8x8 hand-written digits.

The ``digits-classify`` preset (DeepTrack 2.0 paper, section IV.1) trains on real, not simulated,
images; two small registered objects let them enter a :class:`~napari_deeptrack.sim.Pipeline`, so the
same training loop, augmentations (:class:`~napari_deeptrack.sim.Affine`,
:class:`~napari_deeptrack.sim.ElasticDeformation`) and bundles serve real data:

- :class:`DigitSample` (a scatterer) draws, for every image, one digit of the chosen split and writes
  its index (``attributes["sample_index"]``) and its label (``class_id``) into the scene;
- :class:`DigitImages` (the "optics") renders each scene as that digit's image, scaled to [0, 1].

Splits are fixed by ``split_seed`` and stratified by class: ``test`` (``test_fraction`` of all images)
is never seen in training; ``val`` (``val_fraction`` of the rest) is used for checkpoint selection.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .pipeline import Optics, Scatterer
from .scene import Scene
from .serialize import register

__all__ = ["DigitImages", "DigitSample", "load_digit_split"]

SPLITS = ("train", "val", "test", "all")


@functools.lru_cache(maxsize=8)
def _split_indices(test_fraction: float, val_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    labels = load_digits().target
    rng = np.random.default_rng(int(split_seed))
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for k in np.unique(labels):  # stratified by class
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_test = int(round(test_fraction * len(idx)))
        rest = idx[n_test:]
        n_val = int(round(val_fraction * len(rest)))
        out["test"] += idx[:n_test].tolist()
        out["val"] += rest[:n_val].tolist()
        out["train"] += rest[n_val:].tolist()
    res = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in out.items()}
    res["all"] = np.arange(len(labels), dtype=np.int64)
    return res


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.as_tensor(d.images, dtype=torch.float32) / 16.0  # 16 grey levels -> [0, 1]
    return images, torch.as_tensor(d.target, dtype=torch.int64)


def load_digit_split(
    split: str = "test", test_fraction: float = 0.25, val_fraction: float = 0.1, split_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 8, 8]`` in [0, 1] and labels ``[N]`` of one split of scikit-learn's digits."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    idx = _split_indices(float(test_fraction), float(val_fraction), int(split_seed))[split]
    images, labels = _digits()
    return images[idx].numpy(), labels[idx].numpy()


@register
@dataclass
class DigitSample(Scatterer):
    """One real digit per particle slot, drawn uniformly from a split of scikit-learn's 8x8 digits.

    Parameters
    ----------
    split : str
        ``train``, ``val``, ``test`` or ``all``.
    test_fraction, val_fraction : float
        Held-out fractions (test of all images, validation of the rest), stratified by class.
    split_seed : int
        Seed of the split (not of the training draws, which come from the pipeline's generator).
    """

    split: str = "train"
    test_fraction: float = 0.25
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        for name in ("test_fraction", "val_fraction"):
            v = float(getattr(self, name))
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {v}")

    def indices(self) -> torch.Tensor:
        idx = _split_indices(float(self.test_fraction), float(self.val_fraction), int(self.split_seed))
        return torch.as_tensor(idx[self.split])

    def sample_into(self, scene: Scene, slots, generator: torch.Generator) -> None:
        pool = self.indices().to(scene.device)
        shape = scene.present[:, slots].shape
        pick = torch.randint(0, len(pool), shape, generator=generator, device=generator.device)
        sample_index = pool[pick.to(scene.device)]
        full = scene.attributes.get("sample_index")
        if full is None:
            full = torch.zeros(scene.present.shape, dtype=torch.int64, device=scene.device)
        full[:, slots] = sample_index
        scene.attributes["sample_index"] = full
        scene.class_id[:, slots] = _digits()[1].to(scene.device)[sample_index]
        h, w = scene.image_shape
        scene.position[:, slots, 0] = (h - 1) / 2.0  # the digit fills the frame, centred
        scene.position[:, slots, 1] = (w - 1) / 2.0


@register
@dataclass
class DigitImages(Optics):
    """Renders each scene's first digit (``attributes["sample_index"]``) as an image ``[B, 1, 8, 8]``.

    Grey values are scikit-learn's 0..16 scaled to [0, 1]; images without a digit are blank.
    The pipeline's ``image_shape`` must be (8, 8).
    """

    def render(self, scene: Scene, scatterers, generator: torch.Generator) -> torch.Tensor:
        if tuple(scene.image_shape) != (8, 8):
            raise ValueError(f"DigitImages needs image_shape (8, 8), got {tuple(scene.image_shape)}")
        images = _digits()[0].to(scene.device)
        idx = scene.attributes.get("sample_index")
        b = scene.batch_size
        if idx is None or scene.n_max == 0:
            return torch.zeros(b, 1, 8, 8, device=scene.device)
        has = scene.present.any(dim=1)
        first = scene.present.to(torch.int8).argmax(dim=1)
        sel = idx[torch.arange(b, device=scene.device), first]
        return images[sel][:, None] * has[:, None, None, None]
