"""Starter models shipped with the package: small bundles trained on simulation only.

``napari-deeptrack apply particles-2d image.tif`` uses the starter bundle of a preset when the name is
not a path, so a first result needs no training step; fine-tune it on your own images afterwards
(``train --init``). The starters are made by ``scripts/train_starters.py`` (reproducible: fixed
seeds, steps and deterministic mode) and live in ``napari_deeptrack/data/starters/<preset>.zip``;
``napari-deeptrack info <preset>`` shows what each was trained on (its simulation, settings and
validation metrics are in the bundle).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["STARTERS_DIR", "check_starter_fits", "is_starter", "list_starters", "resolve_bundle"]

STARTERS_DIR = Path(__file__).resolve().parent.parent / "data" / "starters"

#: presets whose training images are fluorescence (bright objects on a dark background)
_FLUORESCENCE = ("particles-2d", "particle-localize", "cells-count", "nuclei-segment")


def list_starters() -> list[str]:
    """Preset names that have a shipped starter bundle."""
    if not STARTERS_DIR.is_dir():
        return []
    return sorted(p.stem for p in STARTERS_DIR.glob("*.zip"))


def is_starter(path: str | Path) -> bool:
    """Whether ``path`` is one of the shipped starter bundles."""
    try:
        return Path(path).resolve().parent == STARTERS_DIR and Path(path).suffix == ".zip"
    except OSError:
        return False


def resolve_bundle(spec: str | Path) -> Path:
    """A bundle path from an existing path, or from a preset name that has a starter model.

    Raises
    ------
    FileNotFoundError
        Neither an existing path nor a starter (the message lists the starters).
    """
    path = Path(spec)
    if path.exists():
        return path
    name = str(spec)
    if name in list_starters():
        return STARTERS_DIR / f"{name}.zip"
    raise FileNotFoundError(
        f"no bundle at {spec!r}, and it is not the name of a starter model "
        f"(starters shipped with napari-deeptrack: {', '.join(list_starters()) or 'none'})"
    )


def check_starter_fits(task, images, name: str | None = None) -> None:
    """Refuse to apply a fluorescence starter to images whose objects are dark on a bright background.

    The starters were trained on one modality only. With the image's robust z-score (median 0, noise
    sigma from the MAD 1), fluorescence shows bright outliers (> 6 sigma) and hardly any dark ones;
    bright-field particles and absorbing objects show the opposite.

    Raises
    ------
    ValueError
        Naming the modality of the starter and of the images, and what to do instead.
    """
    name = name or getattr(task, "name", "")
    if name not in _FLUORESCENCE:
        return
    a = np.asarray(images, dtype=np.float32)
    a = a.reshape(-1, *a.shape[-2:])[:8]
    med = np.median(a, axis=(-2, -1), keepdims=True)
    sig = 1.4826 * np.median(np.abs(a - med), axis=(-2, -1), keepdims=True)
    z = (a - med) / np.maximum(sig, 1e-6)
    bright, dark = float(np.mean(z > 6)), float(np.mean(z < -6))
    if dark > 1e-3 and dark > 3 * bright:
        raise ValueError(
            f"the {name} starter model was trained on fluorescence images (bright objects on a dark "
            f"background), but these images show mostly dark objects on a bright background "
            f"({100 * dark:.2f} % of pixels more than 6 noise sigmas below the background, "
            f"{100 * bright:.2f} % above): bright-field or absorption contrast. Use a model for this "
            "modality (e.g. train particles-selfsupervised from a crop of one object, or a "
            "brightfield preset) instead of this starter."
        )
