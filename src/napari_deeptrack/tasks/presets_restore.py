"""Preset ``restore``: denoising and deconvolution of fluorescence images, trained on simulated pairs.

Beyond the DeepTrack 2.0 paper's seven case studies (issue 7, case 8; see
``shared/papers/dl_fluorescence_reconstruction_pitfalls.txt``). The input is a noisy widefield image
(NA 0.8, shot noise, background); the target is the same scene, noise-free and imaged with a
high-NA objective (NA 1.4), so the network learns to denoise and to sharpen.

Units. The target is rendered by :class:`CleanImage` in expected photons (no background, no noise).
The last transform, :class:`NormalizeWithTarget`, percentile-normalises the input exactly as
``task.input_normalization`` does at inference (``(x - p1) / (p99.8 - p1)``, per image) and divides the
target by the *same* per-image factor ``p99.8 - p1``. Input and target are thus in the same units, and
a prediction times the input's ``p99.8 - p1`` is the restored image in photons. (Scaling the target by
its own maximum instead, as a first version did, makes the output scale depend on the brightest object
of the truth, which the network cannot know: it learnt barely more than smoothing.) Percentile
normalisation is affine, so normalising the already normalised input again at training time changes
nothing. The loss is the mean absolute error, which keeps the sparse background at zero better than
the squared error.

Honest use (the pitfalls paper): a restoration network can invent plausible detail. Evaluate it
against the truth *and* against the raw input, and look at an ensemble's disagreement map
(``examples/restore.py`` does both).
"""

from __future__ import annotations

from ..sim import (
    Background,
    CleanImage,
    Ellipse,
    Fluorescence,
    IntUniform,
    LogUniform,
    NormalizeWithTarget,
    Particles,
    Pipeline,
    PointParticle,
    Poisson,
    Uniform,
)
from .base import Task
from .registry import register_preset

__all__ = ["CleanImage", "NormalizeWithTarget", "restore", "restore_pipeline"]

PIXEL_SIZE_UM = 0.08


def restore_pipeline(image_shape: tuple[int, int] = (64, 64)) -> Pipeline:
    """Spots and short rods through an NA 0.8 widefield microscope, with background and shot noise."""
    scatterers = [
        PointParticle(),
        Ellipse(
            axis_y_um=Uniform(0.05, 0.12), axis_x_um=Uniform(0.2, 0.6), rotation_rad=Uniform(0.0, 3.1416)
        ),
    ]
    particles = [
        Particles(
            scatterers[0], count=IntUniform(2, 25), intensity=LogUniform(150.0, 1500.0), margin_px=-2.0
        ),
        Particles(scatterers[1], count=IntUniform(0, 8), intensity=LogUniform(600.0, 4000.0), margin_px=-2.0),
    ]
    optics = Fluorescence(NA=0.8, wavelength_um=0.6, pixel_size_um=PIXEL_SIZE_UM)
    sharp = Fluorescence(
        NA=1.4, wavelength_um=0.6, pixel_size_um=PIXEL_SIZE_UM, refractive_index_medium=1.518
    )
    return Pipeline(
        image_shape=image_shape,
        particles=particles,
        optics=optics,
        transforms=[Background(level=LogUniform(2.0, 30.0)), Poisson(), NormalizeWithTarget("clean")],
        targets={"clean": CleanImage(optics=sharp, scatterers=scatterers, scale="none")},
    )


@register_preset("restore")
def restore() -> Task:
    """U-Net denoising + deconvolution of widefield fluorescence images (NA 0.8 -> NA 1.4, noise-free)."""
    return Task(
        name="restore",
        kind="image-to-image",
        description=(
            "Restore widefield fluorescence images: remove shot noise and background and sharpen "
            "from NA 0.8 to NA 1.4 (0.6 um emission, 80 nm pixels). Trained on simulated pairs of "
            "spots and short rods. Outputs are in the units of the percentile-normalised input "
            "(times the input's p99.8 - p1: photons without background). A restoration network "
            "can invent detail: compare with the raw input and check an ensemble's disagreement."
        ),
        pipeline=restore_pipeline(),
        target="clean",
        model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 2, "base_channels": 16},
        loss={"type": "mae"},
        input_normalization={"mode": "percentile", "low": 1.0, "high": 99.8},
        postprocess={"activation": "none"},
        pixel_size_um=PIXEL_SIZE_UM,
        training={"epochs": 30, "steps_per_epoch": 50, "batch_size": 16, "lr": 2e-3, "validation_size": 64},
    )
