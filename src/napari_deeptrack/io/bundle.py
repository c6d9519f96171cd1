"""Model bundles: a folder or ``.zip`` with ``config.json`` and ``weights.safetensors``.

``config.json`` records everything needed to reuse, reproduce and report a model: the task (its
simulation pipeline, target, loss, post-processing) as serialised by
:func:`napari_deeptrack.sim.serialize.to_dict`, the model config, the input normalisation, the pixel
size and units, decision thresholds, the training settings and history, validation metrics, the
seed, package / torch / Python versions, the date, and the SHA-256 of the weights.

Saving is atomic: everything is written under a temporary name in the destination folder, then
renamed into place, so a crash never leaves a half-written bundle. Loading validates the schema and
version and the weights' checksum, never unpickles (safetensors + JSON only), and refuses pickles
(e.g. ``torch.save`` output renamed to ``weights.safetensors``) and foreign files with a ValueError.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import struct
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BUNDLE_FORMAT",
    "SCHEMA_VERSION",
    "Bundle",
    "load_bundle",
    "package_versions",
    "read_bundle_config",
    "save_bundle",
]

BUNDLE_FORMAT = "napari-deeptrack-bundle"
SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
_MAX_HEADER = 100_000_000


# ---------------------------------------------------------------------------- helpers
def package_versions() -> dict[str, str]:
    """Versions of this package and of the libraries a model depends on (for bundles and reports)."""
    from .. import __version__

    out = {
        "napari_deeptrack": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import safetensors

        out["safetensors"] = safetensors.__version__
    except Exception:  # pragma: no cover
        pass
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())
    return obj


def _weights_bytes(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return save(state)


def _looks_like_pickle(data: bytes) -> bool:
    # pickle protocol >= 2 starts with PROTO (0x80); torch.save writes a zip archive ("PK")
    return data[:1] == b"\x80" or data[:2] == b"PK" or data[:1] in (b"(", b"c", b"}", b"]")


def _check_safetensors(data: bytes, where: str) -> None:
    """Refuse pickles, zip archives (torch.save) and anything that is not a safetensors file."""
    problem = None
    if len(data) < 10:
        problem = f"too short ({len(data)} bytes)"
    else:
        (n,) = struct.unpack("<Q", data[:8])
        if n < 2 or n > min(len(data) - 8, _MAX_HEADER) or data[8:9] != b"{":
            problem = "bad header"
        else:
            try:
                header = json.loads(data[8 : 8 + n].decode("utf-8"))
                if not isinstance(header, dict):
                    problem = "header is not a JSON object"
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problem = f"unreadable header: {exc}"
    if problem is None:
        return
    if _looks_like_pickle(data):
        raise ValueError(
            f"{where} is a pickle / torch.save file, not safetensors; it is refused because loading "
            "pickles can execute arbitrary code. Re-save the weights with safetensors."
        )
    raise ValueError(f"{where} is not a safetensors file ({problem})")


def _is_bundle_dir(path: Path) -> bool:
    return path.is_dir() and (not any(path.iterdir()) or (path / CONFIG_NAME).exists())


# ---------------------------------------------------------------------------- saving
def build_config(
    model: torch.nn.Module,
    task,
    history: dict | None = None,
    *,
    seed: int | None = None,
    training: dict | None = None,
    metrics: dict | None = None,
    notes: str = "",
    weights: bytes | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``model`` trained on ``task``."""
    from ..nn import model_config
    from ..sim.serialize import to_dict

    mcfg = model_config(model)
    if mcfg is None:
        mcfg = {"type": "custom", "class": f"{type(model).__module__}.{type(model).__qualname__}"}
    cfg: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": task.name,
        "kind": task.kind,
        "description": task.description,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "seed": seed,
        "model": mcfg,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "input_normalization": dict(task.input_normalization),
        "pixel_size_um": float(task.pixel_size_um),
        "units": {"pixel_size": "um", "image_position": "px", "z": "um"},
        "input_shape_trained": list(task.pipeline.image_shape),
        "postprocess": dict(task.postprocess),
        "loss": dict(task.loss),
        "training": dict(training or task.training),
        "history": history or {},
        "metrics": metrics or {},
        "notes": notes,
        "task": to_dict(task),
    }
    if weights is not None:
        cfg["weights"] = {
            "file": WEIGHTS_NAME,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "format": "safetensors",
        }
    return _jsonable(cfg)


