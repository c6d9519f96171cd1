"""Training targets computed from the ground truth (the :class:`~napari_deeptrack.sim.scene.Scene`).

Every target is a serialisable dataclass called as ``target(scene) -> Tensor`` on a whole batch.
Particles are drawn in small patches around their centres and scatter-added (or max-combined) into
the frame, so there is no Python loop over images or particles.

Pixel convention (as everywhere): the centre of the top-left pixel is (y, x) = (0, 0); pixel
``(i, j)`` covers ``[i - 0.5, i + 0.5) x [j - 0.5, j + 0.5)``. A particle is *in the frame* when its
centre lies inside the pixel area, ``-0.5 <= y < H - 0.5`` and ``-0.5 <= x < W - 0.5``.

Spatial targets (``[B, K, H, W]``) are warped together with the image by the geometric
augmentations of :mod:`~napari_deeptrack.sim.augment`; non-spatial targets (``spatial = False``:
regression vectors, class labels, counts) are recomputed by the pipeline from the final scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .params import check_range
from .pipeline import Optics, Scatterer, Target
from .scatterers import cell_outline_factor
from .scene import Scene
from .serialize import register

__all__ = [
    "BoundaryClasses",
    "CentredDensityMap",
    "ClassLabel",
    "CleanImage",
    "SignedImage",
    "boundary_classes",
    "Counts",
    "DensityMap",
    "DiskMask",
    "InstanceLabels",
    "RegressionVector",
    "ZBinnedVolume",
    "in_frame",
    "z_to_bin",
    "bin_to_z",
]


# ---------------------------------------------------------------------------- helpers
def in_frame(position_yx: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """Whether centres ``[..., 2]`` (y, x in px) lie inside the pixel area of an (H, W) image."""
    h, w = image_shape
    y, x = position_yx[..., 0], position_yx[..., 1]
    return (y >= -0.5) & (y < h - 0.5) & (x >= -0.5) & (x < w - 0.5)


def _active(scene: Scene, z_range_um: list[float] | tuple[float, float] | None = None) -> torch.Tensor:
    """Present particles, optionally restricted to ``z_range_um`` (inclusive), [B, N] bool."""
    act = scene.present.clone()
    if z_range_um is not None:
        z = scene.z_um
        act &= (z >= float(z_range_um[0])) & (z <= float(z_range_um[1]))
    return act


def _safe_centres(scene: Scene, active: torch.Tensor) -> torch.Tensor:
    """y, x of active slots; inactive (possibly garbage) slots are parked at the origin."""
    yx = scene.position[..., :2]
    ok = active & torch.isfinite(yx).all(dim=-1)
    return torch.where(ok[..., None], yx, torch.zeros_like(yx)), ok


def _patches(centres: torch.Tensor, half: int, image_shape: tuple[int, int]):
    """Pixel indices and offsets of a (2*half+1)^2 patch around each centre.

    Returns ``iy [B,N,P,1]``, ``ix [B,N,1,P]`` (int64), ``dy``, ``dx`` (pixel centre minus particle
    centre, float) and ``inside [B,N,P,P]`` (pixel inside the image).
    """
    h, w = image_shape
    off = torch.arange(-half, half + 1, device=centres.device)
    base = centres.round()
    iy = base[..., 0, None, None].long() + off[:, None]
    ix = base[..., 1, None, None].long() + off[None, :]
    dy = iy.to(centres.dtype) - centres[..., 0, None, None]
    dx = ix.to(centres.dtype) - centres[..., 1, None, None]
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    return iy, ix, dy, dx, inside


def _splat(values: torch.Tensor, iy, ix, keep, out_shape, reduce: str, dtype=torch.float32, iz=None):
    """Combine patch ``values [B,N,...]`` into ``out [B, C, H, W]`` at (iz or 0, iy, ix) where ``keep``."""
    b, c, h, w = out_shape
    shape = torch.broadcast_shapes(values.shape, keep.shape)
    bidx = torch.arange(b, device=values.device).view(b, *([1] * (len(shape) - 1)))
    zz = iz if iz is not None else torch.zeros((), dtype=torch.long, device=values.device)
    flat = ((bidx * c + zz) * h + iy.clamp(0, h - 1)) * w + ix.clamp(0, w - 1)
    flat = torch.broadcast_to(flat, shape)[torch.broadcast_to(keep, shape)]
    vals = torch.broadcast_to(values, shape)[torch.broadcast_to(keep, shape)].to(dtype)
    out = torch.zeros(b * c * h * w, dtype=dtype, device=values.device)
    if reduce == "sum":
        out.index_add_(0, flat, vals)
    else:
        out.scatter_reduce_(0, flat, vals, reduce="amax", include_self=True)
    return out.view(b, c, h, w)


def _disk_value(dist: torch.Tensor, radius: float | torch.Tensor, antialias: bool) -> torch.Tensor:
    """1 inside ``radius``; with ``antialias`` a one-pixel linear edge (unbiased centroid)."""
    if antialias:
        return (radius + 0.5 - dist).clamp(0.0, 1.0)
    return (dist <= radius).to(torch.float32)


# ---------------------------------------------------------------------------- masks
@register
@dataclass
class DiskMask(Target):
    """Disks of ``radius_px`` centred on the particles: ``[B, 1, H, W]`` float32 in [0, 1].

    Pixel (i, j) is 1 when its centre lies within ``radius_px`` of a particle centre (sub-pixel
    centres are honoured); overlapping disks merge. This is DeepTrack's detection target.

    Parameters
    ----------
    radius_px : float
        Disk radius in pixels (> 0).
    z_range_um : (float, float) or None
        Only particles with ``z_min <= z_um <= z_max`` are drawn (e.g. those in focus).
    antialias : bool
        False (default): binary disks. A binary disk's centroid is quantised: it can sit up to
        0.26 px from the particle. True: edge pixels get the fraction ``clip(radius + 0.5 - d, 0, 1)``
        so the centroid of each disk is the particle position within ~0.03 px (for radius >= 2),
        which is better for sub-pixel localisation from the network output.
    """

    radius_px: float = 3.0
    z_range_um: list[float] | None = None
    antialias: bool = False

    def __post_init__(self):
        check_range("radius_px", self.radius_px, 0.0, None, low_inclusive=False)
        _check_z_range(self.z_range_um)

    def __call__(self, scene: Scene) -> torch.Tensor:
        h, w = scene.image_shape
        active = _active(scene, self.z_range_um)
        centres, active = _safe_centres(scene, active)
        half = int(math.ceil(self.radius_px)) + 1
        iy, ix, dy, dx, inside = _patches(centres, half, (h, w))
        val = _disk_value(torch.sqrt(dy * dy + dx * dx), float(self.radius_px), self.antialias)
        keep = inside & active[..., None, None] & (val > 0)
        return _splat(val, iy, ix, keep, (scene.batch_size, 1, h, w), "amax")


def _check_z_range(z_range_um) -> None:
    if z_range_um is not None and (len(z_range_um) != 2 or float(z_range_um[0]) > float(z_range_um[1])):
        raise ValueError(f"z_range_um must be (z_min, z_max) with z_min <= z_max, got {z_range_um!r}")


@register
@dataclass
class DensityMap(Target):
    """Gaussian density map whose integral is the particle count: ``[B, 1, H, W]`` float32.

    Each particle adds a Gaussian of width ``sigma_px`` sampled at the pixel centres and normalised
    *discretely* (the pixel values sum to the particle's weight, exactly, up to float rounding).

    Border rule (``normalize="frame"``, the default, as the paper counts cells cut by the border):
    a present particle whose centre is in the frame counts exactly 1: its Gaussian is normalised over
    the pixels inside the frame. A present particle whose centre is outside the frame counts the
    fraction of its Gaussian (normalised over the infinite plane, truncated at 4 sigma) that falls
    inside the frame. So the integral of the map equals :class:`Counts` (particles centred in the
    frame) plus these fractional contributions (zero when no particle is centred outside the frame).

    With ``normalize="plane"`` every Gaussian is normalised over the infinite plane, so particles
    near the border count fractionally (the part of the Gaussian inside the frame).

    Parameters
    ----------
    sigma_px : float
        Gaussian standard deviation in pixels (> 0).
    normalize : {"frame", "plane"}
        Border rule, see above.
    z_range_um : (float, float) or None
        Only particles in this z range are counted.
    """

    sigma_px: float = 2.0
    normalize: str = "frame"
    z_range_um: list[float] | None = None

    def __post_init__(self):
        check_range("sigma_px", self.sigma_px, 0.0, None, low_inclusive=False)
        if self.normalize not in ("frame", "plane"):
            raise ValueError(f"normalize must be 'frame' or 'plane', got {self.normalize!r}")
        _check_z_range(self.z_range_um)

    def __call__(self, scene: Scene) -> torch.Tensor:
        h, w = scene.image_shape
        active = _active(scene, self.z_range_um)
        centres, active = _safe_centres(scene, active)
        half = int(math.ceil(4.0 * self.sigma_px)) + 1
        iy, ix, dy, dx, inside = _patches(centres.double(), half, (h, w))
        g = torch.exp(-(dy * dy + dx * dx) / (2.0 * float(self.sigma_px) ** 2))
        g_plane = g / g.sum(dim=(-2, -1), keepdim=True)
        g_in = g * inside
        g_frame = g_in / g_in.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
        if self.normalize == "frame":
            centred_in = in_frame(centres, (h, w))[..., None, None]
            g = torch.where(centred_in, g_frame, g_plane)
        else:
            g = g_plane
        keep = inside & active[..., None, None]
        return _splat(g, iy, ix, keep, (scene.batch_size, 1, h, w), "sum", dtype=torch.float64).float()


# ---------------------------------------------------------------------------- 3D
def z_to_bin(z_um: torch.Tensor, z_min_um: float, z_max_um: float, n_bins: int) -> torch.Tensor:
    """Continuous bin coordinate of ``z_um``: bin k's centre is at k (k = 0 .. n_bins - 1).

    ``u = (z_um - z_min_um) / dz - 0.5`` with ``dz = (z_max_um - z_min_um) / n_bins``; bin k covers
    ``[z_min + k dz, z_min + (k + 1) dz)`` and its centre is ``z_min + (k + 0.5) dz``.
    """
    dz = (float(z_max_um) - float(z_min_um)) / int(n_bins)
    return (z_um - float(z_min_um)) / dz - 0.5


def bin_to_z(u: torch.Tensor, z_min_um: float, z_max_um: float, n_bins: int) -> torch.Tensor:
    """Inverse of :func:`z_to_bin`: ``z_um = z_min_um + (u + 0.5) * dz``."""
    dz = (float(z_max_um) - float(z_min_um)) / int(n_bins)
    return float(z_min_um) + (u + 0.5) * dz


@register
@dataclass
class ZBinnedVolume(Target):
    """The paper's 3D-tracking target: a sphere per particle in a z-binned volume ``[B, n_bins, H, W]``.

    The z range ``[z_min_um, z_max_um]`` is cut into ``n_bins`` equal bins (channels). A particle at
    (y, x, z) becomes a ball of radius ``radius_px`` centred at (u, y, x), measured in pixels in-plane
    and in bins along z, where ``u = z_to_bin(z)`` is the continuous bin coordinate (bin centres at
    integers, see :func:`z_to_bin` / :func:`bin_to_z`). Voxel (k, i, j) is 1 when
    ``(k - u)^2 + (i - y)^2 + (j - x)^2 <= radius_px^2``. Balls of particles near the z edges are cut
    by the volume; the analysis must account for that when it estimates z from a ball's centroid.
    """

    z_min_um: float = -1.0
    z_max_um: float = 1.0
    n_bins: int = 16
    radius_px: float = 3.0
    antialias: bool = False

    def __post_init__(self):
        check_range("n_bins", self.n_bins, 1, None)
        check_range("radius_px", self.radius_px, 0.0, None, low_inclusive=False)
        if not float(self.z_min_um) < float(self.z_max_um):
            raise ValueError(f"z_min_um ({self.z_min_um}) must be < z_max_um ({self.z_max_um})")

    def bin_centers_um(self) -> torch.Tensor:
        """z (um) of the centre of every bin, [n_bins]."""
        return bin_to_z(torch.arange(int(self.n_bins), dtype=torch.float32), self.z_min_um, self.z_max_um,
                        self.n_bins)

    def __call__(self, scene: Scene) -> torch.Tensor:
        h, w = scene.image_shape
        nb = int(self.n_bins)
        r = float(self.radius_px)
        centres, active = _safe_centres(scene, scene.present)
        u = z_to_bin(scene.z_um, self.z_min_um, self.z_max_um, nb)
        u = torch.where(active & torch.isfinite(u), u, torch.zeros_like(u))
        half = int(math.ceil(r)) + 1
        iy, ix, dy, dx, inside = _patches(centres, half, (h, w))
        off = torch.arange(-half, half + 1, device=u.device)
        iz = (u.round().long()[..., None] + off)[..., None, None]  # [B,N,P,1,1]
        dz = iz.to(u.dtype) - u[..., None, None, None]
        dist = torch.sqrt(dz * dz + (dy * dy)[:, :, None] + (dx * dx)[:, :, None])
        val = _disk_value(dist, r, self.antialias)
        keep = (
            inside[:, :, None] & (iz >= 0) & (iz < nb) & active[..., None, None, None] & (val > 0)
        )
        out_shape = (scene.batch_size, nb, h, w)
        return _splat(val, iy[:, :, None], ix[:, :, None], keep, out_shape, "amax", iz=iz.clamp(0, nb - 1))


# ---------------------------------------------------------------------------- instance labels
@register
@dataclass
class InstanceLabels(Target):
    """Instance segmentation labels ``[B, 1, H, W]`` int64: 0 is background, slot n is label n + 1.

    Each present particle is rasterised from the same outline the scatterers render
    (:mod:`~napari_deeptrack.sim.scatterers`):

    - :class:`Ellipse` / :class:`Ellipsoid`: semi-axes ``attributes["axes_um"][..., :2]`` (y, x)
      rotated by ``attributes["rotation_rad"]`` (angle of the x semi-axis from +x towards +y);
    - :class:`CellBody`: ``r(theta) = radius_um * (1 + sum_m a_m cos(m theta + phi_m))``,
      ``m = 2 .. K + 1``, from ``attributes["shape_coeffs"]`` ``[B, N, 2K]`` (K amplitudes, then K
      phases; all cell populations of a pipeline must share ``n_harmonics``), evaluated by
      :func:`~napari_deeptrack.sim.scatterers.cell_outline_factor`, the function the renderer uses. A
      pixel belongs to the cell where the rendered edge profile is above one half (``r <= r(theta)``);
    - anything else: a disk of ``radius_um`` (at least ``min_radius_px``).

    Where outlines overlap the particle in the later slot wins (painter's order: later particles are
    drawn on top). Labels keep the slot index, so ``label - 1`` indexes the scene (labels are unique
    per image, but not consecutive when slots are empty).

    Parameters
    ----------
    pixel_size_um : float
        Sample-plane pixel size; must be the optics' pixel size.
    min_radius_px : float
        Outlines are at least this large, so that point particles still get a label.
    """

    pixel_size_um: float = 0.1
    min_radius_px: float = 0.5

    def __post_init__(self):
        check_range("pixel_size_um", self.pixel_size_um, 0.0, None, low_inclusive=False)
        check_range("min_radius_px", self.min_radius_px, 0.0, None)

    def _semi_axes_px(self, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
        px = float(self.pixel_size_um)
        r = scene.radius_um / px
        ay = ax = r
        axes = scene.attributes.get("axes_um")
        if axes is not None:
            has = (axes[..., :2] > 0).all(dim=-1)  # ellipse-like particles; others use radius_um
            ay = torch.where(has, axes[..., 0] / px, r)
            ax = torch.where(has, axes[..., 1] / px, r)
        return ay.clamp_min(self.min_radius_px), ax.clamp_min(self.min_radius_px)

    def _modulation(self, scene: Scene, theta: torch.Tensor) -> torch.Tensor | None:
        coeffs = scene.attributes.get("shape_coeffs")
        if coeffs is None or coeffs.shape[-1] < 2:
            return None
        return cell_outline_factor(coeffs, theta, spatial_dims=2)  # [B, N, P, P], the renderer's outline

    def footprint(self, scene: Scene, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Whether patch offsets ``(dy, dx)`` (px, [B,N,P,P]) lie inside each particle's outline."""
        ay, ax = self._semi_axes_px(scene)
        rot = scene.attributes.get("rotation_rad")
        if rot is not None:
            c, s = torch.cos(rot)[..., None, None], torch.sin(rot)[..., None, None]
            u, v = c * dx + s * dy, -s * dx + c * dy  # along the x and y semi-axes
        else:
            u, v = dx, dy
        rho2 = (v / ay[..., None, None]) ** 2 + (u / ax[..., None, None]) ** 2
        mod = self._modulation(scene, torch.atan2(dy, dx))
        if mod is None:
            return rho2 <= 1.0
        return rho2 <= mod.clamp_min(0.05) ** 2

    def __call__(self, scene: Scene) -> torch.Tensor:
        h, w = scene.image_shape
        centres, active = _safe_centres(scene, scene.present)
        if not active.any():
            return torch.zeros(scene.batch_size, 1, h, w, dtype=torch.long, device=scene.device)
        ay, ax = self._semi_axes_px(scene)
        reach = torch.maximum(ay, ax)
        coeffs = scene.attributes.get("shape_coeffs")
        if coeffs is not None and coeffs.shape[-1] >= 2:
            reach = reach * (1.0 + coeffs[..., : coeffs.shape[-1] // 2].abs().sum(-1))
        half = int(math.ceil(float(reach[active].max().item()))) + 1
        iy, ix, dy, dx, inside = _patches(centres, half, (h, w))
        inside_outline = self.footprint(scene, dy, dx)
        label = (torch.arange(scene.n_max, device=scene.device) + 1).view(1, -1, 1, 1)
        keep = inside & active[..., None, None] & inside_outline
        lab = _splat(label.expand(scene.batch_size, -1, 1, 1), iy, ix, keep, (scene.batch_size, 1, h, w),
                     "amax", dtype=torch.float64)
        return lab.round().long()


# ---------------------------------------------------------------------------- per-image targets
def _first_present(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first present slot per image and whether there is one, ([B] int64, [B] bool)."""
    has = scene.present.any(dim=1)
    idx = scene.present.to(torch.int8).argmax(dim=1)
    return idx, has


_SCALAR_FIELDS = {
    "y": lambda s: s.position[..., 0],
    "x": lambda s: s.position[..., 1],
    "z_um": lambda s: s.position[..., 2],
    "intensity": lambda s: s.intensity,
    "radius_um": lambda s: s.radius_um,
    "n_real": lambda s: s.refractive_index.real,
    "n_imag": lambda s: s.refractive_index.imag,
    "class_id": lambda s: s.class_id.to(torch.float32),
}


@register
@dataclass
class RegressionVector(Target):
    """Properties of the first present particle: ``[B, K]`` float32, for single-particle regression.

    ``value_k = (field_k - offset_k) / scale_k``. Use :meth:`unscale` to turn network outputs back
    into physical units. Images without a particle give NaN rows (so a silent zero cannot slip into
    training).

    Parameters
    ----------
    fields : list of str
        Any of ``y``, ``x`` (px), ``z_um``, ``intensity``, ``radius_um``, ``n_real``, ``n_imag``
        (refractive index), ``class_id``, or the name of a per-particle scene attribute.
    relative_to_center : bool
        ``y`` and ``x`` are measured from the image centre ``((H - 1) / 2, (W - 1) / 2)``.
    offset, scale : list of float or None
        Per-field offset and scale (default 0 and 1), e.g. ``fields=["radius_um", "n_real"],
        offset=[0.5, 1.5], scale=[0.25, 0.1]``.
    """

    fields: list[str] = field(default_factory=lambda: ["y", "x"])
    relative_to_center: bool = True
    offset: list[float] | None = None
    scale: list[float] | None = None

    spatial = False

    def __post_init__(self):
        if not self.fields:
            raise ValueError("fields must name at least one property")
        for name, v in (("offset", self.offset), ("scale", self.scale)):
            if v is not None and len(v) != len(self.fields):
                raise ValueError(f"{name} must have one entry per field ({len(self.fields)}), got {len(v)}")
        if self.scale is not None and any(float(s) == 0 for s in self.scale):
            raise ValueError(f"scale entries must be non-zero, got {self.scale}")

    def _offset_scale(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(self.fields)
        off = torch.tensor(self.offset if self.offset is not None else [0.0] * k, device=device)
        sc = torch.tensor(self.scale if self.scale is not None else [1.0] * k, device=device)
        return off.float(), sc.float()

    def __call__(self, scene: Scene) -> torch.Tensor:
        idx, has = _first_present(scene)
        b = torch.arange(scene.batch_size, device=scene.device)
        h, w = scene.image_shape
        cols = []
        for name in self.fields:
            if name in _SCALAR_FIELDS:
                v = _SCALAR_FIELDS[name](scene)[b, idx].to(torch.float32)
            elif name in scene.attributes and scene.attributes[name].shape[:2] == scene.present.shape:
                v = scene.attributes[name][b, idx].to(torch.float32)
            else:
                raise ValueError(
                    f"RegressionVector: unknown field {name!r}; valid: {sorted(_SCALAR_FIELDS)} or a "
                    f"per-particle attribute ({sorted(scene.attributes)})"
                )
            if self.relative_to_center and name == "y":
                v = v - (h - 1) / 2.0
            if self.relative_to_center and name == "x":
                v = v - (w - 1) / 2.0
            cols.append(v)
        out = torch.stack(cols, dim=1)
        off, sc = self._offset_scale(out.device)
        out = (out - off) / sc
        return torch.where(has[:, None], out, torch.full_like(out, float("nan")))

    def unscale(self, values: torch.Tensor) -> torch.Tensor:
        """Network output ``[..., K]`` back to physical units (px from the centre, um, ...)."""
        off, sc = self._offset_scale(values.device)
        return values * sc + off


@register
@dataclass
class ClassLabel(Target):
    """Class id of the first present particle, ``[B]`` int64 (-1 for an image without particles)."""

    spatial = False

    def __call__(self, scene: Scene) -> torch.Tensor:
        idx, has = _first_present(scene)
        b = torch.arange(scene.batch_size, device=scene.device)
        return torch.where(has, scene.class_id[b, idx], torch.full_like(idx, -1))


@register
@dataclass
class Counts(Target):
    """Number of present particles whose centre is in the frame, ``[B]`` float32.

    Same rule as :class:`DensityMap` (``normalize="frame"``) for particles centred in the frame.
    """

    z_range_um: list[float] | None = None

    spatial = False

    def __post_init__(self):
        _check_z_range(self.z_range_um)

    def __call__(self, scene: Scene) -> torch.Tensor:
        act = _active(scene, self.z_range_um) & in_frame(scene.position[..., :2], scene.image_shape)
        return act.sum(dim=1).to(torch.float32)


@register
@dataclass
class CentredDensityMap(Target):
    """Density map ``[B, 1, H, W]`` that counts exactly the nuclei whose centre lies in the frame.

    Each nucleus centred in the frame adds a Gaussian of ``sigma_px`` normalised over the frame (so it
    counts 1 however much of it is cut off); nuclei centred outside the frame add nothing, even when
    part of them is visible. The integral is then :class:`~napari_deeptrack.sim.Counts`, the rule used
    to count real tiles (a nucleus belongs to the tile holding its centroid), so counts of the tiles of
    an image add up to the image's count. (``DensityMap(normalize="frame")`` would add the visible
    fraction of the Gaussians of nuclei centred outside: about +0.5 nuclei per 128 x 128 tile here.)

    ``scale`` multiplies the map (its integral is ``scale`` x count): a 10-px Gaussian peaks at 1.6e-3,
    too small for a network to reproduce its zero background precisely enough that 16 000 background
    pixels add up to much less than one nucleus; ``scale = 100`` brings the peak to 0.16. Divide
    integrals by ``scale`` to get counts.
    """

    sigma_px: float = 10.0
    scale: float = 1.0

    def __post_init__(self):
        DensityMap(sigma_px=self.sigma_px)  # validates sigma_px
        check_range("scale", self.scale, 0.0, None, low_inclusive=False)

    def __call__(self, scene: Scene) -> torch.Tensor:
        inside = in_frame(scene.position[..., :2], scene.image_shape)
        dens = DensityMap(sigma_px=self.sigma_px, normalize="frame")(
            replace(scene, present=scene.present & inside)
        )
        return dens * float(self.scale)


@register
@dataclass
class BoundaryClasses(Target):
    """Three-class map ``[B, 1, H, W]`` int64: 0 background, 1 object interior, 2 object boundary.

    Objects are the :class:`~napari_deeptrack.sim.targets.InstanceLabels` of the scene (so a
    :class:`~napari_deeptrack.sim.CellBody` nucleus follows its own irregular outline, exactly as it
    is rendered). A labelled pixel is boundary when a pixel within ``boundary_px`` of it (Euclidean
    disk) carries another label or is background: the outer ``boundary_px`` of every object, and
    both sides of every contact between touching objects, the usual target for separating touching
    nuclei. The image border is not a boundary (nuclei cut by it keep their interior up to it).

    Parameters
    ----------
    pixel_size_um : float
        Sample-plane pixel size (the optics').
    boundary_px : float
        Width of the boundary class.
    """

    pixel_size_um: float = 0.65
    boundary_px: float = 2.0

    def __post_init__(self):
        check_range("pixel_size_um", self.pixel_size_um, 0.0, None, low_inclusive=False)
        check_range("boundary_px", self.boundary_px, 0.0, 10.0)

    def __call__(self, scene: Scene) -> torch.Tensor:
        lab = InstanceLabels(pixel_size_um=self.pixel_size_um)(scene)  # [B, 1, H, W]
        return boundary_classes(lab, self.boundary_px)


def boundary_classes(labels: torch.Tensor, boundary_px: float = 2.0) -> torch.Tensor:
    """Instance labels ``[..., H, W]`` (0 background) to classes 0 / 1 interior / 2 boundary.

    A labelled pixel is boundary when a pixel within ``boundary_px`` (Euclidean disk) carries
    another label or is background; the image border is not a boundary (replicate padding). Used by
    :class:`BoundaryClasses` on simulated scenes and applicable to real instance labels.
    """
    check_range("boundary_px", boundary_px, 0.0, 10.0)
    lab = torch.as_tensor(labels).long()
    r = float(boundary_px)
    half = int(math.floor(r))
    h, w = lab.shape[-2:]
    core = lab > 0
    if half > 0:
        flat = lab.reshape(-1, 1, h, w).double()
        padded = (
            torch.nn.functional.pad(flat, (half,) * 4, mode="replicate")
            .long()
            .reshape(*lab.shape[:-2], h + 2 * half, w + 2 * half)
        )
        for dy in range(-half, half + 1):  # a dozen disk offsets, each a whole-batch comparison
            for dx in range(-half, half + 1):
                if (dy or dx) and dy * dy + dx * dx <= r * r:
                    shifted = padded[..., half + dy : half + dy + h, half + dx : half + dx + w]
                    core &= shifted == lab
    cls = torch.where(lab > 0, torch.full_like(lab, 2), torch.zeros_like(lab))
    return torch.where(core, torch.ones_like(cls), cls)


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
class SignedImage(CleanImage):
    """The noise-free image of the scene scaled to [-1, 1] (its maximum -> +1, zero -> -1)."""

    def __call__(self, scene: Scene) -> torch.Tensor:
        return 2 * super().__call__(scene) - 1
