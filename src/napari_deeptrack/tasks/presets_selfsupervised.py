"""Self-supervised preset: ``particles-selfsupervised`` (LodeSTAR-style detector trained from crops).

Unlike the other presets the network is not trained on simulated images with known answers but on
one or a few crops of the user's own real objects (``train/selfsupervised.py``)::

    napari-deeptrack train particles-selfsupervised --crop 120,200,140,220 frames.tif --out det.zip
    napari-deeptrack apply det.zip frames.tif --out detections.csv

    >>> from napari_deeptrack.tasks import get_preset
    >>> from napari_deeptrack.train.selfsupervised import train_selfsupervised
    >>> result = train_selfsupervised(get_preset("particles-selfsupervised"), frames, [(120, 200, 140, 220)])

The task's simulation pipeline (one fluorescent point particle per 32x32 crop, as in
``particle-localize``) is not needed for training from real crops: it describes the kind of object
the preset is meant for, makes test crops with known positions (``simulate``), and lets the detector
be trained on simulated crops when no real image is at hand.

Settings worth changing (``--set``): ``model.binning`` (average the input over 2x2 or 4x4 blocks for
objects larger than about 15 px, e.g. nuclei), ``postprocess.threshold`` (fraction of one training
object's vote mass a detection needs), ``postprocess.radius_px`` (votes within this distance of a
pile count for it; about the object's radius, at least 1.5 px), ``loss.translation`` (maximum
shift as a fraction of the crop size).
"""

from __future__ import annotations

from ..sim import (
    Background,
    Fluorescence,
    LogUniform,
    Particles,
    Pipeline,
    PointParticle,
    Poisson,
    RegressionVector,
    Uniform,
)
from .base import Task
from .registry import register_preset

__all__ = ["LODESTAR_MODEL", "particles_selfsupervised", "selfsupervised_task"]

#: two full-resolution 3x3 convolutions, 2x2 max-pooling, three more: output at half resolution,
#: receptive field 18 px (x ``binning``); small, so that training takes minutes on one CPU thread
LODESTAR_MODEL = {
    "type": "LodeSTAR",
    "in_channels": 1,
    "channels": [16, 16],
    "pooled_channels": [32, 32, 32],
    "pools": 1,
    "binning": 1,
}
LODESTAR_LOSS = {
    "type": "lodestar",
    "copies": 4,
    "translation": 0.25,
    "within_weight": 1.0,
    "noise": 1.0,  # up to 1 background sigma of extra noise: the network must not learn the crop's noise
    "gain": [0.4, 2.5],  # objects 2.5x dimmer or brighter than the crop are still found
    "mass_weight": 0.1,
}
LODESTAR_POSTPROCESS = {
    "method": "lodestar",
    "activation": "none",
    "threshold": 0.5,
    "radius_px": 2.0,
    "min_distance_px": 3.0,
    # pool the votes of the 8 flips / transpositions of each frame (8x the compute; at 1000 photons
    # it brings the RMSE from 2.3x to 1.3x the CRLB, docs/benchmarks.md)
    "test_time_augmentation": "dihedral",
}


def selfsupervised_task(
    name: str,
    description: str,
    pipeline: Pipeline,
    pixel_size_um: float,
    model: dict | None = None,
    postprocess: dict | None = None,
    training: dict | None = None,
) -> Task:
    """A self-supervised detection task (LodeSTAR model, loss and post-processing, robust normalisation)."""
    return Task(
        name=name,
        kind="detection",
        description=description,
        pipeline=pipeline,
        target="position",
        model={**LODESTAR_MODEL, **(model or {})},
        loss=dict(LODESTAR_LOSS),
        input_normalization={"mode": "robust"},
        postprocess={**LODESTAR_POSTPROCESS, **(postprocess or {})},
        pixel_size_um=pixel_size_um,
        training={"epochs": 20, "steps_per_epoch": 50, "batch_size": 32, "lr": 1e-3, **(training or {})},
    )


@register_preset("particles-selfsupervised")
def particles_selfsupervised() -> Task:
    """Self-supervised (LodeSTAR-style) detection of objects like one drawn crop (Midtvedt et al. 2022)."""
    size = 32
    c = (size - 1) / 2.0
    pipeline = Pipeline(
        image_shape=(size, size),
        particles=[
            Particles(
                PointParticle(),
                count=1,
                y_px=Uniform(c - 2.0, c + 2.0),
                x_px=Uniform(c - 2.0, c + 2.0),
                z_um=Uniform(-0.2, 0.2),
                intensity=LogUniform(300.0, 5000.0),
            )
        ],
        optics=Fluorescence(NA=1.3, wavelength_um=0.6, pixel_size_um=0.1),
        transforms=[Background(level=LogUniform(2.0, 40.0)), Poisson()],
        targets={"position": RegressionVector(fields=["y", "x"], relative_to_center=False)},
    )
    return selfsupervised_task(
        "particles-selfsupervised",
        (
            "Self-supervised detector (LodeSTAR-style): learns what ONE object looks like from one to a "
            "few crops drawn around single objects in your own images, with no annotation and no "
            "simulation. Every pixel votes for the position of the object it sees; detections are the "
            "piles of votes, with sub-pixel positions and a 'mass' (summed vote weight) that tells "
            "populations apart. Works for spots, rings, dark particles and nuclei (use model.binning "
            "for objects larger than ~15 px)."
        ),
        pipeline,
        pixel_size_um=0.1,
    )
