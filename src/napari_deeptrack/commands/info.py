"""``napari-deeptrack info BUNDLE [--json]``: what a model bundle records (for reuse and reporting)."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "overfitting_note", "run", "summarize"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="print what a model bundle records",
        description="Validate a model bundle (schema, checksum, weights) and print "
        "what it records: task, model, normalisation, pixel size, training, validation.",
    )
    p.add_argument("bundle", help="bundle folder or .zip, or a preset name with a starter model")
    p.add_argument("--json", action="store_true", help="print the full config.json")
    return p


def _brief(v):
    """``v`` with long number lists shortened to their length and range (for one-line display)."""
    if isinstance(v, dict):
        return {k: _brief(x) for k, x in v.items()}
    if isinstance(v, list) and len(v) > 8 and all(isinstance(x, int | float) for x in v):
        return f"<{len(v)} values, {min(v):.4g}..{max(v):.4g}>"
    return v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(_brief(v), default=repr) if isinstance(v, dict | list) else str(v)


def overfitting_note(history: dict) -> str | None:
    """A warning when validation loss rose after the best epoch while training loss kept falling."""
    be, ep = history.get("best_epoch"), history.get("epoch") or []
    if be is None or be not in ep:
        return None
    i = ep.index(be)
    tl, vl = history.get("train_loss", []), history.get("val_loss", [])
    after = len(ep) - 1 - i
    if after >= 2 and tl[-1] < tl[i] and vl[-1] > vl[i]:
        return (
            f"validation loss rose for {after} epochs after epoch {be + 1} while the training loss kept "
            "falling: a sign of overfitting (the bundle holds the best epoch). More varied training data "
            "(wider simulation ranges, less replay) or early stopping help."
        )
    return None


def summarize(cfg: dict) -> str:
    """A readable multi-line summary of a bundle's config."""
    from ..sim.serialize import from_dict

    task = from_dict(cfg["task"])
    tr = cfg.get("training", {})
    h = cfg.get("history", {}) or {}
    ver = cfg.get("versions", {})
    model = dict(cfg["model"])
    mtype = model.pop("type")
    lines = [
        f"name:          {cfg.get('name')} ({cfg.get('kind')})",
        f"description:   {' '.join(str(cfg.get('description', '')).split())}",
        f"created:       {cfg.get('created')}  schema {cfg.get('schema_version')}",
        "versions:      " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        f"model:         {mtype} ({cfg.get('n_parameters', '?')} parameters) {_fmt(model)}",
        f"input:         {cfg.get('input_normalization')} normalisation, pixel size "
        f"{cfg.get('pixel_size_um')} um, trained on {cfg.get('input_shape_trained')} px crops",
        f"target:        {task.target} = {type(task.pipeline.targets[task.target]).__name__} "
        f"{_fmt(vars(task.pipeline.targets[task.target]))}",
        f"loss:          {_fmt(cfg.get('loss'))}",
        f"postprocess:   {_fmt(cfg.get('postprocess'))}",
        "training:      " + ", ".join(f"{k}={_fmt(v)}" for k, v in tr.items()),
        f"seed:          {cfg.get('seed')}",
    ]
    if h.get("epoch"):
        be = h.get("best_epoch")
        lines.append(
            f"stopped:       {h.get('reason')} after {len(h['epoch'])} epoch(s), {h.get('steps')} steps; "
            f"best epoch {be + 1 if be is not None else '-'}"
        )
        lines.append(
            "validation:    " + ", ".join(f"{k}={_fmt(v)}" for k, v in (cfg.get("metrics") or {}).items())
        )
        metric_keys = [
            k
            for k in h
            if isinstance(h[k], list)
            and k not in ("epoch", "train_loss", "val_loss")
            and len(h[k]) == len(h["epoch"])
            and k not in ("time_s", "samples_per_s", "lr")
        ]
        lines.append("history:       epoch  train_loss  val_loss  " + "  ".join(metric_keys))
        for i, e in enumerate(h["epoch"]):
            mark = " *" if e == be else ""
            cols = "  ".join(f"{h[k][i]:.4g}" for k in metric_keys)
            row = f"{e + 1:5d}  {h['train_loss'][i]:10.4g}  {h['val_loss'][i]:8.4g}  {cols}{mark}"
            lines.append(" " * 15 + row)
        warn = overfitting_note(h)
        if warn:
            lines.append(f"note:          {warn}")
    if cfg.get("notes"):
        lines.append(f"notes:         {cfg['notes']}")
    return "\n".join(lines)


def run(args) -> int:
    from ..io.bundle import load_bundle, read_bundle_config
    from ..io.starters import resolve_bundle

    args.bundle = str(resolve_bundle(args.bundle))  # a preset name -> its shipped starter model
    cfg = read_bundle_config(args.bundle)
    if cfg["model"].get("type") != "custom":
        load_bundle(args.bundle)  # validates weights, checksum and that they fit the model
    if args.json:
        print(json.dumps(cfg, indent=2))
    else:
        print(f"bundle:        {args.bundle}")
        print(summarize(cfg))
    return 0
