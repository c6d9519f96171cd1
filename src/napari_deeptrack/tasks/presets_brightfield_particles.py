"""Preset ``brightfield-particles``: detect many spheres in bright-field frames (dark or ringed particles).

The classic particle-tracking video (trackpy's bulk water: 1 um latex spheres diffusing in water,
0.351 um/px) shows **dark** particles on a bright background. Fluorescence presets simulate bright
spots; ``brightfield-localize`` handles one sphere per 51x51 crop. This preset simulates whole fields:

- **optics**: coherent :class:`~napari_deeptrack.sim.Brightfield` (plane-wave illumination, NA 0.5,
  0.55 um: a white-light lamp seen through a green channel), 0.351 um sample-plane pixels, water;
- **sample**: Mie spheres (exact Lorenz-Mie, :class:`~napari_deeptrack.sim.MieSphere`) of radius
  0.4-0.6 um and index 1.55-1.62 (polystyrene / latex), 0-16 per 64x64 crop, at least 4 px apart, with
  a defocus of -1.5 ... 0 um (a dark centre: the polarity of bulk water); a second population of
  0-6 spheres far out of focus (-10 ... -4 um) gives the faint blurred blobs of real samples and is not
  a target;
- **noise**: the image ``|E|^2`` (1 = illumination) times 50-5000 illumination photons per pixel,
  shot noise, read noise and camera gain / offset, as ``brightfield-localize``;
- **target**: a 2-px disk on every in-focus sphere (``DiskMask`` restricted to the in-focus z range);
  U-Net (depth 2, 16 channels), BCE weighted 10:1 then 1:1 (as ``particles-2d``); detections are the
  centroids of the thresholded blobs.

Defocus and sphere size are what ``--match`` / Match to layer calibrate from a real frame: the radial
profiles of the real particles are compared with profiles simulated by these optics
(:mod:`napari_deeptrack.analysis.match`), which flips the defocus range for bright-centred particles
with a dark ring (trackpy's ``brightfield`` sample). Input normalisation is the robust z-score
(median -> 0, MAD noise -> 1), insensitive to the camera's gain and offset.
"""

from __future__ import annotations

from ..sim import (
    Brightfield,
    Camera,
    DiskMask,
    IntUniform,
    LogUniform,
    MieSphere,
    Particles,
    Pipeline,
    Poisson,
    ReadNoise,
    Uniform,
)
from .base import Task
from .registry import register_preset

try:  # the class moves into sim/ (one home per concept); older trees keep it beside its first preset
    from ..sim import IlluminationPhotons
except ImportError:  # pragma: no cover - depends on the tree's layout
    from .presets_brightfield import IlluminationPhotons

__all__ = ["BULK_WATER_PIXEL_SIZE_UM", "brightfield_particles", "brightfield_particles_pipeline"]

BULK_WATER_PIXEL_SIZE_UM = 0.351
NA = 0.5
WAVELENGTH_UM = 0.55
N_MEDIUM = 1.33
Z_IN_FOCUS_UM = (-1.5, 0.0)
DISK_RADIUS_PX = 2.0


def brightfield_particles_pipeline(
    image_shape: tuple[int, int] = (64, 64),
    pixel_size_um: float = BULK_WATER_PIXEL_SIZE_UM,
    z_um: tuple[float, float] = Z_IN_FOCUS_UM,
    max_count: int = 16,
) -> Pipeline:
    """Many Mie spheres in bright field; in-focus ones (``z_um`` range) are the detection target."""
    sphere = MieSphere(radius_um=Uniform(0.4, 0.6), refractive_index=Uniform(1.55, 1.62))
    return Pipeline(
        image_shape=tuple(image_shape),
        particles=[
            Particles(sphere, count=IntUniform(0, max_count), z_um=Uniform(*z_um)),
            Particles(sphere, count=IntUniform(0, 6), z_um=Uniform(-10.0, -4.0)),
        ],
        optics=Brightfield(
            NA=NA, wavelength_um=WAVELENGTH_UM, pixel_size_um=pixel_size_um, refractive_index_medium=N_MEDIUM
        ),
        transforms=[
            IlluminationPhotons(LogUniform(50.0, 5000.0)),
            Poisson(),
            ReadNoise(sigma=Uniform(0.0, 3.0)),
            Camera(gain=Uniform(0.5, 4.0), offset=Uniform(50.0, 150.0)),
        ],
        targets={"mask": DiskMask(radius_px=DISK_RADIUS_PX, z_range_um=[z_um[0] - 0.01, z_um[1] + 0.01])},
        min_distance_px=4.0,
    )


@register_preset("brightfield-particles")
def brightfield_particles() -> Task:
    """U-Net detection of many spheres in bright-field frames (dark particles, defocus rings)."""
    return Task(
        name="brightfield-particles",
        kind="detection",
        description=(
            "Detect spheres (colloids, beads, latex particles) in bright-field frames, dark on a bright "
            "background or bright-centred with a dark ring. A U-Net maps the image to the probability "
            f"that each pixel lies within {DISK_RADIUS_PX:g} px of an in-focus sphere; detections are "
            "the centroids of the thresholded blobs. Trained on 64x64 simulated crops: Mie spheres of "
            f"radius 0.4-0.6 um, index 1.55-1.62, in water, NA {NA}, {WAVELENGTH_UM} um light, "
            f"{BULK_WATER_PIXEL_SIZE_UM} um pixels, defocus {Z_IN_FOCUS_UM[0]:g}...{Z_IN_FOCUS_UM[1]:g} um, "
            "with blurred out-of-focus spheres as distractors. Use --match on a real frame to set the "
            "sphere size, defocus range (polarity), illumination and density."
        ),
        pipeline=brightfield_particles_pipeline(),
        target="mask",
        model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 2, "base_channels": 16},
        loss={"type": "bce", "pos_weight": [[0.0, 10.0], [0.1, 1.0]], "schedule_unit": "fraction"},
        input_normalization={"mode": "robust"},
        postprocess={
            "activation": "sigmoid",
            "threshold": 0.5,
            "disk_radius_px": DISK_RADIUS_PX,
            "match_distance_px": 2.0,
        },
        pixel_size_um=BULK_WATER_PIXEL_SIZE_UM,
        training={"epochs": 20, "steps_per_epoch": 50, "batch_size": 16, "lr": 1e-3, "validation_size": 128},
    )
