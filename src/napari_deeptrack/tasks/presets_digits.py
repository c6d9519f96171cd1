"""Preset ``digits-classify``: hand-written digit classification (DeepTrack 2.0 paper, section IV.1).

The paper trains a dense network on MNIST with affine and elastic augmentation. MNIST cannot be
downloaded here, so this preset uses scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels,
Alpaydin & Kaynak, UCI): the same task on real, not simulated, images.

The real images enter the simulation pipeline through :class:`~napari_deeptrack.sim.DigitSample` and
:class:`~napari_deeptrack.sim.DigitImages` (``sim/digits.py``, where the splits are defined), so the same
training loop, augmentations and bundles serve real data. Training draws from the ``train`` split.
"""

from __future__ import annotations

from ..sim import (
    Affine,
    ClassLabel,
    DigitImages,
    DigitSample,
    ElasticDeformation,
    Particles,
    Pipeline,
    Uniform,
)
from ..sim.digits import _split_indices, load_digit_split  # noqa: F401  (re-exported for scripts)
from .base import Task
from .registry import register_preset

__all__ = ["DigitImages", "DigitSample", "digits_classify", "load_digit_split"]

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
