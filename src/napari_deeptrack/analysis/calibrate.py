"""Calibrate a simulation to a real image: what "Match to layer" does in napari.

From a real image (2D, or a stack ``[T, H, W]``) :func:`estimate_statistics` measures, from the data
alone:

- ``background``: the median grey value,
- ``noise_sigma``: the background noise (robust, from neighbouring-pixel differences),
- ``polarity``: ``"bright"`` particles on a darker background (fluorescence) or ``"dark"`` ones
  (bright-field absorption), from the asymmetry of the smoothed intensity distribution,
- ``spot_sigma_px``: the Gaussian width of isolated spots (least-squares fits of the brightest ones),
- ``spots_per_frame`` and ``density_per_um2`` (or per pixel when the pixel size is unknown),
- ``spot_integral``: the median integrated intensity of a spot above background,
- ``photons_per_count``: background / noise^2, the conversion that makes the background noise pure
  shot noise (exact for a photon-counting camera without offset; a reasonable scale otherwise).

:func:`~napari_deeptrack.analysis.match.match_pipeline` writes those numbers into a simulation
:class:`~napari_deeptrack.sim.Pipeline`
(optics pixel size and numerical aperture, background, camera gain, particle count and brightness), and
:func:`compare_statistics` tells how far simulated images are from the real one (intensity histogram,
noise, spot width), the number the Simulate widget shows. :func:`coverage_warnings` checks whether a
trained model's simulation covered a new image. No GUI imports here: the command line uses the same code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize

__all__ = [
    "ImageStatistics",
    "compare_statistics",
    "coverage_warnings",
    "estimate_statistics",
]

#: Gaussian approximation of the in-focus widefield PSF: sigma = 0.21 * wavelength / NA.
SIGMA_PER_LAMBDA_OVER_NA = 0.21


@dataclass
class ImageStatistics:
    """What :func:`estimate_statistics` measured on an image (grey values in the image's own units)."""

    background: float
    noise_sigma: float
    polarity: str
    polarity_score: float
    spot_sigma_px: float | None
    spots_per_frame: float
    density_per_um2: float | None
    density_per_px: float
    spot_amplitude: float | None
    spot_integral: float | None
    photons_per_count: float | None
    pixel_size_um: float | None
    image_shape: tuple[int, int]
    n_frames: int
    quantiles: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- input handling
def _as_frames(image: Any, max_frames: int = 8) -> np.ndarray:
    """Image (2D, [T, H, W] or [B, 1, H, W]) as float32 frames [T, H, W], at most ``max_frames``."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"image must be 2D [H, W] or a stack [T, H, W], got shape {a.shape}")
    if a.size == 0 or min(a.shape[1:]) < 8:
        raise ValueError(f"image must be at least 8x8 pixels and not empty, got shape {a.shape}")
    if np.iscomplexobj(a):
        raise ValueError("image must be real-valued (got a complex array)")
    if a.shape[0] > max_frames:
        a = a[np.linspace(0, a.shape[0] - 1, max_frames).round().astype(int)]
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    return a


def _smooth(frames: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(frames, sigma=(0, sigma, sigma), mode="nearest")


def _mad_sigma(x: np.ndarray) -> float:
    """Robust standard deviation: the standard deviation of the values within 4 sigma of the median,
    sigma first estimated as 1.4826 MAD (at least one quantisation step). Unlike the MAD alone this stays
    unbiased for coarsely quantised data (8-bit images with noise of about one grey level)."""
    if x.size == 0:
        return 0.0
    med = np.median(x)
    dev = np.abs(x - med)
    step = dev[dev > 0].min() if (dev > 0).any() else 0.0
    sigma0 = max(float(1.4826 * np.median(dev)), float(step))
    core = x[dev <= 4 * sigma0]
    return float(core.std()) if core.size else 0.0


def _noise_sigma(frames: np.ndarray, background: float) -> float:
    """Robust background noise: neighbouring-pixel differences over pixels that look like background."""
    dx = frames[:, :, 1:] - frames[:, :, :-1]
    sigma0 = _mad_sigma(dx) / math.sqrt(2)
    if sigma0 == 0:
        return 0.0
    sm = _smooth(frames, 1.0)[:, :, 1:]
    # smoothing with sigma=1 px reduces white noise by 1 / (2 sqrt(pi)) ~ 0.28
    mask = np.abs(sm - background) < 3.0 * 0.28 * sigma0
    if mask.sum() < 100:
        return sigma0
    return _mad_sigma(dx[mask]) / math.sqrt(2)


def _polarity(frames: np.ndarray, background: float) -> tuple[str, float]:
    s = _smooth(frames, 1.0) - background
    hi = float(np.percentile(s, 99.9))
    lo = float(-np.percentile(s, 0.1))
    score = (hi - lo) / max(hi + lo, 1e-12)
    return ("bright" if hi >= lo else "dark"), score


def _find_peaks(signal: np.ndarray, sigma_px: float, noise: float, snr: float = 5.0) -> np.ndarray:
    """Local maxima of the Gaussian-smoothed signal above ``snr`` times its noise: [K, 3] (t, y, x)."""
    sm = _smooth(signal, sigma_px)
    noise_sm = noise / (2.0 * math.sqrt(math.pi) * sigma_px)
    r = max(1, int(round(1.5 * sigma_px)))
    peak = ndimage.maximum_filter(sm, size=(1, 2 * r + 1, 2 * r + 1), mode="nearest") == sm
    peak &= sm > snr * max(noise_sm, 1e-12)
    b = max(2, int(math.ceil(2 * sigma_px)))
    peak[:, :b] = peak[:, -b:] = False
    peak[:, :, :b] = peak[:, :, -b:] = False
    idx = np.argwhere(peak)
    return idx


def _fit_spots(signal: np.ndarray, peaks: np.ndarray, sigma_guess: float, max_spots: int = 48):
    """Fit Gaussians (amplitude, sigma, centre, offset) to the brightest isolated peaks.

    Returns arrays of sigma (px) and amplitude for the spots whose fit converged to a sensible width.
    """
    if len(peaks) == 0:
        return np.zeros(0), np.zeros(0)
    radius = int(np.clip(math.ceil(3 * sigma_guess), 3, 12))
    t, y, x = peaks.T
    h, w = signal.shape[1:]
    inside = (y >= radius) & (y < h - radius) & (x >= radius) & (x < w - radius)
    peaks = peaks[inside]
    if len(peaks) == 0:
        return np.zeros(0), np.zeros(0)
    # isolated: no other peak in the same frame closer than 2 * radius
    same = peaks[:, None, 0] == peaks[None, :, 0]
    d2 = ((peaks[:, None, 1:] - peaks[None, :, 1:]) ** 2).sum(-1)
    d2 = np.where(same & ~np.eye(len(peaks), dtype=bool), d2, 10**9)
    peaks = peaks[d2.min(axis=1) > (2 * radius) ** 2]
    if len(peaks) == 0:
        return np.zeros(0), np.zeros(0)
    heights = signal[peaks[:, 0], peaks[:, 1], peaks[:, 2]]
    peaks = peaks[np.argsort(-heights)[:max_spots]]
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    sigmas, amps = [], []
    for ti, yi, xi in peaks:  # a few dozen small fits: calibration, not a hot path
        patch = signal[ti, yi - radius : yi + radius + 1, xi - radius : xi + radius + 1].astype(np.float64)
        a0 = float(patch.max() - np.median(patch))

        def resid(p, patch=patch):
            amp, s, cy, cx, off = p
            return (amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)) + off - patch).ravel()

        try:
            fit = optimize.least_squares(
                resid,
                [a0, sigma_guess, 0.0, 0.0, float(np.median(patch))],
                bounds=([0, 0.3, -2, -2, -np.inf], [np.inf, radius, 2, 2, np.inf]),
                max_nfev=60,
            )
        except ValueError:
            continue
        amp, s = fit.x[0], fit.x[1]
        if 0.35 < s < 0.95 * radius and amp > 0:
            sigmas.append(s)
            amps.append(amp)
    return np.asarray(sigmas), np.asarray(amps)


# ---------------------------------------------------------------------------- estimation
def estimate_statistics(
    image: Any, pixel_size_um: float | None = None, max_frames: int = 8
) -> ImageStatistics:
    """Measure background, noise, polarity, spot width, spot density and brightness of a real image.

    Parameters
    ----------
    image : array [H, W] or [T, H, W]
        Grey values (any units); at most ``max_frames`` evenly spaced frames are analysed.
    pixel_size_um : float, optional
        Sample-plane pixel size; gives ``density_per_um2``.
    max_frames : int
        Frames analysed in a stack.

    Returns
    -------
    ImageStatistics
    """
    if pixel_size_um is not None and not float(pixel_size_um) > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    frames = _as_frames(image, max_frames)
    t, h, w = frames.shape
    background = float(np.median(frames))
    noise = _noise_sigma(frames, background)
    polarity, score = _polarity(frames, background)
    signal = frames - background if polarity == "bright" else background - frames
    # two passes: detect at a generic scale, fit widths, detect again at the measured scale
    sigma_guess = 1.5
    spot_sigma = None
    peaks = _find_peaks(signal, sigma_guess, noise)
    sig, amp = _fit_spots(signal, peaks, sigma_guess)
    if len(sig):
        spot_sigma = float(np.median(sig))
        peaks = _find_peaks(signal, max(spot_sigma, 0.7), noise)
        sig, amp = _fit_spots(signal, peaks, spot_sigma)
        if len(sig):
            spot_sigma = float(np.median(sig))
    n_per_frame = len(peaks) / t
    amplitude = float(np.median(amp)) if len(amp) else None
    integral = float(np.median(2 * math.pi * amp * sig**2)) if len(amp) else None
    photons = background / noise**2 if noise > 0 and background > 0 else None
    density_px = n_per_frame / (h * w)
    return ImageStatistics(
        background=background,
        noise_sigma=float(noise),
        polarity=polarity,
        polarity_score=float(score),
        spot_sigma_px=spot_sigma,
        spots_per_frame=float(n_per_frame),
        density_per_um2=density_px / float(pixel_size_um) ** 2 if pixel_size_um else None,
        density_per_px=float(density_px),
        spot_amplitude=amplitude,
        spot_integral=integral,
        photons_per_count=photons,
        pixel_size_um=float(pixel_size_um) if pixel_size_um else None,
        image_shape=(h, w),
        n_frames=t,
        quantiles=[float(q) for q in np.percentile(frames, np.arange(1, 100))],
    )


# ---------------------------------------------------------------------------- comparison
def compare_statistics(
    sim_images: Any, real_image: Any, pixel_size_um: float | None = None
) -> dict[str, Any]:
    """How far simulated images are from a real one.

    Components (0 = identical, larger = further apart):

    - ``histogram``: mean absolute difference of the 1st..99th intensity percentiles, divided by the real
      image's 1-99 % range,
    - ``noise``: ``|log(noise_sim / noise_real)|``,
    - ``spot_width``: ``|log(sigma_sim / sigma_real)|`` (0 when no spots were found in either),
    - ``background``: background difference divided by the real 1-99 % range.

    - ``polarity``: 1 when the particles are dark in one and bright in the other (clear asymmetry), else 0.

    ``distance`` is the mean of ``histogram``, ``noise`` and ``spot_width``, plus ``polarity``. As a rule
    of thumb, below 0.2 the simulation resembles the data; above 0.5 it does not cover it. For a
    per-component comparison that also checks object size, ring profile, texture and density, see
    :func:`napari_deeptrack.analysis.realism.sim_real_distance`.

    Returns
    -------
    dict
        The components, ``distance``, and ``real`` / ``sim`` statistics dicts.
    """
    real = estimate_statistics(real_image, pixel_size_um)
    sim = estimate_statistics(sim_images, pixel_size_um)
    qr, qs = np.asarray(real.quantiles), np.asarray(sim.quantiles)
    spread = max(qr[-1] - qr[0], real.noise_sigma, 1e-12)
    hist = float(np.mean(np.abs(qs - qr)) / spread)
    noise = abs(math.log(max(sim.noise_sigma, 1e-12) / max(real.noise_sigma, 1e-12)))
    if real.spot_sigma_px and sim.spot_sigma_px:
        width = abs(math.log(sim.spot_sigma_px / real.spot_sigma_px))
    elif real.spot_sigma_px or sim.spot_sigma_px:
        width = 1.0  # spots in one and not in the other
    else:
        width = 0.0
    background = abs(sim.background - real.background) / spread
    out = {
        "histogram": hist,
        "noise": float(noise),
        "spot_width": float(width),
        "background": float(background),
        "polarity_match": real.polarity == sim.polarity,
    }
    # a polarity mismatch (dark particles simulated bright, or the reverse) is never "close"
    pol = 0.0
    if real.polarity != sim.polarity and max(abs(real.polarity_score), abs(sim.polarity_score)) > 0.3:
        pol = 1.0
    out["polarity"] = pol
    out["distance"] = float((hist + noise + width) / 3.0 + pol)
    out["real"] = real.to_dict()
    out["sim"] = sim.to_dict()
    return out


# ---------------------------------------------------------------------------- pipeline matching
def _fields(obj) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()


def _replace(obj, **changes):
    names = _fields(obj)
    changes = {k: v for k, v in changes.items() if k in names}
    return dataclasses.replace(obj, **changes) if changes else obj


def _optics_pixel_size(optics) -> float | None:
    return optics.sample_pixel_um  # the Optics contract: sample-plane pixel (um) or None


# ---------------------------------------------------------------------------- coverage
def coverage_warnings(
    task,
    images: Any,
    pixel_size_um: float | None = None,
    n_sim: int = 8,
    seed: int = 0,
    tolerance: float = 0.25,
) -> list[str]:
    """Warnings when ``images`` fall outside what ``task``'s training simulation covered.

    Checks (papers/dl_single_molecule_microscopy_review.txt, section 4: a network is only valid on
    data like its training data): the pixel size against ``task.pixel_size_um`` (relative difference
    above ``tolerance``), and, after the task's input normalisation, the spot width and noise level against
    the range seen in ``n_sim`` simulated training images (widened by ``tolerance``), and the contrast
    polarity.

    Parameters
    ----------
    task : Task
        Anything with ``pipeline``, ``pixel_size_um`` and ``input_normalization``.
    images : array [H, W] or [T, H, W]
    pixel_size_um : float, optional
        Pixel size of ``images`` (None: not checked).

    Returns
    -------
    list of str
        Empty when everything is in range.
    """
    import torch

    warnings: list[str] = []
    trained_px = float(getattr(task, "pixel_size_um", 0) or 0)
    if pixel_size_um and trained_px:
        rel = abs(float(pixel_size_um) - trained_px) / trained_px
        if rel > tolerance:
            warnings.append(
                f"pixel size {float(pixel_size_um):.4g} um differs from the training simulation's "
                f"{trained_px:.4g} um by {100 * rel:.0f}%: resample the image or retrain with the "
                "matched pixel size"
            )
    frames = _as_frames(images)
    spec = dict(getattr(task, "input_normalization", None) or {})
    batch = task.pipeline(n_sim, seed=seed)
    sim = batch.image[:, :1]
    real = torch.from_numpy(frames[:, None])
    if spec and spec.get("mode", "percentile") != "none":
        from ..sim import normalize_images

        sim = normalize_images(sim, **spec)
        real = normalize_images(real, **spec)
    real_stats = estimate_statistics(real[:, 0].numpy())
    sim_stats = [estimate_statistics(s[0].numpy()) for s in sim]
    noise = [s.noise_sigma for s in sim_stats]
    lo, hi = min(noise) / (1 + tolerance), max(noise) * (1 + tolerance)
    if not lo <= real_stats.noise_sigma <= hi:
        warnings.append(
            f"normalised noise level {real_stats.noise_sigma:.3g} is outside the training range "
            f"[{lo:.3g}, {hi:.3g}]: the signal-to-noise ratio differs from the simulation; re-match noise "
            "(train with --match on this image / Match to layer)"
        )
    widths = [s.spot_sigma_px for s in sim_stats if s.spot_sigma_px]
    if widths and real_stats.spot_sigma_px:
        lo, hi = min(widths) / (1 + tolerance), max(widths) * (1 + tolerance)
        if not lo <= real_stats.spot_sigma_px <= hi:
            warnings.append(
                f"spot width {real_stats.spot_sigma_px:.2f} px is outside the training range "
                f"[{lo:.2f}, {hi:.2f}] px"
            )
    polarities = {s.polarity for s in sim_stats}
    if real_stats.polarity not in polarities and abs(real_stats.polarity_score) > 0.3:
        warnings.append(
            f"particles look {real_stats.polarity} but were {'/'.join(sorted(polarities))} in training: "
            "re-match polarity (train with --match on this image / Match to layer; for dark particles in "
            "bright field, the brightfield-particles preset)"
        )
    return warnings
