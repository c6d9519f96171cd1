"""Linking detections into tracks, and diffusion from the mean squared displacement (MSD).

:func:`link_tracks` uses trackpy's linker (nearest-neighbour linking with a search range and a
memory for particles that disappear for a few frames). :func:`msd_per_track` and
:func:`ensemble_msd` compute MSD curves in physical units from the pixel size and the frame
interval, counting only displacements between frames exactly ``lag`` apart (gaps are skipped, not
interpolated). :func:`diffusion_coefficients` fits ``MSD(tau) = 2 d D tau + offset`` over the first
lags: the offset absorbs the localisation error (``2 d sigma^2``) and motion blur, so ``D`` is not
inflated by noise. :func:`track_table` summarises every track.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..sim.params import check_range

__all__ = ["diffusion_coefficients", "ensemble_msd", "link_tracks", "msd_per_track", "track_table"]


def link_tracks(
    detections: pd.DataFrame,
    search_range_px: float,
    memory: int = 0,
    min_length: int = 1,
    columns: tuple[str, ...] = ("y", "x"),
) -> pd.DataFrame:
    """Link detections over frames with trackpy; adds an integer ``track_id`` column.

    Parameters
    ----------
    detections : DataFrame
        ``frame`` and the position ``columns`` (pixels).
    search_range_px : float
        Largest displacement between linked positions in consecutive frames (pixels).
    memory : int
        Number of frames a particle may vanish and still keep its track.
    min_length : int
        Tracks with fewer positions are dropped.
    columns : tuple of str
        Position columns (e.g. ``("y", "x")``).

    Returns
    -------
    DataFrame
        The detections with ``track_id`` (0, 1, 2... in order of first appearance), sorted by
        track and frame.
    """
    import trackpy

    check_range("search_range_px", search_range_px, 0.0, None, low_inclusive=False)
    check_range("memory", memory, 0, None)
    check_range("min_length", min_length, 1, None)
    missing = [c for c in ("frame", *columns) if c not in detections.columns]
    if missing:
        raise ValueError(f"detections lack column(s) {missing}; they have {list(detections.columns)}")
    if len(detections) == 0:
        out = detections.copy()
        out["track_id"] = pd.Series(dtype="int64")
        return out
    trackpy.quiet()
    df = detections.reset_index(drop=True).copy()
    linked = trackpy.link(
        df, float(search_range_px), memory=int(memory), pos_columns=list(columns), t_column="frame"
    )
    # renumber 0, 1, 2... in order of first appearance
    first = linked.groupby("particle")["frame"].min().sort_values(kind="stable")
    remap = pd.Series(np.arange(len(first), dtype=np.int64), index=first.index)
    linked["track_id"] = remap.reindex(linked["particle"].to_numpy()).to_numpy()
    linked = linked.drop(columns=["particle"])
    if min_length > 1:
        n = linked.groupby("track_id")["frame"].transform("size")
        linked = linked[n >= min_length]
    return linked.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)


def _displacements(tracks: pd.DataFrame, lag: int, columns, scale: np.ndarray) -> pd.DataFrame:
    """Squared displacements between positions exactly ``lag`` frames apart, per track."""
    a = tracks[["track_id", "frame", *columns]]
    b = a.assign(frame=a["frame"] - lag)
    m = a.merge(b, on=["track_id", "frame"], suffixes=("", "_later"))
    d2 = np.zeros(len(m))
    for c, s in zip(columns, scale, strict=True):
        d2 += ((m[f"{c}_later"].to_numpy() - m[c].to_numpy()) * s) ** 2
    return pd.DataFrame({"track_id": m["track_id"].to_numpy(), "sd": d2})


def _scale(columns, pixel_size_um: float) -> np.ndarray:
    # positions in pixels are scaled to um; a column already in um (z_um) is kept
    return np.array([1.0 if c.endswith("_um") else float(pixel_size_um) for c in columns])


def msd_per_track(
    tracks: pd.DataFrame,
    pixel_size_um: float,
    frame_interval_s: float,
    max_lag: int = 10,
    columns: tuple[str, ...] = ("y", "x"),
) -> pd.DataFrame:
    """MSD of every track at lags 1..max_lag.

    Returns
    -------
    DataFrame
        ``track_id, lag, lag_s, msd_um2, n`` (n: number of displacements averaged).
    """
    check_range("pixel_size_um", pixel_size_um, 0.0, None, low_inclusive=False)
    check_range("frame_interval_s", frame_interval_s, 0.0, None, low_inclusive=False)
    check_range("max_lag", max_lag, 1, None)
    scale = _scale(columns, pixel_size_um)
    parts = []
    for lag in range(1, int(max_lag) + 1):  # a handful of lags, each fully vectorised
        d = _displacements(tracks, lag, columns, scale)
        if len(d) == 0:
            continue
        g = d.groupby("track_id")["sd"].agg(["mean", "size"]).reset_index()
        g["lag"] = lag
        parts.append(g)
    if not parts:
        return pd.DataFrame(columns=["track_id", "lag", "lag_s", "msd_um2", "n"])
    out = pd.concat(parts, ignore_index=True).rename(columns={"mean": "msd_um2", "size": "n"})
    out["lag_s"] = out["lag"] * float(frame_interval_s)
    return (
        out[["track_id", "lag", "lag_s", "msd_um2", "n"]]
        .sort_values(["track_id", "lag"])
        .reset_index(drop=True)
    )


def ensemble_msd(
    tracks: pd.DataFrame,
    pixel_size_um: float,
    frame_interval_s: float,
    max_lag: int = 10,
    columns: tuple[str, ...] = ("y", "x"),
) -> pd.DataFrame:
    """MSD over all displacements of all tracks (each displacement weighs the same).

    Returns
    -------
    DataFrame
        ``lag, lag_s, msd_um2, sem_um2, n``.
    """
    check_range("pixel_size_um", pixel_size_um, 0.0, None, low_inclusive=False)
    check_range("frame_interval_s", frame_interval_s, 0.0, None, low_inclusive=False)
    scale = _scale(columns, pixel_size_um)
    rows = []
    for lag in range(1, int(max_lag) + 1):
        d = _displacements(tracks, lag, columns, scale)["sd"].to_numpy()
        if len(d) == 0:
            continue
        sem = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        rows.append(
            {
                "lag": lag,
                "lag_s": lag * float(frame_interval_s),
                "msd_um2": float(d.mean()),
                "sem_um2": sem,
                "n": int(len(d)),
            }
        )
    return pd.DataFrame(rows, columns=["lag", "lag_s", "msd_um2", "sem_um2", "n"])


def _fit_line(t: np.ndarray, y: np.ndarray, w: np.ndarray, with_offset: bool) -> tuple[float, float]:
    if with_offset and len(t) >= 2:
        A = np.stack([t, np.ones_like(t)], 1) * np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(A, y * np.sqrt(w), rcond=None)
        return float(coef[0]), float(coef[1])
    return float((w * t * y).sum() / (w * t * t).sum()), 0.0


def _fit_per_track(per: pd.DataFrame, with_offset: bool, dim: int) -> pd.DataFrame:
    """Weighted line fits of MSD against lag time for all tracks at once (closed-form sums)."""
    if len(per) == 0:
        return pd.DataFrame(columns=["track_id", "diffusion_um2_s", "offset_um2"])
    t, y, w = per["lag_s"].to_numpy(), per["msd_um2"].to_numpy(), per["n"].to_numpy(np.float64)
    sums = (
        pd.DataFrame(
            {
                "track_id": per["track_id"].to_numpy(),
                "w": w,
                "wt": w * t,
                "wtt": w * t * t,
                "wy": w * y,
                "wty": w * t * y,
                "k": np.ones_like(w),
            }
        )
        .groupby("track_id")
        .sum()
    )
    det = sums["w"] * sums["wtt"] - sums["wt"] ** 2
    fit_off = with_offset & (sums["k"] >= 2) & (det.abs() > 1e-300)
    slope_off = (sums["w"] * sums["wty"] - sums["wt"] * sums["wy"]) / det.where(fit_off, 1.0)
    off = (sums["wy"] - slope_off * sums["wt"]) / sums["w"]
    slope_0 = sums["wty"] / sums["wtt"]
    slope = np.where(fit_off, slope_off, slope_0)
    return pd.DataFrame(
        {
            "track_id": sums.index.to_numpy(np.int64),
            "diffusion_um2_s": slope / (2 * dim),
            "offset_um2": np.where(fit_off, off, 0.0),
        }
    )


def diffusion_coefficients(
    tracks: pd.DataFrame,
    pixel_size_um: float,
    frame_interval_s: float,
    fit_lags: int = 4,
    with_offset: bool = True,
    columns: tuple[str, ...] = ("y", "x"),
) -> dict:
    """Diffusion coefficient per track and for the ensemble from ``MSD = 2 d D tau (+ offset)``.

    Parameters
    ----------
    tracks : DataFrame
        ``track_id, frame`` and position ``columns`` (pixels, or um for columns ending in ``_um``).
    pixel_size_um, frame_interval_s : float
        Pixel size and time between frames.
    fit_lags : int
        Lags 1..fit_lags enter the fit (short lags carry the most information for pure diffusion).
    with_offset : bool
        Fit an offset (localisation error); needs at least 2 lags.
    columns : tuple of str
        Dimensions d = len(columns).

    Returns
    -------
    dict
        ``per_track``: DataFrame ``track_id, diffusion_um2_s, offset_um2, n_points``;
        ``ensemble``: dict ``diffusion_um2_s, offset_um2, sem_um2_s`` (standard error of the
        per-track values), ``n_tracks``; ``msd``: the ensemble MSD table.
    """
    check_range("fit_lags", fit_lags, 1, None)
    dim = len(columns)
    per = msd_per_track(tracks, pixel_size_um, frame_interval_s, fit_lags, columns)
    per_track = _fit_per_track(per, with_offset, dim)
    counts = tracks.groupby("track_id").size()
    per_track["n_points"] = counts.reindex(per_track["track_id"]).to_numpy(np.int64)
    ens = ensemble_msd(tracks, pixel_size_um, frame_interval_s, fit_lags, columns)
    if len(ens):
        slope, off = _fit_line(
            ens["lag_s"].to_numpy(),
            ens["msd_um2"].to_numpy(),
            ens["n"].to_numpy(float),
            with_offset and len(ens) >= 2,
        )
    else:
        slope, off = float("nan"), float("nan")
    vals = per_track["diffusion_um2_s"].to_numpy()
    ensemble = {
        "diffusion_um2_s": slope / (2 * dim),
        "offset_um2": off,
        "sem_um2_s": float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else float("nan"),
        "n_tracks": int(len(per_track)),
    }
    return {"per_track": per_track, "ensemble": ensemble, "msd": ens}


def track_table(
    tracks: pd.DataFrame,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    fit_lags: int = 4,
) -> pd.DataFrame:
    """One row per track: length, first and last frame, mean position, and (with units) D.

    Returns
    -------
    DataFrame
        ``track_id, n_points, first_frame, last_frame, mean_y, mean_x`` (+ ``mean_<col>`` for other
        numeric columns such as ``z_um``, ``radius_um``) and ``diffusion_um2_s`` when
        ``pixel_size_um`` and ``frame_interval_s`` are given.
    """
    if "track_id" not in tracks.columns:
        raise ValueError("tracks need a track_id column (link them with link_tracks first)")
    g = tracks.groupby("track_id")
    out = pd.DataFrame(
        {
            "n_points": g.size(),
            "first_frame": g["frame"].min(),
            "last_frame": g["frame"].max(),
        }
    )
    skip = {"track_id", "frame"}
    for c in tracks.columns:
        if c not in skip and pd.api.types.is_numeric_dtype(tracks[c]):
            out[f"mean_{c}"] = g[c].mean()
    out = out.reset_index()
    if pixel_size_um is not None and frame_interval_s is not None:
        d = diffusion_coefficients(tracks, pixel_size_um, frame_interval_s, fit_lags)["per_track"]
        out = out.merge(d[["track_id", "diffusion_um2_s"]], on="track_id", how="left")
    return out