def save_bundle(
    path: str | Path,
    model: torch.nn.Module,
    task,
    history: dict | None = None,
    *,
    seed: int | None = None,
    training: dict | None = None,
    metrics: dict | None = None,
    notes: str = "",
) -> Path:
    """Save ``model`` and ``task`` as a bundle (a folder, or a zip file when ``path`` ends in ``.zip``).

    Parameters
    ----------
    path : str or Path
        Destination. An existing bundle there is replaced atomically; an existing folder that is not
        a bundle (and not empty) is refused, so user files are never deleted.
    model : torch.nn.Module
        The trained model (its weights are saved; a model from ``build_model`` also saves its config).
    task : Task
        The task it was trained on.
    history, training, metrics : dict
        Training history, training settings and final validation metrics, stored for reporting.
    seed : int
        Root seed of the training run.
    notes : str
        Free text.

    Returns
    -------
    Path
        The bundle path.
    """
    path = Path(path)
    weights = _weights_bytes(model)
    cfg = build_config(
        model, task, history, seed=seed, training=training, metrics=metrics, notes=notes, weights=weights
    )
    text = json.dumps(cfg, indent=2)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    as_zip = path.suffix.lower() == ".zip"
    if path.exists():
        if as_zip and not (path.is_file() and zipfile.is_zipfile(path)):
            raise ValueError(f"{path} exists and is not a bundle zip; refusing to overwrite it")
        if not as_zip and not _is_bundle_dir(path):
            raise ValueError(f"{path} exists and is not a bundle folder; refusing to overwrite it")
    try:
        if as_zip:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(CONFIG_NAME, text)
                zf.writestr(WEIGHTS_NAME, weights)
            _fsync(tmp)
            os.replace(tmp, path)
        else:
            tmp.mkdir()
            _write_file(tmp / WEIGHTS_NAME, weights)
            _write_file(tmp / CONFIG_NAME, text.encode("utf-8"))
            old = None
            if path.exists():
                old = parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                if old is not None:
                    os.rename(old, path)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
    return path


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- loading
def _read_members(path: Path) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no bundle at {path}")
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise ValueError(f"{path} is not a model bundle: it has no {CONFIG_NAME}")
        w = path / WEIGHTS_NAME
        return cfg_path.read_bytes(), (w.read_bytes() if w.is_file() else None)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a model bundle (expected a folder or a .zip with {CONFIG_NAME})")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if CONFIG_NAME not in names:
                raise ValueError(
                    f"{path} is not a model bundle: the zip has no {CONFIG_NAME} at its top level"
                )
            cfg = zf.read(CONFIG_NAME)
            w = zf.read(WEIGHTS_NAME) if WEIGHTS_NAME in names else None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is a corrupt zip file: {exc}") from None
    return cfg, w


def _parse_config(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {CONFIG_NAME} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != BUNDLE_FORMAT:
        raise ValueError(
            f"{path}: {CONFIG_NAME} is not a napari-deeptrack bundle config (format != {BUNDLE_FORMAT!r})"
        )
    ver = cfg.get("schema_version")
    if not isinstance(ver, int) or ver < 1:
        raise ValueError(f"{path}: invalid schema_version {ver!r}")
    if ver > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: bundle schema version {ver} was written by a newer napari-deeptrack "
            f"({cfg.get('versions', {}).get('napari_deeptrack', '?')}); "
            f"this version reads up to {SCHEMA_VERSION}. "
            "Please upgrade napari-deeptrack."
        )
    for key in ("model", "task"):
        if key not in cfg:
            raise ValueError(f"{path}: {CONFIG_NAME} lacks the {key!r} entry")
    return cfg


def read_bundle_config(path: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of a bundle, without loading weights."""
    raw, _ = _read_members(Path(path))
    return _parse_config(raw, Path(path))


@dataclass
class Bundle:
    """A loaded bundle: ``model`` (eval mode), ``task``, the full ``config`` dict and its ``path``."""

    model: torch.nn.Module
    task: Any
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def pixel_size_um(self) -> float:
        return float(self.task.pixel_size_um)

    @property
    def input_normalization(self) -> dict[str, Any]:
        return dict(self.task.input_normalization)

    @property
    def postprocess(self) -> dict[str, Any]:
        return dict(self.task.postprocess)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 16, normalize: bool = True) -> torch.Tensor:
        """Raw images [B, C, H, W] -> model outputs after ``postprocess["activation"]`` (on CPU).

        Applies the task's input normalisation first (as in training) when ``normalize`` is true.
        """
        from ..train.data import normalize as _normalize

        x = torch.as_tensor(images, dtype=torch.float32)
        if x.dim() == 3:
            x = x[:, None]
        dev = next(iter(self.model.parameters()), torch.empty(0)).device
        act = self.task.postprocess.get("activation", "none")
        outs = []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            if normalize:
                xb = _normalize(xb, self.task.input_normalization)
            out = self.model(xb.to(dev))
            if act == "sigmoid":
                out = torch.sigmoid(out)
            elif act == "softmax":
                out = torch.softmax(out, dim=1)
            outs.append(out.cpu())
        return torch.cat(outs)


def load_bundle(
    path: str | Path, device: str | torch.device = "cpu", model: torch.nn.Module | None = None
) -> Bundle:
    """Load a bundle saved by :func:`save_bundle` (never unpickles).

    Parameters
    ----------
    path : str or Path
        Bundle folder or zip.
    device : str
        Where to put the model.
    model : torch.nn.Module, optional
        A module to load the weights into (needed for bundles of user-defined models).

    Raises
    ------
    ValueError
        Not a bundle, unknown or newer schema, a pickle or corrupt weights file, a checksum mismatch,
        or weights that do not fit the model.
    """
    from safetensors.torch import load as st_load

    from ..nn import build_model
    from ..sim.serialize import from_dict

    path = Path(path)
    raw_cfg, weights = _read_members(path)
    cfg = _parse_config(raw_cfg, path)
    if weights is None:
        raise ValueError(f"{path} is not a complete bundle: {WEIGHTS_NAME} is missing")
    _check_safetensors(weights, f"{path}/{WEIGHTS_NAME}")
    expected = cfg.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(weights).hexdigest() != expected:
        raise ValueError(
            f"{path}: {WEIGHTS_NAME} does not match the checksum in {CONFIG_NAME} (corrupt or replaced)"
        )
    try:
        state = st_load(weights)
    except Exception as exc:
        raise ValueError(f"{path}/{WEIGHTS_NAME} is corrupt: {exc}") from None
    from ..tasks.registry import list_presets

    list_presets()  # (case-studies helper) import tasks/presets_*.py: their classes appear in tasks
    task = from_dict(cfg["task"])
    if model is None:
        if cfg["model"].get("type") == "custom":
            raise ValueError(
                f"{path} holds a user-defined model ({cfg['model'].get('class')}); "
                "pass it as load_bundle(..., model=...)"
            )
        model = build_model(cfg["model"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the model: {exc}") from None
    model.to(device).eval()
    return Bundle(model=model, task=task, config=cfg, path=path)
