"""Calibration that knows its preset: what a real image tells about *this* simulation.

"Match to layer" and ``train PRESET --match IMAGE`` call :func:`calibrate`, which picks the preset's
**family** from its simulation and measures what that family can learn from a real image:

- ``point-emitters`` (fluorescence point particles): polarity, spot width -> NA, background, camera
  gain (photons per grey value), read noise, spots per frame, photons per spot;
- ``brightfield`` (coherent images of spheres): polarity of the particle centre, contrast, radial ring
  profile, apparent radius; sphere radius and defocus range found by comparing the real particles'
  radial profiles with profiles simulated by the preset's own optics; illumination photons, background
  gradient, particles per frame;
- ``cells`` (nuclei / cell bodies): object size distribution (Otsu + connected components), objects per
  frame, intensity above background, texture, touching fraction, background level and gradient;
- ``hologram`` (in-line holograms): background normalisation, fringe spacing -> particle height z.

Each value is an :class:`Estimate` (name, value, unit, uncertainty, source, the physically sensible
range it is clamped to, and whether it changes the simulation). The user can edit any of them
(:meth:`Calibration.with_overrides`; CLI ``--match-set NAME=VALUE``) before :func:`apply_calibration`
writes them into a copy of the pipeline. The per-family measurements and writers live in
:mod:`napari_deeptrack.analysis.match_families`. Nothing set here can leave a physically meaningless
simulation: every value is clamped to its range, and a clamp is reported in the estimate's source.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .calibrate import (
    ImageStatistics,
    _as_frames,
    _optics_pixel_size,
    _replace,
    estimate_statistics,
)

__all__ = [
    "FAMILIES",
    "Calibration",
    "Estimate",
    "apply_calibration",
    "calibrate",
    "find_particles",
    "preset_family",
    "radial_profiles",
]

FAMILIES = ("point-emitters", "brightfield", "cells", "hologram")


@dataclass
class Estimate:
    """One thing a real image tells about the simulation.

    Attributes
    ----------
    name : str
        Key (``spot_sigma_px``, ``background``...), used by :meth:`Calibration.with_overrides`.
    value : float or str
    unit : str
    uncertainty : float or None
        One standard error (same unit), None when not quantified.
    source : str
        Where the value came from (measurement, file, user, preset default), with any clamping.
    low, high : float or None
        The physically sensible range the value is clamped to.
    applied : bool
        Whether :func:`apply_calibration` writes it into the simulation (else it is for information).
    """

    name: str
    value: Any
    unit: str = ""
    uncertainty: float | None = None
    source: str = ""
    low: float | None = None
    high: float | None = None
    applied: bool = True

    def __post_init__(self):
        if isinstance(self.value, (int, float, np.floating, np.integer)) and not isinstance(self.value, bool):
            v = float(self.value)
            if not math.isfinite(v):
                raise ValueError(f"estimate {self.name}: value must be finite, got {v}")
            lo = -math.inf if self.low is None else self.low
            hi = math.inf if self.high is None else self.high
            if not lo <= v <= hi:
                c = min(max(v, lo), hi)
                self.source = f"{self.source}; clamped from {v:.4g} to the range [{lo:.4g}, {hi:.4g}]"
                v = c
            self.value = v
            if self.uncertainty is not None:
                self.uncertainty = float(abs(self.uncertainty)) if math.isfinite(self.uncertainty) else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        v = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        u = f" +- {self.uncertainty:.2g}" if self.uncertainty is not None else ""
        flag = "" if self.applied else " (not applied)"
        return f"{self.name} = {v}{u} {self.unit}".rstrip() + f"{flag}  [{self.source}]"


@dataclass
class Calibration:
    """The estimates :func:`calibrate` made for one preset family, in display order."""

    family: str
    estimates: list[Estimate]
    pixel_size_um: float | None = None
    image_shape: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)
    stats: ImageStatistics | None = None

    def get(self, name: str, default: Any = None) -> Any:
        """The value of estimate ``name`` (``default`` when absent)."""
        for e in self.estimates:
            if e.name == name:
                return e.value
        return default

    def __getitem__(self, name: str) -> Estimate:
        for e in self.estimates:
            if e.name == name:
                return e
        raise KeyError(f"no estimate {name!r}; estimates: {[e.name for e in self.estimates]}")

    def with_overrides(self, overrides: dict[str, Any] | None) -> Calibration:
        """A copy with estimates set by the user (``{"background": 120}``); source "set by the user".

        Raises
        ------
        ValueError
            Unknown estimate name (the message lists the valid ones) or a value of the wrong kind.
        """
        new = copy.deepcopy(self)
        for name, value in (overrides or {}).items():
            try:
                e = new[name]
            except KeyError:
                raise ValueError(
                    f"--match-set: no estimate {name!r} for a {self.family} simulation; "
                    f"valid names: {', '.join(x.name for x in self.estimates)}"
                ) from None
            if isinstance(e.value, str):
                value = str(value)
            else:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"--match-set {name}: expected a number, got {value!r}") from None
            i = new.estimates.index(e)
            new.estimates[i] = Estimate(
                e.name, value, e.unit, None, "set by the user", e.low, e.high, applied=e.applied
            )
        return new

    def to_list(self) -> list[dict[str, Any]]:
        """The estimates as plain dicts (name, value, unit, uncertainty, source, low, high, applied)."""
        return [e.to_dict() for e in self.estimates]

    def table(self) -> str:
        """One line per estimate, for a terminal."""
        lines = [f"calibration ({self.family}):"] + [f"  {e}" for e in self.estimates]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


# ---------------------------------------------------------------------------- family
def preset_family(pipeline) -> str:
    """``point-emitters``, ``brightfield``, ``cells`` or ``hologram`` for a simulation pipeline."""
    from ..sim import CellBody, Ellipse, GeneratorOptics, Holography

    optics = pipeline.optics
    if bool(getattr(optics, "is_coherent", False)):
        return "hologram" if isinstance(optics, Holography) else "brightfield"
    extended = any(isinstance(p.scatterer, CellBody | Ellipse) for p in pipeline.particles)
    return "cells" if extended or isinstance(optics, GeneratorOptics) else "point-emitters"


# ---------------------------------------------------------------------------- shared measurements
def find_particles(
    frames: np.ndarray, signal: np.ndarray, noise: float, sigma_px: float = 1.5, snr: float = 5.0,
    min_distance_px: float | None = None, max_n: int = 400,
) -> np.ndarray:
    """Local maxima of the smoothed ``signal`` [T, H, W] above ``snr`` x its noise: [K, 3] (t, y, x).

    Maxima closer than ``min_distance_px`` to a stronger one are dropped; the strongest ``max_n`` kept.
    """
    sm = ndimage.gaussian_filter(signal, (0, sigma_px, sigma_px), mode="nearest")
    noise_sm = max(noise / (2.0 * math.sqrt(math.pi) * sigma_px), 1e-12)
    d = int(round(min_distance_px if min_distance_px else 2 * sigma_px))
    peak = ndimage.maximum_filter(sm, size=(1, 2 * d + 1, 2 * d + 1), mode="nearest") == sm
    peak &= sm > snr * noise_sm
    b = max(2, d)
    peak[:, :b] = peak[:, -b:] = False
    peak[:, :, :b] = peak[:, :, -b:] = False
    idx = np.argwhere(peak)
    order = np.argsort(-sm[peak])
    return idx[order[:max_n]]


def radial_profiles(frames: np.ndarray, centres: np.ndarray, radius_px: int) -> np.ndarray:
    """Mean grey value in 1-px rings (0, 1, ... ``radius_px``) around each centre (t, y, x): [K, R+1].

    Centres closer than ``radius_px`` to the border are skipped (rows of NaN).
    """
    r = int(radius_px)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    ring = np.round(np.hypot(yy, xx)).astype(int)
    inside = ring <= r
    counts = np.bincount(ring[inside], minlength=r + 1).astype(float)
    t_, h, w = frames.shape
    out = np.full((len(centres), r + 1), np.nan)
    for i, (t, y, x) in enumerate(np.asarray(centres, int)):  # a few hundred small crops
        if r <= y < h - r and r <= x < w - r:
            crop = frames[t, y - r : y + r + 1, x - r : x + r + 1]
            out[i] = np.bincount(ring[inside], weights=crop[inside], minlength=r + 1) / counts
    return out


def _se_median(x: np.ndarray) -> float | None:
    x = np.asarray(x, float)
    if x.size < 2:
        return None
    return float(1.2533 * 1.4826 * np.median(np.abs(x - np.median(x))) / math.sqrt(x.size))


def _gradient(frames: np.ndarray, background: float, mask: np.ndarray | None = None) -> float:
    """Relative background gradient: half the range, over the image, of a plane fitted to the smoothed
    background pixels (``mask``: True where background; default: all pixels)."""
    f = ndimage.gaussian_filter(frames.mean(0), 2.0, mode="nearest")
    h, w = f.shape
    m = np.ones((h, w), bool) if mask is None else np.asarray(mask).reshape(-1, h, w).all(0)
    if m.sum() < 0.05 * h * w:
        m = np.ones((h, w), bool)
    yy, xx = np.nonzero(m)
    a = np.c_[yy - (h - 1) / 2, xx - (w - 1) / 2, np.ones(len(yy))]
    coef, *_ = np.linalg.lstsq(a, f[m], rcond=None)
    half = abs(coef[0]) * (h - 1) / 2 + abs(coef[1]) * (w - 1) / 2
    return float(half / max(abs(background), 1e-12))


def _pixel_estimate(pipeline, pixel_size_um: float | None, pixel_source: str) -> Estimate:
    px = pixel_size_um or _optics_pixel_size(pipeline.optics)
    src = pixel_source if pixel_size_um else "the preset's default (the image did not record one)"
    return Estimate("pixel_size_um", float(px), "um", None, src, 1e-3, 100.0)


def _noise_estimates(stats: ImageStatistics) -> list[Estimate]:
    k = stats.photons_per_count
    return [
        Estimate("background", stats.background, "grey", stats.noise_sigma / math.sqrt(stats.image_shape[0]
                 * stats.image_shape[1] * stats.n_frames), "median grey value", 0.0, None),
        Estimate("noise_sigma", stats.noise_sigma, "grey", None,
                 "neighbouring-pixel differences over background pixels", 0.0, None, applied=False),
        Estimate("photons_per_grey", float(k) if k else 1.0, "photons/grey", None,
                 "background / noise^2 (shot-noise limited camera without offset)" if k
                 else "no noise measured: grey values taken as photons", 1e-3, 1e4),
    ]


def _polarity(stats: ImageStatistics) -> Estimate:
    return Estimate("polarity", stats.polarity, "", None,
                    f"asymmetry of the intensity distribution (score {stats.polarity_score:+.2f})")


# ---------------------------------------------------------------------------- measurement by family
def calibrate(
    pipeline,
    image: Any,
    pixel_size_um: float | None = None,
    *,
    stats: ImageStatistics | None = None,
    overrides: dict[str, Any] | None = None,
    pixel_source: str = "given",
    seed: int = 0,
) -> Calibration:
    """Measure on ``image`` what the family of ``pipeline`` can learn from it (see the module docstring).

    Parameters
    ----------
    pipeline : Pipeline
        The preset's simulation (decides the family; brightfield profiles are simulated with its optics).
    image : array [H, W] or [T, H, W]
    pixel_size_um : float, optional
        Sample-plane pixel size of the image (None: the pipeline's).
    stats : ImageStatistics, optional
        Precomputed :func:`~napari_deeptrack.analysis.calibrate.estimate_statistics`.
    overrides : dict, optional
        Estimates set by the user, ``{name: value}``.
    pixel_source : str
        Where ``pixel_size_um`` came from (shown as its source).

    Returns
    -------
    Calibration
    """
    if pixel_size_um is not None and not float(pixel_size_um) > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    frames = _as_frames(image)
    stats = stats or estimate_statistics(frames, pixel_size_um)
    family = preset_family(pipeline)
    px_est = _pixel_estimate(pipeline, pixel_size_um, pixel_source)
    # measurements that simulate (bright-field profiles, hologram fringes) use the image's pixel size
    pipeline = pipeline.with_(
        optics=_replace(pipeline.optics, pixel_size_um=px_est.value, camera_pixel_um=None, magnification=None)
    )
    from . import match_families as fam

    fn = {"point-emitters": fam._points, "brightfield": fam._brightfield, "cells": fam._cells,
          "hologram": fam._hologram}  # fmt: skip
    if family == "brightfield":
        known = pixel_size_um is not None
        estimates, notes = fam._brightfield(pipeline, frames, stats, seed, pixel_known=known)
    else:
        estimates, notes = fn[family](pipeline, frames, stats, seed)
    fit = [e for e in estimates if e.name == "pixel_size_um_fit"]
    if fit:  # the image recorded none: the bright-field profile fit chose one
        estimates.remove(fit[0])
        px_est = Estimate("pixel_size_um", fit[0].value, "um", None, fit[0].source, 1e-3, 100.0)
    est = [px_est, *estimates]
    cal = Calibration(family, est, float(est[0].value), tuple(frames.shape[1:]), notes, stats)
    return cal.with_overrides(overrides) if overrides else cal


# ---------------------------------------------------------------------------- writing into the pipeline
def apply_calibration(pipeline, calibration: Calibration, *, match_shape: bool = False):
    """A copy of ``pipeline`` with the applied estimates of ``calibration`` written in (clamped).

    Common to every family: the optics pixel size; ``Background.level`` (photons), ``Camera.gain`` /
    ``offset``, ``ReadNoise.sigma`` from the noise estimates; ``image_shape`` when ``match_shape``.
    Then, per family: NA, polarity, spot counts and photons (point emitters); sphere radius, defocus
    range, illumination photons and particle count (bright field); object radius distribution, count,
    photons, texture and background gradient (cells).
    """
    from ..sim import Background, Camera, Poisson, ReadNoise

    cal = calibration
    new = copy.deepcopy(pipeline)
    px = float(cal.get("pixel_size_um"))
    new.optics = _replace(new.optics, pixel_size_um=px, camera_pixel_um=None, magnification=None)
    if match_shape:
        new.image_shape = tuple(cal.image_shape)
    family = cal.family
    k = float(cal.get("photons_per_grey", 1.0))
    bg = float(cal.get("background", 0.0))
    transforms = list(new.transforms)
    i_poisson = next((i for i, t in enumerate(transforms) if isinstance(t, Poisson)), None)
    if family in ("point-emitters", "cells") and not _has(transforms, Camera) and i_poisson is not None and \
            not 0.8 <= k <= 1.25:
        transforms.insert(i_poisson + 1, Camera(gain=1.0 / k, offset=0.0))
        new.transforms = transforms
    has_gain = _has(new.transforms, Camera)
    k = k if has_gain else 1.0
    out = []
    for tr in new.transforms:
        if isinstance(tr, Background):
            tr = _replace(tr, level=float(max(bg, 0.0) * k))
            names_est = [e.name for e in cal.estimates]
            if "background_gradient" in names_est and cal["background_gradient"].applied:
                g = float(np.clip(cal.get("background_gradient"), 0.0, 0.9))
                tr = _replace(tr, gradient=_uniform(0.0, min(2 * g, 0.9)) if g > 0 else 0.0)
        elif isinstance(tr, Camera):
            tr = _replace(tr, gain=float(1.0 / k), offset=0.0)
        elif isinstance(tr, ReadNoise):
            noise = float(cal.get("noise_sigma", 0.0))
            excess = 0.0 if has_gain else max(noise**2 - max(bg, 0.0), 0.0) ** 0.5
            tr = _replace(tr, sigma=float(excess))
        out.append(tr)
    new.transforms = out
    from . import match_families as fam

    apply = {
        "point-emitters": fam._apply_points,
        "brightfield": fam._apply_brightfield,
        "cells": fam._apply_cells,
    }
    if family in apply:
        new = apply[family](new, cal, k)
    return new


def _uniform(lo: float, hi: float):
    from ..sim import Uniform

    return Uniform(float(min(lo, hi)), float(max(lo, hi)))


def _count(per_image: float):
    from ..sim import IntUniform

    return IntUniform(int(math.floor(0.5 * per_image)), max(1, int(math.ceil(1.5 * per_image))))


def _area_ratio(new, cal) -> float:
    h, w = cal.image_shape
    return (new.image_shape[0] * new.image_shape[1]) / float(max(h * w, 1))


def _has(transforms, cls: type) -> bool:
    """Whether a pipeline's transforms include one of class ``cls`` (or a subclass)."""
    return any(isinstance(t, cls) for t in transforms)
