"""Preset ``mask-to-image``: a pix2pix GAN that turns nucleus masks into realistic images (paper IV.7),
and :class:`GeneratorOptics`, which makes a trained generator part of a simulation pipeline.

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
:class:`RealPairCrops` and stores the grey-value scaling in the bundle's task.

:class:`GeneratorOptics` renders any scene's particles as instance labels
(:class:`~napari_deeptrack.sim.InstanceLabels`), turns them into the semantic mask, adds the mask noise
and runs the generator: a ``Pipeline`` of ``CellBody`` particles then yields realistic-looking nuclei
images whose ground truth (positions, outlines, counts) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from ..sim import Fluorescence, Uniform
from ..sim.params import ParamLike, check_range, sample
from ..sim.pipeline import Optics, Pipeline, Scatterer
from ..sim.scene import Scene
from ..sim.serialize import register
from ..sim.targets import InstanceLabels
from .base import Task
from .presets_cells import CELLS_PIXEL_SIZE_UM, cells_pipeline
from .presets_restore import CleanImage
from .registry import register_preset

__all__ = [
    "GeneratorOptics",
    "RealPairCrops",
    "SemanticMask",
    "SignedImage",
    "mask_to_image",
    "mask_to_image_pipeline",
    "semantic_mask",
    "to_signed",
]


def semantic_mask(labels: torch.Tensor) -> torch.Tensor:
    """Instance labels ``[B, 1, H, W]`` (0 = background) -> semantic map: -1 background, +1 interior,
    0 boundary (nucleus pixels with a 4-neighbour of another label or of the background)."""
    lab = labels.long()
    pad = F.pad(lab.float(), (1, 1, 1, 1), mode="replicate").long()
    nbrs = (pad[..., :-2, 1:-1], pad[..., 2:, 1:-1], pad[..., 1:-1, :-2], pad[..., 1:-1, 2:])
    edge = torch.zeros_like(lab, dtype=torch.bool)
    for nb in nbrs:
        edge |= nb != lab
    fg = lab > 0
    out = torch.where(
        fg, torch.ones_like(lab, dtype=torch.float32), -torch.ones_like(lab, dtype=torch.float32)
    )
    return torch.where(fg & edge, torch.zeros_like(out), out)


def to_signed(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Grey values -> [-1, 1] (``low`` -> -1, ``high`` -> +1, clipped)."""
    return (2 * (image.float() - low) / max(high - low, 1e-12) - 1).clamp(-1, 1)


def _add_mask_noise(mask: torch.Tensor, std: ParamLike, generator: torch.Generator) -> torch.Tensor:
    sd = sample(std, (mask.shape[0],), generator).to(mask.device, mask.dtype).reshape(-1, 1, 1, 1)
    noise = torch.randn(mask.shape, generator=generator, device=generator.device, dtype=mask.dtype)
    return mask + sd * noise.to(mask.device)


@register
@dataclass
class SemanticMask(Optics):
    """Renders the scene as the generator's input: the semantic mask of its particles plus noise.

    Parameters
    ----------
    pixel_size_um : float
        Sample-plane pixel size (outlines are rasterised with it).
    noise_std : float or Distribution
        Per-image standard deviation of the Gaussian noise added to the mask (paper: uniform 0-0.1).
    """

    pixel_size_um: float = CELLS_PIXEL_SIZE_UM
    noise_std: ParamLike = field(default_factory=lambda: Uniform(0.0, 0.1))

    def __post_init__(self):
        check_range("pixel_size_um", self.pixel_size_um, 0.0, None, low_inclusive=False)
        check_range("noise_std", self.noise_std, 0.0, 1.0)

    def render(self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator) -> torch.Tensor:
        mask = semantic_mask(InstanceLabels(pixel_size_um=self.pixel_size_um)(scene))
        return _add_mask_noise(mask, self.noise_std, generator)


@register
@dataclass
class SignedImage(CleanImage):
    """The noise-free image of the scene scaled to [-1, 1] (its maximum -> +1, zero -> -1)."""

    def __call__(self, scene: Scene) -> torch.Tensor:
        return 2 * super().__call__(scene) - 1


_GENERATORS: dict[tuple[str, str], tuple[torch.nn.Module, dict[str, Any]]] = {}


