"""The simulation pipeline: sample scenes, image them, compute targets, add noise and augmentations.

A :class:`Pipeline` is a JSON-serialisable description of how training images are made::

    Pipeline(
        image_shape=(64, 64),
        particles=[
            Particles(scatterer=PointParticle(), count=IntUniform(1, 10), intensity=Uniform(100, 500)),
        ],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        transforms=[Background(10.0), Poisson()],
        targets={"mask": DiskMask(radius_px=3)},
    )

Calling ``pipeline(batch_size, seed=0)`` returns a :class:`SimBatch` with images ``[B, C, H, W]``,
the :class:`~napari_deeptrack.sim.scene.Scene` (ground truth) and the targets. Every random number
comes from one ``torch.Generator``: same seed, same batch.

Extension points (subclass and ``@register`` to make them serialisable):

- :class:`Scatterer`: what a particle is (samples its own per-particle attributes).
- :class:`Optics`: renders a scene batch into images.
- :class:`Transform`: acts on a :class:`SimBatch` after imaging (noise, camera, augmentation).
- :class:`Target`: computes a training target tensor from the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .params import IntUniform, ParamLike, check_range, sample
from .scene import Scene
from .serialize import register

#: what a :class:`Transform` is (its ``kind``)
TRANSFORM_KINDS = (
    "background",  # expected photons added to every pixel
    "noise",  # random detection noise (shot noise, read noise)
    "camera",  # detector response (gain, offset, bit depth)
    "signal",  # scaling or polarity of the optical signal before the noise (illumination, contrast)
    "normalization",  # rescaling of the image values (as for the network input)
    "augmentation",  # label-preserving geometric changes (flips, rotations, affine, elastic)
    "other",
)
NOISE_KINDS = ("background", "noise", "camera")


# ---------------------------------------------------------------------------- base classes
class Scatterer:
    """Base class for objects in the sample (point particles, spheres, Mie spheres, cells...).

    Subclasses are dataclasses whose fields are parameters (numbers or distributions). They fill the
    per-particle attributes they need into the scene in :meth:`sample_into`.
    """

    def sample_into(self, scene: Scene, slots: torch.Tensor, generator: torch.Generator) -> None:
        """Sample this scatterer's attributes for the particle slots ``slots`` (a slice or index).

        Writes into ``scene`` (e.g. ``scene.radius_um[:, slots]``) in place. The default does nothing
        (a point particle has no attributes beyond position and intensity).
        """


class Optics:
    """Base class for microscopes. ``render`` turns a scene batch into images [B, C, H, W].

    The contract every optics keeps (code outside ``sim`` relies on it, never on class names):

    - :attr:`sample_pixel_um`: the pixel size in the sample plane (um), however the optics was given
      it (``pixel_size_um``, or ``camera_pixel_um / magnification``); None for optics without a
      physical pixel (e.g. :class:`~napari_deeptrack.sim.DigitImages`). A :class:`Task` records this
      value; simulated stacks carry it; calibration and coverage checks compare against it.
    - :attr:`is_coherent`: True when the image is formed by interference of a coherent field
      (brightfield, holography: the background is the illumination), False for incoherent imaging
      (fluorescence: particles add photons to a dark background).
    """

    #: coherent (field) imaging, e.g. brightfield and holography; False for fluorescence
    is_coherent = False

    @property
    def sample_pixel_um(self) -> float | None:
        """Pixel size in the sample plane (um), or None when the optics has no physical pixel.

        The default reads a ``pixel_size_um`` field; optics that also accept ``camera_pixel_um`` and
        ``magnification`` override it.
        """
        px = getattr(self, "pixel_size_um", None)
        return float(px) if px else None

    def render(
        self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError


class Transform:
    """Base class for what happens after imaging: noise, camera, normalisation, augmentation.

    ``kind`` (class attribute) says what a transform is, so that code outside ``sim`` recognises it
    without class-name strings: one of :data:`TRANSFORM_KINDS`. ``background``, ``noise`` and
    ``camera`` transforms form the noise model of a real camera (:attr:`is_noise`): calibration
    fits them to real images, and a simulation matched to a layer replaces a preset's ones.
    """

    kind = "other"

    @property
    def is_noise(self) -> bool:
        """True for the camera's noise model: background, shot / read noise, gain and offset."""
        return self.kind in NOISE_KINDS

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        raise NotImplementedError


