"""How far simulated images are from real ones, per component, and whether the simulation covers them.

:func:`sim_real_distance` describes real and simulated images with the *same* measurements and compares
them component by component, each a number that is 0 for identical images:

- ``polarity``: 1 when the particles are dark in one and bright in the other (else 0);
- ``histogram``: the intensity distribution after removing each set's own background (median) and
  scale (1-99 % spread), as the mean absolute difference of the percentiles; sign-sensitive;
- ``object_size``: ``|log(r_sim / r_real)|`` of the median equivalent radius of the objects (the
  connected regions above half the bright end of the background-subtracted, polarity-oriented image);
- ``ring_profile``: rms difference of the median radial profiles around the objects, each profile
  divided by its centre value (the shape: a Gaussian spot, a dark dip, a bright centre with a dark ring);
- ``texture``: mean ``|log10|`` ratio of the radially averaged power spectra of the normalised images
  (noise grain, blur, background structure);
- ``density``: ``|log|`` ratio of the objects per unit area;
- ``snr``: ``|log|`` ratio of the objects' peak signal to the pixel noise.

Each component is capped at 2 and has a threshold; ``distance`` is their mean, and ``verdict`` is
``covered`` (all within threshold), ``partly covered`` or ``not covered`` (polarity or object size
wrong, or three components out). Unlike a single histogram distance it cannot call dark particles on a
bright background "close" to bright ones on a dark background. No GUI imports: the CLI, the benchmarks
and the Simulate widget call the same function.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from .calibrate import _as_frames, estimate_statistics

__all__ = ["THRESHOLDS", "describe_images", "real_tiles", "sim_real_distance"]

#: a component above its threshold is a mismatch worth fixing
THRESHOLDS = {
    "polarity": 0.5,
    "histogram": 0.12,
    "object_size": math.log(1.35),
    "ring_profile": 0.2,
    "texture": 0.35,
    "density": math.log(2.5),
    "snr": math.log(2.0),
}
_CRITICAL = ("polarity", "object_size")
_FREQ_BINS = np.linspace(0.03, 0.5, 13)


def _power_spectrum(norm: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum of frames [T, H, W] in ``_FREQ_BINS`` (cycles per pixel)."""
    t, h, w = norm.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    p = (np.abs(np.fft.fft2((norm - norm.mean((1, 2), keepdims=True)) * win)) ** 2).mean(0)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    f = np.hypot(fy, fx)
    idx = np.digitize(f.ravel(), _FREQ_BINS)
    sums = np.bincount(idx, weights=p.ravel(), minlength=len(_FREQ_BINS) + 1)
    counts = np.bincount(idx, minlength=len(_FREQ_BINS) + 1)
    spec = sums[1 : len(_FREQ_BINS)] / np.maximum(counts[1 : len(_FREQ_BINS)], 1)
    return spec / max(spec.sum(), 1e-30)


