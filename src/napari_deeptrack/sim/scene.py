"""A batch of scenes: the ground truth that travels with simulated images.

Conventions (also in ``docs/physics.md``):

- ``position[..., 0]`` is y and ``position[..., 1]`` is x, in pixels of the output image, with the
  centre of the top-left pixel at (0, 0). ``position[..., 2]`` is z in micrometres: the particle's
  distance from the focal plane, positive away from the objective (towards the illumination side).
- ``present`` marks which of the ``N_max`` slots hold a particle, so images in a batch may hold
  different numbers of particles.
- Per-particle attributes are tensors of shape ``[B, N_max]`` (or ``[B, N_max, K]``).
- Per-image parameters that were sampled (aberration strengths, background, ...) go in
  ``image_params`` as ``[B]`` tensors, so every number that shaped an image is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class Scene:
    """Ground truth for a batch of images.

    Attributes
    ----------
    position : Tensor [B, N, 3]
        y (px), x (px), z (um) of every particle slot.
    present : Tensor [B, N] bool
        Whether the slot holds a particle.
    intensity : Tensor [B, N]
        Fluorescence: detected photons per particle (image integral). Coherent optics: unused.
    radius_um : Tensor [B, N]
        Particle radius in micrometres (0 for point particles).
    refractive_index : Tensor [B, N] complex64
        Particle refractive index (real part n, imaginary part absorption k >= 0).
    class_id : Tensor [B, N] int64
        Population / class label (index of the population that produced the particle).
    kind : Tensor [B, N] int64
        Index of the scatterer (population) in the pipeline that renders the particle.
    attributes : dict[str, Tensor]
        Further per-particle attributes, e.g. ``axes_um`` [B, N, 3], ``rotation_rad`` [B, N],
        ``shape_coeffs`` [B, N, K], ``track_id`` [B, N], ``frame`` [B].
    image_params : dict[str, Tensor]
        Per-image sampled parameters, [B] tensors.
    image_shape : tuple[int, int]
        (H, W) of the images the scene is rendered into.
    """

    position: torch.Tensor
    present: torch.Tensor
    intensity: torch.Tensor
    radius_um: torch.Tensor
    refractive_index: torch.Tensor
    class_id: torch.Tensor
    kind: torch.Tensor
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    image_params: dict[str, torch.Tensor] = field(default_factory=dict)
    image_shape: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(
        cls,
        batch_size: int,
        n_max: int,
        image_shape: tuple[int, int],
        device: torch.device | str | None = None,
    ) -> Scene:
        """A batch of ``batch_size`` scenes with ``n_max`` empty particle slots each."""
        dev = torch.device(device) if device is not None else torch.device("cpu")
        b, n = int(batch_size), int(n_max)
        return cls(
            position=torch.zeros(b, n, 3, device=dev),
            present=torch.zeros(b, n, dtype=torch.bool, device=dev),
            intensity=torch.zeros(b, n, device=dev),
            radius_um=torch.zeros(b, n, device=dev),
            refractive_index=torch.ones(b, n, dtype=torch.complex64, device=dev),
            class_id=torch.zeros(b, n, dtype=torch.long, device=dev),
            kind=torch.zeros(b, n, dtype=torch.long, device=dev),
            image_shape=(int(image_shape[0]), int(image_shape[1])),
        )

    # ------------------------------------------------------------------ shape helpers
    @property
    def batch_size(self) -> int:
        return int(self.position.shape[0])

    @property
    def n_max(self) -> int:
        return int(self.position.shape[1])

    @property
    def device(self) -> torch.device:
        return self.position.device

    @property
    def y(self) -> torch.Tensor:
        return self.position[..., 0]

    @property
    def x(self) -> torch.Tensor:
        return self.position[..., 1]

    @property
    def z_um(self) -> torch.Tensor:
        return self.position[..., 2]

    def counts(self) -> torch.Tensor:
        """Number of particles per image, [B] int64."""
        return self.present.sum(dim=1)

    def _per_particle_tensors(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                yield f.name, v

    def map_tensors(self, fn) -> Scene:
        """Apply ``fn`` to every tensor (particle tensors, attributes and image parameters)."""
        return replace(
            self,
            **{name: fn(v) for name, v in self._per_particle_tensors()},
            attributes={k: fn(v) for k, v in self.attributes.items()},
            image_params={k: fn(v) for k, v in self.image_params.items()},
        )

    def to(self, device: torch.device | str) -> Scene:
        """Move every tensor to ``device``."""
        return self.map_tensors(lambda t: t.to(device))

    def clone(self) -> Scene:
        return self.map_tensors(lambda t: t.clone())

    def index(self, idx) -> Scene:
        """Select images along the batch dimension (``idx`` is an int, slice or index tensor)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return self.map_tensors(lambda t: t[idx])

    @staticmethod
    def concatenate(scenes: list[Scene]) -> Scene:
        """Concatenate scenes along the batch dimension, padding particle slots to the largest N."""
        if not scenes:
            raise ValueError("concatenate needs at least one scene")
        shapes = sorted({tuple(s.image_shape) for s in scenes})
        if len(shapes) > 1:
            raise ValueError(f"concatenate needs scenes of one image_shape, got {shapes}")
        n = max(s.n_max for s in scenes)
        padded = [s.pad_to(n) for s in scenes]
        first = padded[0]
        kwargs = {
            name: torch.cat([getattr(s, name) for s in padded]) for name, _ in first._per_particle_tensors()
        }
        keys = set.intersection(*(set(s.attributes) for s in padded))
        pkeys = set.intersection(*(set(s.image_params) for s in padded))
        return replace(
            first,
            **kwargs,
            attributes={k: torch.cat([s.attributes[k] for s in padded]) for k in sorted(keys)},
            image_params={k: torch.cat([s.image_params[k] for s in padded]) for k in sorted(pkeys)},
        )

    def pad_to(self, n_max: int) -> Scene:
        """Return a scene with ``n_max`` particle slots (extra slots are absent)."""
        extra = n_max - self.n_max
        if extra < 0:
            raise ValueError(f"cannot pad {self.n_max} slots down to {n_max}")
        if extra == 0:
            return self
        b = self.batch_size

        def pad(t: torch.Tensor) -> torch.Tensor:
            if t.dim() >= 2 and t.shape[0] == b and t.shape[1] == self.n_max:
                shape = (b, extra, *t.shape[2:])
                fill = torch.ones if t.is_complex() else torch.zeros
                return torch.cat([t, fill(shape, dtype=t.dtype, device=t.device)], dim=1)
            return t

        return replace(
            self,
            **{name: pad(v) for name, v in self._per_particle_tensors()},
            attributes={k: pad(v) for k, v in self.attributes.items()},
        )

    # ------------------------------------------------------------------ export
    def to_records(self) -> list[dict[str, float]]:
        """One dict per present particle: image index, y, x (px), z (um), and scalar attributes."""
        b_idx, n_idx = torch.nonzero(self.present, as_tuple=True)
        pos = self.position[b_idx, n_idx].detach().cpu()
        cols: dict[str, torch.Tensor] = {
            "image": b_idx.cpu(),
            "y": pos[:, 0],
            "x": pos[:, 1],
            "z_um": pos[:, 2],
            "intensity": self.intensity[b_idx, n_idx].cpu(),
            "radius_um": self.radius_um[b_idx, n_idx].cpu(),
            "n_real": self.refractive_index[b_idx, n_idx].real.cpu(),
            "n_imag": self.refractive_index[b_idx, n_idx].imag.cpu(),
            "class_id": self.class_id[b_idx, n_idx].cpu(),
        }
        for k, v in self.attributes.items():
            if v.dim() == 2 and v.shape[:2] == self.present.shape:
                cols[k] = v[b_idx, n_idx].detach().cpu()
        n = len(b_idx)
        return [{k: (c[i].item()) for k, c in cols.items()} for i in range(n)]
