"""Linking, MSD and diffusion coefficients; aggregation of properties along tracks."""

import numpy as np
import pandas as pd
import pytest

from napari_deeptrack.analysis.properties import aggregate_tracks, regression_to_table
from napari_deeptrack.analysis.tracking import (
    diffusion_coefficients,
    ensemble_msd,
    link_tracks,
    msd_per_track,
    track_table,
)


def _brownian(n_tracks=40, n_frames=100, d_um2_s=0.5, pixel_um=0.1, dt_s=0.05, noise_px=0.0, seed=0):
    rng = np.random.default_rng(seed)
    step_px = np.sqrt(2 * d_um2_s * dt_s) / pixel_um
    gy, gx = np.meshgrid(np.arange(8) * 60 + 30, np.arange(5) * 90 + 40, indexing="ij")
    start = np.stack([gy.ravel(), gx.ravel()], 1)[:n_tracks].astype(float)
    steps = rng.normal(0, step_px, (n_tracks, n_frames, 2))
    steps[:, 0] = 0
    pos = start[:, None] + np.cumsum(steps, 1)
    meas = pos + rng.normal(0, noise_px, pos.shape) if noise_px else pos
    df = pd.DataFrame(
        {
            "frame": np.tile(np.arange(n_frames), n_tracks),
            "y": meas[..., 0].ravel(),
            "x": meas[..., 1].ravel(),
            "truth": np.repeat(np.arange(n_tracks), n_frames),
        }
    )
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True), step_px


@pytest.mark.parametrize("noise_px", [0.0, 0.5])
def test_linked_brownian_tracks_give_d_back_within_10_percent(noise_px):
    d_true, px, dt = 0.5, 0.1, 0.05
    df, step = _brownian(d_um2_s=d_true, pixel_um=px, dt_s=dt, noise_px=noise_px, seed=int(noise_px * 10))
    tracks = link_tracks(df, search_range_px=6 * step)
    assert tracks.track_id.nunique() == 40
    # every linked track is one true particle
    assert (tracks.groupby("track_id")["truth"].nunique() == 1).all()
    res = diffusion_coefficients(tracks, px, dt, fit_lags=4)
    assert res["ensemble"]["diffusion_um2_s"] == pytest.approx(d_true, rel=0.10)
    assert res["per_track"]["diffusion_um2_s"].mean() == pytest.approx(d_true, rel=0.10)
    # the offset absorbs the localisation error, 2 d sigma^2 (d = 2 axes), within its sampling error
    assert res["ensemble"]["offset_um2"] == pytest.approx(4 * (noise_px * px) ** 2, abs=6e-3)
    if noise_px:  # a line through the origin would be biased by the localisation error
        naive = diffusion_coefficients(tracks, px, dt, fit_lags=4, with_offset=False)["ensemble"]
        assert naive["diffusion_um2_s"] > 1.03 * res["ensemble"]["diffusion_um2_s"]
    table = track_table(tracks, px, dt)
    assert len(table) == 40 and (table.n_points == 100).all()
    assert {"mean_y", "mean_x", "diffusion_um2_s"} <= set(table.columns)


def test_msd_hand_built_track_with_gap_and_memory():
    # track moving +1 px in x per frame, missing frame 2; a second track standing still
    df = pd.DataFrame(
        {
            "frame": [0, 1, 3, 4, 0, 1, 2, 3, 4],
            "y": [10.0, 10, 10, 10, 50, 50, 50, 50, 50],
            "x": [0.0, 1, 3, 4, 50, 50, 50, 50, 50],
        }
    )
    assert link_tracks(df, 1.5, memory=0).track_id.nunique() == 3  # the gap splits the moving track
    tracks = link_tracks(df, 2.5, memory=1)
    assert tracks.track_id.nunique() == 2
    msd = msd_per_track(tracks, pixel_size_um=0.5, frame_interval_s=2.0, max_lag=3)
    moving = msd[msd.track_id == tracks[tracks.y == 10].track_id.iloc[0]].set_index("lag")
    # lag 1: pairs (0,1), (3,4) -> 1 px; lag 2: (1,3) -> 2 px; lag 3: (0,3), (1,4) -> 3 px
    assert moving.loc[1, "n"] == 2 and moving.loc[2, "n"] == 1 and moving.loc[3, "n"] == 2
    assert np.allclose(moving.msd_um2.to_numpy(), (np.array([1.0, 2.0, 3.0]) * 0.5) ** 2)
    assert np.allclose(moving.lag_s.to_numpy(), [2.0, 4.0, 6.0])
    ens = ensemble_msd(tracks, 0.5, 2.0, max_lag=1)
    assert ens.n.iloc[0] == 2 + 4 and ens.msd_um2.iloc[0] == pytest.approx(2 * 0.25 / 6)
    with pytest.raises(ValueError, match="pixel_size_um"):
        msd_per_track(tracks, 0.0, 1.0)
    with pytest.raises(ValueError, match="search_range_px"):
        link_tracks(df, 0.0)


def test_properties_along_tracks_mean_and_standard_error():
    rng = np.random.default_rng(0)
    true_r = np.array([0.5, 0.8, 1.1])
    rows = []
    for t, r in enumerate(true_r):
        est = r + rng.normal(0, 0.05, 25)
        rows.append(pd.DataFrame({"track_id": t, "radius_um": est, "n_real": 1.5 + rng.normal(0, 0.01, 25)}))
    table = pd.concat(rows, ignore_index=True)
    agg = aggregate_tracks(table, ["radius_um", "n_real"])
    assert list(agg.track_id) == [0, 1, 2] and (agg.n == 25).all()
    assert np.allclose(agg.radius_um, true_r, atol=4 * 0.05 / 5)
    assert np.allclose(agg.radius_um_sem, agg.radius_um_std / 5)
    assert np.allclose(agg.radius_um_std, 0.05, rtol=0.4)
    with pytest.raises(ValueError, match="lacks"):
        aggregate_tracks(table, ["size"])


def test_regression_outputs_to_physical_units():
    out = np.array([[0.5, -1.0, 0.2], [0.0, 0.0, 0.0]])
    df = regression_to_table(
        out, ["y", "x", "radius_um"], offset=[0, 0, 0.5], scale=[2, 2, 0.25], image_shape=(32, 32)
    )
    assert np.allclose(df.y, [15.5 + 1.0, 15.5]) and np.allclose(df.x, [15.5 - 2.0, 15.5])
    assert np.allclose(df.radius_um, [0.55, 0.5])
    with pytest.raises(ValueError, match="outputs"):
        regression_to_table(out, ["y", "x"])
