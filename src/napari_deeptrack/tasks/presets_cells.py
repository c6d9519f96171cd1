"""Presets for stained nuclei in widefield fluorescence: ``cells-count`` (paper IV.6) and ``nuclei-segment``.

The simulation is matched to the BBBC039 U2OS Hoechst images the case study evaluates on (measured on
the 10 development images in ``shared/data/bbbc039_dev``, see ``docs/case_studies.md``):

- nuclei: equivalent radius 14.4 px median (5-95 %: 13-19 px for whole nuclei), eccentricity about
  0.77 (axis ratio 0.64, i.e. a second-harmonic outline amplitude of about 0.2), fairly uniform inside;
- 49-137 nuclei per 520 x 696 image, i.e. 2-6 per 128 x 128 crop on average, up to ~14 where they cluster;
- background about 150 grey values, pixel noise sigma about 4.2 (calibrate.estimate_statistics: about
  9 photons per grey value, so a background of ~1300 photons/px), nuclei 200-850 grey values above it;
- faint specks that are not nuclei (debris: a few px, 5-50 % above the background), simulated by
  :class:`~napari_deeptrack.sim.Debris` in the image only.

The pixel size is not recorded in the files; we assume 0.65 um/px (a 10x-20x widefield screen with a
6.5 um camera pixel) and a 0.45 NA objective at Hoechst's 0.46 um emission. At that sampling the PSF is
smaller than a pixel and ~30x smaller than a nucleus, so the images hardly depend on the optics; the
PSF is sampled at pixel centres (``oversample=1``) for speed.
"""

from __future__ import annotations

from ..sim import (
    Background,
    BoundaryClasses,
    CellBody,
    CentredDensityMap,
    Debris,
    Fluorescence,
    IntUniform,
    LogUniform,
    Normal,
    Particles,
    Pipeline,
    Poisson,
    Uniform,
)
from ..sim.targets import boundary_classes
from .base import Task
from .registry import register_preset


def _widefield_optics(pixel_size_um: float) -> Fluorescence:
    """20x widefield optics, rendered at pixel centres (``oversample=1``) for speed.

    The PSF (FWHM ~0.5 um) is smaller than a 0.65 um pixel and nuclei are ~30 px across, so sampling the
    PSF at pixel centres changes the nuclei images negligibly: the coarse rendering is deliberate
    (``warn_aliasing=False`` records that in the saved configuration).
    """
    return Fluorescence(
        NA=0.45, wavelength_um=0.46, pixel_size_um=pixel_size_um, oversample=1, warn_aliasing=False
    )


__all__ = [
    "CELLS_PIXEL_SIZE_UM",
    "BoundaryClasses",  # lives in sim.targets (re-exported for existing scripts)
    "boundary_classes",
    "CentredDensityMap",
    "cells_count",
    "cells_pipeline",
    "nuclei_segment",
]

CELLS_PIXEL_SIZE_UM = 0.65
PERCENTILE = {"mode": "percentile", "low": 1.0, "high": 99.8}


def cells_pipeline(image_shape: tuple[int, int] = (128, 128), max_count: int = 14, targets=None) -> Pipeline:
    """Simulated Hoechst-stained U2OS nuclei (see the module docstring for the numbers it matches)."""
    px = CELLS_PIXEL_SIZE_UM
    return Pipeline(
        image_shape=image_shape,
        particles=[
            Particles(
                CellBody(
                    radius_px=Normal(14.5, 2.5, low=8.0, high=22.0),
                    pixel_size_um=px,
                    irregularity=0.35,
                    n_harmonics=3,
                    texture=0.15,
                    texture_scale_um=1.5,
                    edge_um=0.8,
                ),
                count=IntUniform(0, max_count),
                # photons per nucleus: ~1500-6000 photons/px above background over ~660 px
                intensity=LogUniform(1.0e6, 4.0e6),
                margin_px=-12.0,  # nuclei cut by the border, as in crops of real images
            )
        ],
        optics=_widefield_optics(px),
        transforms=[
            Background(level=LogUniform(700.0, 2500.0), gradient=Uniform(0.0, 0.3)),
            Poisson(),
            # faint unlabelled specks (real images have ~15 per image that a network trained without
            # them calls nuclei); not noise, so a simulation matched to real images keeps them
            Debris(count=IntUniform(0, 4), sigma_px=Uniform(0.8, 2.5), contrast=LogUniform(0.05, 0.5)),
        ],
        targets=dict(targets or {}),
        min_distance_px=20.0,
    )


