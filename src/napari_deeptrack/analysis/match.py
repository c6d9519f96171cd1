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
from typing import Any

import numpy as np

from .calibrate import ImageStatistics, _as_frames, _replace, estimate_statistics
from .estimates import (
    Calibration,
    Estimate,
    _has,
    _pixel_estimate,
    _uniform,
    find_particles,
    radial_profiles,
)

__all__ = [
    "FAMILIES",
    "Calibration",
    "Estimate",
    "apply_calibration",
    "calibrate",
    "find_particles",
    "match_pipeline",
    "preset_family",
    "radial_profiles",
]

FAMILIES = ("point-emitters", "brightfield", "cells", "hologram")


# ---------------------------------------------------------------------------- family
def preset_family(pipeline) -> str:
    """``point-emitters``, ``brightfield``, ``cells`` or ``hologram`` for a simulation pipeline."""
    from ..sim import CellBody, Ellipse, GeneratorOptics, Holography

    optics = pipeline.optics
    if bool(getattr(optics, "is_coherent", False)):
        return "hologram" if isinstance(optics, Holography) else "brightfield"
    extended = any(isinstance(p.scatterer, CellBody | Ellipse) for p in pipeline.particles)
    return "cells" if extended or isinstance(optics, GeneratorOptics) else "point-emitters"


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
    if (
        family in ("point-emitters", "cells")
        and not _has(transforms, Camera)
        and i_poisson is not None
        and not 0.8 <= k <= 1.25
    ):
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


def match_pipeline(
    pipeline,
    image: Any,
    pixel_size_um: float | None = None,
    *,
    stats: ImageStatistics | None = None,
    match_shape: bool = False,
    overrides: dict[str, Any] | None = None,
):
    """A copy of ``pipeline`` set to the values measured on ``image``, as its preset family dictates.

    Shorthand for :func:`calibrate` followed by :func:`apply_calibration` (see there for what each
    family measures and sets). For point emitters: the optics pixel size and the NA that gives the
    measured spot width (sigma = 0.21 wavelength / NA, clamped to [0.2, 0.98 n]), the background in
    photons, the camera gain (a ``Camera`` is inserted after ``Poisson`` when grey values are clearly not
    photons), read noise, particle count around the measured spots per frame and photons around the
    measured spot integral, and dark (absorbing) spots when the real particles are darker than the
    background.

    Parameters
    ----------
    pipeline : Pipeline
        The simulation to calibrate (not modified).
    image : array [H, W] or [T, H, W]
        Real data.
    pixel_size_um : float, optional
        Sample-plane pixel size of the real image (from its metadata or the user).
    stats : ImageStatistics, optional
        Precomputed statistics (else measured here).
    match_shape : bool
        Also set ``image_shape`` to the image's.
    overrides : dict, optional
        Estimates set by the user (``{"background": 120}``).

    Returns
    -------
    Pipeline
    """
    cal = calibrate(pipeline, image, pixel_size_um, stats=stats, overrides=overrides)
    return apply_calibration(pipeline, cal, match_shape=match_shape)
