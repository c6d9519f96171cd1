"""Validation report for the Review widget: Markdown or HTML with metrics, loss curves, configuration
and versions (following papers/dl_microscopy_validation_and_reporting.txt: report the model version,
training data, hyperparameters, validation on data absent from training, and a classical baseline).

No Qt here: loss curves are drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["plot_loss_curves", "write_report"]


def plot_loss_curves(history: dict, path: str | Path) -> Path | None:
    """Save training / validation loss per epoch as a PNG; None when there is no history."""
    epochs = history.get("epoch") or []
    if not epochs:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), dpi=100)
    ax = fig.add_subplot(111)
    ep = [e + 1 for e in epochs]
    ax.plot(ep, history.get("train_loss", []), "o-", label="training")
    ax.plot(ep, history.get("val_loss", []), "o-", label="validation")
    if history.get("best_epoch") is not None:
        ax.axvline(history["best_epoch"] + 1, color="grey", ls="--", lw=1, label="best checkpoint")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    vals = [v for v in history.get("train_loss", []) + history.get("val_loss", []) if v == v]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 20:  # linear when a likelihood loss is negative
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _versions() -> dict[str, str]:
    """Package versions recorded in bundles, plus napari's."""
    import napari

    from ..io.bundle import package_versions

    return {**package_versions(), "napari": napari.__version__}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_report(
    path: str | Path,
    metrics: dict[str, dict[str, Any]],
    task=None,
    history: dict | None = None,
    settings: dict | None = None,
    notes: str = "",
) -> Path:
    """Write a report (``.md`` or ``.html`` from the suffix) with a loss-curve PNG beside it.

    Parameters
    ----------
    metrics : dict
        Method name (``model``, ``baseline``, ``fine-tuned``...) -> metric dict.
    task : Task, optional
        Serialised into the configuration section.
    history, settings : dict, optional
        Training history (loss curves) and settings (hyperparameters).
    """
    from ..sim.serialize import to_dict

    path = Path(path)
    if path.suffix.lower() not in (".md", ".html", ".htm"):
        path = path.with_suffix(".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    png = plot_loss_curves(history or {}, path.with_name(path.stem + "_loss.png"))
    keys: list[str] = []
    for m in metrics.values():
        for k, v in m.items():
            if k not in keys and isinstance(v, int | float):
                keys.append(k)
    config = json.dumps(to_dict(task), indent=1) if task is not None else "{}"
    versions = _versions()
    when = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    title = f"napari-deeptrack validation report: {getattr(task, 'name', 'model')}"
    if path.suffix.lower() == ".md":
        lines = [
            f"# {title}",
            "",
            f"Created {when}.",
            "",
            notes,
            "",
            "## Metrics on the corrected frames",
            "",
        ]
        lines.append("| method | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        for name, m in metrics.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k, "")) for k in keys) + " |")
        lines += ["", "## Training", ""]
        if png:
            lines.append(f"![loss curves]({png.name})")
        lines += [
            "",
            "Settings:",
            "",
            "```json",
            json.dumps(settings or {}, indent=1, default=str),
            "```",
            "",
        ]
        lines += [
            "## Configuration (task, simulation, model)",
            "",
            "```json",
            config,
            "```",
            "",
            "## Versions",
            "",
        ]
        lines += [f"- {k}: {v}" for k, v in versions.items()]
        path.write_text("\n".join(lines) + "\n")
        return path
    rows = "".join(
        "<tr><td>"
        + html.escape(name)
        + "</td>"
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
        f"<pre>{html.escape(json.dumps(settings or {}, indent=1, default=str))}</pre>",
        f"<h2>Configuration</h2><pre>{html.escape(config)}</pre>",
        "<h2>Versions</h2><ul>" + "".join(f"<li>{k}: {v}</li>" for k, v in versions.items()) + "</ul>",
    ]
    path.write_text("<!doctype html><html><body>" + "".join(body) + "</body></html>\n")
    return path
