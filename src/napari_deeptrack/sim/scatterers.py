"""What a particle is: point emitters, spheres, ellipses, ellipsoids and nuclei-like cell bodies.

Each scatterer samples its own per-particle attributes into the scene (``sample_into``) and tells the
optics how it looks:

- ``fluorescence_extent_um(scene, b, n)``: radius (um) of the region holding the object, per particle;
- ``fluorescence_spectrum(scene, b, n, fy, fx)``: Fourier transform of the emitter density, normalised
  to 1 at zero frequency (so the object's image integrates to its ``intensity``), centred on the
  particle; or
- ``fluorescence_density(scene, b, n, y_um, x_um)``: the density in real space, centred on the
  particle (the optics normalises it).

``b`` and ``n`` are index tensors [M] of the (image, slot) pairs to render. Shapes are stored in
``scene.attributes``: ``axes_um`` [B, N, 3] (semi-axes along y, x, z), ``rotation_rad`` [B, N]
(angle of the x semi-axis from the image +x axis towards +y), ``shape_coeffs`` and
``texture_coeffs`` (cell bodies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .params import Distribution, ParamLike, Uniform, check_range, sample, support
from .pipeline import Scatterer
from .scene import Scene
from .serialize import register


def _n_slots(scene: Scene, slots) -> int:
    return int(scene.present[:, slots].shape[1])


def ensure_attribute(scene: Scene, name: str, trailing: tuple[int, ...] = ()) -> torch.Tensor:
    """Return ``scene.attributes[name]`` ([B, N, *trailing] float32), creating or widening it with zeros."""
    b, n = scene.batch_size, scene.n_max
    cur = scene.attributes.get(name)
    if cur is None:
        cur = torch.zeros(b, n, *trailing, device=scene.device)
    elif trailing and cur.shape[2:] != torch.Size(trailing):
        if cur.dim() != 2 + len(trailing) or any(c > t for c, t in zip(cur.shape[2:-1], trailing[:-1])):
            raise ValueError(
                f"scene attribute {name!r} has shape {tuple(cur.shape)}, expected [B, N, {trailing}]"
            )
        if cur.shape[-1] < trailing[-1]:
            pad = torch.zeros(
                *cur.shape[:-1], trailing[-1] - cur.shape[-1], device=cur.device, dtype=cur.dtype
            )
            cur = torch.cat([cur, pad], dim=-1)
    scene.attributes[name] = cur
    return cur


def cell_outline_factor(shape_coeffs: torch.Tensor, theta: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Relative outline radius ``1 + sum_m a_m cos(m theta + phi_m)`` of cell bodies, ``m = 2 .. K + 1``.

    The one definition of the :class:`CellBody` outline, used by the renderer and by the targets.

    Parameters
    ----------
    shape_coeffs : Tensor [*L, 2K]
        ``scene.attributes["shape_coeffs"]`` (or an indexed part of it): K amplitudes ``a_m``, then K
        phases ``phi_m`` (radians). Rows of zeros (non-cell particles) give 1 (a circle).
    theta : Tensor
        Polar angles (radians, from +x towards +y), broadcastable to ``[*L, *S]`` where ``S`` are its
        last ``spatial_dims`` dimensions.
    spatial_dims : int
        Number of trailing dimensions of ``theta`` that are not particle dimensions.

    Returns
    -------
    Tensor [*L, *S]
    """
    k = shape_coeffs.shape[-1] // 2
    lead = shape_coeffs.shape[:-1]
    if k == 0:
        ones = torch.ones(*lead, *([1] * spatial_dims), device=theta.device, dtype=theta.dtype)
        return ones * torch.ones_like(theta)
    a = shape_coeffs[..., :k].reshape(*lead, *([1] * spatial_dims), k).to(theta.dtype)
    phi = shape_coeffs[..., k : 2 * k].reshape(*lead, *([1] * spatial_dims), k).to(theta.dtype)
    out = 1.0
    for i in range(k):  # a few harmonics, accumulated (no [..., K] temporary); vectorised over particles
        out = out + a[..., i] * torch.cos((i + 2) * theta + phi[..., i])
    return out


