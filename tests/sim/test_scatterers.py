"""Extended fluorescent objects: spheres, ellipses, ellipsoids and nuclei-like cell bodies."""

from __future__ import annotations

import math

import pytest
import torch

from napari_deeptrack.sim import (
    CellBody,
    Ellipse,
    Ellipsoid,
    Fluorescence,
    IntUniform,
    Particles,
    Pipeline,
    PointParticle,
    Scene,
    Sphere,
    Uniform,
    from_json,
    to_json,
)

PX = 0.05
SIZE = 160


def render_one(optics, scatterer, shape=(SIZE, SIZE), intensity=1000.0, z=0.0):
    scene = Scene.empty(1, 1, shape)
    scene.position[0, 0] = torch.tensor([shape[0] / 2 + 0.3, shape[1] / 2 - 0.2, z])
    scene.present[:] = True
    scene.intensity[:] = intensity
    scatterer.sample_into(scene, slice(0, 1), torch.Generator().manual_seed(0))
    return optics.render(scene, [scatterer], torch.Generator())[0, 0].double(), scene


def covariance_um2(img):
    """(var_y, var_x, cov_yx) of an image in um^2."""
    y = torch.arange(img.shape[0], dtype=torch.float64)[:, None]
    x = torch.arange(img.shape[1], dtype=torch.float64)[None, :]
    s = img.sum()
    cy, cx = (img * y).sum() / s, (img * x).sum() / s
    vy = (img * (y - cy) ** 2).sum() / s
    vx = (img * (x - cx) ** 2).sum() / s
    cyx = (img * (y - cy) * (x - cx)).sum() / s
    return torch.tensor([vy, vx, cyx]) * PX**2


@pytest.fixture(scope="module")
def optics():
    # fixed patch: every object is blurred by the same (truncated) PSF, so variances add exactly
    return Fluorescence(NA=1.2, wavelength_um=0.5, pixel_size_um=PX, patch_size_px=SIZE)


@pytest.fixture(scope="module")
def point_cov(optics):
    return covariance_um2(render_one(optics, PointParticle())[0])


def test_sphere_integrates_to_intensity_and_has_projected_ball_width(optics, point_cov):
    img, _ = render_one(optics, Sphere(radius_um=1.0))
    assert float(img.sum()) == pytest.approx(1000.0, rel=0.01)
    # projection of a uniform ball of radius R: variance R^2 / 5 per axis, added to the PSF's
    excess = covariance_um2(img) - point_cov
    assert float(excess[0]) == pytest.approx(0.2, rel=0.03)
    assert float(excess[1]) == pytest.approx(0.2, rel=0.03)
    assert abs(float(excess[2])) < 1e-3


def test_ellipse_second_moments_follow_axes_and_rotation(optics, point_cov):
    ay, ax, rot = 1.0, 0.5, 0.5
    img, scene = render_one(optics, Ellipse(axis_y_um=ay, axis_x_um=ax, rotation_rad=rot))
    assert float(img.sum()) == pytest.approx(1000.0, rel=0.01)
    assert torch.allclose(scene.attributes["axes_um"][0, 0], torch.tensor([ay, ax, 0.0]))
    # uniform ellipse: variance a^2 / 4 along each semi-axis; the x semi-axis points along
    # (cos rot, sin rot) in (x, y)
    c, s = math.cos(rot), math.sin(rot)
    var_x = (ax * c) ** 2 / 4 + (ay * s) ** 2 / 4
    var_y = (ax * s) ** 2 / 4 + (ay * c) ** 2 / 4
    cov_yx = c * s * (ax**2 - ay**2) / 4
    excess = covariance_um2(img) - point_cov
    assert float(excess[0]) == pytest.approx(var_y, rel=0.04)
    assert float(excess[1]) == pytest.approx(var_x, rel=0.04)
    assert float(excess[2]) == pytest.approx(cov_yx, rel=0.04)


def test_ellipsoid_projection_width(optics, point_cov):
    img, scene = render_one(optics, Ellipsoid(axis_y_um=0.5, axis_x_um=1.0, axis_z_um=0.7))
    assert scene.attributes["axes_um"][0, 0, 2] == pytest.approx(0.7)
    excess = covariance_um2(img) - point_cov  # projected uniform ellipsoid: a^2 / 5 per axis
    assert float(excess[0]) == pytest.approx(0.5**2 / 5, rel=0.05)
    assert float(excess[1]) == pytest.approx(1.0**2 / 5, rel=0.03)


