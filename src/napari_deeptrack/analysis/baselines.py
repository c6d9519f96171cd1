"""Classical localisation methods to compare networks against ("benchmark against the gold standard").

- :func:`radial_center`: Parthasarathy's radial-symmetry centre (Nat. Methods 9, 724, 2012). The
  intensity gradient is computed at the corners between pixels with a rotated (Roberts) difference
  and smoothed with a 3x3 box; every gradient defines a line through its corner; the centre is the
  point nearest to all lines in the least-squares sense, each line weighted by its squared gradient
  magnitude divided by its distance to the intensity centroid.
- :func:`locate_trackpy`: trackpy's Crocker-Grier feature finder (``trackpy.batch``), in the
  detection table layout.
- :func:`gaussian_mle`: maximum-likelihood fit of a pixel-integrated 2D Gaussian plus a constant
  background under Poisson noise (Fisher scoring with Levenberg damping, batched in torch).

All batched functions take patches ``[B, H, W]`` and return positions in pixels of the patch
(centre of the top-left pixel at (0, 0)).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..sim.params import check_range

__all__ = ["extract_patches", "gaussian_mle", "integrated_gaussian", "locate_trackpy", "radial_center"]


def _as_patches(patches) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(patches) if not isinstance(patches, torch.Tensor) else patches)
    t = t.to(torch.float64)
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"patches must be [H, W] or [B, H, W], got shape {tuple(t.shape)}")
    return t


# ---------------------------------------------------------------------------- radial symmetry
def radial_center(patches) -> np.ndarray:
    """Radial-symmetry centre of bright spots in patches ``[B, H, W]`` -> ``[B, 2]`` (y, x) in pixels.

    For dark particles on a bright background pass the patches as they are: the method is
    insensitive to the sign of the contrast (it uses lines along the gradient).
    """
    im = _as_patches(patches)
    b, h, w = im.shape
    if h < 3 or w < 3:
        raise ValueError(f"patches must be at least 3x3, got {h}x{w}")
    # corner (midpoint) coordinates relative to the patch centre, y down, x right
    ym = (torch.arange(h - 1, dtype=im.dtype) - (h - 2) / 2.0)[:, None].expand(h - 1, w - 1)
    xm = (torch.arange(w - 1, dtype=im.dtype) - (w - 2) / 2.0)[None, :].expand(h - 1, w - 1)
    # gradients along the 45-degree axes u (towards +x, -y) and v (towards -x, -y)
    dIdu = im[:, :-1, 1:] - im[:, 1:, :-1]
    dIdv = im[:, :-1, :-1] - im[:, 1:, 1:]
    box = torch.ones(1, 1, 3, 3, dtype=im.dtype) / 9.0
    fdu = F.conv2d(dIdu[:, None], box, padding=1)[:, 0]
    fdv = F.conv2d(dIdv[:, None], box, padding=1)[:, 0]
    dImag2 = fdu * fdu + fdv * fdv
    # slope of the gradient line in (x, y); vertical lines get a large finite slope
    den = fdu - fdv
    m = -(fdv + fdu) / torch.where(den == 0, torch.full_like(den, 1e-300), den)
    raw_den = dIdu - dIdv
    m_raw = (dIdv + dIdu) / torch.where(raw_den == 0, torch.full_like(raw_den, 1e-300), raw_den)
    m = torch.where(torch.isnan(m), m_raw, m)
    m = torch.where(torch.isnan(m), torch.zeros_like(m), m)
    finite = torch.isfinite(m)
    mmax = torch.where(finite, m.abs(), torch.zeros_like(m)).amax(dim=(1, 2), keepdim=True)
    m = torch.where(finite, m, 10.0 * mmax.clamp_min(1.0) * torch.sign(m))
    m = m.clamp(-1e12, 1e12)
    bb = ym - m * xm
    sdI2 = dImag2.sum(dim=(1, 2), keepdim=True).clamp_min(1e-300)
    xc0 = (dImag2 * xm).sum(dim=(1, 2), keepdim=True) / sdI2
    yc0 = (dImag2 * ym).sum(dim=(1, 2), keepdim=True) / sdI2
    wgt = dImag2 / torch.sqrt((xm - xc0) ** 2 + (ym - yc0) ** 2).clamp_min(1e-12)
    # least squares: point minimising sum w (y - m x - b)^2 / (m^2 + 1)
    wm2p1 = wgt / (m * m + 1.0)
    sw = wm2p1.sum(dim=(1, 2))
    smmw = (m * m * wm2p1).sum(dim=(1, 2))
    smw = (m * wm2p1).sum(dim=(1, 2))
    smbw = (m * bb * wm2p1).sum(dim=(1, 2))
    sbw = (bb * wm2p1).sum(dim=(1, 2))
    det = smw * smw - smmw * sw
    xc = (smbw * sw - smw * sbw) / det
    yc = (smbw * smw - smmw * sbw) / det
    return torch.stack([yc + (h - 1) / 2.0, xc + (w - 1) / 2.0], dim=1).numpy()


# ---------------------------------------------------------------------------- Gaussian MLE
def integrated_gaussian(params: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Pixel-integrated 2D Gaussian plus background, ``params [B, 5]``: y, x, photons, background, sigma_px.

    Returns the expected photons per pixel ``[B, H, W]``; the spot integrates to ``photons`` over
    the infinite plane.
    """
    h, w = int(shape[0]), int(shape[1])
    y0, x0, n, bg, s = (params[:, i, None] for i in range(5))
    r2 = math.sqrt(2.0)
    iy = torch.arange(h, dtype=params.dtype, device=params.device)[None]
    ix = torch.arange(w, dtype=params.dtype, device=params.device)[None]
    ey = 0.5 * (torch.erf((iy - y0 + 0.5) / (r2 * s)) - torch.erf((iy - y0 - 0.5) / (r2 * s)))
    ex = 0.5 * (torch.erf((ix - x0 + 0.5) / (r2 * s)) - torch.erf((ix - x0 - 0.5) / (r2 * s)))
    return n[..., None] * ey[:, :, None] * ex[:, None, :] + bg[..., None]


