"""Label-preserving geometric augmentations of a :class:`~napari_deeptrack.sim.pipeline.SimBatch`.

Every transform applies *one* geometric map per image to

- the image ``[B, C, H, W]`` (bilinear resampling; flips and 90-degree rotations are exact
  permutations of pixels),
- every spatial target (a tensor whose first dim is B and last two dims are (H, W)): nearest
  neighbour for integer, boolean and binary (all values 0 or 1) targets so labels stay labels,
  bilinear for other float targets,
- the scene positions (y, x) exactly: a particle moves where its pixels move. Particles whose centre
  leaves the frame get ``present = False`` (particles that were already outside keep their state).

Each map is described by its *pull-back* ``src(p')``: output pixel ``p'`` shows the input content at
``src(p')`` (this is what ``grid_sample`` needs); particles move by the inverse, the push-forward
``p' = src^{-1}(p)``. Per-image parameters are recorded in ``scene.image_params`` (prefixed with the
transform's name). When the scene has ``attributes["movie"]`` (frames of a :class:`~.movie.Movie`
flattened into the batch) all frames of a movie get the same parameters.

Place augmentations before background and noise in ``Pipeline.transforms``: pixels that come from
outside the frame are filled with ``padding_mode`` (zeros by default, i.e. no signal).
Affine scaling changes the apparent size of objects (``radius_um`` is not changed). Density maps
named in ``preserve_integral`` are multiplied by the local area change so their integral (the count)
is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .params import ParamLike, Uniform, check_range, sample
from .pipeline import SimBatch, Transform
from .scene import Scene
from .serialize import register
from .targets import in_frame

__all__ = ["Affine", "ElasticDeformation", "FlipRotate", "spatial_target_names"]


# ---------------------------------------------------------------------------- shared machinery
def _groups(scene: Scene) -> tuple[torch.Tensor, int]:
    """Index of the random-parameter group of every image: the movie index if any, else the image."""
    movie = scene.attributes.get("movie")
    if movie is not None and movie.dim() == 1 and movie.shape[0] == scene.batch_size:
        idx = movie.long()
        return idx, int(idx.max().item()) + 1 if idx.numel() else 0
    return torch.arange(scene.batch_size, device=scene.device), scene.batch_size


def spatial_target_names(batch: SimBatch) -> list[str]:
    """Names of targets that are images of the frame (first dim B, last two dims (H, W))."""
    b = batch.image.shape[0]
    hw = tuple(batch.image.shape[-2:])
    return [
        k for k, t in batch.targets.items() if t.dim() >= 3 and t.shape[0] == b and tuple(t.shape[-2:]) == hw
    ]


def _is_discrete(t: torch.Tensor) -> bool:
    if not torch.is_floating_point(t):
        return True
    return bool(((t == 0) | (t == 1)).all().item())


def _pixel_to_grid(src_yx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel coordinates (y, x) -> grid_sample's normalised (x, y) with align_corners=True."""
    gy = 2.0 * src_yx[..., 0] / max(h - 1, 1) - 1.0
    gx = 2.0 * src_yx[..., 1] / max(w - 1, 1) - 1.0
    return torch.stack([gx, gy], dim=-1)


def _resample(t: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    shape = t.shape
    b, h, w = shape[0], shape[-2], shape[-1]
    flat = t.reshape(b, -1, h, w)
    work_dtype = torch.float64 if not torch.is_floating_point(t) else t.dtype
    out = F.grid_sample(
        flat.to(work_dtype), grid.to(work_dtype), mode=mode, padding_mode=padding_mode, align_corners=True
    )
    if not torch.is_floating_point(t):
        out = out.round()
    return out.to(t.dtype).reshape(shape)


def _update_scene(scene: Scene, new_yx: torch.Tensor, params: dict[str, torch.Tensor]) -> Scene:
    old_in = in_frame(scene.position[..., :2], scene.image_shape)
    new_in = in_frame(new_yx, scene.image_shape)
    position = scene.position.clone()
    position[..., :2] = new_yx.to(position.dtype)
    present = scene.present & (new_in | ~old_in)
    return replace(scene, position=position, present=present, image_params={**scene.image_params, **params})


def _warp(
    batch: SimBatch,
    src_yx: torch.Tensor,
    new_yx: torch.Tensor,
    params: dict[str, torch.Tensor],
    padding_mode: str,
    area_factor: torch.Tensor | None,
    preserve_integral: list[str],
) -> SimBatch:
    """Resample image and spatial targets at ``src_yx [B,H,W,2]``; move particles to ``new_yx``."""
    h, w = batch.image.shape[-2:]
    grid = _pixel_to_grid(src_yx, h, w)
    image = _resample(batch.image, grid, "bilinear", padding_mode)
    targets = dict(batch.targets)
    for name in spatial_target_names(batch):
        t = batch.targets[name]
        out = _resample(t, grid, "nearest" if _is_discrete(t) else "bilinear", "zeros")
        if name in preserve_integral and area_factor is not None:
            out = out * area_factor.reshape(t.shape[0], *([1] * (t.dim() - 3)), h, w).to(out.dtype)
        targets[name] = out
    return SimBatch(image, _update_scene(batch.scene, new_yx, params), targets)


def _check_padding(mode: str) -> None:
    if mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"padding_mode must be 'zeros', 'border' or 'reflection', got {mode!r}")


