"""Run reports: a Markdown page, a metrics JSON file and PNG figures (matplotlib Agg, no GUI).

Used by ``napari-deeptrack demo`` and reusable by the napari Review widget and the example scripts:

- :func:`plot_overlay`: one frame with the ground truth and the detections (found / missed / false),
- :func:`plot_loss_curve`: training and validation loss per epoch (and per batch when recorded),
- :func:`plot_tracks`: linked tracks drawn over the movie's mean image,
- :func:`plot_msd`: the ensemble mean squared displacement with the fitted and the true diffusion,
- :func:`write_report`: ``metrics.json`` + ``report.md`` (metric tables, figures, files, settings);
- :func:`write_validation_report`: one Markdown or HTML page comparing methods (model, fine-tuned model,
  classical baseline) on the user's corrected frames, with the loss curve, settings, the task's
  configuration and versions (the napari Review widget's report).

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``, so nothing here touches a GUI backend or global plotting state (safe inside napari).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "jsonable",
    "plot_loss_curve",
    "plot_msd",
    "plot_overlay",
    "plot_tracks",
    "write_metrics_json",
    "write_report",
    "write_validation_report",
]


# ---------------------------------------------------------------------------- helpers
def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    """Save ``fig`` atomically (a failed save leaves the old PNG or none, never half of one)."""
    from .io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".").lower() or "png")
    return path


def _write_text(path: Path, text: str) -> Path:
    from .io.atomic import atomic_write_text

    return atomic_write_text(path, text)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths and tuples made JSON-able; NaN and inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str | int):
        return obj
    return str(obj)


def _image_2d(image) -> np.ndarray:
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"image must be 2D [H, W], got shape {a.shape}")
    return a


def _show_image(ax, image: np.ndarray, pixel_size_um: float | None) -> None:
    lo, hi = np.percentile(image, [1.0, 99.8])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    if pixel_size_um:
        # scale bar of 2 um (or 20 % of the width if the field is small)
        h, w = image.shape
        length_um = 2.0 if 2.0 / pixel_size_um < 0.4 * w else round(0.2 * w * pixel_size_um, 1)
        n = length_um / pixel_size_um
        ax.plot([w - 4 - n, w - 4], [h - 5, h - 5], color="white", lw=3)
        ax.text(w - 4 - n / 2, h - 8, f"{length_um:g} um", color="white", ha="center", va="bottom",
                fontsize=8)


# ---------------------------------------------------------------------------- figures
def plot_overlay(
    image,
    truth,
    detections,
    path: str | Path,
    tolerance_px: float = 2.0,
    pixel_size_um: float | None = None,
    title: str | None = None,
) -> Path:
    """One frame with its ground truth and detections, matched within ``tolerance_px``.

    Parameters
    ----------
    image : array [H, W]
        The frame.
    truth, detections : DataFrame or array [N, 2]
        Positions ``y, x`` in pixels (tables need columns ``y`` and ``x``) of this frame only.
    path : path
        PNG file to write.
    tolerance_px : float
        Largest distance of a correct detection (as in the metrics).
    pixel_size_um : float, optional
        Draws a scale bar.
    title : str, optional

    Returns
    -------
    Path
        The PNG written. Found particles are green circles with a cyan cross, missed ones orange
        circles, false detections red crosses.
    """
    from .analysis.metrics import match_points

    img = _image_2d(image)
    t = _points(truth)
    d = _points(detections)
    pi, ti, _ = match_points(d, t, tolerance_px)
    found_t = np.zeros(len(t), bool)
    found_t[ti] = True
    good_d = np.zeros(len(d), bool)
    good_d[pi] = True
    h, w = img.shape
    fig = _figure(7.0, 7.0 * h / w + 0.6)
    ax = fig.add_subplot()
    _show_image(ax, img, pixel_size_um)
    ax.scatter(t[found_t, 1], t[found_t, 0], s=90, facecolors="none", edgecolors="lime", linewidths=1.2,
               label=f"truth, found ({found_t.sum()})")
    ax.scatter(t[~found_t, 1], t[~found_t, 0], s=90, facecolors="none", edgecolors="orange", linewidths=1.6,
               label=f"truth, missed ({(~found_t).sum()})")
    ax.scatter(d[good_d, 1], d[good_d, 0], s=30, marker="+", color="cyan", linewidths=1.0,
               label=f"detection, correct ({good_d.sum()})")
    ax.scatter(d[~good_d, 1], d[~good_d, 0], s=50, marker="x", color="red", linewidths=1.4,
               label=f"detection, false ({(~good_d).sum()})")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title or f"detections vs ground truth (match within {tolerance_px:g} px)", fontsize=10)
    return _save(fig, path)


def _points(table) -> np.ndarray:
    if table is None:
        return np.zeros((0, 2))
    if hasattr(table, "columns"):
        return table[["y", "x"]].to_numpy(np.float64)
    a = np.asarray(table, dtype=np.float64)
    return a.reshape(-1, 2)


def plot_loss_curve(
    history: Mapping[str, Any],
    path: str | Path,
    batch_losses: Sequence[float] | None = None,
    title: str = "training",
) -> Path:
    """Training and validation loss per epoch, and per batch when ``batch_losses`` is given.

    The y axis is logarithmic unless a loss is zero or negative (likelihood losses), then linear.

    Parameters
    ----------
    history : dict
        A trainer history: lists ``epoch``, ``train_loss``, ``val_loss`` (and optionally ``best_epoch``).
    path : path
        PNG file to write.
    batch_losses : sequence of float, optional
        Loss of every optimiser step, drawn faintly (x = fractional epoch).
    """
    epochs = np.asarray(history.get("epoch", []), dtype=np.float64) + 1
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    if batch_losses is not None and len(batch_losses) and len(epochs):
        steps = len(batch_losses)
        per_epoch = steps / max(len(epochs), 1)
        x = (np.arange(steps) + 1) / per_epoch
        ax.plot(x, batch_losses, color="tab:blue", alpha=0.25, lw=0.8, label="training loss (batch)")
    if len(epochs):
        ax.plot(epochs, history["train_loss"], "o-", color="tab:blue", label="training loss (epoch mean)")
        ax.plot(epochs, history["val_loss"], "s-", color="tab:orange", label="validation loss")
        be = history.get("best_epoch")
        if be is not None:
            ax.axvline(be + 1, color="gray", ls=":", lw=1, label=f"best epoch ({be + 1})")
    else:
        ax.text(0.5, 0.5, "no completed epoch", ha="center", va="center", transform=ax.transAxes)
    vals = [v for v in (*history.get("train_loss", []), *history.get("val_loss", [])) if v == v]
    if vals and min(vals) > 0:  # a likelihood loss (gaussian_nll) goes negative: stay linear then
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_tracks(
    image,
    tracks,
    path: str | Path,
    pixel_size_um: float | None = None,
    title: str | None = None,
    max_tracks: int = 500,
) -> Path:
    """Tracks (``track_id, frame, y, x``) drawn over an image (e.g. the movie's mean projection)."""
    img = _image_2d(image)
    h, w = img.shape
    fig = _figure(7.0, 7.0 * h / w)
    ax = fig.add_subplot()
    _show_image(ax, img, pixel_size_um)
    n = 0
    if tracks is not None and len(tracks):
        from matplotlib import colormaps

        cmap = colormaps["tab20"]
        for n, (tid, g) in enumerate(tracks.sort_values("frame").groupby("track_id")):  # drawing only
            if n >= max_tracks:
                break
            ax.plot(g["x"].to_numpy(), g["y"].to_numpy(), "-", lw=1.2, color=cmap(int(tid) % 20))
        n = int(tracks["track_id"].nunique())
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title or f"{n} tracks", fontsize=10)
    return _save(fig, path)


