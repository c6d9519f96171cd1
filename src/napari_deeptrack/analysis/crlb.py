"""The Cramer-Rao lower bound (CRLB): the best precision any unbiased estimator can reach.

For a camera image with independent Poisson pixels of expected value ``mu_k(theta)`` (photons,
background included) the Fisher information is

    I_ij = sum_k (d mu_k / d theta_i) (d mu_k / d theta_j) / mu_k,

and the CRLB of parameter i is ``sqrt((I^-1)_ii)``. The derivatives are taken numerically (central
differences) of the expected image itself, so the bound holds for whatever the simulator renders:
pupil PSFs, aberrations, engineered PSFs, pixel integration. :func:`fisher_information` works on any
callable ``expected_image(params [K, P]) -> images [K, H, W]``; :func:`crlb_for_optics` builds that
callable from the package's optics (e.g. ``Fluorescence``) by rendering a one-particle scene with
the particle displaced, all displacements in one batch.

By default the photon count and the background are nuisance parameters (unknown to the estimator,
as for a real measurement); their derivatives are analytic (``mu_signal / N`` and ``1``). For a
symmetric in-focus PSF this does not change the x/y bound, but it does matter for z.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..sim.params import check_range

__all__ = ["crlb", "crlb_for_optics", "fisher_information"]


def fisher_information(
    expected_image: Callable[[torch.Tensor], torch.Tensor],
    params: Sequence[float],
    steps: Sequence[float],
    background: float = 0.0,
    nuisance_photons: float | None = None,
    include_background: bool = True,
    min_expected: float = 1e-12,
) -> np.ndarray:
    """Fisher information matrix of a Poisson image with respect to ``params`` (central differences).

    Parameters
    ----------
    expected_image : callable
        ``expected_image(p [K, P]) -> [K, H, W]`` expected photons per pixel (signal only; the
        constant ``background`` is added here). Called once with all ``2P + 1`` parameter sets.
    params : sequence of float [P]
        Point at which the information is evaluated.
    steps : sequence of float [P]
        Central-difference step per parameter (small compared with the PSF scale).
    background : float
        Expected background photons per pixel (>= 0).
    nuisance_photons : float or None
        If given, the photon count of the signal (``expected_image`` integrates to it) is added as
        an extra (last-but-one) unknown parameter, with derivative ``signal / N``.
    include_background : bool
        Add the background level as the last unknown parameter (derivative 1 in every pixel).
    min_expected : float
        Pixels whose expected value is below this are ignored (they carry no information in the
        zero-background limit and would divide by zero).

    Returns
    -------
    ndarray [Q, Q]
        Q = P (+1 with ``nuisance_photons``) (+1 with ``include_background``), float64.
    """
    check_range("background", background, 0.0, None)
    p0 = torch.as_tensor(np.asarray(params, dtype=np.float64))
    h = torch.as_tensor(np.asarray(steps, dtype=np.float64))
    if p0.ndim != 1 or h.shape != p0.shape:
        raise ValueError(
            f"params and steps must be 1D of equal length, got {tuple(p0.shape)}, {tuple(h.shape)}"
        )
    if (h <= 0).any():
        raise ValueError(f"steps must be > 0, got {steps}")
    n = p0.numel()
    eye = torch.eye(n, dtype=torch.float64)
    batch = torch.cat([p0[None], p0[None] + eye * h[:, None], p0[None] - eye * h[:, None]])
    imgs = torch.as_tensor(expected_image(batch)).to(torch.float64)
    if imgs.shape[0] != 2 * n + 1:
        raise ValueError(
            f"expected_image must return one image per parameter set ({2 * n + 1}), got {imgs.shape[0]}"
        )
    imgs = imgs.reshape(2 * n + 1, -1)
    signal = imgs[0]
    derivs = [(imgs[1 + i] - imgs[1 + n + i]) / (2.0 * h[i]) for i in range(n)]
    if nuisance_photons is not None:
        check_range("nuisance_photons", nuisance_photons, 0.0, None, low_inclusive=False)
        derivs.append(signal / float(nuisance_photons))
    if include_background:
        derivs.append(torch.ones_like(signal))
    mu = signal + float(background)
    ok = mu > min_expected
    d = torch.stack(derivs)[:, ok]
    info = (d[:, None, :] * d[None, :, :] / mu[ok]).sum(-1)
    return info.numpy()


def crlb(information: np.ndarray, n_params: int | None = None) -> np.ndarray:
    """Per-parameter bounds ``sqrt(diag(I^-1))``; the first ``n_params`` (default all)."""
    info = np.asarray(information, dtype=np.float64)
    cov = np.linalg.pinv(info, hermitian=True)
    bound = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return bound if n_params is None else bound[:n_params]


def _off_half_pixel(v: float, margin: float) -> float:
    d = (v - np.floor(v)) - 0.5
    if abs(d) < margin:
        return float(np.floor(v) + 0.5 + (margin if d >= 0 else -margin))
    return v


def crlb_for_optics(
    optics,
    scatterer,
    image_shape: tuple[int, int],
    photons: float,
    background: float,
    position: Sequence[float] | None = None,
    z_um: float | None = None,
    step_px: float = 0.01,
    step_z_um: float = 0.005,
    nuisance: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """CRLB of a single particle imaged by the package's optics (numerical derivatives of the render).

    Parameters
    ----------
    optics : Optics
        e.g. ``Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1)``. Its parameters must be
        fixed numbers (a random aberration would change the image between displaced renders; this
        is checked).
    scatterer : Scatterer
        e.g. ``PointParticle()``.
    image_shape : (int, int)
        (H, W) of the image.
    photons : float
        Detected photons from the particle (the image integral).
    background : float
        Background photons per pixel.
    position : (y, x) in pixels or None
        Default: the pixel nearest the image centre. A coordinate within ``4 * step_px`` of a
        half-integer is moved to that distance (patch-based renderers change discontinuously where
        the nearest pixel changes; the bound itself varies smoothly with the sub-pixel position).
    z_um : float or None
        Also bound z (um) around this focal distance; None: 2D only (z = 0, not estimated).
    step_px, step_z_um : float
        Central-difference steps.
    nuisance : bool
        Photons and background are unknown (estimated jointly).

    Returns
    -------
    dict
        ``crlb_y_px, crlb_x_px`` (and ``crlb_z_um``), and the inputs.
    """
    from ..sim.scene import Scene

    check_range("photons", photons, 0.0, None, low_inclusive=False)
    h, w = int(image_shape[0]), int(image_shape[1])
    y0, x0 = position if position is not None else (h // 2, w // 2)
    # Renderers that draw each particle in a patch anchored at its nearest pixel can jump when the
    # centre crosses a half-pixel; keep the difference stencil on one side of that boundary.
    y0, x0 = (_off_half_pixel(float(v), 4.0 * step_px) for v in (y0, x0))
    z0 = 0.0 if z_um is None else float(z_um)
    n_par = 2 if z_um is None else 3
    steps = [step_px, step_px] + ([step_z_um] if z_um is not None else [])
    dev = torch.device(device)

    def render(p: torch.Tensor) -> torch.Tensor:
        k = p.shape[0]
        # two extra copies of the unperturbed particle check that rendering is deterministic
        p = torch.cat([p, p[:1]])
        scene = Scene.empty(k + 1, 1, (h, w), device=dev)
        scene.present[:] = True
        scene.position[:, 0, 0] = p[:, 0].to(torch.float32)
        scene.position[:, 0, 1] = p[:, 1].to(torch.float32)
        scene.position[:, 0, 2] = (p[:, 2] if n_par == 3 else torch.full((k + 1,), z0)).to(torch.float32)
        scene.intensity[:] = float(photons)
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        scatterer.sample_into(scene, slice(0, 1), gen)
        img = optics.render(scene, [scatterer], gen)
        if img.dim() != 4 or img.shape[1] != 1:
            raise ValueError(
                f"crlb_for_optics needs single-channel intensity images, got shape {tuple(img.shape)}"
            )
        img = img[:, 0].to(torch.float64)
        if not torch.allclose(img[0], img[-1], rtol=1e-5, atol=1e-6 * float(img[0].abs().max())):
            raise ValueError(
                "the optics renders the same particle differently within a batch (random parameters?); "
                "the CRLB needs fixed optics parameters"
            )
        return img[:k]

    params = [y0, x0] + ([z0] if z_um is not None else [])
    info = fisher_information(
        render,
        params,
        steps,
        background=background,
        nuisance_photons=float(photons) if nuisance else None,
        include_background=nuisance,
    )
    b = crlb(info, n_par)
    out = {"crlb_y_px": float(b[0]), "crlb_x_px": float(b[1])}
    if z_um is not None:
        out["crlb_z_um"] = float(b[2])
    out.update({"photons": float(photons), "background": float(background)})
    return out
