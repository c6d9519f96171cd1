"""Regression outputs to per-particle properties, and their aggregation along tracks.

A characterisation network regresses scaled properties (e.g. radius and refractive index) from an
image of one particle. :func:`regression_to_table` undoes the target's scaling
(:class:`~napari_deeptrack.sim.targets.RegressionVector`) and names the columns. As in the paper's
characterisation study, a particle seen in many frames is characterised by averaging the
single-frame estimates along its track: :func:`aggregate_tracks` returns the mean, standard
deviation and standard error of the mean per track.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["aggregate_tracks", "regression_to_table"]


def regression_to_table(
    outputs,
    fields: Sequence[str],
    offset: Sequence[float] | None = None,
    scale: Sequence[float] | None = None,
    image_shape: tuple[int, int] | None = None,
    relative_to_center: bool = True,
) -> pd.DataFrame:
    """Network regression outputs ``[N, K]`` to a table of physical values, one row per image.

    Parameters
    ----------
    outputs : array [N, K] or [N, 2K]
        Raw network outputs (scaled as the target was). With ``2K`` columns (a model trained with
        the ``gaussian_nll`` loss) the last K are log standard deviations: the table then gets a
        ``<field>_sigma`` column per field, the network's own 1-sigma uncertainty in the field's
        units (pixels for ``y`` and ``x``).
    fields : sequence of str
        Names of the K outputs (``y``, ``x``, ``z_um``, ``radius_um``, ``n_real``...).
    offset, scale : sequences of float or None
        The target's offset and scale: ``value = output * scale + offset``.
    image_shape : (H, W) or None
        With ``relative_to_center``, ``y`` and ``x`` are measured from the image centre
        ``((H - 1) / 2, (W - 1) / 2)`` and are converted back to pixel coordinates.
    relative_to_center : bool
        See ``image_shape``.

    Returns
    -------
    DataFrame
        ``frame`` (image index), one column per field, and ``<field>_sigma`` columns for ``2K``
        outputs.
    """
    out = outputs.detach().cpu().numpy() if hasattr(outputs, "detach") else np.asarray(outputs)
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1:
        out = out[None]
    k = len(fields)
    if out.ndim != 2 or out.shape[1] not in (k, 2 * k):
        raise ValueError(
            f"outputs must be [N, {k}] (or [N, {2 * k}] with log sigmas) for fields {list(fields)}, "
            f"got shape {out.shape}"
        )
    log_sigma = out[:, k:] if out.shape[1] == 2 * k else None
    out = out[:, :k]
    off = np.zeros(k) if offset is None else np.asarray(offset, dtype=np.float64)
    sc = np.ones(k) if scale is None else np.asarray(scale, dtype=np.float64)
    if off.shape != (k,) or sc.shape != (k,):
        raise ValueError(f"offset and scale need one entry per field ({k})")
    vals = out * sc + off
    df = pd.DataFrame({"frame": np.arange(len(vals), dtype=np.int64)})
    for j, name in enumerate(fields):
        v = vals[:, j]
        if relative_to_center and image_shape is not None and name in ("y", "x"):
            v = v + (image_shape[0 if name == "y" else 1] - 1) / 2.0
        df[name] = v
    if log_sigma is not None:
        for j, name in enumerate(fields):
            df[f"{name}_sigma"] = np.exp(np.clip(log_sigma[:, j], -30.0, 30.0)) * abs(sc[j])
    return df


def aggregate_tracks(
    table: pd.DataFrame,
    columns: Sequence[str],
    track_column: str = "track_id",
) -> pd.DataFrame:
    """Mean, standard deviation and standard error of the mean of ``columns`` along each track.

    Parameters
    ----------
    table : DataFrame
        One row per observation, with ``track_column`` and the property ``columns``.
    columns : sequence of str
        Properties to aggregate, e.g. ``["radius_um", "n_real"]``.
    track_column : str
        Column identifying the particle.

    Returns
    -------
    DataFrame
        ``track_id, n`` and for every column ``c``: ``c`` (mean), ``c_std``, ``c_sem``
        (std / sqrt(n); NaN for single observations).
    """
    missing = [c for c in (track_column, *columns) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; it has {list(table.columns)}")
    g = table.groupby(track_column)
    out = pd.DataFrame({"n": g.size()})
    for c in columns:
        mean = g[c].mean()
        std = g[c].std(ddof=1)
        out[c] = mean
        out[f"{c}_std"] = std
        out[f"{c}_sem"] = std / np.sqrt(out["n"])
    out = out.reset_index().rename(columns={track_column: "track_id"})
    return out
