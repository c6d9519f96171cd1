"""Widefield fluorescence: incoherent imaging of emitters through the pupil, in expected photons.

For each particle the amplitude PSF is the inverse Fourier transform of the pupil
``P(f) exp(i defocus(z)) exp(i aberrations) exp(-i 2 pi f . r_sub)``; the intensity PSF is its squared
modulus, normalised to unit sum, and the particle's image is ``intensity * PSF`` (photons). The phase
ramp ``exp(-i 2 pi f . r_sub)`` places the emitter at its exact sub-pixel position. Extended objects
are the PSF convolved with the emitter density: their spectrum times the OTF.

Every particle is rendered in a small patch around its nearest pixel (size from the PSF support, the
defocus range and the object size), all particles of one scatterer type at once, then scatter-added
into the frames. The inverse Fourier transform runs as two small matrix products over the few
frequencies inside the pupil (a "matrix DFT"), which is exact and much cheaper than full FFTs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..params import check_range
from ..pipeline import Optics, Scatterer
from ..scene import Scene
from ..serialize import register
from .pupil import Pupil, axial_wavenumber

PUPIL_PADDING = 2
MIN_PUPIL_SAMPLES = 6
MAX_AUTO_OVERSAMPLE = 8


@register
@dataclass
class Fluorescence(Pupil, Optics):
    """Widefield fluorescence microscope; renders expected photons per pixel, ``[B, 1, H, W]``.

    Parameters
    ----------
    NA, wavelength_um, pixel_size_um, camera_pixel_um, magnification, refractive_index_medium,
    aberrations, phase_mask
        As for :class:`~napari_deeptrack.sim.optics.pupil.Pupil` (``wavelength_um`` is the emission
        wavelength).
    oversample : int, optional
        Sub-pixels per pixel (per axis) used to integrate the PSF over each camera pixel. ``None``
        picks the smallest factor that samples the PSF at the Nyquist rate (1 when the pixel is at
        most ``wavelength / (4 NA)``).
    patch_size_px : int, optional
        Side of the square patch each particle is rendered in (made odd). ``None`` sizes it from the PSF
        core (``wavelength / NA``), the defocus blur of the farthest particle and the object size.
        The PSF is cut at the patch edge and rescaled so every particle keeps its photon count: the
        few per cent of the Airy halo beyond the patch are redistributed in proportion to the PSF
        (the default patch keeps ~92% of an in-focus Airy pattern's light before rescaling). Pass a
        larger ``patch_size_px`` where the far halo matters.

    Examples
    --------
    >>> optics = Fluorescence(NA=0.8, wavelength_um=0.68, camera_pixel_um=1.0, magnification=10)
    >>> optics.sample_pixel_um
    0.1
    """

    oversample: int | None = None
    patch_size_px: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.oversample is not None:
            check_range("oversample", self.oversample, 1, 16)
            self.oversample = int(self.oversample)
        if self.patch_size_px is not None:
            check_range("patch_size_px", self.patch_size_px, 4, 4096)
            # odd, so the patch is centred on the particle's pixel (flip/rotation symmetric PSFs)
            self.patch_size_px = int(self.patch_size_px) + 1 - int(self.patch_size_px) % 2
        self._cache: dict = {}

    # ------------------------------------------------------------------ sizes
    @property
    def oversample_factor(self) -> int:
        """Sub-pixels per pixel and axis used for rendering."""
        if self.oversample is not None:
            return self.oversample
        return min(
            MAX_AUTO_OVERSAMPLE, max(1, math.ceil(self.sample_pixel_um / self.nyquist_pixel_um - 1e-6))
        )

    def patch_size(self, z_max_um: float = 0.0, extent_um: float = 0.0, image_shape=None) -> int:
        """Patch side (pixels) for particles up to ``|z| = z_max_um`` and object radius ``extent_um``."""
        if self.patch_size_px is not None:
            return self.patch_size_px
        radius = (self.psf_radius_um(z_max_um) + extent_um) / self.sample_pixel_um
        # odd: the centre pixel has as many neighbours on each side, so the PSF is symmetric under flips
        p = 2 * math.ceil(radius - 1e-6) + 1
        if image_shape is not None:
            p = min(p, 2 * max(image_shape) + 1)
        return max(p, 9)

    def check_image_shape(self, shape: tuple[int, int]) -> None:
        """Raise ``ValueError`` if an image is smaller than the in-focus PSF support."""
        need = self.psf_support_px(0.0)
        if min(shape) < need:
            raise ValueError(
                f"image_shape {tuple(shape)} is smaller than the PSF support ({need} px = 2 wavelength / NA "
                f"at {self.sample_pixel_um:.4g} um/px); use a larger image or larger pixels"
            )

    # ------------------------------------------------------------------ cached grids
    def _grid(self, p: int, device: torch.device) -> dict:
        os_ = self.oversample_factor
        key = (
            p,
            os_,
            str(device),
            self.NA,
            self.wavelength_um,
            self.refractive_index_medium,
            self.sample_pixel_um,
        )
        g = self._cache.get(key)
        if g is not None:
            return g
        dx = self.sample_pixel_um
        pf = p * os_
        # Pupil sampling: period 1/df = PUPIL_PADDING patches (no wrap-around inside the patch), and at
        # least MIN_PUPIL_SAMPLES samples across the pupil radius.
        df = min(1.0 / (PUPIL_PADDING * p * dx), self.cutoff_per_um / MIN_PUPIL_SAMPLES)
        kmax = int(math.floor(self.cutoff_per_um / df + 1e-9))
        f = torch.arange(-kmax, kmax + 1, device=device, dtype=torch.float32) * df
        fy, fx = f[:, None], f[None, :]
        rho, theta = self.polar(fy, fx)
        amp = (rho <= 1.0).to(torch.float32)
        # sub-pixel centres relative to the patch's centre pixel, in um (fine grid)
        t = (torch.arange(pf, device=device, dtype=torch.float64) - (p // 2) * os_ - (os_ - 1) / 2) * dx / os_
        dft = torch.exp(2j * math.pi * t[:, None] * f.double()[None, :]).to(torch.complex64)  # [pf, nk]
        # the defocus phase depends on |f| only: evaluate it on the distinct in-pupil radii, then gather
        k2 = (
            torch.arange(-kmax, kmax + 1, device=device)[:, None] ** 2
            + torch.arange(-kmax, kmax + 1, device=device)[None, :] ** 2
        )
        radii, inverse = torch.unique(k2.reshape(-1), return_inverse=True)
        inverse = torch.where(amp.reshape(-1) > 0, inverse, len(radii))  # outside the pupil: a zero entry
        kz_r = (
            2
            * math.pi
            * axial_wavenumber(
                torch.sqrt(radii.float()) * df,
                torch.zeros(1, device=device),
                self.wavelength_um,
                self.refractive_index_medium,
            )
        )
        g = {
            "kz_r": kz_r,
            "radial_index": inverse,
            "f": f,
            "rho": rho,
            "theta": theta,
            "amp": amp,
            "dft": dft,
        }
        # frequency grid of the fine patch (rfft layout) for object spectra, circular real-space coords
        g["ffy"] = torch.fft.fftfreq(pf, d=dx / os_, device=device)[:, None]
        g["ffx"] = torch.fft.rfftfreq(pf, d=dx / os_, device=device)[None, :]
        r = torch.fft.fftfreq(pf, device=device) * pf * dx / os_
        g["ry"], g["rx"] = r[:, None], r[None, :]
        if len(self._cache) > 32:  # many patch sizes seen: start afresh
            self._cache.clear()
        self._cache[key] = g
        return g

    # ------------------------------------------------------------------ PSF patches
    def _psf_patches(
        self,
        g: dict,
        z_um: torch.Tensor,
        sub_um: torch.Tensor,
        phase: torch.Tensor | None,
        photons: torch.Tensor,
    ) -> torch.Tensor:
        """Intensity PSFs on the fine patch grid, each summing to ``photons``, [M, pf, pf].

        ``z_um`` [M]; ``sub_um`` [M, 2] sub-pixel offsets (y, x) in um; ``phase`` [M, nk, nk] or None;
        ``photons`` [M].
        """
        f = g["f"]
        m = z_um.shape[0]
        # exp(i (defocus + ramp_y + ramp_x)): defocus from the radial table, the ramps are separable
        defocus = torch.polar(torch.ones(m, g["kz_r"].numel(), device=f.device), z_um[:, None] * g["kz_r"])
        defocus = torch.cat([defocus, torch.zeros(m, 1, dtype=defocus.dtype, device=f.device)], dim=1)
        nk = f.numel()
        u = defocus[:, g["radial_index"]].reshape(m, nk, nk)
        ones = torch.ones(m, nk, device=f.device)
        ey = torch.polar(ones, (-2 * math.pi) * sub_um[:, 0, None] * f)  # [M, nk]
        ex = torch.polar(ones, (-2 * math.pi) * sub_um[:, 1, None] * f)
        u = u * ey[:, :, None] * ex[:, None, :]
        if phase is not None:
            u = u * torch.polar(torch.ones_like(phase), phase)
        field = torch.einsum("yk,mkl,xl->myx", g["dft"], u, g["dft"])  # [M, pf, pf]
        re, im = field.real, field.imag
        inten = torch.addcmul(re * re, im, im)
        scale = photons / inten.sum(dim=(-2, -1)).clamp(min=1e-30)
        return inten.mul_(scale[:, None, None])

    def _object(self, scatterer: Scatterer | None, scene: Scene, b, n, g: dict) -> torch.Tensor | None:
        """Emitter-density spectrum on the fine rfft grid, [M, pf, pf//2+1], 1 at f = 0; None: point."""
        if scatterer is not None and hasattr(scatterer, "fluorescence_spectrum"):
            return scatterer.fluorescence_spectrum(scene, b, n, g["ffy"], g["ffx"])
        if scatterer is not None and hasattr(scatterer, "fluorescence_density"):
            dens = scatterer.fluorescence_density(scene, b, n, g["ry"], g["rx"])
            spec = torch.fft.rfft2(dens)
            return spec / spec[:, :1, :1].real.clamp(min=1e-30)
        if scatterer is not None and hasattr(scatterer, "fluorescence_extent_um"):
            return None  # declared point-like
        r = scene.radius_um[b, n]
        if bool((r > 0).any()):  # unknown extended scatterer (e.g. a Mie sphere): a uniform ball
            from ..scatterers import ball_spectrum

            return ball_spectrum(r, g["ffy"], g["ffx"])
        return None

    def _extent_um(self, scatterer, scene, b, n) -> float:
        if b.numel() == 0:
            return 0.0
        if hasattr(scatterer, "fluorescence_extent_um"):
            return float(scatterer.fluorescence_extent_um(scene, b, n).max())
        return float(scene.radius_um[b, n].max())

    def render_particles(
        self,
        scene: Scene,
        b: torch.Tensor,
        n: torch.Tensor,
        scatterer: Scatterer | None,
        phase_fn,
        patch: int,
    ) -> torch.Tensor:
        """Images of the particles ``(b, n)`` in patches centred on their nearest pixel, [M, P, P] photons.

        ``phase_fn(grid)`` returns the per-image pupil phase [B, nk, nk] on the grid's pupil samples, or
        None.
        """
        g = self._grid(patch, scene.device)
        pos = scene.position[b, n]
        sub_um = (pos[:, :2] - torch.round(pos[:, :2])) * self.sample_pixel_um
        phase = phase_fn(g)
        if phase is not None:
            phase = phase[b]
        img = self._psf_patches(g, pos[:, 2], sub_um, phase, scene.intensity[b, n])
        obj = self._object(scatterer, scene, b, n, g)
        if obj is not None:
            pf = img.shape[-1]
            img = torch.fft.irfft2(torch.fft.rfft2(img) * obj, s=(pf, pf)).clamp_(min=0.0)  # rounding
        os_ = self.oversample_factor
        if os_ > 1:
            img = img.reshape(-1, patch, os_, patch, os_).sum(dim=(2, 4))
        return img

    def render(self, scene: Scene, scatterers: list[Scatterer], generator: torch.Generator | None = None):
        """Expected photons per pixel for every image of ``scene``, ``[B, 1, H, W]`` float32."""
        h, w = scene.image_shape
        self.check_image_shape((h, w))
        dev = scene.device
        bsz = scene.batch_size
        state = generator.get_state() if generator is not None else None
        after = None

        def phase_fn(g):  # per-image aberration phase on this grid; same draws for every grid
            nonlocal after
            if not self.aberrations and self.phase_mask is None:
                return None
            if state is not None:
                generator.set_state(state)
            out = self.sample_phase(g["rho"], g["theta"], bsz, generator, scene.image_params)
            if generator is not None:
                after = generator.get_state()
            return out * g["amp"] if out is not None else None

        phase_fn({"rho": torch.zeros(1, 1, device=dev), "theta": torch.zeros(1, 1, device=dev), "amp": 1.0})
        jobs = []  # (scatterer, b, n, cy, cx, patch) per scatterer type
        for k, scat in enumerate(list(scatterers) if scatterers else [None]):
            sel = scene.present & (scene.intensity > 0)
            if scatterers:
                sel = sel & (scene.kind == k)
            b, n = torch.nonzero(sel, as_tuple=True)
            if b.numel() == 0:
                continue
            zmax = float(scene.position[b, n, 2].abs().max())
            patch = self.patch_size(zmax, self._extent_um(scat, scene, b, n), (h, w))
            half = patch // 2
            cy = torch.round(scene.position[b, n, 0]).long()
            cx = torch.round(scene.position[b, n, 1]).long()
            keep = (cy > -half) & (cy < h + half) & (cx > -half) & (cx < w + half)
            if not bool(keep.all()):
                b, n, cy, cx = b[keep], n[keep], cy[keep], cx[keep]
            if b.numel() > 0:
                jobs.append((scat, b, n, cy, cx, patch))
        dump = bsz * h * w  # patch pixels outside the frame go to one extra, discarded slot
        frame = torch.zeros(dump + 1, device=dev)
        itype = torch.int32 if 2 * dump + 1 < 2**31 else torch.int64
        for scat, b, n, cy, cx, patch in jobs:
            off = torch.arange(patch, device=dev, dtype=itype) - patch // 2
            iy, ix = cy.to(itype)[:, None] + off, cx.to(itype)[:, None] + off  # [M, P]
            rows = torch.where((iy >= 0) & (iy < h), b.to(itype)[:, None] * (h * w) + iy * w, dump)
            cols = torch.where((ix >= 0) & (ix < w), ix, dump)
            idx = (rows[:, :, None] + cols[:, None, :]).clamp_(max=dump)
            img = self.render_particles(scene, b, n, scat, phase_fn, patch)
            frame.index_add_(0, idx.reshape(-1), img.reshape(-1))
        if state is not None and after is not None:
            generator.set_state(after)
        return frame[:dump].reshape(bsz, 1, h, w)

    # ------------------------------------------------------------------ convenience
    def psf(
        self,
        z_um: float | torch.Tensor = 0.0,
        offset_px: torch.Tensor | tuple[float, float] = (0.0, 0.0),
        patch_size_px: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Pixel-integrated intensity PSFs (unit sum), ``[M, P, P]``, emitter at pixel ``P // 2`` + offset.

        ``z_um`` is a number or [M] tensor; ``offset_px`` (y, x) sub-pixel offsets, (2,) or [M, 2].
        Aberrations with random coefficients are drawn independently for each PSF.
        """
        dev = (
            torch.device(device)
            if device is not None
            else (generator.device if generator else torch.device("cpu"))
        )
        z = torch.as_tensor(z_um, dtype=torch.float32, device=dev).reshape(-1)
        off = torch.as_tensor(offset_px, dtype=torch.float32, device=dev).reshape(-1, 2)
        m = max(z.numel(), off.shape[0])
        z, off = z.expand(m), off.expand(m, 2)
        p = patch_size_px or self.patch_size(float(z.abs().max()))
        scene = Scene.empty(m, 1, (p, p), device=dev)
        scene.position[:, 0, :2] = p // 2 + off
        scene.position[:, 0, 2] = z
        scene.intensity[:] = 1.0
        ar = torch.arange(m, device=dev)
        zero = torch.zeros(m, dtype=torch.long, device=dev)

        def phase_fn(g):
            out = self.sample_phase(g["rho"], g["theta"], m, generator, None)
            return out * g["amp"] if out is not None else None

        return self.render_particles(scene, ar, zero, None, phase_fn, p)


__all__ = ["Fluorescence"]