def test_cell_body_sizes_areas_and_flux():
    body = CellBody(texture=0.0)
    gen = torch.Generator().manual_seed(1)
    scene = Scene.empty(64, 1, (128, 128))
    scene.present[:] = True
    body.sample_into(scene, slice(0, 1), gen)
    r = scene.radius_um[:, 0]
    assert float(r.min()) >= 5.0 and float(r.max()) <= 12.0 and float(r.std()) > 1.0
    b, n = torch.arange(64), torch.zeros(64, dtype=torch.long)
    # area of the outline on a fine grid versus the closed form pi R^2 (1 + sum a_m^2 / 2)
    t = torch.linspace(-16, 16, 321)
    dens = body.fluorescence_density(scene, b, n, t[:, None], t[None, :])
    area = (dens > 0.5).sum((1, 2)) * float(t[1] - t[0]) ** 2
    expected = body.area_um2(scene, b, n)
    assert torch.allclose(area.float(), expected, rtol=0.02)
    assert float(expected.min()) > math.pi * 5.0**2 * 0.95 and float(expected.max()) < math.pi * 12.0**2 * 1.1
    # outlines are irregular but smooth: radius varies by a few to tens of percent
    theta = torch.linspace(0, 2 * math.pi, 64)
    rel = body.outline_radius_um(scene, b, n, theta) / r[:, None]
    assert 0.02 < float((rel.amax(1) - rel.amin(1)).mean()) < 0.5


def test_cell_body_image_flux_and_area_at_low_magnification():
    # 0.65 um pixels undersample an NA 0.3 PSF; the renderer oversamples (no aliasing warning)
    optics = Fluorescence(NA=0.3, wavelength_um=0.52, pixel_size_um=0.65)
    body = CellBody(radius_um=Uniform(5.0, 8.0), texture=0.3)
    pipe = Pipeline((96, 96), [Particles(body, count=1, x_px=48.0, y_px=48.0, intensity=1e5)], optics)
    batch = pipe(4, seed=2)
    img = batch.image[:, 0]
    assert torch.allclose(img.sum((1, 2)), torch.full((4,), 1e5), rtol=0.01)
    b, n = torch.arange(4), torch.zeros(4, dtype=torch.long)
    area = body.area_um2(batch.scene, b, n)
    # pixels brighter than a third of the mean interior level trace the outline (texture is smooth)
    interior = img.sum((1, 2)) / (area / 0.65**2)
    measured = (img > interior[:, None, None] / 3).sum((1, 2)) * 0.65**2
    assert torch.allclose(measured.float(), area, rtol=0.12)


def test_cell_body_radius_in_pixels():
    body = CellBody(radius_px=Uniform(10.0, 20.0), pixel_size_um=0.5)
    scene = Scene.empty(32, 1, (64, 64))
    body.sample_into(scene, slice(0, 1), torch.Generator().manual_seed(0))
    assert float(scene.radius_um.min()) >= 5.0 and float(scene.radius_um.max()) <= 10.0
    with pytest.raises(ValueError, match="pixel_size_um"):
        CellBody(radius_px=10.0)


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: Sphere(radius_um=0.0), "radius_um"),
        (lambda: Sphere(radius_um=Uniform(-1.0, 1.0)), "radius_um"),
        (lambda: Ellipse(axis_x_um=-1.0), "axis_x_um"),
        (lambda: Ellipsoid(axis_z_um=0.0), "axis_z_um"),
        (lambda: CellBody(irregularity=0.9), "irregularity"),
        (lambda: Sphere(refractive_index=-1.0), "refractive_index"),
    ],
)
def test_bad_scatterer_parameters_raise(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


def test_every_scatterer_round_trips_and_renders_identically():
    optics = Fluorescence(NA=0.9, wavelength_um=0.6, pixel_size_um=0.15)
    pops = [
        Particles(PointParticle(), count=IntUniform(0, 3), z_um=Uniform(-0.5, 0.5), margin_px=6),
        Particles(Sphere(radius_um=Uniform(0.2, 0.5), refractive_index=1.5 + 0.01j), count=2, margin_px=6),
        Particles(
            Ellipse(axis_y_um=0.8, axis_x_um=Uniform(0.2, 0.4), rotation_rad=Uniform(0, 3.14)),
            count=1,
            margin_px=8,
        ),
        Particles(Ellipsoid(axis_y_um=0.5, axis_x_um=0.3, axis_z_um=0.4), count=1, margin_px=6),
        Particles(CellBody(radius_um=Uniform(2.0, 3.0)), count=1, intensity=5000.0, margin_px=24),
    ]
    pipe = Pipeline((64, 64), pops, optics)
    again = from_json(to_json(pipe))
    assert again == pipe
    a, b = pipe(3, seed=11), again(3, seed=11)
    assert torch.equal(a.image, b.image)
    expected = (a.scene.intensity * a.scene.present).sum(1)
    # particles are kept away from the border: (nearly) all of their light lands in the image
    assert torch.allclose(a.image.sum((1, 2, 3)), expected, rtol=0.03)