def _check_preserve(names: list[str]) -> None:
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"preserve_integral must be a list of target names, got {names!r}")


def _pixel_grid(h: int, w: int, device) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([yy, xx], dim=-1)  # [H, W, 2]


# ---------------------------------------------------------------------------- flips / rot90
# rotation by k * 90 degrees acting on centred (y, x): (y, x) -> (-x, y), applied k times
_ROT = torch.tensor(
    [[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]], dtype=torch.float32
)


@register
@dataclass
class FlipRotate(Transform):
    """Random flips (up-down, left-right) and 90-degree rotations, exact (a permutation of pixels).

    Forward map on centred coordinates ``q = p - c`` (``c = ((H-1)/2, (W-1)/2)``):
    ``q' = R^k F q`` where F flips y and/or x (each with probability ``p_flip``) and R rotates by
    90 degrees, ``(y, x) -> (-x, y)``, k uniform in 0..3 (0 or 2 for non-square images).
    Recorded in ``image_params``: ``flip_y``, ``flip_x``, ``rot90_k``.
    """

    kind = "augmentation"

    p_flip: float = 0.5
    rot90: bool = True

    def __post_init__(self):
        check_range("p_flip", self.p_flip, 0.0, 1.0)

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        scene = batch.scene
        dev = batch.image.device
        h, w = batch.image.shape[-2:]
        gidx, ng = _groups(scene)
        fy = torch.rand(ng, generator=generator, device=generator.device).to(dev)[gidx] < self.p_flip
        fx = torch.rand(ng, generator=generator, device=generator.device).to(dev)[gidx] < self.p_flip
        if self.rot90:
            k = torch.randint(0, 4, (ng,), generator=generator, device=generator.device).to(dev)[gidx]
            if h != w:
                k = (k // 2) * 2  # only 0 and 180 degrees keep a non-square frame
        else:
            k = torch.zeros(scene.batch_size, dtype=torch.long, device=dev)
        flip = torch.diag_embed(torch.stack([1.0 - 2.0 * fy.float(), 1.0 - 2.0 * fx.float()], dim=-1))
        a = _ROT.to(dev)[k] @ flip  # [B, 2, 2] forward map on centred coordinates
        c = torch.tensor([(h - 1) / 2.0, (w - 1) / 2.0], device=dev)
        # pull-back: p = A^T (p' - c) + c (A is orthogonal); exact integers
        grid = _pixel_grid(h, w, dev).reshape(1, -1, 2) - c
        src = (grid @ a + c).round().long()  # row-vector form of A^T q
        src_flat = (src[..., 0] * w + src[..., 1])  # [B, H*W]
        new_yx = (scene.position[..., :2] - c) @ a.transpose(1, 2) + c

        def permute(t: torch.Tensor) -> torch.Tensor:
            b = t.shape[0]
            flat = t.reshape(b, -1, h * w)
            idx = src_flat[:, None, :].expand(-1, flat.shape[1], -1)
            return torch.gather(flat, 2, idx).reshape(t.shape)

        targets = dict(batch.targets)
        for name in spatial_target_names(batch):
            targets[name] = permute(batch.targets[name])
        params = {"flip_y": fy.float(), "flip_x": fx.float(), "rot90_k": k.float()}
        return SimBatch(permute(batch.image), _update_scene(scene, new_yx, params), targets)


# ---------------------------------------------------------------------------- affine
@register
@dataclass
class Affine(Transform):
    """Small random affine map per image, resampled with ``grid_sample`` (batched).

    Forward map: ``p' = M (p - c) + c + t`` with ``M = R(rotation) @ Shear(shear) @ scale`` acting on
    (y, x), ``c`` the image centre and ``t = (translate_y, translate_x)`` in pixels. Each parameter
    is a number (fixed) or a Distribution sampled per image (per movie for movies); translation is
    drawn independently for y and x. Recorded in ``image_params``: ``affine_rotation_deg``,
    ``affine_scale``, ``affine_shear_deg``, ``affine_translate_y_px``, ``affine_translate_x_px``.

    Parameters
    ----------
    rotation_deg : float or Distribution
        Rotation angle in degrees.
    scale : float or Distribution
        Isotropic magnification (> 0).
    shear_deg : float or Distribution
        Shear angle in degrees (x is shifted by ``tan(shear) * y``).
    translate_px : float or Distribution
        Shift in pixels along y and along x.
    padding_mode : str
        ``grid_sample`` padding for the image: "zeros", "border" or "reflection".
    preserve_integral : list of str
        Names of density targets whose integral (count) must be kept: multiplied by the area change.
    """

    kind = "augmentation"

    rotation_deg: ParamLike = field(default_factory=lambda: Uniform(-180.0, 180.0))
    scale: ParamLike = field(default_factory=lambda: Uniform(0.9, 1.1))
    shear_deg: ParamLike = field(default_factory=lambda: Uniform(-5.0, 5.0))
    translate_px: ParamLike = field(default_factory=lambda: Uniform(-2.0, 2.0))
    padding_mode: str = "zeros"
    preserve_integral: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_range("scale", self.scale, 0.0, None, low_inclusive=False)
        check_range("shear_deg", self.shear_deg, -60.0, 60.0)
        _check_padding(self.padding_mode)
        _check_preserve(self.preserve_integral)

    def matrices(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Sample ``n`` forward matrices M [n,2,2], translations t [n,2] and their parameters."""
        rot = sample(self.rotation_deg, (n,), generator).float()
        s = sample(self.scale, (n,), generator).float()
        sh = sample(self.shear_deg, (n,), generator).float()
        ty = sample(self.translate_px, (n,), generator).float()
        tx = sample(self.translate_px, (n,), generator).float()
        th = torch.deg2rad(rot)
        cos, sin = torch.cos(th), torch.sin(th)
        one, zero = torch.ones_like(th), torch.zeros_like(th)
        r = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        tan = torch.tan(torch.deg2rad(sh))
        shear = torch.stack([torch.stack([one, zero], -1), torch.stack([tan, one], -1)], -2)
        m = r @ shear * s[:, None, None]
        params = {
            "affine_rotation_deg": rot,
            "affine_scale": s,
            "affine_shear_deg": sh,
            "affine_translate_y_px": ty,
            "affine_translate_x_px": tx,
        }
        return m, torch.stack([ty, tx], -1), params

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        scene = batch.scene
        dev = batch.image.device
        h, w = batch.image.shape[-2:]
        gidx, ng = _groups(scene)
        m, t, params = self.matrices(ng, generator)
        m, t = m.to(dev)[gidx], t.to(dev)[gidx]
        params = {k: v.to(dev)[gidx] for k, v in params.items()}
        c = torch.tensor([(h - 1) / 2.0, (w - 1) / 2.0], device=dev)
        minv = torch.linalg.inv(m)
        grid = _pixel_grid(h, w, dev).reshape(1, -1, 2)
        src = ((grid - c - t[:, None, :]) @ minv.transpose(1, 2) + c).reshape(-1, h, w, 2)
        new_yx = (scene.position[..., :2] - c) @ m.transpose(1, 2) + c + t[:, None, :]
        area = torch.linalg.det(minv).abs()[:, None, None].expand(-1, h, w)
        return _warp(batch, src, new_yx, params, self.padding_mode, area, list(self.preserve_integral))


# ---------------------------------------------------------------------------- elastic
def _gaussian_noise_field(
    n: int, h: int, w: int, sigma_px: float, generator: torch.Generator
) -> torch.Tensor:
    """Smooth random field [n, 2, H, W]: white noise low-passed by a Gaussian of ``sigma_px``, unit rms.

    Filtering is done in Fourier space (periodic boundaries); the result is rescaled by the exact
    expected rms of the filtered noise, so the displacement's rms per axis is 1 on average.
    """
    noise = torch.randn(n, 2, h, w, generator=generator, device=generator.device)
    fy = torch.fft.fftfreq(h, device=noise.device)[:, None]
    fx = torch.fft.fftfreq(w, device=noise.device)[None, :]
    transfer = torch.exp(-2.0 * math.pi**2 * sigma_px**2 * (fy**2 + fx**2))
    field_ = torch.fft.ifft2(torch.fft.fft2(noise) * transfer).real
    return field_ / torch.sqrt((transfer**2).mean())


def _sample_field(d: torch.Tensor, yx: torch.Tensor) -> torch.Tensor:
    """Bilinear value of a field ``d [B,2,H,W]`` at points ``yx [B,N,2]`` (border extension)."""
    h, w = d.shape[-2:]
    grid = _pixel_to_grid(yx, h, w)[:, :, None, :]  # [B, N, 1, 2]
    out = F.grid_sample(d, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[..., 0].transpose(1, 2)  # [B, N, 2]


@register
@dataclass
class ElasticDeformation(Transform):
    """Smooth random deformation: ``output(p) = input(p + d(p))``.

    ``d`` (px, per axis) is Gaussian white noise smoothed with a Gaussian of ``sigma_px`` and
    scaled so that its rms per axis is ``alpha_px``. ``d`` is the *pull-back* displacement, defined
    on the output grid. A particle at ``p`` moves to the ``p'`` that solves ``p' + d(p') = p``,
    found by fixed-point iteration ``p' <- p - d(p')`` (converges when the field's gradient is
    below 1, i.e. ``alpha_px`` well below ``sigma_px``; checked: ``alpha_px <= sigma_px / 2``).
    Recorded in ``image_params``: ``elastic_alpha_px`` (the realised rms displacement).

    Parameters
    ----------
    alpha_px : float
        Rms displacement per axis in pixels.
    sigma_px : float
        Correlation length (Gaussian smoothing width) in pixels.
    padding_mode, preserve_integral
        As for :class:`Affine` (the area change is the local Jacobian determinant).
    """

    kind = "augmentation"

    alpha_px: float = 1.0
    sigma_px: float = 8.0
    padding_mode: str = "zeros"
    preserve_integral: list[str] = field(default_factory=list)
    iterations: int = 20

    def __post_init__(self):
        check_range("sigma_px", self.sigma_px, 0.0, None, low_inclusive=False)
        check_range("alpha_px", self.alpha_px, 0.0, float(self.sigma_px) / 2.0)
        _check_padding(self.padding_mode)
        check_range("iterations", self.iterations, 1, None)
        _check_preserve(self.preserve_integral)

    def displacement(self, n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """Sample ``n`` pull-back displacement fields ``[n, 2, H, W]`` (y, x components, px)."""
        return float(self.alpha_px) * _gaussian_noise_field(n, h, w, float(self.sigma_px), generator)

    def __call__(self, batch: SimBatch, generator: torch.Generator) -> SimBatch:
        scene = batch.scene
        dev = batch.image.device
        h, w = batch.image.shape[-2:]
        gidx, ng = _groups(scene)
        d = self.displacement(ng, h, w, generator).to(dev)[gidx]  # [B, 2, H, W]
        src = _pixel_grid(h, w, dev)[None] + d.permute(0, 2, 3, 1)
        p = scene.position[..., :2].float()
        p_new = p - _sample_field(d, p)
        for _ in range(int(self.iterations)):
            p_new = p - _sample_field(d, p_new)
        # local area change of the pull-back map: det(I + grad d)
        ddy_dy, ddy_dx = torch.gradient(d[:, 0], dim=(-2, -1))
        ddx_dy, ddx_dx = torch.gradient(d[:, 1], dim=(-2, -1))
        area = ((1 + ddy_dy) * (1 + ddx_dx) - ddy_dx * ddx_dy).abs()
        params = {"elastic_alpha_px": d.pow(2).mean(dim=(1, 2, 3)).sqrt()}
        return _warp(batch, src, p_new, params, self.padding_mode, area, list(self.preserve_integral))