class Target:
    """Base class for training targets computed from the scene (the ground truth).

    ``spatial`` (class attribute): True for image-like targets ``[B, K, H, W]`` that geometric
    augmentations warp with the image; False for per-image targets (vectors, labels, counts) that the
    pipeline recomputes from the final scene after the transforms.
    """

    spatial = True

    def __call__(self, scene: Scene) -> torch.Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------------------- data
@dataclass
class SimBatch:
    """Images, their ground truth and targets.

    ``image`` is [B, C, H, W] float32 (or [B, T, C, H, W] for movies); ``targets`` maps names to
    tensors whose first dimension is B.
    """

    image: torch.Tensor
    scene: Scene
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device) -> SimBatch:
        return SimBatch(
            self.image.to(device), self.scene.to(device), {k: v.to(device) for k, v in self.targets.items()}
        )


# ---------------------------------------------------------------------------- populations
@register
@dataclass
class Particles:
    """A population of particles of one scatterer type.

    Parameters
    ----------
    scatterer : Scatterer
        What each particle is (``PointParticle()``, ``Sphere(radius_um=...)``, ``MieSphere(...)``...).
    count : int or Distribution
        Number of particles per image (sampled per image).
    y_px, x_px : Distribution or None
        Position in pixels. ``None``: uniform over the image, keeping ``margin_px`` from the edges.
    z_um : float or Distribution
        Distance from the focal plane in micrometres (positive away from the objective).
    intensity : float or Distribution
        Fluorescence: detected photons per particle. Ignored by coherent optics.
    margin_px : float
        Distance kept from the image border when positions are uniform. May be negative to let
        particles sit partly outside the field of view.
    class_id : int
        Label written to ``scene.class_id`` for this population.
    """

    scatterer: Scatterer
    count: ParamLike = 1
    y_px: ParamLike | None = None
    x_px: ParamLike | None = None
    z_um: ParamLike = 0.0
    intensity: ParamLike = 100.0
    margin_px: float = 0.0
    class_id: int = 0

    def __post_init__(self):
        check_range("count", self.count, 0, None)
        check_range("intensity", self.intensity, 0, None)

    @property
    def max_count(self) -> int:
        from .params import support

        hi = support(self.count)[1]
        if hi == float("inf"):
            raise ValueError("count must be bounded (use IntUniform or a number)")
        return int(round(hi))


