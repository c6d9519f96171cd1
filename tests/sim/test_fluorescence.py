"""Fluorescence optics: PSF shape, flux, defocus, aberrations, sub-pixel truth, validation, round trip."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from napari_deeptrack.sim import (
    Astigmatism,
    Fluorescence,
    Particles,
    Pipeline,
    PointParticle,
    Pupil,
    Scene,
    Sphere,
    Uniform,
    Zernike,
    defocus_phase,
    frequency_grid,
    from_json,
    noll_to_nm,
    to_json,
    zernike_polynomial,
)


def moments(img: torch.Tensor) -> tuple[float, float, float, float]:
    """Centroid (y, x) and variances (y, x) of a 2D image, in pixels."""
    img = img.double()
    h, w = img.shape
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    s = img.sum()
    cy, cx = float((img * y).sum() / s), float((img * x).sum() / s)
    vy = float((img * (y - cy) ** 2).sum() / s)
    vx = float((img * (x - cx) ** 2).sum() / s)
    return cy, cx, vy, vx


def fwhm(profile: torch.Tensor, centre: int) -> float:
    """Full width at half maximum of a 1D peak (linear interpolation of the crossings), in samples."""
    p = profile.double()
    half = p[centre] / 2
    i = centre
    while p[i] > half:
        i += 1
    right = i - 1 + float((p[i - 1] - half) / (p[i - 1] - p[i]))
    i = centre
    while p[i] > half:
        i -= 1
    left = i + float((half - p[i]) / (p[i + 1] - p[i]))
    return right - left


def render_one(optics, y, x, z=0.0, shape=(64, 64), intensity=1000.0, scatterer=None):
    scene = Scene.empty(1, 1, shape)
    scene.position[0, 0] = torch.tensor([y, x, z])
    scene.present[:] = True
    scene.intensity[:] = intensity
    scatterer = scatterer or PointParticle()
    scatterer.sample_into(scene, slice(0, 1), torch.Generator().manual_seed(0))
    return optics.render(scene, [scatterer], torch.Generator().manual_seed(1))[0, 0]


# ---------------------------------------------------------------------------- PSF shape
def test_in_focus_fwhm_matches_airy():
    wl, na, px = 0.5, 1.0, 0.02
    psf = Fluorescence(NA=na, wavelength_um=wl, pixel_size_um=px, patch_size_px=128).psf(0.0)[0]
    c = psf.shape[0] // 2
    expected = 0.51 * wl / na
    for profile in (psf[c], psf[:, c]):
        assert fwhm(profile, c) * px == pytest.approx(expected, rel=0.05)


def test_in_focus_psf_matches_airy_pattern():
    """Independent check: the scalar in-focus PSF is the Airy pattern (2 J1(v) / v)^2."""
    wl, na, px = 0.6, 0.9, 0.05
    psf = Fluorescence(NA=na, wavelength_um=wl, pixel_size_um=px, patch_size_px=97).psf(0.0)[0].double()
    c = psf.shape[0] // 2
    r = torch.hypot(*torch.meshgrid(torch.arange(97.0) - c, torch.arange(97.0) - c, indexing="ij")) * px
    v = (2 * math.pi * na / wl * r).double()
    airy = torch.where(v > 0, (2 * torch.special.bessel_j1(v) / v.clamp(min=1e-9)) ** 2, torch.ones_like(v))
    near = r < 2 * wl / na
    ratio = psf[near] / psf[c, c]
    assert torch.max(torch.abs(ratio - airy[near])) < 0.02


def test_flux_equals_photon_count():
    optics = Fluorescence(NA=0.8, wavelength_um=0.68, camera_pixel_um=1.0, magnification=10)
    img = render_one(optics, 31.3, 32.6, 0.0, intensity=1000.0)
    assert float(img.sum()) == pytest.approx(1000.0, rel=0.01)
    img = render_one(optics, 31.3, 32.6, 1.0, intensity=1000.0)  # defocused: still 1000 photons
    assert float(img.sum()) == pytest.approx(1000.0, rel=0.01)
    # coarse pixels (undersampled camera, oversampled rendering): flux still conserved
    coarse = Fluorescence(NA=1.3, wavelength_um=0.6, pixel_size_um=0.3)  # no aliasing warning: oversampled
    assert coarse.oversample_factor == 3
    assert float(render_one(coarse, 20.4, 19.8, 0.2, (40, 40)).sum()) == pytest.approx(1000.0, rel=0.01)


def test_particle_outside_field_loses_light_and_absent_slots_are_dark():
    optics = Fluorescence(NA=0.8, wavelength_um=0.6, pixel_size_um=0.1)
    edge = render_one(optics, 0.0, 32.0)  # half of the PSF is outside the image
    assert 350 < float(edge.sum()) < 650
    scene = Scene.empty(2, 3, (48, 48))
    scene.position[:, :, :2] = 24.0
    scene.intensity[:] = 500.0
    scene.present[0, 0] = True  # image 0: one particle; image 1: none
    img = optics.render(scene, [PointParticle()], torch.Generator())
    assert float(img[0].sum()) == pytest.approx(500.0, rel=0.01)
    assert float(img[1].abs().max()) == 0.0


def test_defocus_broadens_symmetrically():
    optics = Fluorescence(NA=0.9, wavelength_um=0.6, pixel_size_um=0.05, patch_size_px=128)
    psf = optics.psf(torch.tensor([-0.8, 0.0, 0.8]))
    var = [sum(moments(p)[2:]) for p in psf]  # (the in-focus Airy tails keep var[1] sizeable)
    assert var[0] == pytest.approx(var[2], rel=0.02)
    assert var[0] > 1.5 * var[1]


def test_on_axis_intensity_versus_defocus_matches_closed_form():
    """Independent check of the defocus phase: on-axis amplitude is int_{u0}^{k} exp(2i pi z u) u du."""
    wl, na, n, px = 0.6, 0.8, 1.33, 0.05
    optics = Fluorescence(
        NA=na, wavelength_um=wl, pixel_size_um=px, refractive_index_medium=n, patch_size_px=160
    )
    zs = torch.tensor([0.0, 0.3, 0.6])
    psf = optics.psf(zs)
    c = psf.shape[-1] // 2
    k, u0 = n / wl, math.sqrt((n / wl) ** 2 - (na / wl) ** 2)

    def on_axis(z):
        u = torch.linspace(u0, k, 20001, dtype=torch.float64)
        f = torch.exp(2j * math.pi * z * u) * u
        return abs(torch.trapezoid(f, u).item()) ** 2

    for i, z in enumerate(zs.tolist()[1:], start=1):
        measured = float(psf[i, c, c] / psf[0, c, c])
        assert measured == pytest.approx(on_axis(z) / on_axis(0.0), rel=0.03)


def test_astigmatism_elongates_along_orthogonal_axes():
    optics = Fluorescence(
        NA=1.2, wavelength_um=0.6, pixel_size_um=0.05, patch_size_px=96, phase_mask=Astigmatism(1.0)
    )
    above, focus, below = optics.psf(torch.tensor([0.4, 0.0, -0.4]))
    _, _, vy, vx = moments(above)
    assert vx > 1.3 * vy
    _, _, vy, vx = moments(below)
    assert vy > 1.3 * vx
    _, _, vy, vx = moments(focus)
    assert vy == pytest.approx(vx, rel=0.02)


@pytest.mark.parametrize("oversample", [1, 2])
def test_subpixel_centroid_matches_scene_position(oversample):
    # lambda / NA = 4 px: a 96 px patch holds the PSF out to 12 lambda / NA
    optics = Fluorescence(
        NA=1.3, wavelength_um=0.52, pixel_size_um=0.1, patch_size_px=96, oversample=oversample
    )
    offsets = [0.0, 0.25, 0.5, 0.73]
    scene = Scene.empty(len(offsets) ** 2, 1, (96, 96))
    truth = torch.tensor([[48 + dy, 47 + dx] for dy in offsets for dx in offsets])
    scene.position[:, 0, :2] = truth
    scene.present[:] = True
    scene.intensity[:] = 1.0
    img = optics.render(scene, [PointParticle()], torch.Generator())[:, 0]
    for i in range(len(truth)):
        cy, cx, _, _ = moments(img[i])
        assert abs(cy - float(truth[i, 0])) < 0.01
        assert abs(cx - float(truth[i, 1])) < 0.01


# ---------------------------------------------------------------------------- pupil and Zernike
def test_zernike_polynomials_are_orthonormal_on_the_disc():
    fy, fx = torch.meshgrid(
        torch.linspace(-1, 1, 301).double(), torch.linspace(-1, 1, 301).double(), indexing="ij"
    )
    rho, theta = torch.sqrt(fy**2 + fx**2), torch.atan2(fy, fx)
    inside = rho <= 1
    terms = [noll_to_nm(j) for j in range(2, 12)]
    z = torch.stack([zernike_polynomial(n, m, rho, theta)[inside] for n, m in terms])
    gram = z @ z.T / inside.sum()
    assert torch.allclose(gram, torch.eye(len(terms), dtype=gram.dtype), atol=0.03)
    assert noll_to_nm(4) == (2, 0) and noll_to_nm(8) == (3, 1) and noll_to_nm(11) == (4, 0)
    assert (Zernike.named("coma_x").n, Zernike.named("coma_x").m) == (3, 1)


def test_random_aberrations_are_sampled_per_image_and_recorded():
    optics = Fluorescence(
        NA=1.0,
        wavelength_um=0.6,
        pixel_size_um=0.1,
        aberrations=[Zernike.named("coma_x", Uniform(-1.0, 1.0)), Zernike.noll(11, 0.3)],
    )
    pipe = Pipeline((48, 48), [Particles(PointParticle(), count=1, x_px=24.0, y_px=24.0)], optics)
    a, b = pipe(6, seed=3), pipe(6, seed=3)
    coma = a.scene.image_params["zernike_coma_x"]
    assert coma.shape == (6,) and len(set(coma.tolist())) == 6
    assert torch.equal(a.image, b.image)
    assert torch.all(a.scene.image_params["zernike_spherical"] == 0.3)
    # coma_x makes the PSF lopsided along x (third moment), in proportion to its coefficient; y stays
    # symmetric
    x = torch.arange(48.0) - 24
    img = a.image[:, 0]
    skew_x = (img.sum(1) * x**3).sum(-1) / img.sum((1, 2))
    skew_y = (img.sum(2) * x**3).sum(-1) / img.sum((1, 2))
    assert torch.corrcoef(torch.stack([skew_x, coma]))[0, 1] < -0.99
    assert skew_y.abs().max() < 0.02 * skew_x.abs().max()


def test_defocus_phase_formula_and_pupil_cutoff():
    fy, fx = frequency_grid((8, 8), 0.25)
    ph = defocus_phase(fy, fx, torch.tensor([0.0, 2.0]), 0.5, 1.33)
    assert ph.shape == (2, 8, 8)
    f2 = fy**2 + fx**2
    kz = torch.sqrt(((1.33 / 0.5) ** 2 - f2).clamp(min=0))  # evanescent waves: phase 0
    assert torch.allclose(ph[1], 2 * math.pi * 2.0 * kz, rtol=1e-5)
    pupil = Pupil(NA=0.5, wavelength_um=0.5, pixel_size_um=0.25)
    p = pupil.pupil_function((8, 8))
    assert torch.equal(p.abs()[0] > 0.5, f2 <= 1.0)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"NA": 0.0}, "NA"),
        ({"NA": -0.5}, "NA"),
        ({"NA": 1.4}, "NA"),  # > refractive_index_medium = 1.33
        ({"wavelength_um": 0.0}, "wavelength_um"),
        ({"pixel_size_um": -0.1}, "pixel_size_um"),
        ({"pixel_size_um": None}, "pixel_size_um"),
        ({"camera_pixel_um": 6.5}, "magnification"),
        ({"pixel_size_um": None, "camera_pixel_um": 6.5, "magnification": 0.0}, "magnification"),
        ({"refractive_index_medium": 0.5}, "refractive_index_medium"),
        ({"oversample": 0}, "oversample"),
    ],
)
def test_bad_optics_raise_value_error_naming_parameter(kwargs, name):
    args = {"NA": 1.0, "wavelength_um": 0.6, "pixel_size_um": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        Fluorescence(**args)


def test_bad_distribution_and_small_image_raise():
    with pytest.raises(ValueError, match="low"):
        Uniform(2.0, 1.0)
    with pytest.raises(ValueError, match="Zernike"):
        Zernike(3, 2)
    optics = Fluorescence(NA=0.5, wavelength_um=0.6, pixel_size_um=0.1)  # support 2 * 1.2 um = 24 px
    with pytest.raises(ValueError, match="PSF support"):
        render_one(optics, 8.0, 8.0, shape=(16, 16))


def test_aliasing_warns_and_fine_sampling_does_not():
    # rendering on pixel centres of a coarse camera aliases the PSF
    with pytest.warns(UserWarning, match="Nyquist"):
        Fluorescence(NA=1.4, wavelength_um=0.5, pixel_size_um=0.16, refractive_index_medium=1.515,
                     oversample=1)
    with pytest.warns(UserWarning, match="oversample >= 2"):
        Fluorescence(NA=1.4, wavelength_um=0.5, pixel_size_um=0.16, refractive_index_medium=1.515,
                     oversample=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Fluorescence(NA=1.4, wavelength_um=0.5, pixel_size_um=0.08, refractive_index_medium=1.515)
        # a coarse camera is fine when the renderer oversamples and integrates over pixels
        Fluorescence(NA=1.4, wavelength_um=0.5, pixel_size_um=0.16, refractive_index_medium=1.515)
        Fluorescence(NA=1.4, wavelength_um=0.5, pixel_size_um=0.16, refractive_index_medium=1.515,
                     oversample=2)


# ---------------------------------------------------------------------------- batches and round trip
def test_mixed_scatterers_render_as_sum_of_parts():
    optics = Fluorescence(NA=0.9, wavelength_um=0.6, pixel_size_um=0.1)
    pops = [
        Particles(PointParticle(), count=3, z_um=Uniform(-0.5, 0.5), intensity=200.0),
        Particles(Sphere(radius_um=Uniform(0.3, 0.6)), count=2, intensity=300.0),
    ]
    pipe = Pipeline((48, 48), pops, optics)
    g = torch.Generator().manual_seed(0)
    scene = pipe.sample_scene(3, g)
    both = optics.render(scene, pipe.scatterers, g)
    parts = []
    for k in range(2):
        s = scene.clone()
        s.present &= s.kind == k
        parts.append(optics.render(s, pipe.scatterers, g))
    assert both.shape == (3, 1, 48, 48) and both.dtype == torch.float32
    assert torch.allclose(both, parts[0] + parts[1], atol=1e-3)


def test_round_trip_renders_identically():
    optics = Fluorescence(
        NA=1.1,
        wavelength_um=0.6,
        camera_pixel_um=6.5,
        magnification=60,
        aberrations=[Zernike.named("astigmatism_45", Uniform(-0.5, 0.5))],
        phase_mask=Astigmatism(0.8),
        oversample=2,
    )
    pipe = Pipeline((32, 32), [Particles(PointParticle(), count=4, z_um=Uniform(-0.5, 0.5))], optics)
    again = from_json(to_json(pipe))
    assert again == pipe
    assert torch.equal(pipe(2, seed=5).image, again(2, seed=5).image)
    assert not torch.equal(pipe(2, seed=5).image, pipe(2, seed=6).image)