def plot_msd(
    msd,
    path: str | Path,
    diffusion_um2_s: float | None = None,
    offset_um2: float = 0.0,
    true_diffusion_um2_s: float | None = None,
    dim: int = 2,
    reference_msd=None,
) -> Path:
    """Ensemble MSD (``lag_s, msd_um2[, sem_um2]``) with the fitted line and the true diffusion.

    Parameters
    ----------
    msd : DataFrame
        From :func:`napari_deeptrack.analysis.tracking.ensemble_msd`.
    diffusion_um2_s, offset_um2 : float
        Fitted ``MSD = 2 dim D tau + offset``.
    true_diffusion_um2_s : float, optional
        Drawn as ``2 dim D_true tau + offset`` for comparison.
    reference_msd : DataFrame, optional
        A second MSD (e.g. from the ground-truth tracks), drawn as open markers.
    """
    fig = _figure(5.5, 4.0)
    ax = fig.add_subplot()
    if msd is not None and len(msd):
        t = msd["lag_s"].to_numpy(float)
        y = msd["msd_um2"].to_numpy(float)
        err = msd["sem_um2"].to_numpy(float) if "sem_um2" in msd else None
        ax.errorbar(t, y, yerr=err, fmt="o", color="tab:blue", label="measured tracks")
        tt = np.linspace(0, t.max() * 1.05, 50)
        if diffusion_um2_s is not None and math.isfinite(diffusion_um2_s):
            ax.plot(tt, 2 * dim * diffusion_um2_s * tt + offset_um2, "-", color="tab:blue",
                    label=f"fit: D = {diffusion_um2_s:.3g} um^2/s")
        if true_diffusion_um2_s is not None:
            ax.plot(tt, 2 * dim * true_diffusion_um2_s * tt + offset_um2, "--", color="k",
                    label=f"true: D = {true_diffusion_um2_s:.3g} um^2/s")
    if reference_msd is not None and len(reference_msd):
        ax.plot(reference_msd["lag_s"], reference_msd["msd_um2"], "s", mfc="none", color="tab:green",
                label="ground-truth tracks")
    ax.set_xlabel("lag (s)")
    ax.set_ylabel("MSD (um^2)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("mean squared displacement", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------- report files
def write_metrics_json(path: str | Path, metrics: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``{"metrics": ..., **extra}`` as JSON (NaN -> null)."""
    path = Path(path)
    return _write_text(path, json.dumps(jsonable({"metrics": metrics, **extra}), indent=2) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, float | np.floating):
        return "n/a" if not math.isfinite(float(v)) else f"{float(v):.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(section: Mapping[str, Any]) -> list[str]:
    rows = ["| quantity | value |", "|---|---|"]
    for k, v in section.items():
        if isinstance(v, Mapping):
            continue
        rows.append(f"| {k} | {_fmt(v)} |")
    return rows


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    history: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    figures: Mapping[str, str | Path] | None = None,
    files: Mapping[str, str | Path] | None = None,
    title: str = "napari-deeptrack report",
    summary: str | None = None,
    batch_losses: Sequence[float] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json`` and ``report.md`` (and ``loss_curve.png`` from ``history``) into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Report folder (created).
    metrics : dict
        Metric sections, e.g. ``{"detection": {...}, "diffusion": {...}}``; each section becomes a
        table (a flat dict becomes one table).
    history : dict, optional
        Trainer history; draws ``loss_curve.png`` unless ``figures`` already has ``"loss curve"``.
    config : dict, optional
        Settings of the run, listed at the end and stored in ``metrics.json``.
    figures : dict name -> path, optional
        PNG files (inside ``out_dir``) embedded in the page.
    files : dict name -> path, optional
        Other outputs (bundle, movie, CSV tables) listed with relative links.
    title, summary : str
        Page title and a paragraph under it.
    batch_losses : sequence of float, optional
        Per-batch losses for the loss curve.

    Returns
    -------
    dict
        ``{"report": report.md, "metrics": metrics.json, **figures}`` as paths.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    figs = {k: Path(v) for k, v in (figures or {}).items()}
    if history is not None and "loss curve" not in figs:
        figs["loss curve"] = plot_loss_curve(history, root / "loss_curve.png", batch_losses)
    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    history_summary = None
    if history is not None:
        history_summary = {k: v for k, v in history.items() if k in (
            "epoch", "train_loss", "val_loss", "best_epoch", "best_val_loss", "reason", "steps")}
    metrics_path = write_metrics_json(
        root / "metrics.json", metrics, config=dict(config or {}), history=history_summary, created=created,
        files={k: _rel(Path(v), root) for k, v in {**(files or {}), **figs}.items()},
    )
    lines = [f"# {title}", "", f"_{created}_", ""]
    if summary:
        lines += [summary, ""]
    sections = metrics if any(isinstance(v, Mapping) for v in metrics.values()) else {"metrics": metrics}
    flat = {k: v for k, v in sections.items() if not isinstance(v, Mapping)}
    if flat:
        lines += ["## summary", "", *_table(flat), ""]
    for name, section in sections.items():
        if isinstance(section, Mapping):
            lines += [f"## {name}", "", *_table(section), ""]
    if figs:
        lines += ["## figures", ""]
        for name, p in figs.items():
            lines += [f"### {name}", "", f"![{name}]({_rel(p, root)})", ""]
    if files:
        lines += ["## files", "", *[f"- {name}: [{_rel(Path(p), root)}]({_rel(Path(p), root)})"
                                    for name, p in files.items()], ""]
    if history_summary and history_summary.get("epoch"):
        lines += ["## training history", "", "| epoch | training loss | validation loss |", "|---|---|---|"]
        for e, tl, vl in zip(history["epoch"], history["train_loss"], history["val_loss"]):
            mark = " (best)" if e == history.get("best_epoch") else ""
            lines.append(f"| {e + 1}{mark} | {_fmt(tl)} | {_fmt(vl)} |")
        lines += ["", f"stopped: {history.get('reason', '?')} after {history.get('steps', '?')} steps", ""]
    if config:
        lines += ["## settings", "", "```json", json.dumps(jsonable(config), indent=2), "```", ""]
    report_path = root / "report.md"
    _write_text(report_path, "\n".join(lines))
    return {"report": report_path, "metrics": metrics_path, **figs}


def write_validation_report(
    path: str | Path,
    metrics: Mapping[str, Mapping[str, Any]],
    task=None,
    history: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    notes: str = "",
    versions: Mapping[str, str] | None = None,
) -> Path:
    """Write a validation report (``.md`` or ``.html`` from the suffix) with a loss-curve PNG beside it.

    Follows papers/dl_microscopy_validation_and_reporting.txt: the model version, training data and
    hyperparameters, validation on data absent from training, and a classical baseline.

    Parameters
    ----------
    path : path
        ``.md``, ``.html`` or ``.htm`` (anything else becomes ``.md``).
    metrics : dict
        Method name (``model``, ``baseline``, ``fine-tuned``...) -> metric dict; one table row each.
    task : Task, optional
        Serialised into the configuration section.
    history, settings : dict, optional
        Training history (loss curves) and settings (hyperparameters).
    notes : str
        A paragraph under the title.
    versions : dict, optional
        Extra versions (e.g. napari's) added to the package versions recorded in bundles.
    """
    from .io.bundle import package_versions
    from .sim.serialize import to_dict

    path = Path(path)
    if path.suffix.lower() not in (".md", ".html", ".htm"):
        path = path.with_suffix(".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    png = None
    if (history or {}).get("epoch"):
        png = plot_loss_curve(history, path.with_name(path.stem + "_loss.png"))
    keys: list[str] = []
    for m in metrics.values():
        for k, v in m.items():
            if k not in keys and isinstance(v, int | float):
                keys.append(k)
    config = json.dumps(to_dict(task), indent=1) if task is not None else "{}"
    settings_text = json.dumps(jsonable(dict(settings or {})), indent=1, default=str)
    all_versions = {**package_versions(), **dict(versions or {})}
    when = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    title = f"napari-deeptrack validation report: {getattr(task, 'name', 'model')}"
    if path.suffix.lower() == ".md":
        lines = [f"# {title}", "", f"Created {when}.", "", notes, ""]
        lines += ["## Metrics on the corrected frames", ""]
        lines.append("| method | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        for name, m in metrics.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k, "")) for k in keys) + " |")
        lines += ["", "## Training", ""]
        if png:
            lines.append(f"![loss curves]({png.name})")
        lines += ["", "Settings:", "", "```json", settings_text, "```", ""]
        lines += ["## Configuration (task, simulation, model)", "", "```json", config, "```", ""]
        lines += ["## Versions", "", *[f"- {k}: {v}" for k, v in all_versions.items()]]
        return _write_text(path, "\n".join(lines) + "\n")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_fmt(m.get(k, ''))}</td>" for k in keys)
        + "</tr>"
        for name, m in metrics.items()
    )
    body = [
        f"<h1>{html.escape(title)}</h1><p>Created {when}.</p><p>{html.escape(notes)}</p>",
        "<h2>Metrics on the corrected frames</h2><table border=1><tr><th>method</th>"
        + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        + f"</tr>{rows}</table>",
        "<h2>Training</h2>" + (f'<img src="{png.name}">' if png else "<p>no training history</p>"),
        f"<pre>{html.escape(settings_text)}</pre>",
        f"<h2>Configuration</h2><pre>{html.escape(config)}</pre>",
        "<h2>Versions</h2><ul>" + "".join(f"<li>{k}: {v}</li>" for k, v in all_versions.items()) + "</ul>",
    ]
    return _write_text(path, "<!doctype html><html><body>" + "".join(body) + "</body></html>\n")