# ---------------------------------------------------------------------------- pipeline
@register
@dataclass
class Pipeline:
    """Scene sampling + optics + transforms + targets. See the module docstring."""

    image_shape: tuple[int, int]
    particles: list[Particles]
    optics: Optics
    transforms: list[Transform] = field(default_factory=list)
    targets: dict[str, Target] = field(default_factory=dict)
    min_distance_px: float = 0.0

    def __post_init__(self):
        if isinstance(self.image_shape, list):
            self.image_shape = tuple(self.image_shape)
        if len(self.image_shape) != 2 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W) with H, W >= 1, got {self.image_shape}")
        self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))
        if isinstance(self.particles, Particles):
            self.particles = [self.particles]

    # -------------------------------------------------------------- scene
    def sample_scene(self, batch_size: int, generator: torch.Generator) -> Scene:
        """Sample the ground truth for ``batch_size`` images."""
        dev = generator.device
        h, w = self.image_shape
        n_total = sum(p.max_count for p in self.particles)
        scene = Scene.empty(batch_size, n_total, (h, w), device=dev)
        start = 0
        for k, pop in enumerate(self.particles):
            n = pop.max_count
            if n == 0:
                continue
            sl = slice(start, start + n)
            counts = sample(pop.count, (batch_size,), generator).round().long().clamp(0, n)
            scene.present[:, sl] = torch.arange(n, device=dev)[None, :] < counts[:, None]
            y, x = _sample_yx(pop, batch_size, (h, w), generator)
            scene.position[:, sl, 0] = y
            scene.position[:, sl, 1] = x
            scene.position[:, sl, 2] = sample(pop.z_um, (batch_size, n), generator)
            scene.intensity[:, sl] = sample(pop.intensity, (batch_size, n), generator)
            scene.class_id[:, sl] = int(pop.class_id)
            scene.kind[:, sl] = k
            pop.scatterer.sample_into(scene, sl, generator)
            start += n
        if self.min_distance_px > 0:
            _enforce_min_distance(scene, self.particles, float(self.min_distance_px), generator)
        return scene

    @property
    def scatterers(self) -> list[Scatterer]:
        return [p.scatterer for p in self.particles]

    # -------------------------------------------------------------- images
    def render(self, scene: Scene, generator: torch.Generator) -> torch.Tensor:
        """Noise-free image of ``scene`` through the optics, [B, C, H, W]."""
        return self.optics.render(scene, self.scatterers, generator)

    def __call__(
        self,
        batch_size: int,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SimBatch:
        """Simulate a batch: ground truth, images, targets, then transforms (noise, augmentation)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from .budget import check_render  # memory estimate before allocating (never an OOM kill)

        check_render(self, int(batch_size))
        generator = make_generator(seed, generator, device)
        return self.image_scene(self.sample_scene(batch_size, generator), generator)

    def image_scene(self, scene: Scene, generator: torch.Generator) -> SimBatch:
        """Render ``scene``, compute the targets and apply the transforms (used by ``Movie`` too)."""
        image = self.render(scene, generator)
        batch = SimBatch(image=image, scene=scene, targets={k: t(scene) for k, t in self.targets.items()})
        for tr in self.transforms:
            batch = tr(batch, generator)
        # Per-image targets (regression vectors, counts, class labels: ``spatial = False``) follow the
        # final scene, so geometric augmentations that move particles keep them true. Spatial targets
        # are warped by the augmentations together with the image.
        for k, t in self.targets.items():
            if not getattr(t, "spatial", True):
                batch.targets[k] = t(batch.scene)
        return batch

    def with_(self, **changes) -> Pipeline:
        """A copy with some fields replaced (``pipeline.with_(image_shape=(128, 128))``)."""
        return replace(self, **changes)


def make_generator(
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Generator:
    """``generator`` if given, else a new one on ``device`` seeded with ``seed`` (random when None)."""
    if generator is not None:
        return generator
    try:
        generator = torch.Generator(device=device or "cpu")
    except (RuntimeError, TypeError) as exc:  # "bogus", "cuda" without a GPU build...
        from ..errors import DeviceError

        raise DeviceError(f"device {device!r} is not usable here ({exc})", parameter="device") from None
    generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63)))
    return generator


def _sample_yx(
    pop: Particles, batch_size: int, image_shape: tuple[int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-plane positions (px) of all ``pop.max_count`` slots of a population, [B, n] each."""
    h, w = image_shape
    n, dev = pop.max_count, generator.device
    m = float(pop.margin_px)
    y = (
        sample(pop.y_px, (batch_size, n), generator)
        if pop.y_px is not None
        else m + (h - 1 - 2 * m) * torch.rand(batch_size, n, generator=generator, device=dev)
    )
    x = (
        sample(pop.x_px, (batch_size, n), generator)
        if pop.x_px is not None
        else m + (w - 1 - 2 * m) * torch.rand(batch_size, n, generator=generator, device=dev)
    )
    return y, x


def _enforce_min_distance(
    scene: Scene, pops: list[Particles], min_dist: float, generator: torch.Generator, iters: int = 50
) -> None:
    """Resample in-plane positions of particles closer than ``min_dist`` px to an earlier particle.

    Vectorised over the batch; clashing particles are redrawn from their own population's position
    distribution (``y_px``/``x_px`` or uniform within ``margin_px``). Particles still too close after
    ``iters`` rounds are removed from the scene (``present`` set to False), so the ground truth stays
    consistent with the image.
    """
    n = scene.n_max
    dev = scene.device
    earlier = torch.tril(torch.ones(n, n, dtype=torch.bool, device=dev), diagonal=-1)
    for it in range(iters + 1):
        yx = scene.position[..., :2]
        d = torch.cdist(yx, yx)
        both = scene.present[:, :, None] & scene.present[:, None, :]
        clash = ((d < min_dist) & both & earlier[None]).any(dim=2)
        if not clash.any():
            return
        if it == iters:
            scene.present &= ~clash
            return
        # one draw per population (not per particle), in slot order
        b, shape = scene.batch_size, scene.image_shape
        draws = [_sample_yx(p, b, shape, generator) for p in pops if p.max_count > 0]
        ry = torch.cat([dy for dy, _ in draws], dim=1)
        rx = torch.cat([dx for _, dx in draws], dim=1)
        scene.position[..., 0] = torch.where(clash, ry, scene.position[..., 0])
        scene.position[..., 1] = torch.where(clash, rx, scene.position[..., 1])


__all__ = [
    "NOISE_KINDS",
    "TRANSFORM_KINDS",
    "IntUniform",
    "Optics",
    "Particles",
    "Pipeline",
    "Scatterer",
    "SimBatch",
    "Target",
    "Transform",
    "make_generator",
]
