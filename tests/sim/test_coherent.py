"""Brightfield and holography optics: signs, units, fringes, aberrations, batching, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deeptrack.sim import Particles, Pipeline, Scene, Uniform
from napari_deeptrack.sim.mie import CoreShellSphere, MieSphere
from napari_deeptrack.sim.optics.coherent import Brightfield, Holography
from napari_deeptrack.sim.optics.zernike import Zernike
from napari_deeptrack.sim.scatterers import PointParticle, Sphere


def _scene(positions, radius, index, shape=(64, 64)):
    n = len(positions)
    scene = Scene.empty(1, n, shape)
    scene.present[:] = True
    scene.position[0] = torch.tensor(positions, dtype=torch.float32)
    scene.radius_um[:] = radius
    scene.refractive_index[:] = index
    return scene


def test_phase_sphere_defocus_contrast_reverses_across_focus():
    """Transport of intensity: a lens-like (n_p > n_m) phase object focuses light downstream of itself."""
    optics = Brightfield(NA=0.7, wavelength_um=0.68, camera_pixel_um=1.0, magnification=15.0)
    sphere = Sphere(radius_um=0.5, refractive_index=1.36)
    centre = {}
    for z in (-1.5, 0.0, 1.5):
        img = optics.render(_scene([[32.0, 32.0, z]], 0.5, 1.36), [sphere], None)[0, 0]
        centre[z] = img[30:35, 30:35].mean().item() - 1.0
        assert abs(img[0, :].mean().item() - 1.0) < 0.02  # background = illumination
    # z > 0: the particle is further from the objective, its field propagates forward to the focal plane
    assert centre[1.5] > 0.05 and centre[-1.5] < -0.05
    assert abs(centre[0.0]) < 0.5 * min(abs(centre[1.5]), abs(centre[-1.5]))  # weak phase: faint in focus


def test_thin_phase_sphere_agrees_with_mie_for_a_small_weak_sphere():
    """Two independent routes (FFT of the projected transmission vs Lorenz-Mie) give the same field."""
    optics = Holography(NA=1.0, wavelength_um=0.532, pixel_size_um=0.05, refractive_index_medium=1.33)
    pos = [[31.3, 32.6, 1.5]]
    u_thin = optics.complex_field(_scene(pos, 0.15, 1.36), [Sphere(0.15, 1.36)], None) - 1
    u_mie = optics.complex_field(_scene(pos, 0.15, 1.36), [MieSphere(0.15, 1.36)], None) - 1
    err = (u_thin - u_mie).abs().norm() / u_mie.abs().norm()
    assert err < 0.15
    assert u_mie.abs().max() > 0.005  # and there is a signal


def test_inline_fringes_are_fresnel_zones():
    """Ring spacing shrinks outward; a particle further away gives wider rings (r_m ~ sqrt(z))."""
    optics = Holography(NA=1.2, wavelength_um=0.532, pixel_size_um=0.08, output="intensity")
    first_rings = {}
    for z in (6.0, 12.0):
        img = optics.render(_scene([[96.0, 96.0, z]], 0.25, 1.59, (192, 192)), [MieSphere(0.25, 1.59)], None)
        img = img[0, 0].numpy()
        yy, xx = np.indices(img.shape)
        r = np.hypot(yy - 96, xx - 96).astype(int)
        prof = np.bincount(r.ravel(), img.ravel()) / np.bincount(r.ravel())
        prof = prof[:96]
        maxima = [i for i in range(3, len(prof) - 1) if prof[i] > prof[i - 1] and prof[i] >= prof[i + 1]]
        rings = np.array(maxima[:5], dtype=float)
        assert len(rings) == 5
        assert np.all(np.diff(np.diff(rings)) <= 0), (z, maxima)  # spacing shrinks outward
        # Fresnel zones: r_m^2 grows linearly with the ring index m
        m = np.arange(5)
        fit = np.polyfit(m, rings**2, 1)
        resid = rings**2 - np.polyval(fit, m)
        assert np.abs(resid).max() < 0.05 * rings[-1] ** 2
        first_rings[z] = rings[0]
    ratio = first_rings[12.0] / first_rings[6.0]
    assert 1.2 < ratio < 1.7  # ~ sqrt(2)


def test_output_modes_are_consistent():
    kw = dict(NA=1.2, wavelength_um=0.633, pixel_size_um=0.114)
    scene = _scene([[30.0, 33.0, 3.0]], 0.4, 1.5 + 0.01j)
    sc = [MieSphere(0.4, 1.5 + 0.01j)]
    field = Holography(**kw, output="complex").render(scene, sc, None)
    inten = Holography(**kw, output="intensity").render(scene, sc, None)
    ap = Holography(**kw, output="amplitude_phase").render(scene, sc, None)
    assert field.shape == (1, 2, 64, 64) and inten.shape == (1, 1, 64, 64) and field.dtype == torch.float32
    assert torch.allclose(field[:, 0] ** 2 + field[:, 1] ** 2, inten[:, 0], atol=1e-5)
    assert torch.allclose(ap[:, 0] ** 2, inten[:, 0], atol=1e-5)
    assert torch.allclose(ap[:, 1], torch.atan2(field[:, 1], field[:, 0]), atol=1e-5)
    bright = Holography(**kw, output="intensity", illumination_intensity=100.0).render(scene, sc, None)
    assert torch.allclose(bright, 100 * inten, rtol=1e-4)


def test_absorbing_sphere_removes_light_optical_theorem():
    """Total power lost from the image = absorption cross-section (scattered light stays inside NA)."""
    from napari_deeptrack.sim.mie import mie_coefficients, mie_efficiencies, size_parameter

    lam, nm, a, n = 0.633, 1.33, 0.4, 1.5 + 0.05j
    optics = Holography(NA=1.3, wavelength_um=lam, pixel_size_um=0.08, output="intensity", padding_px=64)
    img = optics.render(_scene([[64.0, 64.0, 2.0]], a, n, (128, 128)), [MieSphere(a, n)], None)[0, 0]
    lost = -(img.double() - 1).sum().item() * 0.08**2  # um^2
    x = size_parameter(torch.tensor(a), lam, nm)
    ca, cb, _ = mie_coefficients(torch.tensor(n / nm, dtype=torch.complex128), x)
    cabs = mie_efficiencies(ca, cb, x)["qabs"].item() * np.pi * a**2
    assert lost == pytest.approx(cabs, rel=0.15)


def test_random_aberrations_are_sampled_per_image_and_reproducible():
    optics = Brightfield(
        NA=0.9,
        wavelength_um=0.633,
        pixel_size_um=0.1,
        aberrations=[
            Zernike.named("coma_x", Uniform(-1.5, 1.5)),
            Zernike.named("coma_y", Uniform(-1.5, 1.5)),
            Zernike.named("spherical", Uniform(-1.0, 1.0)),
        ],
    )
    pipe = Pipeline(
        image_shape=(48, 48),
        particles=[Particles(MieSphere(0.4, 1.59), count=1, y_px=23.5, x_px=23.5, z_um=1.0)],
        optics=optics,
    )
    b1, b2 = pipe(4, seed=11), pipe(4, seed=11)
    assert torch.equal(b1.image, b2.image)
    for key in ("zernike_coma_x", "zernike_coma_y", "zernike_spherical"):
        v = b1.scene.image_params[key]
        assert v.shape == (4,) and v.std() > 0
    # coma breaks the mirror symmetry of a centred sphere; without aberrations it is symmetric
    img = b1.image[:, 0]
    asym = (img - img.flip(-1)).abs().amax(dim=(-2, -1))
    clean = Pipeline((48, 48), pipe.particles, Brightfield(NA=0.9, wavelength_um=0.633, pixel_size_um=0.1))(
        1, seed=0
    )
    assert (asym > 0.02).all()
    assert (clean.image[0, 0] - clean.image[0, 0].flip(-1)).abs().max() < 1e-3


def test_batch_is_the_sum_of_independent_images():
    optics = Holography(NA=1.2, wavelength_um=0.633, pixel_size_um=0.114)
    scene = Scene.empty(2, 2, (40, 40))
    scene.present[0] = True
    scene.present[1, 0] = True
    scene.position[:] = torch.tensor(
        [[[10.0, 12.0, 2.0], [30.0, 25.0, -4.0]], [[20.0, 20.0, 8.0], [0, 0, 0]]]
    )
    scene.radius_um[:] = 0.3
    scene.refractive_index[:] = 1.5
    full = optics.render(scene, [MieSphere()], None)
    for b in range(2):
        alone = optics.render(scene.index(b), [MieSphere()], None)
        assert torch.allclose(full[b], alone[0], atol=1e-5)
    # image 0 holds two particles: its scattered field is the sum of both
    u = full[0, 0] - 1
    parts = []
    for k in range(2):
        s = scene.index(0).clone()
        s.present[0, 1 - k] = False
        parts.append(optics.render(s, [MieSphere()], None)[0, 0] - 1)
    assert torch.allclose(u, parts[0] + parts[1], atol=1e-5)


def test_core_shell_and_coarse_pixels_render():
    optics = Brightfield(NA=0.75, wavelength_um=0.5, camera_pixel_um=6.5, magnification=20.0)
    assert optics._oversample() >= 2  # 0.325 um pixels undersample |E|^2 at NA 0.75
    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[Particles(CoreShellSphere(0.3, 0.5, 1.45, 1.6), count=2, z_um=Uniform(-2, 2))],
        optics=optics,
    )
    img = pipe(2, seed=0).image
    assert img.shape == (2, 1, 32, 32) and torch.isfinite(img).all()
    assert img.std() > 0.01


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="NA"):
        Brightfield(NA=1.4, wavelength_um=0.5, pixel_size_um=0.1, refractive_index_medium=1.33)
    with pytest.raises(ValueError, match="output"):
        Holography(NA=1.0, wavelength_um=0.5, pixel_size_um=0.1, output="phase_only")
    with pytest.raises(ValueError, match="wavelength_um"):
        Holography(NA=1.0, wavelength_um=0.0, pixel_size_um=0.1)
    with pytest.raises(ValueError, match="pixel"):
        Holography(NA=1.0, wavelength_um=0.5)
    optics = Holography(NA=1.0, wavelength_um=0.5, pixel_size_um=0.1)
    with pytest.raises(ValueError, match="PointParticle"):
        optics.render(_scene([[10.0, 10.0, 0.0]], 0.0, 1.5, (20, 20)), [PointParticle()], None)
