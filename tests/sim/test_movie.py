"""Movies: Brownian motion gives back D, drift, blinking and bleaching statistics, batched rendering."""

import math
from dataclasses import dataclass

import pytest
import torch

from napari_deeptrack.sim import (
    Optics,
    Particles,
    Pipeline,
    Scatterer,
    Uniform,
    from_json,
    register,
    to_dict,
    to_json,
    to_python,
)
from napari_deeptrack.sim.augment import FlipRotate
from napari_deeptrack.sim.movie import Movie, movie_truth_table
from napari_deeptrack.sim.targets import Counts, DiskMask


@register
@dataclass
class SpotsForMovieTests(Optics):
    """Test-only optics: a Gaussian spot per present particle (peak = intensity)."""

    sigma_px: float = 1.0
    pixel_size_um: float = 0.1

    def render(self, scene, scatterers, generator):
        h, w = scene.image_shape
        yy = torch.arange(h, dtype=torch.float32)[:, None]
        xx = torch.arange(w, dtype=torch.float32)[None, :]
        y, x = scene.position[..., 0, None, None], scene.position[..., 1, None, None]
        spots = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * self.sigma_px**2))
        return ((scene.intensity * scene.present)[..., None, None] * spots).sum(dim=1, keepdim=True)


@register
@dataclass
class DotForMovieTests(Scatterer):
    pass


def big_pipeline(count=500):
    # a huge field of view: particles essentially never leave it (nothing is rendered in these tests)
    return Pipeline((4096, 4096), [Particles(DotForMovieTests(), count=count, margin_px=500)],
                    SpotsForMovieTests())


def tracks(scene, n_frames):
    """Positions [B, T, N, 3] of a movie scene."""
    b = scene.batch_size // n_frames
    return scene.position.reshape(b, n_frames, scene.n_max, 3)


def test_mean_squared_displacement_gives_back_the_diffusion_coefficient():
    dt, px, d_true = 0.05, 0.1, 0.2
    movie = Movie(big_pipeline(), n_frames=50, frame_interval_s=dt, diffusion_um2_s=d_true, pixel_size_um=px,
                  z_diffusion=True)
    scene = movie.sample_scene(1, torch.Generator().manual_seed(0))
    pos = tracks(scene, 50)[0].double()  # [T, N, 3]
    yx_um, z_um = pos[..., :2] * px, pos[..., 2]
    for lag in (1, 2, 5):
        msd = (yx_um[lag:] - yx_um[:-lag]).pow(2).sum(-1).mean()
        d_est = msd / (4 * lag * dt)
        assert abs(d_est / d_true - 1) < 0.05, (lag, d_est)
        msd_z = (z_um[lag:] - z_um[:-lag]).pow(2).mean()
        assert abs(msd_z / (2 * lag * dt) / d_true - 1) < 0.08
    # z is fixed without z_diffusion
    flat = Movie(big_pipeline(50), n_frames=5, frame_interval_s=dt, diffusion_um2_s=d_true, pixel_size_um=px)
    z = tracks(flat.sample_scene(2, torch.Generator().manual_seed(0)), 5)[..., 2]
    assert torch.equal(z, z[:, :1].expand_as(z))


def test_per_particle_diffusion_distribution():
    dt, px = 0.05, 0.1
    movie = Movie(big_pipeline(), n_frames=40, frame_interval_s=dt, diffusion_um2_s=Uniform(0.05, 0.5),
                  pixel_size_um=px)
    scene = movie.sample_scene(2, torch.Generator().manual_seed(1))
    pos = tracks(scene, 40).double() * px
    steps2 = (pos[:, 1:, :, :2] - pos[:, :-1, :, :2]).pow(2).sum(-1).mean(1)  # [B, N]
    d_particle = scene.attributes["diffusion_um2_s"].reshape(2, 40, -1)[:, 0].double()
    fast, slow = d_particle > 0.35, d_particle < 0.15
    for sel in (fast, slow):
        est = steps2[sel].mean() / (4 * dt)
        assert abs(est / d_particle[sel].mean() - 1) < 0.05
    assert d_particle.min() >= 0.05 and d_particle.max() <= 0.5