def describe_images(images: Any, max_frames: int = 8, profile_radius_px: int | None = None) -> dict:
    """The measurements :func:`sim_real_distance` compares (see the module docstring)."""
    from .estimates import find_particles, radial_profiles

    frames = _as_frames(images, max_frames).astype(np.float64)
    st = estimate_statistics(frames)
    t, h, w = frames.shape
    med = float(np.median(frames))
    q1, q99 = np.percentile(frames, [1, 99])
    scale = max(float(q99 - q1), st.noise_sigma, 1e-12)
    norm = (frames - med) / scale
    sm = ndimage.gaussian_filter(frames - med, (0, 1.0, 1.0))
    # polarity: the sign of the strongest extrema (a ring's centre, a spot's peak, a dark dip)
    ext = find_particles(frames, np.abs(sm), st.noise_sigma, sigma_px=1.0, snr=5.0, min_distance_px=3.0,
                         max_n=100)
    centre = sm[tuple(ext.T)] if len(ext) else np.zeros(1)
    score = float(np.mean(np.sign(centre)))
    polarity = "bright" if np.median(centre) >= 0 else "dark"
    sign = 1.0 if polarity == "bright" else -1.0
    sig = sign * sm
    top = float(np.percentile(sig, 99.5))
    radii, n_obj = [], 0
    if top > 3 * st.noise_sigma / 3.5:
        for f in sig:  # one labelling per frame
            lab, n = ndimage.label(f > 0.5 * top)
            if n:
                area = np.bincount(lab.ravel())[1:]
                area = area[area >= 3]
                n_obj += len(area)
                radii.extend(np.sqrt(area / math.pi).tolist())
    r_obj = float(np.median(radii)) if radii else None
    rp = profile_radius_px or int(np.clip(round(3 * (r_obj or 2.0)), 6, 40))
    peaks = find_particles(frames, sig, st.noise_sigma, sigma_px=max(0.5 * (r_obj or 2.0), 1.0),
                           snr=5.0, min_distance_px=max(2.0, r_obj or 2.0), max_n=200)
    prof = radial_profiles(frames - med, peaks, rp) if len(peaks) else np.zeros((0, rp + 1))
    prof = prof[np.isfinite(prof).all(1)] if len(prof) else prof
    if len(prof):
        mp = np.median(prof, 0)
        ring = mp / (mp[0] if abs(mp[0]) > 1e-12 else 1.0)
        peak = float(abs(mp[0]))
    else:
        ring, peak = None, 0.0
    return {
        "polarity": polarity,
        "polarity_score": score,
        "quantiles": np.percentile(norm, np.arange(1, 100)),
        "object_radius_px": r_obj,
        "objects_per_mpx": 1e6 * n_obj / (t * h * w),
        "ring_profile": ring,
        "profile_radius_px": rp,
        "snr": peak / max(st.noise_sigma, 1e-12),
        "spectrum": _power_spectrum(norm),
        "noise_sigma": st.noise_sigma,
    }


def _log_ratio(a: float | None, b: float | None) -> float:
    if a is None and b is None:
        return 0.0
    if not a or not b:
        return 2.0
    return abs(math.log(a / b))


