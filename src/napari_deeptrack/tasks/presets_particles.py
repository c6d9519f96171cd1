"""Presets for fluorescent point particles: ``particles-2d`` (detection) and ``particle-localize``.

Both simulate point emitters imaged through a pupil-function fluorescence microscope (NA 1.3,
emission 0.6 um, 0.1 um pixels, slight defocus), a uniform background and Poisson shot noise.
Photon counts and background are drawn log-uniformly so that the shot-noise signal-to-noise ratio of
the brightest pixel, ``SNR = peak / sqrt(peak + background)``, spans about 1 to 20 (5th-95th
percentiles 1.7-18; ``benchmarks/bench_detection.py`` tests 1.5-10 at a background of 10 photons).

``particles-2d`` normalises its input with the robust z-score (background median -> 0, noise sigma
from the MAD -> 1): unlike percentile scaling it gives the same numbers for the background of a
64x64 training crop with no particle and of a large frame with hundreds, and a particle's peak reads
as its signal-to-noise ratio.
"""

from __future__ import annotations

import copy

from ..sim import (
    Background,
    DiskMask,
    Fluorescence,
    IntUniform,
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

__all__ = [
    "OFFSET_CNN",
    "OFFSET_LOSS",
    "OFFSET_POSTPROCESS",
    "offset_localization_task",
    "particle_localize",
    "particles_2d",
]

NA = 1.3
WAVELENGTH_UM = 0.6
PIXEL_SIZE_UM = 0.1
PERCENTILE = {"mode": "percentile", "low": 1.0, "high": 99.8}
#: CNN regressing one particle's (y, x) offset in px from the crop centre and the log of its own
#: 1-sigma uncertainty per axis (shared by the localisation presets). Trained with the Gaussian
#: negative log-likelihood, each crop counts with the weight 1 / sigma^2 its own precision deserves:
#: under MAE the bright crops (errors of 0.01-0.03 px) were drowned by the dim ones and the network
#: stayed 1.3-2.5x the CRLB above 1000 photons; with the likelihood it is within 1.1x (see
#: docs/benchmarks.md). The predicted sigmas are written as ``y_sigma`` / ``x_sigma`` columns.
OFFSET_CNN = {"type": "CNN", "in_channels": 1, "out_features": 4, "channels": [16, 32, 64], "dense": [64, 32]}
OFFSET_LOSS = {"type": "gaussian_nll"}
#: the 8 flips / 90-degree rotations of every crop are averaged (valid: these PSFs are symmetric)
OFFSET_POSTPROCESS = {
    "activation": "none",
    "units": "px",
    "origin": "center",
    "test_time_augmentation": "dihedral",
}

def offset_localization_task(
    name: str,
    description: str,
    pipeline: Pipeline,
    input_normalization: dict,
    pixel_size_um: float,
    training: dict,
) -> Task:
    """A ``localization`` task regressing the ``offset`` target of ``pipeline`` with the shared
    offset CNN, likelihood loss and post-processing (``OFFSET_*``); used by every localisation preset."""
    return Task(
        name=name,
        kind="localization",
        description=description,
        pipeline=pipeline,
        target="offset",
        model=copy.deepcopy(OFFSET_CNN),
        loss=dict(OFFSET_LOSS),
        input_normalization=dict(input_normalization),
        postprocess=dict(OFFSET_POSTPROCESS),
        pixel_size_um=pixel_size_um,
        training=dict(training),
    )


#: background median -> 0, noise sigma (from the MAD) -> 1: independent of particle number and size
ROBUST = {"mode": "robust"}


def _optics() -> Fluorescence:
    return Fluorescence(NA=NA, wavelength_um=WAVELENGTH_UM, pixel_size_um=PIXEL_SIZE_UM)


@register_preset("particles-2d")
def particles_2d() -> Task:
    """U-Net detection of fluorescent point particles (DeepTrack 2.0 paper, section IV.4)."""
    pipeline = Pipeline(
        image_shape=(64, 64),
        particles=[
            Particles(
                PointParticle(),
                count=IntUniform(0, 12),
                z_um=Uniform(-0.2, 0.2),
                intensity=LogUniform(40.0, 3000.0),
            )
        ],
        optics=_optics(),
        transforms=[Background(level=LogUniform(2.0, 40.0)), Poisson()],
        targets={"mask": DiskMask(radius_px=3)},
        min_distance_px=7.0,
    )
    return Task(
        name="particles-2d",
        kind="detection",
        description=(
            "Detect fluorescent point particles (single molecules, quantum dots, beads) in 2D images. "
            "A U-Net maps the image to the probability that each pixel lies within 3 px of a particle; "
            "detections are the centroids of the thresholded blobs. Trained on 64x64 simulated crops "
            "(0-12 particles, shot-noise SNR about 1-20); applies to images of any size with the "
            f"same pixel size ({PIXEL_SIZE_UM} um)."
        ),
        pipeline=pipeline,
        target="mask",
        model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 2, "base_channels": 16},
        # the paper weights missed particle pixels 10:1 for the first ~10 % of training, then 1:1
        loss={"type": "bce", "pos_weight": [[0.0, 10.0], [0.1, 1.0]], "schedule_unit": "fraction"},
        input_normalization=dict(ROBUST),
        postprocess={
            "activation": "sigmoid",
            "threshold": 0.5,
            "disk_radius_px": 3.0,
            "match_distance_px": 2.0,
        },
        pixel_size_um=PIXEL_SIZE_UM,
        training={"epochs": 20, "steps_per_epoch": 50, "batch_size": 16, "lr": 1e-3, "validation_size": 128},
    )


@register_preset("particle-localize")
def particle_localize() -> Task:
    """CNN regression of one particle's sub-pixel position (DeepTrack 2.0 paper, section IV.2)."""
    size = 32
    c = (size - 1) / 2.0
    pipeline = Pipeline(
        image_shape=(size, size),
        particles=[
            Particles(
                PointParticle(),
                count=1,
                y_px=Uniform(c - 4.0, c + 4.0),
                x_px=Uniform(c - 4.0, c + 4.0),
                z_um=Uniform(-0.2, 0.2),
                intensity=LogUniform(200.0, 5000.0),
            )
        ],
        optics=_optics(),
        transforms=[Background(level=LogUniform(2.0, 40.0)), Poisson()],
        targets={"offset": RegressionVector(fields=["y", "x"], relative_to_center=True)},
    )
    return offset_localization_task(
        name="particle-localize",
        description=(
            "Localise one fluorescent point particle per crop with sub-pixel precision. A CNN "
            "regresses the particle's (y, x) offset in pixels from the crop centre ((H - 1) / 2, "
            "(W - 1) / 2) and its own uncertainty (y_sigma, x_sigma in px). Trained on "
            f"{size}x{size} crops with the particle within 4 px of the centre."
        ),
        pipeline=pipeline,
        input_normalization=PERCENTILE,
        pixel_size_um=PIXEL_SIZE_UM,
        training={"epochs": 10, "steps_per_epoch": 50, "batch_size": 32, "lr": 1e-3, "validation_size": 256},
    )
