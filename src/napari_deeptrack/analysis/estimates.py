"""What a real image tells about a simulation: the :class:`Estimate` record, the :class:`Calibration`
that holds a family's estimates, and the measurements shared by the preset families.

:mod:`napari_deeptrack.analysis.match` (the calibration entry points) and
:mod:`napari_deeptrack.analysis.match_families` (one measurement and writer per family) both build on
this module; it imports neither.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .calibrate import ImageStatistics, _optics_pixel_size

__all__ = ["Calibration", "Estimate", "find_particles", "radial_profiles"]


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


def find_particles(
    frames: np.ndarray,
    signal: np.ndarray,
    noise: float,
    sigma_px: float = 1.5,
    snr: float = 5.0,
    min_distance_px: float | None = None,
    max_n: int = 400,
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
        Estimate(
            "background",
            stats.background,
            "grey",
            stats.noise_sigma / math.sqrt(stats.image_shape[0] * stats.image_shape[1] * stats.n_frames),
            "median grey value",
            0.0,
            None,
        ),
        Estimate(
            "noise_sigma",
            stats.noise_sigma,
            "grey",
            None,
            "neighbouring-pixel differences over background pixels",
            0.0,
            None,
            applied=False,
        ),
        Estimate(
            "photons_per_grey",
            float(k) if k else 1.0,
            "photons/grey",
            None,
            "background / noise^2 (shot-noise limited camera without offset)"
            if k
            else "no noise measured: grey values taken as photons",
            1e-3,
            1e4,
        ),
    ]


def _polarity(stats: ImageStatistics) -> Estimate:
    return Estimate(
        "polarity",
        stats.polarity,
        "",
        None,
        f"asymmetry of the intensity distribution (score {stats.polarity_score:+.2f})",
    )


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