def test_drift_shows_up_as_mean_displacement():
    dt, px, t_n = 0.1, 0.2, 30
    v = (0.5, -1.0)  # um/s
    movie = Movie(big_pipeline(400), n_frames=t_n, frame_interval_s=dt, diffusion_um2_s=0.05,
                  pixel_size_um=px, drift_um_s=v)
    scene = movie.sample_scene(2, torch.Generator().manual_seed(2))
    pos = tracks(scene, t_n).double()
    disp = (pos[:, -1, :, :2] - pos[:, 0, :, :2]).reshape(-1, 2).mean(0)  # px over (T-1) frames
    expected = torch.tensor(v, dtype=torch.float64) * (t_n - 1) * dt / px
    sem = math.sqrt(2 * 0.05 * (t_n - 1) * dt) / px / math.sqrt(800)
    assert (disp - expected).abs().max() < 5 * sem, (disp, expected)
    assert torch.allclose(scene.image_params["drift_x_um_s"], torch.tensor(-1.0))


def test_bleaching_reduces_visible_particles_at_the_expected_rate():
    dt, rate, t_n = 0.05, 2.0, 40
    movie = Movie(big_pipeline(1000), n_frames=t_n, frame_interval_s=dt, diffusion_um2_s=0.0,
                  pixel_size_um=0.1, bleach_rate_per_s=rate)
    scene = movie.sample_scene(4, torch.Generator().manual_seed(3))
    visible = scene.attributes["visible"].reshape(4, t_n, -1).double()
    frac = visible.mean(dim=(0, 2))  # [T]
    expected = torch.exp(-rate * dt * torch.arange(t_n, dtype=torch.float64))
    assert frac[0] == 1.0
    assert (frac - expected).abs().max() < 0.03
    t = torch.arange(t_n, dtype=torch.float64) * dt
    keep = frac > 0.2  # fit log(fraction) where enough particles are left
    t, y = t[keep], frac[keep].log()
    slope = -((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum()
    assert abs(slope / rate - 1) < 0.05
    # bleaching is irreversible and present follows it
    assert (visible[:, 1:] <= visible[:, :-1]).all()
    assert torch.equal(scene.present, scene.attributes["visible"])


def test_blinking_on_fraction_and_on_times():
    dt, t_on, t_off, t_n = 0.05, 0.2, 0.6, 200
    movie = Movie(big_pipeline(100), n_frames=t_n, frame_interval_s=dt, diffusion_um2_s=0.0,
                  pixel_size_um=0.1, blink_on_s=t_on, blink_off_s=t_off)
    scene = movie.sample_scene(4, torch.Generator().manual_seed(4))
    vis = scene.attributes["visible"].reshape(4, t_n, -1)
    assert abs(vis.float().mean() - t_on / (t_on + t_off)) < 0.035
    assert abs(vis[:, 0].float().mean() - 0.25) < 0.06  # stationary from the first frame
    # mean on-dwell time in frames = 1 / P(on -> off)
    v = vis.transpose(1, 2).reshape(-1, t_n).float()
    on_to_off = ((v[:, :-1] == 1) & (v[:, 1:] == 0)).sum()
    p_off = on_to_off / (v[:, :-1] == 1).sum()
    assert abs(p_off / (1 - math.exp(-dt / t_on)) - 1) < 0.06


def test_movie_batch_layout_rendering_and_truth_table():
    pipe = Pipeline(
        (32, 40),
        [Particles(DotForMovieTests(), count=3, margin_px=4, intensity=10.0),
         Particles(DotForMovieTests(), count=2, margin_px=4, intensity=5.0, class_id=1)],
        SpotsForMovieTests(),
        targets={"mask": DiskMask(2.0), "n": Counts()},
    )
    movie = Movie(pipe, n_frames=6, frame_interval_s=0.1, diffusion_um2_s=1.0, bleach_rate_per_s=1.0)
    assert movie.resolved_pixel_size_um() == 0.1  # taken from the optics
    b, t_n = 3, 6
    batch = movie(b, seed=5)
    assert batch.image.shape == (b, t_n, 1, 32, 40)
    assert batch.targets["mask"].shape == (b, t_n, 1, 32, 40) and batch.targets["n"].shape == (b, t_n)
    scene = batch.scene
    assert scene.batch_size == b * t_n
    assert scene.attributes["frame"].tolist() == list(range(t_n)) * b
    assert scene.attributes["movie"].tolist() == [i for i in range(b) for _ in range(t_n)]
    tid = scene.attributes["track_id"].reshape(b, t_n, -1)
    assert (tid == tid[:, :1]).all()  # tracks keep their id in every frame
    # every frame is the rendering of its own scene
    for r in (0, 7, 17):
        ref = pipe.render(scene.index(r), None)
        assert torch.allclose(batch.image.reshape(b * t_n, 1, 32, 40)[r], ref[0], atol=1e-5)
    from napari_deeptrack.sim.targets import in_frame

    exists = scene.attributes["track_id"] >= 0
    inside = in_frame(scene.position[..., :2], (32, 40))
    assert torch.equal(scene.present, exists & scene.attributes["visible"] & inside)
    assert torch.equal(batch.targets["n"].reshape(-1), scene.present.sum(1).float())
    rows = movie_truth_table(batch)
    assert len(rows) == int(exists.sum())
    assert set(rows[0]) == {"movie", "frame", "track_id", "y", "x", "z_um", "visible", "present"}
    r = next(r for r in rows if r["movie"] == 2 and r["frame"] == 4 and r["track_id"] == 0)
    assert r["y"] == pytest.approx(float(scene.position[2 * t_n + 4, 0, 0]))
    # seeding
    again = movie(b, seed=5)
    assert torch.equal(again.image, batch.image) and torch.equal(again.scene.position, scene.position)
    assert not torch.equal(movie(b, seed=6).scene.position, scene.position)


def test_augmentation_is_the_same_for_every_frame_of_a_movie():
    pipe = Pipeline((32, 32), [Particles(DotForMovieTests(), count=4, margin_px=8)], SpotsForMovieTests(),
                    transforms=[FlipRotate()])
    movie = Movie(pipe, n_frames=8, frame_interval_s=0.01, diffusion_um2_s=0.01)
    batch = movie(6, seed=0)
    k = batch.scene.image_params["rot90_k"].reshape(6, 8)
    assert (k == k[:, :1]).all() and len(k[:, 0].unique()) > 1
    pos = tracks(batch.scene, 8)[..., :2]
    step = (pos[:, 1:] - pos[:, :-1]).norm(dim=-1)
    assert step.max() < 1.0  # tracks stay continuous (the same map for all frames)


def test_movie_serialisation_and_validation():
    movie = Movie(big_pipeline(5), n_frames=4, frame_interval_s=0.02, diffusion_um2_s=Uniform(0.1, 1.0),
                  pixel_size_um=0.1, drift_um_s=[0.1, Uniform(-1.0, 1.0)], blink_on_s=0.1, blink_off_s=0.3,
                  bleach_rate_per_s=0.5, z_diffusion=True)
    back = from_json(to_json(movie))
    assert to_dict(back) == to_dict(movie)
    ns = {}
    exec(to_python(movie, name="movie"), ns)
    assert to_dict(ns["movie"]) == to_dict(movie)
    s1 = back.sample_scene(2, torch.Generator().manual_seed(0))
    s2 = movie.sample_scene(2, torch.Generator().manual_seed(0))
    assert torch.equal(s1.position, s2.position)
    with pytest.raises(ValueError, match="n_frames"):
        Movie(big_pipeline(1), n_frames=0)
    with pytest.raises(ValueError, match="frame_interval_s"):
        Movie(big_pipeline(1), frame_interval_s=0.0)
    with pytest.raises(ValueError, match="drift_um_s"):
        Movie(big_pipeline(1), drift_um_s=[1.0])
    with pytest.raises(ValueError, match="diffusion_um2_s"):
        Movie(big_pipeline(1), diffusion_um2_s=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        Movie(big_pipeline(1))(0, seed=0)


def test_movie_with_real_fluorescence():
    from napari_deeptrack.sim import PointParticle
    from napari_deeptrack.sim.optics.fluorescence import Fluorescence

    pipe = Pipeline((32, 32), [Particles(PointParticle(), count=3, margin_px=6, intensity=500.0)],
                    Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
                    targets={"mask": DiskMask(2.0)})
    movie = Movie(pipe, n_frames=4, frame_interval_s=0.05, diffusion_um2_s=0.05)
    batch = movie(2, seed=0)
    assert batch.image.shape == (2, 4, 1, 32, 32)
    # each frame integrates to the photons of its visible particles (PSF tails may leave the frame)
    total = batch.image.sum(dim=(2, 3, 4)).reshape(-1)
    expected = (batch.scene.intensity * batch.scene.present).sum(1)
    assert torch.allclose(total, expected, rtol=0.05)
