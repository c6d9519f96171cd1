"""Preset ``mask-to-image``: a pix2pix GAN that turns nucleus masks into realistic images (paper IV.7).

The simulation objects it uses live in ``sim``: :class:`~napari_deeptrack.sim.SemanticMask` and
:class:`~napari_deeptrack.sim.GeneratorOptics` (``sim/optics/generator.py``, which makes a trained
generator part of a simulation pipeline) and :class:`~napari_deeptrack.sim.SignedImage`
(``sim/targets.py``); real training pairs come from :class:`~napari_deeptrack.train.data.RealPairCrops`.

The DeepTrack 2.0 paper trains a pix2pix conditional GAN on experimental images and their semantic
masks, then uses the generator as one more feature of the simulator. Here the masks are of stained
nuclei: a one-channel semantic map (:func:`semantic_mask`) with background -1, nucleus interior +1 and
nucleus boundary 0 (the outer pixel ring of each nucleus, which also separates touching nuclei), plus
per-image Gaussian noise of standard deviation uniform in 0-0.1, as in the paper (the noise gives the
generator something to vary inside large uniform regions). Images are scaled to [-1, 1] with fixed
grey values (``postprocess["output_low"]`` -> -1, ``postprocess["output_high"]`` -> +1).

The preset's pipeline simulates such mask / image pairs from :class:`~napari_deeptrack.sim.CellBody`
nuclei (so ``napari-deeptrack train mask-to-image`` runs anywhere), but the point of the case study is
to learn from *real* images: ``examples/mask_to_image.py`` trains on the BBBC039 nuclei with
:class:`~napari_deeptrack.train.data.RealPairCrops` and stores the grey-value scaling in the bundle's task.

:class:`GeneratorOptics` renders any scene's particles as instance labels
(:class:`~napari_deeptrack.sim.InstanceLabels`), turns them into the semantic mask, adds the mask noise
and runs the generator: a ``Pipeline`` of ``CellBody`` particles then yields realistic-looking nuclei
images whose ground truth (positions, outlines, counts) is exact.
"""

from __future__ import annotations

from ..sim import Fluorescence, GeneratorOptics, SemanticMask, SignedImage, semantic_mask, to_signed
from ..sim.pipeline import Pipeline
from .base import Task
from .presets_cells import CELLS_PIXEL_SIZE_UM, cells_pipeline
from .registry import register_preset

__all__ = [
    "GeneratorOptics",
    "SemanticMask",
    "SignedImage",
    "mask_to_image",
    "mask_to_image_pipeline",
    "semantic_mask",
    "to_signed",
]


def mask_to_image_pipeline(image_shape: tuple[int, int] = (64, 64)) -> Pipeline:
    """Simulated nuclei (the ``cells-count`` scenes): noisy semantic mask -> image in [-1, 1]."""
    cells = cells_pipeline(image_shape)
    fluo = cells.optics
    if not isinstance(fluo, Fluorescence):  # pragma: no cover - guards a change in presets_cells
        raise TypeError("cells_pipeline's optics is expected to be Fluorescence")
    scatterers = [p.scatterer for p in cells.particles]
    return cells.with_(
        optics=SemanticMask(pixel_size_um=CELLS_PIXEL_SIZE_UM),
        transforms=[],
        targets={"image": SignedImage(optics=fluo, scatterers=scatterers)},
    )


@register_preset("mask-to-image")
def mask_to_image() -> Task:
    """pix2pix: semantic nucleus mask (+ noise) -> nucleus image in [-1, 1] (paper, section IV.7)."""
    return Task(
        name="mask-to-image",
        kind="image-to-image",
        description=(
            "pix2pix conditional GAN turning a semantic mask of nuclei (-1 background, +1 nucleus, 0 "
            "nucleus boundary; plus Gaussian noise of std 0-0.1 per image) into a nucleus image "
            "scaled to [-1, 1]. The preset simulates mask/image pairs so it trains anywhere; train it "
            "on real images with examples/mask_to_image.py, then use the generator inside a "
            "simulation with GeneratorOptics."
        ),
        pipeline=mask_to_image_pipeline(),
        target="image",
        model={
            "type": "Pix2Pix",
            "in_channels": 1,
            "out_channels": 1,
            "base_channels": 16,
            "depth": 3,
            "n_residual": 2,
            "disc_base_channels": 16,
            "disc_layers": 3,
            "max_channels": 128,
        },
        loss={"type": "pix2pix", "l1_weight": 0.8, "adversarial": "mse"},
        input_normalization={"mode": "none"},
        postprocess={"activation": "none"},
        pixel_size_um=CELLS_PIXEL_SIZE_UM,
        training={"epochs": 20, "steps_per_epoch": 16, "batch_size": 8, "lr": 2e-4, "validation_size": 32},
    )
