"""Calibration of a simulation to a real image ("Match to layer"): estimates checked on images with a
known answer, made here with plain NumPy (independent of the simulator)."""

import numpy as np
import pytest

from napari_deeptrack.analysis.calibrate import (
    compare_statistics,
    coverage_warnings,
    estimate_statistics,
)
from napari_deeptrack.analysis.match import match_pipeline


def spots_image(
    n=20,
    sigma=1.8,
    background=100.0,
    integral=4000.0,
    shape=(128, 128),
    frames=1,
    seed=0,
    dark=False,
    gain=1.0,
):
    """Poisson photons of Gaussian spots on a flat background, times ``gain`` (counts per photon)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(frames):
        # spots on a jittered grid so they stay isolated
        g = int(np.ceil(np.sqrt(n)))
        cells = rng.permutation(g * g)[:n]
        cy = (cells // g + 0.5) * h / g + rng.uniform(-2, 2, n)
        cx = (cells % g + 0.5) * w / g + rng.uniform(-2, 2, n)
        img = np.full(shape, background, float)
        for y, x in zip(cy, cx):
            img += (
                integral / (2 * np.pi * sigma**2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
            )
        if dark:
            img = 2 * background - (img - background)
            img = np.clip(img, 0, None)
        out.append(rng.poisson(img) * gain)
    a = np.asarray(out, dtype=np.float32)
    return a[0] if frames == 1 else a


def test_estimates_known_spots():
    img = spots_image(n=25, sigma=1.8, background=100.0, integral=4000.0)
    st = estimate_statistics(img, pixel_size_um=0.1)
    assert st.polarity == "bright"
    assert st.background == pytest.approx(100.0, rel=0.05)
    assert st.noise_sigma == pytest.approx(10.0, rel=0.15)  # Poisson: sqrt(100)
    assert st.spot_sigma_px == pytest.approx(1.8, rel=0.1)
    assert st.spots_per_frame == pytest.approx(25, abs=3)
    assert st.density_per_um2 == pytest.approx(25 / (128 * 128 * 0.01), rel=0.15)
    assert st.spot_integral == pytest.approx(4000.0, rel=0.2)
    assert st.photons_per_count == pytest.approx(1.0, rel=0.3)


def test_width_follows_psf_and_counts_follow_density():
    narrow = estimate_statistics(spots_image(n=9, sigma=1.2, seed=1))
    wide = estimate_statistics(spots_image(n=36, sigma=2.6, seed=2))
    assert narrow.spot_sigma_px == pytest.approx(1.2, rel=0.12)
    assert wide.spot_sigma_px == pytest.approx(2.6, rel=0.12)
    assert narrow.spots_per_frame == pytest.approx(9, abs=2)
    assert wide.spots_per_frame == pytest.approx(36, abs=5)


def test_dark_particles_and_camera_gain():
    dark = estimate_statistics(spots_image(n=16, dark=True, seed=3))
    assert dark.polarity == "dark"
    assert dark.spot_sigma_px == pytest.approx(1.8, rel=0.15)
    # 4 grey values per photon: noise 4*10 and background 400 -> 0.25 photons per count
    st = estimate_statistics(spots_image(n=16, gain=4.0, seed=4))
    assert st.noise_sigma == pytest.approx(40.0, rel=0.15)
    assert st.photons_per_count == pytest.approx(0.25, rel=0.3)


def test_noise_of_coarsely_quantised_images():
    rng = np.random.default_rng(0)
    img = np.round(100 + rng.normal(0, 0.6, (96, 96)))  # noise below one grey level: MAD of diffs is 0
    st = estimate_statistics(img)
    assert st.noise_sigma == pytest.approx(np.sqrt(0.6**2 + 1 / 12), rel=0.35)


def test_stack_and_bad_input():
    st = estimate_statistics(spots_image(n=10, frames=3, shape=(64, 64)))
    assert st.n_frames == 3 and st.image_shape == (64, 64)
    assert st.spots_per_frame == pytest.approx(10, abs=2)
    with pytest.raises(ValueError, match="2D"):
        estimate_statistics(np.zeros((2, 2, 32, 32, 3)))
    with pytest.raises(ValueError, match="empty|8x8"):
        estimate_statistics(np.zeros((0, 32)))
    with pytest.raises(ValueError, match="pixel_size_um"):
        estimate_statistics(np.zeros((32, 32)), pixel_size_um=-1)
    bad = np.zeros((32, 32))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_statistics(bad)


def test_compare_statistics_distance_orders_similarity():
    real = spots_image(n=20, sigma=1.8, seed=5)
    same = spots_image(n=20, sigma=1.8, seed=6, frames=2)
    wrong = spots_image(n=20, sigma=3.5, background=30.0, seed=7, frames=2)
    d_same = compare_statistics(same, real)
    d_wrong = compare_statistics(wrong, real)
    assert d_same["distance"] < 0.15
    assert d_wrong["distance"] > 3 * d_same["distance"]
    assert d_wrong["spot_width"] == pytest.approx(np.log(3.5 / 1.8), abs=0.15)
    assert d_same["polarity_match"]


def _fluorescence_pipeline():
    import napari_deeptrack.sim as sim

    if not hasattr(sim, "Fluorescence"):
        pytest.fail("napari_deeptrack.sim.Fluorescence is missing")
    return sim.Pipeline(
        image_shape=(64, 64),
        particles=[sim.Particles(sim.PointParticle(), count=sim.IntUniform(1, 3), intensity=500.0)],
        optics=sim.Fluorescence(NA=1.3, wavelength_um=0.6, pixel_size_um=0.1),
        transforms=[sim.Background(10.0), sim.Poisson(), sim.Camera(gain=1.0, offset=0.0)],
    )


def test_match_pipeline_reproduces_real_statistics():
    real = spots_image(n=20, sigma=1.8, background=200.0, integral=6000.0, gain=2.0, seed=8)
    pipe = _fluorescence_pipeline()
    matched = match_pipeline(pipe, real, pixel_size_um=0.08, match_shape=True)
    assert pipe.image_shape == (64, 64)  # the original is untouched
    assert matched.image_shape == (128, 128)
    assert matched.optics.pixel_size_um == pytest.approx(0.08)
    # sigma = 0.21 lambda / NA -> NA = 0.21 * 0.6 / (1.8 * 0.08) = 0.875
    assert matched.optics.NA == pytest.approx(0.875, rel=0.12)
    lo, hi = matched.particles[0].count.low, matched.particles[0].count.high
    assert lo <= 20 <= hi
    sim_images = matched(4, seed=0).image[:, 0].numpy()
    before = compare_statistics(pipe.with_(image_shape=(128, 128))(4, seed=0).image[:, 0].numpy(), real)
    after = compare_statistics(sim_images, real)
    assert after["distance"] < 0.25
    assert after["distance"] < before["distance"] / 2
    assert after["real"]["spot_sigma_px"] == pytest.approx(after["sim"]["spot_sigma_px"], rel=0.15)
    with pytest.raises(ValueError, match="pixel_size_um"):
        match_pipeline(pipe, real, pixel_size_um=0)


def test_match_inserts_camera_when_grey_values_are_not_photons():
    real = spots_image(n=12, sigma=1.8, background=100.0, integral=3000.0, gain=5.0, shape=(64, 64), seed=9)
    pipe = _fluorescence_pipeline()
    pipe = pipe.with_(transforms=[t for t in pipe.transforms if type(t).__name__ != "Camera"])
    matched = match_pipeline(pipe, real, pixel_size_um=0.1)
    names = [type(t).__name__ for t in matched.transforms]
    assert names == ["Background", "Poisson", "Camera"]
    assert matched.transforms[2].gain == pytest.approx(5.0, rel=0.3)
    cmp = compare_statistics(matched(3, seed=1).image[:, 0].numpy(), real)
    assert cmp["noise"] < 0.2 and cmp["distance"] < 0.25


def test_coverage_warnings_flag_pixel_size_and_noise():
    pipe = _fluorescence_pipeline()

    class T:  # anything with pipeline / pixel_size_um / input_normalization
        pipeline = pipe.with_(transforms=[t for t in pipe.transforms])
        pixel_size_um = 0.1
        input_normalization = {"mode": "percentile", "low": 1.0, "high": 99.8}

    like = T.pipeline(3, seed=1).image[:, 0].numpy()
    assert coverage_warnings(T, like, pixel_size_um=0.1) == []
    msgs = coverage_warnings(T, like, pixel_size_um=0.2)
    assert any("pixel size" in m for m in msgs)
    rng = np.random.default_rng(0)
    noisy = like + rng.normal(0, 200, like.shape).astype(np.float32)
    assert any("noise" in m for m in coverage_warnings(T, noisy))