def real_tiles(images: Any, shape: tuple[int, int], n: int = 8) -> tuple[np.ndarray, bool]:
    """``n`` tiles of ``shape`` from real frames to compare with simulated images of that shape.

    Dense data (on average at least one particle per tile): tiles on a regular grid, evenly spread over
    the frames. Sparse data (a few particles in a large frame, e.g. trackpy's five bright-field rings in
    500x500 px): evenly spaced tiles are mostly empty background, so every component would be measured on
    noise; the tiles are centred on the strongest particles instead.

    Returns
    -------
    tiles : array [K, h, w] (K <= n)
    sparse : bool
        True when the tiles were centred on particles (their density says nothing about the data's).
    """
    from .estimates import find_particles
    from .match_families import local_contrast

    frames = _as_frames(images, 64).astype(np.float64)
    t, hh, ww = frames.shape
    h, w = min(int(shape[0]), hh), min(int(shape[1]), ww)
    ny, nx = hh // h, ww // w
    grid = frames[:, : ny * h, : nx * w].reshape(t, ny, h, nx, w).swapaxes(2, 3).reshape(-1, h, w)
    st = estimate_statistics(frames)
    con, _ = local_contrast(frames, 16.0)  # uneven illumination is not a particle
    noise = st.noise_sigma / max(abs(st.background), 1e-12)
    # one maximum per particle (a quarter tile apart: a ring's fringes are not particles of their own), at
    # least a quarter as strong as the strongest (background texture is not a particle either)
    found = find_particles(frames, np.abs(con), noise, sigma_px=2.0, snr=8.0, min_distance_px=min(h, w) / 4,
                           max_n=10 * len(grid) + 1)  # fmt: skip
    if len(found):
        strength = ndimage.gaussian_filter(np.abs(con), (0, 2.0, 2.0))[tuple(found.T)]
        found = found[strength >= 0.25 * strength.max()]
    if len(found) >= len(grid) or len(found) == 0:
        pick = np.linspace(0, len(grid) - 1, min(n, len(grid))).round().astype(int)
        return grid[np.unique(pick)], False
    tiles, taken = [], []
    for f, y, x in found:  # strongest first; tiles at least half a tile apart
        if any(f == g and abs(y - a) < h / 2 and abs(x - b) < w / 2 for g, a, b in taken):
            continue
        y0, x0 = int(np.clip(y - h // 2, 0, hh - h)), int(np.clip(x - w // 2, 0, ww - w))
        tiles.append(frames[f, y0 : y0 + h, x0 : x0 + w])
        taken.append((f, y, x))
        if len(tiles) == n:
            break
    return np.stack(tiles), True


def sim_real_distance(
    sim_images: Any, real_images: Any, max_frames: int = 8, sparse: bool = False
) -> dict[str, Any]:
    """Per-component distance between simulated and real images, and a coverage verdict.

    Parameters
    ----------
    sim_images, real_images : array [H, W], [T, H, W] or [B, 1, H, W]
        Any grey-value units (each set is normalised by its own background and spread).
    sparse : bool
        The real images are tiles centred on particles of sparse data (:func:`real_tiles`): their
        object density is not the data's, so ``density`` is not compared (reported as 0).

    Returns
    -------
    dict
        ``components`` (name -> value, 0 = identical, capped at 2), ``ok`` (name -> within threshold),
        ``distance`` (mean of the components), ``verdict`` (``covered`` / ``partly covered`` /
        ``not covered``), ``reasons`` (one sentence per mismatch, with what to change), and the
        ``real`` / ``sim`` measurements.
    """
    real = describe_images(real_images, max_frames)
    sim = describe_images(sim_images, max_frames, profile_radius_px=real["profile_radius_px"])
    comp: dict[str, float] = {}
    pol_clear = max(abs(real["polarity_score"]), abs(sim["polarity_score"])) > 0.3
    comp["polarity"] = 1.0 if real["polarity"] != sim["polarity"] and pol_clear else 0.0
    comp["histogram"] = float(np.mean(np.abs(sim["quantiles"] - real["quantiles"])))
    comp["object_size"] = _log_ratio(sim["object_radius_px"], real["object_radius_px"])
    if real["ring_profile"] is not None and sim["ring_profile"] is not None:
        comp["ring_profile"] = float(np.sqrt(np.mean((sim["ring_profile"] - real["ring_profile"]) ** 2)))
    else:
        comp["ring_profile"] = 0.0 if real["ring_profile"] is sim["ring_profile"] else 2.0
    rs, ss = real["spectrum"], sim["spectrum"]
    comp["texture"] = float(np.mean(np.abs(np.log10(np.maximum(ss, 1e-12) / np.maximum(rs, 1e-12)))))
    dens = _log_ratio(sim["objects_per_mpx"] + 1.0, real["objects_per_mpx"] + 1.0)
    comp["density"] = 0.0 if sparse else dens
    comp["snr"] = _log_ratio(sim["snr"] or None, real["snr"] or None)
    comp = {k: float(min(v, 2.0)) for k, v in comp.items()}
    ok = {k: v <= THRESHOLDS[k] for k, v in comp.items()}
    advice = {
        "polarity": f"particles are {real['polarity']} in the real images but {sim['polarity']} in the "
        "simulation: re-match polarity (brightfield preset, or dark spots)",
        "histogram": "intensity distribution differs: re-match background and brightness",
        "object_size": f"objects are {real['object_radius_px'] or 0:.1f} px (real) vs "
        f"{sim['object_radius_px'] or 0:.1f} px (simulated) in radius: re-match size / pixel size",
        "ring_profile": "the radial profile of the particles differs (defocus rings, blur): re-match "
        "defocus range / NA",
        "texture": "noise grain or background structure differs (power spectrum): re-match noise",
        "density": f"{real['objects_per_mpx']:.0f} vs {sim['objects_per_mpx']:.0f} objects per "
        "megapixel: re-match the particle count",
        "snr": f"signal-to-noise {real['snr']:.1f} (real) vs {sim['snr']:.1f} (simulated): re-match "
        "photons / noise",
    }
    bad = [k for k, v in ok.items() if not v]
    if not bad:
        verdict = "covered"
    elif any(k in _CRITICAL for k in bad) or len(bad) >= 3:
        verdict = "not covered"
    else:
        verdict = "partly covered"
    strip = ("quantiles", "spectrum")
    return {
        "components": comp,
        "ok": ok,
        "distance": float(np.mean(list(comp.values()))),
        "verdict": verdict,
        "reasons": [advice[k] for k in bad],
        "real": {k: v for k, v in real.items() if k not in strip},
        "sim": {k: v for k, v in sim.items() if k not in strip},
    }
