"""Preset ``brightfield-localize``: one sphere's sub-pixel position in brightfield (paper IV.2).

The DeepTrack 2.0 paper localises an optically trapped particle (radius about 0.5 um, refractive
index about 1.45 + 0.02i, in water) in brightfield videos of good and poor quality, with a CNN
trained only on simulated images whose parameters vary around the expected ones. Here:

- **optics**: coherent :class:`~napari_deeptrack.sim.Brightfield` (plane-wave illumination, NA 0.7,
  0.68 um, camera pixel 1 um at 15x, i.e. 1/15 um in the sample; the simulation benchmark's
  pipeline B), the sphere imaged with exact Lorenz-Mie theory (:class:`~napari_deeptrack.sim.MieSphere`);
- **sample**: radius 0.4-0.6 um, index 1.40-1.50 (real) + 0-0.04i (absorption), defocus -1...+1 um
  (the image goes from a dark to a bright centre), within 3 px of the centre of a 51x51 crop;
- **noise**: the image ``|E|^2`` (1 = the illumination) is multiplied by the illumination level,
  ``N`` photons per pixel, drawn log-uniformly in 5-2000 (:class:`IlluminationPhotons`), then shot
  noise, read noise and camera gain / offset. The shot-noise SNR of the particle is about
  ``contrast * sqrt(N)`` with a contrast of 0.3-1 (``N = 10``: SNR about 1-3);
- **network**: CNN (16-32-64 channels, dense 64-32) regressing the (y, x) offset of the sphere from
  the crop centre in pixels, MAE loss (as the paper). Input normalisation: the robust z-score
  (median -> 0, MAD noise -> 1), identical for simulated and real crops and insensitive to the
  camera's gain and offset.
"""

from __future__ import annotations

from ..sim import (
    Brightfield,
    Camera,
    ComplexIndex,
    IlluminationPhotons,
    LogUniform,
    MieSphere,
    Particles,
    Pipeline,
    Poisson,
    ReadNoise,
    RegressionVector,
    Uniform,
)
from ..sim.params import ParamLike, check_range
from ..sim.pipeline import Transform
from .base import Task
from .presets_particles import offset_localization_task
from .registry import register_preset

__all__ = [
    "CAMERA_PIXEL_UM",
    "MAGNIFICATION",
    "NA",
    "PIXEL_SIZE_UM",
    "WAVELENGTH_UM",
    "ComplexIndex",
    "IlluminationPhotons",
    "brightfield_localize",
    "brightfield_optics",
    "brightfield_pipeline",
]

NA = 0.7
WAVELENGTH_UM = 0.68
CAMERA_PIXEL_UM = 1.0
MAGNIFICATION = 15.0
PIXEL_SIZE_UM = CAMERA_PIXEL_UM / MAGNIFICATION
N_MEDIUM = 1.33
SIZE = 51
MAX_OFFSET_PX = 3.0
ROBUST = {"mode": "robust"}


def brightfield_optics(illumination_intensity: float = 1.0) -> Brightfield:
    """The preset's microscope: NA 0.7, 0.68 um, camera pixel 1 um at 15x, water."""
    return Brightfield(
        NA=NA,
        wavelength_um=WAVELENGTH_UM,
        camera_pixel_um=CAMERA_PIXEL_UM,
        magnification=MAGNIFICATION,
        refractive_index_medium=N_MEDIUM,
        illumination_intensity=illumination_intensity,
    )


def brightfield_pipeline(
    image_shape: tuple[int, int] = (SIZE, SIZE),
    radius_um: ParamLike | None = None,
    refractive_index: ParamLike | complex | None = None,
    z_um: ParamLike | None = None,
    photons_per_px: ParamLike | None = None,
    max_offset_px: float = MAX_OFFSET_PX,
    camera: bool = True,
) -> Pipeline:
    """One Mie sphere within ``max_offset_px`` of the crop centre, brightfield image in photons + noise.

    Parameters left at None take the training ranges (see the module docstring). ``camera=False``
    leaves only shot noise (what :func:`napari_deeptrack.analysis.crlb.crlb_for_optics` assumes).
    """
    check_range("max_offset_px", max_offset_px, 0.0, None)
    cy, cx = (image_shape[0] - 1) / 2.0, (image_shape[1] - 1) / 2.0
    sphere = MieSphere(
        radius_um=Uniform(0.4, 0.6) if radius_um is None else radius_um,
        refractive_index=(
            ComplexIndex(Uniform(1.40, 1.50), Uniform(0.0, 0.04))
            if refractive_index is None
            else refractive_index
        ),
    )
    transforms: list[Transform] = [
        IlluminationPhotons(LogUniform(5.0, 2000.0) if photons_per_px is None else photons_per_px),
        Poisson(),
    ]
    if camera:
        transforms += [
            ReadNoise(sigma=Uniform(0.0, 3.0)),
            Camera(gain=Uniform(0.5, 4.0), offset=Uniform(50.0, 150.0)),
        ]
    return Pipeline(
        image_shape=tuple(image_shape),
        particles=[
            Particles(
                sphere,
                count=1,
                y_px=Uniform(cy - max_offset_px, cy + max_offset_px),
                x_px=Uniform(cx - max_offset_px, cx + max_offset_px),
                z_um=Uniform(-1.0, 1.0) if z_um is None else z_um,
            )
        ],
        optics=brightfield_optics(),
        transforms=transforms,
        targets={"offset": RegressionVector(fields=["y", "x"], relative_to_center=True)},
    )


@register_preset("brightfield-localize")
def brightfield_localize() -> Task:
    """CNN regression of one sphere's sub-pixel position in brightfield (DeepTrack 2.0 paper, IV.2)."""
    return offset_localization_task(
        name="brightfield-localize",
        description=(
            "Localise one sphere per brightfield crop with sub-pixel precision (e.g. an optically "
            "trapped bead). A CNN regresses the sphere's (y, x) offset in pixels from the crop centre "
            f"((H - 1) / 2, (W - 1) / 2). Trained on simulated {SIZE}x{SIZE} crops: NA {NA}, "
            f"{WAVELENGTH_UM} um light, {PIXEL_SIZE_UM:.4f} um pixels (1 um camera pixels at 15x), "
            "Mie spheres of radius 0.4-0.6 um and index 1.40-1.50 + 0-0.04i in water, defocus "
            f"-1...+1 um, within {MAX_OFFSET_PX:g} px of the centre, 5-2000 illumination photons per "
            "pixel with shot and camera noise. Either image polarity (dark or bright centre) works."
        ),
        pipeline=brightfield_pipeline(),
        input_normalization=ROBUST,
        pixel_size_um=PIXEL_SIZE_UM,
        training={"epochs": 60, "steps_per_epoch": 100, "batch_size": 32, "lr": 1e-3, "validation_size": 256},
    )
