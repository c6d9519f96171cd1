"""Per-family calibration (see :mod:`napari_deeptrack.analysis.match`): what each kind of simulation
measures on a real image, and how it writes the estimates into a pipeline.

- point emitters: :func:`_points` / :func:`_apply_points`;
- bright field: :func:`_brightfield` (radial profiles matched with :func:`_fit_rings`) /
  :func:`_apply_brightfield`;
- cells / nuclei: :func:`_cells` / :func:`_apply_cells`;
- holograms: :func:`_hologram` (informational estimates only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage

from .calibrate import SIGMA_PER_LAMBDA_OVER_NA, _fields, _optics_pixel_size, _replace
from .estimates import (
    Estimate,
    _area_ratio,
    _count,
    _gradient,
    _has,
    _noise_estimates,
    _polarity,
    _se_median,
    _uniform,
    find_particles,
    radial_profiles,
)

__all__ = [
    "BRIGHTFIELD_NA_GRID",
    "BRIGHTFIELD_PIXEL_GRID",
    "FAINT_FRACTION",
    "local_contrast",
]


def _points(pipeline, frames, stats, seed):
    est = [_polarity(stats), *_noise_estimates(stats)]
    notes = []
    if stats.spot_sigma_px:
        est.append(Estimate("spot_sigma_px", stats.spot_sigma_px, "px", None,
                            "median Gaussian width of the brightest isolated spots", 0.3, 6.0))
        if stats.spot_sigma_px > 4.0:
            notes.append(f"spots are {stats.spot_sigma_px:.1f} px wide: these look like extended objects "
                         "(nuclei, cells), not point emitters; use a cells preset (cells-count, "
                         "nuclei-segment) or check the pixel size")
    est.append(Estimate("spots_per_frame", stats.spots_per_frame, "", math.sqrt(max(stats.spots_per_frame, 1)
                        / stats.n_frames), "local maxima above 5 sigma of the noise", 0.0, 1e5))
    if stats.spot_integral:
        est.append(Estimate("spot_integral", stats.spot_integral, "grey", None,
                            "median integrated intensity of the fitted spots", 0.0, None))
    if stats.polarity == "dark":
        notes.append("particles are darker than the background: the simulation gets dark (absorbing) "
                     "spots; for bright-field images of spheres the 'brightfield-particles' preset "
                     "simulates them physically (Mie scattering, defocus rings)")
    return est, notes


def _fit_rings(pipeline, real_prof: np.ndarray, radius_px: int, seed: int, apparent_radius_um: float,
               n_sim: int = 256):
    """Sphere radius and defocus whose simulated radial profiles match the real ones (nearest neighbours).

    Draws ``n_sim`` single spheres from a wide prior (radius 0.2-1.5x the apparent radius, defocus
    within +-2x the preset's range or +-4 apparent radii), simulates them noise-free with the preset's
    own optics, and keeps, for every real profile (contrast relative to the local background), the
    simulated one closest to it.

    Returns radius_um [K], z_um [K] of the nearest simulated spheres and the rms profile residual.
    """
    from ..sim import Particles, Uniform
    from ..sim.params import support

    pop = pipeline.particles[0]
    scat = pop.scatterer
    z_lo, z_hi = support(pop.z_um)
    z_span = max(abs(z_lo) * 2.0, abs(z_hi) * 2.0, 4.0 * apparent_radius_um, 1.0)
    size = 2 * radius_px + 1
    c = (size - 1) / 2.0
    scat = dataclasses.replace(scat, radius_um=Uniform(0.2 * apparent_radius_um, 1.5 * apparent_radius_um))
    probe = pipeline.with_(
        image_shape=(size, size),
        particles=[Particles(scat, count=1, y_px=c, x_px=c, z_um=Uniform(-z_span, z_span))],
        transforms=[],
        targets={},
    )
    batch = probe(n_sim, seed=seed)
    img = batch.image[:, 0].numpy().astype(np.float64)
    bg = float(getattr(pipeline.optics, "illumination_intensity", 1.0) or 1.0)
    centres = np.c_[np.arange(n_sim), np.full(n_sim, int(c)), np.full(n_sim, int(c))]
    sim_prof = radial_profiles(img, centres, radius_px) / bg - 1.0
    d = ((real_prof[:, None, :] - sim_prof[None]) ** 2).mean(-1)
    best = d.argmin(1)
    radius = batch.scene.radius_um[:, 0].numpy()[best]
    z = batch.scene.position[:, 0, 2].numpy()[best]
    return radius, z, float(np.sqrt(d.min(1).mean()))


#: a particle whose centre contrast is below this fraction of the strongest particles' is "faint" (out of
#: focus). Chosen on ``bulk_water_dev`` frames 0-9: the in-focus count it gives there (454 per frame) is the
#: count of trackpy's walkthrough settings (457); see docs/case_studies.md
FAINT_FRACTION = 1.0 / 3.0
#: at most this many particles are measured per frame
MAX_PARTICLES_PER_FRAME = 20000
#: effective numerical apertures tried when matching bright-field ring profiles
BRIGHTFIELD_NA_GRID = (0.2, 0.3, 0.45, 0.8)
#: when the image records no pixel size: fractions of the preset's pixel size tried as well
BRIGHTFIELD_PIXEL_GRID = (1.0, 0.5, 0.3, 0.17)


def local_contrast(frames: np.ndarray, scale_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``frames / B - 1`` with ``B`` the background smoothed over ``scale_px`` (particles excluded by a
    median filter first): contrast relative to the local illumination, and ``B``."""
    k = int(2 * scale_px) | 1
    med = ndimage.median_filter(frames, size=(1, k, k), mode="nearest")
    b = ndimage.gaussian_filter(med, (0, scale_px / 2, scale_px / 2), mode="nearest")
    b = np.maximum(b, 1e-6 * max(float(np.abs(b).max()), 1e-12))
    return frames / b - 1.0, b


def _brightfield(pipeline, frames, stats, seed, pixel_known=True):
    est = [*_noise_estimates(stats)]
    notes: list[str] = []
    con, _ = local_contrast(frames, 16.0)
    noise = stats.noise_sigma / max(stats.background, 1e-12)
    # particles: maxima of the band-passed |contrast| (a ring's centre is its strongest extremum)
    band = np.abs(ndimage.gaussian_filter(con, (0, 1.0, 1.0)))
    # every maximum (no cap per image: a cap of a few thousand undercounted dense videos)
    peaks = find_particles(frames, band, noise, sigma_px=1.0, snr=8.0, min_distance_px=5.0,
                           max_n=MAX_PARTICLES_PER_FRAME * len(frames))  # fmt: skip
    centre = con[tuple(peaks.T)] if len(peaks) else np.zeros(0)
    pol = "dark" if len(centre) and np.median(centre) < 0 else "bright"
    est.insert(0, Estimate("polarity", pol, "", None, "sign of the contrast at the particle centres"))
    if len(peaks) == 0:
        est.append(Estimate("particles_per_frame", 0.0, "", 1.0 / stats.n_frames,
                            "maxima of |contrast| above 8 sigma of the noise, 5 px apart", 0.0, 1e5))
        notes.append("no particles found: particle size and defocus keep the preset's values")
        return est, notes
    # in focus vs faint: peaks are sorted strongest first; a particle is tracked when its centre contrast
    # is at least FAINT_FRACTION of the strongest particles' (out-of-focus spheres are faint blurred blobs)
    strongest = float(np.median(np.abs(centre[:64])))
    c_min = FAINT_FRACTION * strongest
    strong = np.abs(centre) >= c_min
    n_strong, n_faint = int(strong.sum()), int((~strong).sum())
    cut = f"|contrast| >= {FAINT_FRACTION:.2f} x {strongest:.3f} (median of the 64 strongest)"
    est.append(Estimate("particles_per_frame", n_strong / stats.n_frames, "",
                        math.sqrt(max(n_strong, 1)) / stats.n_frames,
                        f"maxima of |contrast| above 8 sigma of the noise, 5 px apart, {cut}", 0.0, 1e5))
    est.append(Estimate("faint_per_frame", n_faint / stats.n_frames, "", math.sqrt(max(n_faint, 1))
                        / stats.n_frames, f"the other maxima (faint, out of focus), {cut}",
                        0.0, 1e5))  # fmt: skip
    est.append(Estimate("faint_contrast", c_min, "contrast", None,
                        f"in-focus cut: {FAINT_FRACTION:.2f} x the median |contrast| of the 64 strongest "
                        "particles", 0.0, 10.0, applied=False))
    est.append(Estimate("centre_contrast", float(np.median(centre)), "", _se_median(centre),
                        "I / local background - 1 at the particle centres", -1.0, 10.0, applied=False))
    rmax = 12
    prof = radial_profiles(con, peaks, rmax)
    prof = prof[np.isfinite(prof).all(1)][:64]
    if len(prof) == 0:
        return est, notes
    med = np.median(prof, 0)
    half = np.nonzero(np.abs(med) < 0.5 * abs(med[0]))[0]
    r_app = float(half[0]) if len(half) else float(rmax)
    est.append(Estimate("apparent_radius_px", r_app, "px", 0.5,
                        "half-contrast radius of the median radial profile", 0.5, 100.0, applied=False))
    est.append(Estimate("ring_profile", ",".join(f"{v:.3f}" for v in med), "contrast", None,
                        f"median radial profile of {len(prof)} particles, 1-px rings", applied=False))
    optics = pipeline.optics
    n_med = float(getattr(optics, "refractive_index_medium", 1.33))
    best = None
    px0 = float(_optics_pixel_size(optics))
    for f in BRIGHTFIELD_PIXEL_GRID if not pixel_known else (1.0,):
        for na in [x for x in BRIGHTFIELD_NA_GRID if x < 0.98 * n_med]:
            p = pipeline.with_(optics=_replace(optics, NA=na, pixel_size_um=f * px0))
            radius, z, rms = _fit_rings(p, prof, rmax, seed, max(r_app, 1.0) * f * px0, n_sim=160)
            if best is None or rms < best[3]:
                best = (na, radius, z, rms, f * px0)
    na, radius, z, rms, px = best
    if not pixel_known:
        est.append(Estimate("pixel_size_um_fit", px, "um", None, "pixel size whose simulated profiles fit "
                            f"best, of {[round(f * px0, 4) for f in BRIGHTFIELD_PIXEL_GRID]}", 1e-3, 100.0))
    lo_r, hi_r = np.percentile(radius, [10, 90])
    lo_z, hi_z = np.percentile(z, [10, 90])
    src = (f"simulated radial profiles nearest to {len(prof)} real ones, NA {BRIGHTFIELD_NA_GRID}, "
           f"10-90 %; rms residual {rms:.3f} for a centre contrast {abs(med[0]):.3f}")
    est.append(Estimate("NA", float(na), "", None, "effective NA: " + src, 0.1, 0.98 * n_med))
    est.append(Estimate("sphere_radius_um", float(np.median(radius)), "um", float(hi_r - lo_r) / 2,
                        src, 0.05, 10.0))
    est.append(Estimate("z_min_um", float(lo_z), "um", None, src, -50.0, 50.0))
    est.append(Estimate("z_max_um", float(hi_z), "um", None, src, -50.0, 50.0))
    est.append(Estimate("profile_residual", rms, "contrast", None,
                        "rms difference of real and nearest simulated profiles", 0.0, None, applied=False))
    quiet = np.abs(con) < 3 * noise
    est.append(Estimate("background_gradient", _gradient(frames, stats.background, quiet), "", None,
                        "plane fitted to the smoothed background pixels", 0.0, 1.0, applied=False))
    return est, notes


def _cells(pipeline, frames, stats, seed):
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    bg = stats.background
    est = [*_noise_estimates(stats)]
    sm = ndimage.gaussian_filter(frames, (0, 1.0, 1.0))
    thr = float(threshold_otsu(sm))
    radii, excess, cv, n_obj = [], [], [], 0
    for f, s in zip(frames, sm):  # one labelling per frame (at most 8 frames)
        lab = label(s > thr)
        for r in regionprops(lab, intensity_image=f):
            if r.area < 20:
                continue
            n_obj += 1
            radii.append(math.sqrt(r.area / math.pi))
            vals = f[tuple(r.coords.T)]
            excess.append(float(vals.mean() - bg))
            cv.append(float(vals.std() / max(vals.mean() - bg, 1e-12)))
    notes: list[str] = []
    if not radii:
        notes.append("no objects above the Otsu threshold: object size and density keep the preset's values")
        return est, notes
    radii = np.asarray(radii)
    med_r = float(np.median(radii))
    p5, p95 = np.percentile(radii, [5, 95])
    areas = np.pi * radii**2
    touching = float(np.mean(areas > 1.8 * np.median(areas)))
    est += [
        Estimate("object_radius_px", med_r, "px", _se_median(radii),
                 f"median equivalent radius of {n_obj} Otsu objects", 2.0, 200.0),
        Estimate("object_radius_p5_px", float(p5), "px", None, "5th percentile", 1.0, 200.0),
        Estimate("object_radius_p95_px", float(p95), "px", None, "95th percentile", 1.0, 400.0),
        Estimate("objects_per_frame", n_obj / stats.n_frames, "", math.sqrt(n_obj) / stats.n_frames,
                 "Otsu objects of 20 px or more", 0.0, 1e5),
        Estimate("object_excess", float(np.median(excess)), "grey", _se_median(np.asarray(excess)),
                 "median mean grey value above background inside the objects", 0.0, None),
        Estimate("object_excess_p90", float(np.percentile(excess, 90)), "grey", None, "90th percentile",
                 0.0, None),
        Estimate("texture", float(np.median(cv)), "", _se_median(np.asarray(cv)),
                 "median coefficient of variation inside the objects", 0.0, 0.8),
        Estimate("touching_fraction", touching, "", None,
                 "objects larger than 1.8x the median area (merged neighbours)", 0.0, 1.0, applied=False),
        Estimate("background_gradient", _gradient(frames, bg, sm < thr), "", None,
                 "plane fitted to the smoothed background (below the Otsu threshold)", 0.0, 0.9),
    ]
    return est, notes


def _hologram(pipeline, frames, stats, seed):
    bg = stats.background
    est = [*_noise_estimates(stats)]
    notes: list[str] = []
    est.append(Estimate("normalisation", bg, "grey", None,
                        "median grey value: divide the image by it so the background is 1", 1e-6, None,
                        applied=False))
    # the particle: the strongest smoothed deviation from the background
    f = frames[0] / max(bg, 1e-12) - 1.0
    sm = ndimage.gaussian_filter(np.abs(f), 3.0)
    cy, cx = np.unravel_index(np.argmax(sm), sm.shape)
    rmax = int(min(cy, cx, f.shape[0] - 1 - cy, f.shape[1] - 1 - cx))
    if rmax < 12:
        notes.append("the hologram's centre is too close to the border to measure its fringes")
        return est, notes
    prof = radial_profiles(f[None], np.array([[0, cy, cx]]), rmax)[0]
    prof = ndimage.gaussian_filter1d(prof, 1.0)
    ext = [i for i in range(2, len(prof) - 1) if (prof[i] - prof[i - 1]) * (prof[i + 1] - prof[i]) < 0]
    px = _optics_pixel_size(pipeline.optics) or 1.0
    lam = float(getattr(pipeline.optics, "wavelength_um", 0.532))
    n_med = float(getattr(pipeline.optics, "refractive_index_medium", 1.33))
    if len(ext) >= 4:
        # consecutive extrema differ by half a wavelength in path: sqrt(z^2 + r^2) - z = (m + phi) lambda / 2n
        r_um = np.asarray(ext, float) * px
        m = np.arange(len(r_um))
        zs = np.linspace(0.5, 400.0, 4000)
        path = np.sqrt(zs[:, None] ** 2 + r_um[None] ** 2) - zs[:, None]
        step = lam / (2 * n_med)
        resid = []
        for p in path:  # 4000 tiny line fits: fringe index vs path
            a = np.c_[m, np.ones_like(m)]
            coef, *_ = np.linalg.lstsq(a, p, rcond=None)
            resid.append(((a @ coef - p) ** 2).sum() + (coef[0] - step) ** 2 * len(m))
        z = float(zs[int(np.argmin(resid))])
        est.append(Estimate("fringe_spacing_px", float(np.median(np.diff(ext))), "px", None,
                            f"{len(ext)} extrema of the radial profile", 0.5, None, applied=False))
        est.append(Estimate("z_um", z, "um", None,
                            "fringe radii fitted to sqrt(z^2 + r^2) - z = (m + phi) lambda / 2n", 0.1, 400.0,
                            applied=False))
    else:
        notes.append("fewer than 4 fringes found: z not measured")
    return est, notes


def _apply_points(new, cal, k):
    from ..sim import Background, InvertContrast

    optics = new.optics
    sigma = cal.get("spot_sigma_px")
    if sigma and sigma <= 4.0 and {"NA", "wavelength_um"} <= _fields(optics):
        n_med = float(getattr(optics, "refractive_index_medium", 1.52) or 1.52)
        na = SIGMA_PER_LAMBDA_OVER_NA * float(optics.wavelength_um) / (sigma * cal.pixel_size_um)
        # a PSF several pixels wide needs large patches: the floor keeps the renderer's memory bounded
        new.optics = _replace(optics, NA=float(np.clip(na, 0.2, 0.98 * n_med)))
    dark = cal.get("polarity") == "dark"
    transforms = list(new.transforms)
    if dark and not _has(transforms, InvertContrast):
        i = next((j for j, t in enumerate(transforms) if isinstance(t, Background)), 0)
        new.transforms = [*transforms[:i], InvertContrast(), *transforms[i:]]
    elif not dark and _has(transforms, InvertContrast):
        new.transforms = [t for t in transforms if not isinstance(t, InvertContrast)]
    per_pop = cal.get("spots_per_frame", 0.0) * _area_ratio(new, cal) / max(len(new.particles), 1)
    integral = cal.get("spot_integral")
    pops = []
    for pop in new.particles:
        changes: dict[str, Any] = {}
        if not isinstance(pop.count, int):  # a fixed count (one particle per crop) is the task's, not data's
            changes["count"] = _count(per_pop)
        if integral:
            mid = integral * k
            if dark:  # a particle cannot remove more light than there is
                mid = min(mid, 0.9 * 2 * math.pi * (sigma or 1.0) ** 2 * max(cal.get("background"), 0) * k)
            changes["intensity"] = _uniform(0.5 * mid, 1.5 * mid)
        pops.append(dataclasses.replace(pop, **changes))
    new.particles = pops
    return new


def _apply_brightfield(new, cal, k):
    from ..sim import Camera, IlluminationPhotons, LogUniform, Poisson

    na = cal.get("NA")
    if na and "NA" in _fields(new.optics):
        new.optics = _replace(new.optics, NA=float(na))
    # illumination: background grey = gain x photons; with the camera gain 1/k, photons = background x k
    photons = max(float(cal.get("background")) * float(cal.get("photons_per_grey", 1.0)), 1.0)
    out = []
    for tr in new.transforms:
        if isinstance(tr, IlluminationPhotons):
            tr = _replace(tr, photons_per_px=LogUniform(0.7 * photons, 1.4 * photons))
        out.append(tr)
    i_poisson = next((i for i, t in enumerate(out) if isinstance(t, Poisson)), None)
    if not _has(out, Camera) and i_poisson is not None:
        out.insert(i_poisson + 1, Camera(gain=1.0 / float(cal.get("photons_per_grey", 1.0)), offset=0.0))
    new.transforms = out
    # the first population is the one measured (and tracked); others (out-of-focus distractors) stay
    pop = new.particles[0]
    changes: dict[str, Any] = {}
    if not isinstance(pop.count, int):  # a fixed count (one particle per crop) is the task's
        # every measured particle, faint ones included: simulated as targets (faint out-of-focus spheres as
        # non-target distractors made a 100-step detector worse on bulk water, see docs/case_studies.md)
        n_all = cal.get("particles_per_frame", 0.0) + cal.get("faint_per_frame", 0.0)
        changes["count"] = _count(n_all * _area_ratio(new, cal))
    r = cal.get("sphere_radius_um")
    scat = pop.scatterer
    if r and "radius_um" in _fields(scat):
        u = cal["sphere_radius_um"].uncertainty or 0.2 * r
        u = min(max(u, 0.1 * r), 0.3 * r)
        changes["scatterer"] = dataclasses.replace(scat, radius_um=_uniform(max(r - u, 0.05), r + u))
    zlo, zhi = cal.get("z_min_um"), cal.get("z_max_um")
    if zlo is not None and zhi is not None:
        pad = 0.15 * max(zhi - zlo, 0.5)
        zlo, zhi = zlo - pad, zhi + pad
        changes["z_um"] = _uniform(zlo, zhi)
        targets = {}
        for name, t in new.targets.items():
            if "z_range_um" in _fields(t) and t.z_range_um is not None:
                t = dataclasses.replace(t, z_range_um=[float(zlo) - 0.01, float(zhi) + 0.01])
            targets[name] = t
        new.targets = targets
    others = []
    for other in new.particles[1:]:  # out-of-focus distractors: same spheres, 1.5-4 depths of field away
        o: dict[str, Any] = {}
        if "scatterer" in changes:
            o["scatterer"] = changes["scatterer"]
        if zlo is not None:
            na_eff = float(getattr(new.optics, "NA", 0.5))
            n_med = float(getattr(new.optics, "refractive_index_medium", 1.33))
            dof = float(getattr(new.optics, "wavelength_um", 0.55)) * n_med / na_eff**2
            o["z_um"] = _uniform(zlo - 4.0 * dof, zlo - 1.5 * dof)
            if dof > 5.0:  # low NA: "out of focus" would be tens of um away, fringes over the whole frame
                o["count"] = 0
        others.append(dataclasses.replace(other, **o))
    new.particles = [dataclasses.replace(pop, **changes), *others]
    return new


def _apply_cells(new, cal, k):
    from ..sim import IntUniform, LogUniform, Normal

    med, p5, p95 = (cal.get(n) for n in ("object_radius_px", "object_radius_p5_px", "object_radius_p95_px"))
    if med is None:
        return new
    lo, hi = max(2.0, 0.7 * p5), max(1.3 * p95, med + 1.0)
    std = max((p95 - p5) / 3.3, 0.05 * med)
    per_frame = cal.get("objects_per_frame", 0.0) * _area_ratio(new, cal)
    area_px = math.pi * med**2
    ex, ex90 = cal.get("object_excess"), cal.get("object_excess_p90")
    pops = []
    for pop in new.particles:
        scat = pop.scatterer
        changes: dict[str, Any] = {
            "count": IntUniform(int(0.3 * per_frame), max(1, int(math.ceil(2.0 * per_frame))))
        }
        if "radius_px" in _fields(scat) and scat.radius_px is not None:
            scat = dataclasses.replace(scat, radius_px=Normal(med, std, low=lo, high=hi),
                                       pixel_size_um=cal.pixel_size_um)
        elif "radius_um" in _fields(scat):
            px = cal.pixel_size_um
            scat = dataclasses.replace(scat, radius_um=Normal(med * px, std * px, low=lo * px, high=hi * px))
        if "texture" in _fields(scat):
            scat = dataclasses.replace(scat, texture=float(np.clip(cal.get("texture"), 0.0, 0.8)))
        changes["scatterer"] = scat
        if ex and ex > 0:
            mid = ex * k * area_px
            top = max(ex90 or ex, ex) * k * area_px
            changes["intensity"] = LogUniform(0.5 * mid, max(1.5 * top, 0.5 * mid * 1.01))
        pops.append(dataclasses.replace(pop, **changes))
    new.particles = pops
    return new
