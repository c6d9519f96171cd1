"""Preset ``digits-classify``: hand-written digit classification (DeepTrack 2.0 paper, section IV.1).

The paper trains a dense network on MNIST with affine and elastic augmentation. MNIST cannot be
downloaded here, so this preset uses scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels,
Alpaydin & Kaynak, UCI): the same task on real, not simulated, images.

The real images enter the simulation pipeline through two small registered objects, so that the same
training loop, augmentations (:class:`~napari_deeptrack.sim.Affine`,
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

from ..sim import Affine, ClassLabel, ElasticDeformation, Particles, Pipeline, Uniform
from ..sim.pipeline import Optics, Scatterer
from ..sim.scene import Scene
from ..sim.serialize import register
from .base import Task
from .registry import register_preset

__all__ = ["DigitImages", "DigitSample", "digits_classify", "load_digit_split"]

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


def digits_pipeline(split: str = "train", augment: bool = True) -> Pipeline:
    """Real 8x8 digits of ``split``, with affine + elastic augmentation when ``augment``."""
    transforms = []
    if augment:
        transforms = [
            Affine(
                rotation_deg=Uniform(-12.0, 12.0),
                scale=Uniform(0.9, 1.1),
                shear_deg=Uniform(-10.0, 10.0),
                translate_px=Uniform(-0.6, 0.6),
            ),
            ElasticDeformation(alpha_px=0.35, sigma_px=1.5),
        ]
    return Pipeline(
        image_shape=(8, 8),
        particles=[Particles(DigitSample(split=split), count=1)],
        optics=DigitImages(),
        transforms=transforms,
        targets={"digit": ClassLabel()},
    )


@register_preset("digits-classify")
def digits_classify() -> Task:
    """Dense network on scikit-learn's 8x8 digits with affine + elastic augmentation (paper IV.1)."""
    return Task(
        name="digits-classify",
        kind="classification",
        description=(
            "Classify hand-written digits 0-9 (scikit-learn's bundled 8x8 digits, real images; the "
            "DeepTrack 2.0 paper uses MNIST) with a dense network, trained with random affine maps "
            "(rotation, scale, shear, shift) and elastic deformations. Training draws from the "
            "'train' split; 25 % of the images (stratified, seed 0) are held out as the test split."
        ),
        pipeline=digits_pipeline("train", augment=True),
        target="digit",
        # Ciresan et al.'s deep MLP, narrowed for 64 inputs (the paper's MNIST net is 2500-2000-1500-1000-500)
        model={
            "type": "MLP",
            "in_features": 64,
            "out_features": 10,
            "hidden": [512, 256, 128],
            "dropout": 0.1,
        },
        loss={"type": "ce"},
        input_normalization={"mode": "none"},
        postprocess={"activation": "softmax", "classes": list(range(10))},
        pixel_size_um=1.0,
        training={"epochs": 30, "steps_per_epoch": 40, "batch_size": 64, "lr": 1e-3, "validation_size": 256},
    )