def _sample_index(value, shape, generator) -> torch.Tensor:
    if isinstance(value, complex):
        re = sample(value.real, shape, generator)
        return torch.complex(re, torch.full_like(re, value.imag))
    return sample(value, shape, generator).to(torch.complex64)


def _check_index(value) -> None:
    if isinstance(value, complex):
        if value.real <= 0 or value.imag < 0:
            raise ValueError(f"refractive_index must have real part > 0 and imaginary part >= 0, got {value}")
    else:
        check_range("refractive_index", value, 0.0, None, low_inclusive=False)


def _ball_ft(u: torch.Tensor) -> torch.Tensor:
    """``3 (sin u - u cos u) / u^3``: FT of a uniform ball at kz = 0 (its projection), 1 at u = 0."""
    small = u < 1e-2
    us = torch.where(small, torch.ones_like(u), u)
    val = 3 * (torch.sin(us) - us * torch.cos(us)) / us**3
    return torch.where(small, 1 - u**2 / 10, val)


def _disc_ft(u: torch.Tensor) -> torch.Tensor:
    """``2 J1(u) / u``: FT of a uniform disc, 1 at u = 0."""
    small = u < 1e-3
    us = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, 1 - u**2 / 8, 2 * torch.special.bessel_j1(us) / us)


def ball_spectrum(radius_um: torch.Tensor, fy: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
    """Spectrum of uniform balls of radii ``radius_um`` [M] seen in projection, [M, *f.shape], 1 at f = 0."""
    nd = len(torch.broadcast_shapes(fy.shape, fx.shape))
    r = radius_um.reshape(-1, *([1] * nd))
    return _ball_ft(2 * math.pi * torch.sqrt(fy**2 + fx**2) * r)


def _elliptic_u(scene: Scene, b, n, fy, fx) -> torch.Tensor:
    """``2 pi sqrt((a_x f_u)^2 + (a_y f_v)^2)`` in the particle's rotated frame, [M, *f.shape]."""
    axes = scene.attributes["axes_um"][b, n]  # [M, 3]: y, x, z semi-axes
    rot = scene.attributes["rotation_rad"][b, n]
    extra = [1] * torch.broadcast_shapes(fy.shape, fx.shape).__len__()
    c, s = torch.cos(rot).reshape(-1, *extra), torch.sin(rot).reshape(-1, *extra)
    fu = fx * c + fy * s  # frequency along the x semi-axis
    fv = -fx * s + fy * c  # along the y semi-axis
    ay, ax = axes[:, 0].reshape(-1, *extra), axes[:, 1].reshape(-1, *extra)
    return 2 * math.pi * torch.sqrt((ax * fu) ** 2 + (ay * fv) ** 2)


# ---------------------------------------------------------------------------- scatterers
@register
@dataclass
class PointParticle(Scatterer):
    """A point emitter / scatterer (single molecule, quantum dot, sub-resolution bead)."""

    def fluorescence_extent_um(self, scene: Scene, b: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return torch.zeros(b.shape, device=scene.device)


@register
@dataclass
class Sphere(Scatterer):
    """A uniform sphere: emits uniformly from its volume (fluorescence); weak phase object (brightfield).

    Parameters
    ----------
    radius_um : float or Distribution
        Radius in um (> 0).
    refractive_index : float, complex or Distribution
        Refractive index (real part; a complex number adds absorption).
    """

    radius_um: ParamLike = 0.5
    refractive_index: ParamLike | complex = 1.45

    def __post_init__(self):
        check_range("radius_um", self.radius_um, 0.0, None, low_inclusive=False)
        _check_index(self.refractive_index)

    def sample_into(self, scene, slots, generator):
        shape = (scene.batch_size, _n_slots(scene, slots))
        scene.radius_um[:, slots] = sample(self.radius_um, shape, generator)
        scene.refractive_index[:, slots] = _sample_index(self.refractive_index, shape, generator)

    def fluorescence_extent_um(self, scene, b, n):
        return scene.radius_um[b, n]

    def fluorescence_spectrum(self, scene, b, n, fy, fx):
        """Projected uniform ball: ``3 (sin u - u cos u) / u^3`` with ``u = 2 pi |f| R``."""
        return ball_spectrum(scene.radius_um[b, n], fy, fx)


@register
@dataclass
class Ellipse(Scatterer):
    """A flat uniform ellipse (a thin elongated object) in the focal plane of the particle.

    Parameters
    ----------
    axis_y_um, axis_x_um : float or Distribution
        Semi-axes in um (before rotation, along y and x).
    rotation_rad : float or Distribution
        Angle of the x semi-axis from the image +x axis towards +y (clockwise on screen).
    refractive_index : float, complex or Distribution
        For coherent optics.
    """

    axis_y_um: ParamLike = 1.0
    axis_x_um: ParamLike = 0.5
    rotation_rad: ParamLike = 0.0
    refractive_index: ParamLike | complex = 1.45

    def __post_init__(self):
        check_range("axis_y_um", self.axis_y_um, 0.0, None, low_inclusive=False)
        check_range("axis_x_um", self.axis_x_um, 0.0, None, low_inclusive=False)
        _check_index(self.refractive_index)

    def _axes(self, shape, generator) -> list[torch.Tensor]:
        return [sample(self.axis_y_um, shape, generator), sample(self.axis_x_um, shape, generator)]

    def sample_into(self, scene, slots, generator):
        shape = (scene.batch_size, _n_slots(scene, slots))
        ax = self._axes(shape, generator)
        axes = ensure_attribute(scene, "axes_um", (3,))
        axes[:, slots, : len(ax)] = torch.stack(ax, dim=-1)
        ensure_attribute(scene, "rotation_rad")[:, slots] = sample(self.rotation_rad, shape, generator)
        scene.radius_um[:, slots] = torch.sqrt(ax[0] * ax[1])  # equal-area radius
        scene.refractive_index[:, slots] = _sample_index(self.refractive_index, shape, generator)

    def fluorescence_extent_um(self, scene, b, n):
        return scene.attributes["axes_um"][b, n, :2].amax(dim=-1)

    def fluorescence_spectrum(self, scene, b, n, fy, fx):
        """Uniform ellipse: ``2 J1(u) / u`` with ``u = 2 pi sqrt((a_x f_u)^2 + (a_y f_v)^2)``."""
        return _disc_ft(_elliptic_u(scene, b, n, fy, fx))


@register
@dataclass
class Ellipsoid(Ellipse):
    """A uniform ellipsoid (semi-axes along y, x, z, rotated in the image plane), seen in projection.

    Its fluorescence image is the projection of the uniform ellipsoid: spectrum
    ``3 (sin u - u cos u) / u^3`` with ``u`` as for :class:`Ellipse`.
    """

    axis_z_um: ParamLike = 0.5

    def __post_init__(self):
        super().__post_init__()
        check_range("axis_z_um", self.axis_z_um, 0.0, None, low_inclusive=False)

    def _axes(self, shape, generator):
        return [*super()._axes(shape, generator), sample(self.axis_z_um, shape, generator)]

    def fluorescence_spectrum(self, scene, b, n, fy, fx):
        return _ball_ft(_elliptic_u(scene, b, n, fy, fx))


@register
@dataclass
class CellBody(Scatterer):
    """A nuclei-like body: smooth irregular outline with an inner texture (e.g. stained nuclei).

    Outline ``r(theta) = R (1 + sum_m a_m cos(m theta + phi_m))`` for ``m = 2 .. n_harmonics + 1``,
    with ``a_m`` uniform in ``+-irregularity / (m - 1)`` and random phases, drawn per particle. The
    inside is ``1 + texture * t(y, x)`` where ``t`` is a sum of six random plane waves of period about
    ``texture_scale_um`` (chromatin-like blotches); the edge is smoothed over ``edge_um``.

    Parameters
    ----------
    radius_um : float or Distribution
        Mean radius R in um (nuclei: 5-12 um).
    radius_px, pixel_size_um : optional
        Alternatively the radius in pixels and the pixel size that converts it (``radius_um`` is then
        ignored).
    irregularity : float
        Outline roughness (0 = circle; 0 to 0.4).
    n_harmonics : int
        Number of outline harmonics.
    texture : float
        Relative amplitude of the inner texture (0 = uniform; 0 to 1).
    texture_scale_um, edge_um : float
        Texture period and edge width in um.
    refractive_index : float or Distribution
        For coherent optics.
    """

    radius_um: ParamLike = field(default_factory=lambda: Uniform(5.0, 12.0))
    irregularity: float = 0.15
    n_harmonics: int = 4
    texture: float = 0.3
    texture_scale_um: float = 2.0
    edge_um: float = 0.3
    radius_px: ParamLike | None = None
    pixel_size_um: float | None = None
    refractive_index: ParamLike | complex = 1.38

    n_waves = 6

    def __post_init__(self):
        if self.radius_px is not None:
            if self.pixel_size_um is None:
                raise ValueError("CellBody: radius_px needs pixel_size_um to convert it to micrometres")
            check_range("pixel_size_um", self.pixel_size_um, 0.0, None, low_inclusive=False)
            check_range("radius_px", self.radius_px, 0.0, None, low_inclusive=False)
        else:
            check_range("radius_um", self.radius_um, 0.0, None, low_inclusive=False)
        check_range("irregularity", self.irregularity, 0.0, 0.4)
        check_range("n_harmonics", self.n_harmonics, 0, 16)
        self.n_harmonics = int(self.n_harmonics)
        check_range("texture", self.texture, 0.0, 1.0)
        check_range("texture_scale_um", self.texture_scale_um, 0.0, None, low_inclusive=False)
        check_range("edge_um", self.edge_um, 0.0, None, low_inclusive=False)
        _check_index(self.refractive_index)

    def sample_into(self, scene, slots, generator):
        b, n = scene.batch_size, _n_slots(scene, slots)
        dev = scene.device
        if self.radius_px is not None:
            r = sample(self.radius_px, (b, n), generator) * float(self.pixel_size_um)
        else:
            r = sample(self.radius_um, (b, n), generator)
        scene.radius_um[:, slots] = r
        k = self.n_harmonics
        m = torch.arange(2, k + 2, device=dev, dtype=torch.float32)
        amp = self.irregularity * (2 * torch.rand(b, n, k, generator=generator, device=dev) - 1) / (m - 1)
        phs = 2 * math.pi * torch.rand(b, n, k, generator=generator, device=dev)
        cur = scene.attributes.get("shape_coeffs")
        if cur is not None and cur.shape[-1] != 2 * k:
            raise ValueError(
                f"CellBody: n_harmonics={k} differs from another cell population's "
                f"({cur.shape[-1] // 2}); all CellBody populations of a pipeline must share n_harmonics "
                "(the scene stores one shape_coeffs layout)"
            )
        coeffs = ensure_attribute(scene, "shape_coeffs", (2 * k,))
        coeffs[:, slots, :k] = amp
        coeffs[:, slots, k : 2 * k] = phs
        w = self.n_waves
        u = torch.rand(b, n, w, 4, generator=generator, device=dev)
        kmag = (0.5 + u[..., 0]) / self.texture_scale_um
        kang = math.pi * u[..., 1]
        tex = torch.stack(
            [kmag * torch.sin(kang), kmag * torch.cos(kang), 2 * math.pi * u[..., 2], 2 * u[..., 3] - 1],
            dim=-1,
        )
        ensure_attribute(scene, "texture_coeffs", (4 * w,))[:, slots] = tex.reshape(b, n, 4 * w)
        scene.refractive_index[:, slots] = _sample_index(self.refractive_index, (b, n), generator)

    def outline_radius_um(self, scene: Scene, b, n, theta: torch.Tensor) -> torch.Tensor:
        """``r(theta)`` in um for each particle, [M, *theta.shape].

        ``theta`` (radians, from +x towards +y) is shared by the M particles ``(b, n)``; this is
        the outline the renderer draws and :class:`~napari_deeptrack.sim.targets.InstanceLabels`
        rasterises (both through :func:`cell_outline_factor`).
        """
        nd = theta.dim()
        r0 = scene.radius_um[b, n].reshape(-1, *([1] * nd))
        return r0 * cell_outline_factor(scene.attributes["shape_coeffs"][b, n], theta, spatial_dims=nd)

    def area_um2(self, scene: Scene, b, n) -> torch.Tensor:
        """Exact area enclosed by the outline, ``pi R^2 (1 + sum a_m^2 / 2)``, [M]."""
        a = scene.attributes["shape_coeffs"][b, n, : self.n_harmonics]
        return math.pi * scene.radius_um[b, n] ** 2 * (1 + 0.5 * (a**2).sum(-1))

    def fluorescence_extent_um(self, scene, b, n):
        a = scene.attributes["shape_coeffs"][b, n, : self.n_harmonics].abs().sum(-1)
        return scene.radius_um[b, n] * (1 + a) + 3 * self.edge_um

    def fluorescence_density(self, scene, b, n, y_um, x_um):
        """Emitter density (arbitrary units, >= 0) at ``(y_um, x_um)`` relative to the centre, [M, ...]."""
        y_um, x_um = torch.broadcast_tensors(y_um, x_um)
        nd = y_um.dim()
        r = torch.sqrt(y_um**2 + x_um**2)
        edge = self.outline_radius_um(scene, b, n, torch.atan2(y_um, x_um))
        inside = torch.sigmoid((edge - r) / self.edge_um)
        if self.texture == 0:
            return inside
        w = self.n_waves
        tex = scene.attributes["texture_coeffs"][b, n, : 4 * w].reshape(-1, w, 4)
        t = torch.zeros_like(inside)
        for j in range(w):
            ky, kx, ph, a = (tex[:, j, i].reshape(-1, *([1] * nd)) for i in range(4))
            t = t + a * torch.cos(2 * math.pi * (ky * y_um + kx * x_um) + ph)
        return inside * torch.clamp(1 + self.texture * t / math.sqrt(w / 2), min=0.05)


@register
@dataclass
class ComplexIndex(Distribution):
    """A complex refractive index ``n + ik`` whose real and imaginary parts are drawn independently.

    Parameters
    ----------
    real : float or Distribution
        Real part ``n`` (> 0).
    imag : float or Distribution
        Absorption ``k`` (>= 0).

    ``sample`` returns a complex64 tensor; :meth:`support` is the range of the real part (what the
    scatterers check).
    """

    real: ParamLike = 1.45
    imag: ParamLike = 0.0

    def __post_init__(self):
        check_range("real", self.real, 0.0, None, low_inclusive=False)
        check_range("imag", self.imag, 0.0, None)

    def sample(self, shape, generator=None, device=None, context=None):
        re = sample(self.real, shape, generator, device)
        im = sample(self.imag, shape, generator, device)
        return torch.complex(re.float(), im.float())

    def support(self):
        return support(self.real)


__all__ = [
    "CellBody",
    "ComplexIndex",
    "Ellipse",
    "Ellipsoid",
    "PointParticle",
    "Sphere",
    "ball_spectrum",
    "cell_outline_factor",
    "ensure_attribute",
]
