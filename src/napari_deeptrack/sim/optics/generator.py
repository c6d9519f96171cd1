"""Optics made of a trained network: semantic masks of the scene, and a mask-to-image generator.

The DeepTrack 2.0 paper (section IV.7) trains a pix2pix generator that turns semantic masks of nuclei
into realistic images, then uses it as one more feature of the simulator:

- :class:`SemanticMask` renders a scene's particles as the generator's input: a one-channel map with
  background -1, object interior +1 and object boundary 0 (:func:`semantic_mask`), plus per-image
  Gaussian noise (:func:`add_mask_noise`);
- :class:`GeneratorOptics` runs a trained generator (a ``mask-to-image`` bundle) on that mask, so a
  pipeline of :class:`~napari_deeptrack.sim.CellBody` particles yields realistic-looking images whose
  ground truth is exact.

The generator's network is read from the bundle's ``config.json`` (model config and ``postprocess``)
and ``weights.safetensors`` (never unpickled); the bundle's task is not decoded, so this module needs
only :mod:`napari_deeptrack.nn` beside :mod:`napari_deeptrack.sim`.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..params import ParamLike, Uniform, check_range, sample
from ..pipeline import Optics, Scatterer
from ..scene import Scene
from ..serialize import register
from ..targets import InstanceLabels

__all__ = ["GeneratorOptics", "SemanticMask", "add_mask_noise", "semantic_mask", "to_signed"]


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


def add_mask_noise(mask: torch.Tensor, std: ParamLike, generator: torch.Generator) -> torch.Tensor:
    """``mask + sigma * N(0, 1)`` with one ``sigma`` drawn from ``std`` per image."""
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

    pixel_size_um: float = 0.65
    noise_std: ParamLike = field(default_factory=lambda: Uniform(0.0, 0.1))

    def __post_init__(self):
        check_range("pixel_size_um", self.pixel_size_um, 0.0, None, low_inclusive=False)
        check_range("noise_std", self.noise_std, 0.0, 1.0)

    def render(self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator) -> torch.Tensor:
        mask = semantic_mask(InstanceLabels(pixel_size_um=self.pixel_size_um)(scene))
        return add_mask_noise(mask, self.noise_std, generator)


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
    pixel_size_um: float = 0.65
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
            model, post = _read_network(Path(self.bundle_path))
            net = getattr(model, "generator", model).to(device).eval()
            _GENERATORS[key] = (net, post)
        return _GENERATORS[key]

    def render(self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator) -> torch.Tensor:
        net, post = self._load(scene.device)
        mask = semantic_mask(InstanceLabels(pixel_size_um=self.pixel_size_um)(scene))
        x = add_mask_noise(mask, self.noise_std, generator)
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


def _read_network(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a bundle (folder or zip) and its ``postprocess`` settings; never unpickles."""
    from safetensors.torch import load as load_safetensors

    from ...nn import build_model

    try:
        if path.is_dir():
            raw_config = (path / "config.json").read_bytes()
            weights = (path / "weights.safetensors").read_bytes()
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                raw_config, weights = archive.read("config.json"), archive.read("weights.safetensors")
        else:
            raise ValueError("not a folder or a zip file")
        config = json.loads(raw_config.decode("utf-8"))
        expected = config.get("weights", {}).get("sha256")
        if expected and hashlib.sha256(weights).hexdigest() != expected:
            raise ValueError("weights.safetensors does not match the checksum in config.json")
        model = build_model(config["model"])
        model.load_state_dict(load_safetensors(weights), strict=True)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"GeneratorOptics: cannot read the bundle {path}: {exc}") from None
    return model, dict(config.get("postprocess", {}))