@register_preset("cells-count")
def cells_count() -> Task:
    """U-Net density-map counting of fluorescent nuclei (DeepTrack 2.0 paper, section IV.6)."""
    sigma_px, scale = 10.0, 100.0
    return Task(
        name="cells-count",
        kind="counting",
        description=(
            "Count stained nuclei (e.g. Hoechst / DAPI, widefield) in images of any size. A U-Net "
            f"maps the image to a density map in which every nucleus is a Gaussian of {sigma_px:g} px "
            "whose values sum to one, so the integral over any region is the number of nuclei "
            "centred in it. Trained only on simulated nuclei (radius 8-22 px, 0-14 per 128x128 "
            f"crop, {CELLS_PIXEL_SIZE_UM} um/px); rescale images whose nuclei are much smaller or "
            "larger than ~15 px in radius."
        ),
        pipeline=cells_pipeline(targets={"density": CentredDensityMap(sigma_px=sigma_px, scale=scale)}),
        target="density",
        # ReLU output: the background of a density map is exactly zero
        model={
            "type": "UNet",
            "in_channels": 1,
            "out_channels": 1,
            "depth": 3,
            "base_channels": 16,
            "output_activation": "relu",
        },
        loss={"type": "mae"},
        input_normalization=dict(PERCENTILE),
        postprocess={"activation": "none", "sigma_px": sigma_px, "density_scale": scale},
        pixel_size_um=CELLS_PIXEL_SIZE_UM,
        training={"epochs": 40, "steps_per_epoch": 50, "batch_size": 8, "lr": 1e-3, "validation_size": 64},
    )


@register_preset("nuclei-segment")
def nuclei_segment() -> Task:
    """U-Net segmentation of nuclei (background / interior / boundary) trained on simulated nuclei."""
    pipeline = cells_pipeline(targets={"classes": BoundaryClasses(pixel_size_um=CELLS_PIXEL_SIZE_UM)})
    return Task(
        name="nuclei-segment",
        kind="segmentation",
        description=(
            "Segment stained nuclei in widefield fluorescence images into instances. A U-Net "
            "classifies every pixel as background, nucleus interior or nucleus boundary (2 px); "
            "instances are split from the foreground by a watershed seeded at the centres of the "
            "nuclei (maxima of the distance to the background). Trained only on "
            f"simulated nuclei (radius 8-22 px, {CELLS_PIXEL_SIZE_UM} um/px), as for cells-count."
        ),
        pipeline=pipeline,
        target="classes",
        model={"type": "UNet", "in_channels": 1, "out_channels": 3, "depth": 3, "base_channels": 16},
        loss={"type": "ce", "class_weight": [1.0, 1.0, 3.0]},
        input_normalization=dict(PERCENTILE),
        # instances: seeded watershed of 1 - p(background). Tuned on bbbc039_dev (docs/case_studies.md):
        # seeds at the h-maxima (0.5 px) of the distance to the background, so an elongated nucleus keeps
        # one seed (with every local maximum 3 px apart, 9 % of the real nuclei were cut in two); objects
        # under 10 px or of mean probability < 0.7 dropped (faint debris specks, which the simulation has
        # no example of, come out at 0.5-0.75; real nuclei and micronuclei near 1)
        postprocess={
            "activation": "softmax",
            "threshold": 0.5,
            "interior_class": 1,
            "boundary_class": 2,
            "seed_h_px": 0.5,
            "min_area_px": 10,
            "min_probability": 0.7,
        },
        pixel_size_um=CELLS_PIXEL_SIZE_UM,
        training={"epochs": 40, "steps_per_epoch": 50, "batch_size": 8, "lr": 1e-3, "validation_size": 64},
    )