def _initial_guess(im: torch.Tensor, sigma_px: float) -> torch.Tensor:
    b, h, w = im.shape
    border = torch.cat([im[:, 0], im[:, -1], im[:, :, 0], im[:, :, -1]], dim=1)
    bg = border.median(dim=1).values.clamp_min(1e-3)
    sig = (im - bg[:, None, None]).clamp_min(0)
    tot = sig.sum(dim=(1, 2)).clamp_min(1e-6)
    yy = torch.arange(h, dtype=im.dtype)[None, :, None]
    xx = torch.arange(w, dtype=im.dtype)[None, None, :]
    y0 = (sig * yy).sum(dim=(1, 2)) / tot
    x0 = (sig * xx).sum(dim=(1, 2)) / tot
    y0 = torch.where(tot > 1e-3, y0, torch.full_like(y0, (h - 1) / 2))
    x0 = torch.where(tot > 1e-3, x0, torch.full_like(x0, (w - 1) / 2))
    return torch.stack([y0, x0, tot, bg, torch.full_like(bg, float(sigma_px))], dim=1)


def gaussian_mle(
    patches,
    sigma_px: float = 1.3,
    fit_sigma: bool = True,
    iterations: int = 30,
    initial: np.ndarray | None = None,
) -> pd.DataFrame:
    """Poisson maximum-likelihood fit of an integrated Gaussian to every patch ``[B, H, W]`` (photons).

    Parameters
    ----------
    patches : array [B, H, W] or [H, W]
        Camera images in photons (or photo-electrons) per pixel, background included.
    sigma_px : float
        Initial (or fixed, with ``fit_sigma=False``) Gaussian width in pixels.
    fit_sigma : bool
        Fit the width too (5 parameters) or keep it fixed (4 parameters).
    iterations : int
        Fisher-scoring iterations (Levenberg-damped); 20-30 converge for photon counts >= 100.
    initial : array [B, 5] or None
        Starting (y, x, photons, background, sigma); default from the background-subtracted centroid.

    Returns
    -------
    DataFrame
        ``y, x, photons, background, sigma_px, nll`` per patch.
    """
    check_range("sigma_px", sigma_px, 0.0, None, low_inclusive=False)
    check_range("iterations", iterations, 1, None)
    im = _as_patches(patches)
    b, h, w = im.shape
    theta = torch.as_tensor(initial, dtype=im.dtype) if initial is not None else _initial_guess(im, sigma_px)
    free = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0 if fit_sigma else 0.0], dtype=im.dtype)
    lam = torch.full((b,), 1e-3, dtype=im.dtype)
    data = im.reshape(b, -1)

    def model(t: torch.Tensor) -> torch.Tensor:
        return integrated_gaussian(t, (h, w)).reshape(t.shape[0], -1)

    def nll(mu: torch.Tensor) -> torch.Tensor:
        return (mu - data * torch.log(mu)).sum(-1)

    def jac(t: torch.Tensor) -> torch.Tensor:
        # forward-mode Jacobian [B, P, 5] via central differences of the closed-form model
        steps = torch.tensor([1e-4, 1e-4, 0.0, 0.0, 1e-4], dtype=t.dtype)
        cols = []
        for i in range(5):
            if i == 2:  # d mu / d N = spot / N
                cols.append((model(t) - t[:, 3, None]) / t[:, 2, None].clamp_min(1e-12))
            elif i == 3:
                cols.append(torch.ones(t.shape[0], h * w, dtype=t.dtype))
            else:
                e = torch.zeros(5, dtype=t.dtype)
                e[i] = steps[i]
                cols.append((model(t + e) - model(t - e)) / (2 * steps[i]))
        return torch.stack(cols, dim=-1)

    def clamp(t: torch.Tensor) -> torch.Tensor:
        lo = torch.tensor([-0.5, -0.5, 1e-3, 1e-6, 0.3], dtype=t.dtype)
        hi = torch.tensor([h - 0.5, w - 0.5, 1e12, 1e12, max(h, w) / 2.0], dtype=t.dtype)
        return torch.maximum(torch.minimum(t, hi), lo)

    theta = clamp(theta)
    cur = nll(model(theta))
    eye = torch.eye(5, dtype=im.dtype)
    for _ in range(int(iterations)):
        mu = model(theta).clamp_min(1e-12)
        J = jac(theta) * free
        g = ((1.0 - data / mu)[..., None] * J).sum(1)  # gradient of the NLL
        fisher = torch.einsum("bpi,bpj->bij", J / mu[..., None], J)
        fisher = fisher + torch.diag(1.0 - free)[None]  # keep fixed parameters out of the solve
        damp = (
            fisher
            + lam[:, None, None] * torch.diag_embed(torch.diagonal(fisher, dim1=1, dim2=2))
            + 1e-12 * eye
        )
        step = torch.linalg.solve(damp, g[..., None])[..., 0] * free
        trial = clamp(theta - step)
        new = nll(model(trial).clamp_min(1e-12))
        better = new <= cur
        theta = torch.where(better[:, None], trial, theta)
        cur = torch.where(better, new, cur)
        lam = torch.where(better, lam * 0.3, lam * 10.0).clamp(1e-9, 1e9)
    t = theta.numpy()
    return pd.DataFrame(
        {
            "y": t[:, 0],
            "x": t[:, 1],
            "photons": t[:, 2],
            "background": t[:, 3],
            "sigma_px": t[:, 4],
            "nll": cur.numpy(),
        }
    )