@register
@dataclass
class GeneratorOptics(Optics):
    """A trained mask-to-image generator (``mask-to-image`` bundle) used as the microscope.

    ``render`` rasterises the scene's particles (:class:`~napari_deeptrack.sim.InstanceLabels`), makes
    the semantic mask (:func:`semantic_mask`), adds per-image mask noise drawn from the pipeline's
    generator, and runs the network. Same seed, same images.

    Parameters
    ----------
    bundle_path : str
        Bundle saved by ``examples/mask_to_image.py`` (or ``train mask-to-image``); loaded once, never
        unpickled.
    pixel_size_um : float
        Sample-plane pixel size of the scene (must match the data the generator was trained on).
    noise_std : float or Distribution
        Per-image mask noise (the paper's 0-0.1); different noise gives different images of one mask.
    output : str
        ``"grey"``: grey values via the bundle's ``postprocess`` ``output_low`` / ``output_high``
        (the real images' units); ``"signed"``: the generator's [-1, 1].
    """

    bundle_path: str = ""
    pixel_size_um: float = CELLS_PIXEL_SIZE_UM
    noise_std: ParamLike = field(default_factory=lambda: Uniform(0.0, 0.1))
    output: str = "grey"

    def __post_init__(self):
        if not self.bundle_path:
            raise ValueError("GeneratorOptics: bundle_path must name a mask-to-image bundle")
        check_range("pixel_size_um", self.pixel_size_um, 0.0, None, low_inclusive=False)
        check_range("noise_std", self.noise_std, 0.0, 1.0)
        if self.output not in ("grey", "signed"):
            raise ValueError(f"output must be 'grey' or 'signed', got {self.output!r}")

    def _load(self, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
        key = (str(self.bundle_path), str(device))
        if key not in _GENERATORS:
            from ..io.bundle import load_bundle

            b = load_bundle(self.bundle_path, device=device)
            net = getattr(b.model, "generator", b.model).eval()
            _GENERATORS[key] = (net, dict(b.task.postprocess))
        return _GENERATORS[key]

    def render(self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator) -> torch.Tensor:
        net, post = self._load(scene.device)
        mask = semantic_mask(InstanceLabels(pixel_size_um=self.pixel_size_um)(scene))
        x = _add_mask_noise(mask, self.noise_std, generator)
        with torch.no_grad():
            y = net(x).float()
        if self.output == "signed":
            return y
        if "output_low" not in post or "output_high" not in post:
            raise ValueError(
                f"bundle {self.bundle_path} has no output_low/output_high in its task.postprocess; "
                "use output='signed'"
            )
        lo, hi = float(post["output_low"]), float(post["output_high"])
        return lo + (y + 1) * 0.5 * (hi - lo)


class RealPairCrops(IterableDataset):
    """Random crops of real (mask, image) pairs with flips / 90-degree rotations and mask noise.

    Yields ``(mask [B, 1, S, S], image [B, 1, S, S])`` batches, both in [-1, 1] (masks from
    :func:`semantic_mask` plus per-image noise of std ``noise_std``). Crop positions, augmentations
    and noise come from one seeded generator; crops are gathered for the whole batch at once.

    Parameters
    ----------
    masks, images : Tensor [N, 1, H, W]
        Semantic masks and signed images (:func:`to_signed`).
    crop_px, batch_size, steps : int
        Crop size, images per batch, batches in all.
    """

    def __init__(self, masks, images, crop_px=64, batch_size=8, steps=100, seed=0, noise_std=None):
        super().__init__()
        self.masks, self.images = torch.as_tensor(masks).float(), torch.as_tensor(images).float()
        if self.masks.shape != self.images.shape or self.masks.dim() != 4:
            raise ValueError(f"masks and images must both be [N, 1, H, W], got {tuple(self.masks.shape)}")
        h, w = self.masks.shape[-2:]
        check_range("crop_px", crop_px, 8, min(h, w))
        self.crop_px, self.batch_size, self.steps, self.seed = int(crop_px), int(batch_size), int(steps), seed
        self.noise_std = Uniform(0.0, 0.1) if noise_std is None else noise_std

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(int(self.seed))
        n, _, h, w = self.masks.shape
        s, b = self.crop_px, self.batch_size
        ar = torch.arange(s)
        for _ in range(self.steps):
            idx = torch.randint(0, n, (b,), generator=g)
            y0 = torch.randint(0, h - s + 1, (b,), generator=g)
            x0 = torch.randint(0, w - s + 1, (b,), generator=g)
            iy = (y0[:, None] + ar)[:, :, None].expand(b, s, s)
            ix = (x0[:, None] + ar)[:, None, :].expand(b, s, s)
            both = torch.stack(
                [self.masks[idx[:, None, None], 0, iy, ix], self.images[idx[:, None, None], 0, iy, ix]], 1
            )
            flip = torch.rand(b, 3, generator=g) < 0.5
            both = torch.where(flip[:, 0, None, None, None], both.flip(-1), both)
            both = torch.where(flip[:, 1, None, None, None], both.flip(-2), both)
            both = torch.where(flip[:, 2, None, None, None], both.transpose(-1, -2), both)
            mask = _add_mask_noise(both[:, :1].contiguous(), self.noise_std, g)
            yield mask, both[:, 1:].contiguous()


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
