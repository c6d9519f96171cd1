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

from dataclasses import dataclass, field

import torch

from ..sim import (
    Background,
    Ellipse,
    Fluorescence,
    IntUniform,
    LogUniform,
    Particles,
    Pipeline,
    PointParticle,
    Poisson,
    Uniform,
)
from ..sim.noise import normalize_images
from ..sim.params import check_range
from ..sim.pipeline import Optics, Scatterer, SimBatch, Target, Transform
from ..sim.scene import Scene
from ..sim.serialize import register
from .base import Task
from .registry import register_preset

__all__ = ["CleanImage", "NormalizeWithTarget", "restore", "restore_pipeline"]

PIXEL_SIZE_UM = 0.08


@register
@dataclass
class CleanImage(Target):
    """The scene imaged through ``optics`` without background or noise: ``[B, C, H, W]`` float32.

    ``scatterers`` must list the pipeline's scatterers in the order of its populations (the scene's
    ``kind`` indexes them). Optics with random aberrations are rendered with a fixed generator seed,
    so the target never consumes the pipeline's random numbers.

    Parameters
    ----------
    optics : Optics
        The ideal microscope (e.g. a higher-NA :class:`~napari_deeptrack.sim.Fluorescence`).
    scatterers : list of Scatterer
        The pipeline's scatterers, one per population.
    scale : str
        ``"max"``: divide each image by its maximum (images without particles stay 0); ``"none"``.
    """

    optics: Optics
    scatterers: list[Scatterer] = field(default_factory=list)
    scale: str = "max"

    def __post_init__(self):
        if self.scale not in ("max", "none"):
            raise ValueError(f"scale must be 'max' or 'none', got {self.scale!r}")

    def __call__(self, scene: Scene) -> torch.Tensor:
        g = torch.Generator(device=scene.device).manual_seed(0)
        img = self.optics.render(scene, list(self.scatterers), g).float()
        if self.scale == "max":
            peak = img.amax(dim=(-2, -1), keepdim=True)
            img = torch.where(peak > 0, img / peak.clamp_min(1e-12), torch.zeros_like(img))
        return img


@register
@dataclass
class NormalizeWithTarget(Transform):
    """Percentile-normalise the image and divide a target by the same per-image factor.

    ``image -> (image - p_low) / (p_high - p_low)`` per image and channel, exactly
    :func:`~napari_deeptrack.sim.normalize_images` (so the same as the task's input normalisation at
    inference), and ``target -> target / (p_high - p_low)``: a noise-free, background-free target in
    photons ends up in the units of the normalised input. Put it last in the transforms.

    Parameters
    ----------
    target : str
        Key of the pipeline target to rescale.
    low, high : float
        Percentiles (``0 <= low < high <= 100``), as for ``normalize_images``.
    """

    target: str = "clean"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self):
        check_range("low", self.low, 0.0, 100.0)
        check_range("high", self.high, 0.0, 100.0)
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        if self.target not in batch.targets:
            raise ValueError(
                f"NormalizeWithTarget: no target {self.target!r}; targets: {sorted(batch.targets)}"
            )
        x = batch.image.float()
        xn = normalize_images(x, "percentile", self.low, self.high)
        # normalize_images is affine per image and channel: its factor is the ratio of the spreads
        sd_x, sd_n = x.std(dim=(-2, -1), keepdim=True), xn.std(dim=(-2, -1), keepdim=True)
        scale = torch.where(sd_n > 0, sd_x / sd_n.clamp_min(1e-30), torch.full_like(sd_x, 1e-6))
        y = batch.targets[self.target]
        batch.image = xn
        if y.dim() != scale.dim() or y.shape[1] not in (1, scale.shape[1]):
            raise ValueError(
                f"NormalizeWithTarget: target {self.target!r} of shape {tuple(y.shape)} does not match "
                f"the image {tuple(x.shape)} ([B, C, H, W] with 1 or C channels)"
            )
        batch.targets[self.target] = y / scale
        return batch


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