# ---------------------------------------------------------------------------- trackpy
def locate_trackpy(
    images,
    diameter: int,
    minmass: float = 0.0,
    separation: float | None = None,
    invert: bool = False,
    topn: int | None = None,
    **kwargs,
) -> pd.DataFrame:
    """trackpy's locate (Crocker-Grier) on ``[H, W]`` or ``[T, H, W]`` images, as a detection table.

    Parameters
    ----------
    diameter : int
        Odd feature diameter in pixels (trackpy's main parameter).
    minmass : float
        Smallest integrated brightness of a feature.
    separation : float or None
        Smallest distance between features (default ``diameter + 1``).
    invert : bool
        Dark features on a bright background.
    topn : int or None
        Keep only the ``topn`` brightest features per frame.
    **kwargs
        Passed to ``trackpy.batch`` (``percentile``, ``preprocess``, ``noise_size``...).

    Returns
    -------
    DataFrame
        ``frame, y, x, probability, area, mass, size, ecc``; ``probability`` is NaN (trackpy has no
        score in [0, 1]) and ``area`` is ``pi * size^2`` (the feature's radius of gyration).
    """
    import trackpy

    trackpy.quiet()
    d = int(diameter)
    if d < 3 or d % 2 == 0:
        raise ValueError(f"diameter must be an odd integer >= 3, got {diameter}")
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"images must be [H, W] or [T, H, W], got shape {a.shape}")
    kw = {
        "minmass": float(minmass),
        "invert": bool(invert),
        "topn": topn,
        "engine": "numba" if _has_numba() else "python",
        **kwargs,
    }
    if separation is not None:
        kw["separation"] = float(separation)
    with warnings.catch_warnings():  # trackpy's uncertainty estimate divides by zero mass
        warnings.simplefilter("ignore", RuntimeWarning)
        f = trackpy.batch(a.astype(np.float64), d, processes=1, **kw)
    out = pd.DataFrame(
        {
            "frame": f["frame"].to_numpy(np.int64),
            "y": f["y"].to_numpy(np.float64),
            "x": f["x"].to_numpy(np.float64),
            "probability": np.full(len(f), np.nan),
            "area": np.pi * f["size"].to_numpy(np.float64) ** 2,
            "mass": f["mass"].to_numpy(np.float64),
            "size": f["size"].to_numpy(np.float64),
            "ecc": f["ecc"].to_numpy(np.float64),
        }
    )
    return out.sort_values(["frame", "y", "x"], kind="stable").reset_index(drop=True)


def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- helpers
def extract_patches(image, centres, half_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Square patches ``[N, 2k+1, 2k+1]`` around rounded ``centres [N, 2]`` (y, x) of ``image [H, W]``.

    Pixels outside the image repeat the edge. Returns the patches and their top-left corners
    ``[N, 2]``, so a position ``p`` in a patch is ``p + corner`` in the image.
    """
    img = np.asarray(image)
    c = np.round(np.asarray(centres, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    k = int(half_width)
    off = np.arange(-k, k + 1)
    iy = np.clip(c[:, 0, None] + off, 0, img.shape[0] - 1)
    ix = np.clip(c[:, 1, None] + off, 0, img.shape[1] - 1)
    return img[iy[:, :, None], ix[:, None, :]], c - k
