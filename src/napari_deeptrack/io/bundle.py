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
import sys
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BundleError, MemoryBudgetError, OutputPathError

__all__ = [
    "BUNDLE_FORMAT",
    "SCHEMA_VERSION",
    "Bundle",
    "load_bundle",
    "package_versions",
    "check_bundle_destination",
    "read_bundle_config",
    "save_bundle",
]

BUNDLE_FORMAT = "napari-deeptrack-bundle"
SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
_MAX_HEADER = 100_000_000
#: Largest ``config.json`` accepted (bytes); real ones are a few hundred kB.
MAX_CONFIG_BYTES = 64 * 1024**2
#: Largest compression ratio of a zip member (a "zip bomb" inflates a few kB to gigabytes).
MAX_ZIP_RATIO = 200
#: Files a bundle folder may hold besides config.json and the weights (written by our own tools).
_BUNDLE_EXTRAS = (".png", ".html", ".md", ".json", ".csv", ".txt")


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
        raise BundleError(
            f"{where} is a pickle / torch.save file, not safetensors; it is refused because loading "
            "pickles can execute arbitrary code. Re-save the weights with safetensors."
        )
    raise BundleError(f"{where} is not a safetensors file ({problem})")


def _is_our_config(raw: bytes) -> bool:
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == BUNDLE_FORMAT


def _is_bundle_dir(path: Path) -> bool:
    """An empty folder, or one of our bundles holding nothing a user would miss."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if not entries:
        return True
    cfg = path / CONFIG_NAME
    if not cfg.is_file() or cfg.stat().st_size > MAX_CONFIG_BYTES or not _is_our_config(cfg.read_bytes()):
        return False
    for e in entries:
        if e.name in (CONFIG_NAME, WEIGHTS_NAME):
            continue
        if e.is_dir() or e.is_symlink() or e.suffix.lower() not in _BUNDLE_EXTRAS:
            return False
    return True


def _is_bundle_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(CONFIG_NAME)
            if info.file_size > MAX_CONFIG_BYTES:
                return False
            return _is_our_config(zf.read(CONFIG_NAME))
    except (KeyError, zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return False


def check_bundle_destination(path: str | Path, option: str = "--out") -> Path:
    """Validate where a bundle will be saved, before any training; return the path.

    Accepted: a new path whose folder can be created; an empty folder; one of our bundles (folder or
    zip) to replace. Refused with :class:`~napari_deeptrack.errors.OutputPathError`: a folder holding
    anything else (user files are never deleted), a zip or file that is not one of our bundles, a path
    in a folder that cannot be written.
    """
    from .atomic import check_output_file

    path = Path(path)
    as_zip = path.suffix.lower() == ".zip"
    if path.is_symlink():
        raise OutputPathError(f"{option} {path} is a symbolic link; give a real path", parameter=option)
    if path.exists():
        if as_zip:
            if not path.is_file() or not _is_bundle_zip(path):
                raise OutputPathError(
                    f"{option} {path} exists and is not a napari-deeptrack bundle zip; refusing to "
                    "overwrite it (choose a new name)",
                    parameter=option,
                )
        elif path.is_file():
            raise OutputPathError(
                f"{option} {path} is an existing file; a bundle is a folder or a .zip (choose a new name)",
                parameter=option,
            )
        elif not _is_bundle_dir(path):
            raise OutputPathError(
                f"{option} {path} is a folder holding other files; refusing to replace it (a bundle "
                "folder must be new, empty or a previous bundle). Choose a new folder name.",
                parameter=option,
            )
        if not os.access(path if path.is_dir() else path.parent, os.W_OK):
            raise OutputPathError(f"{option} {path}: no permission to write", parameter=option)
        parent = path.parent if str(path.parent) else Path(".")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputPathError(f"{option} {path}: no permission to write in {parent}", parameter=option)
        return path
    check_output_file(path, option)
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    return rc == 0


def _recover(path: Path) -> None:
    """Put back a bundle folder left as ``.NAME.old-*`` by a crash between two renames."""
    if path.exists():
        return
    parent = path.parent if str(path.parent) else Path(".")
    olds = sorted(parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds:
        if (old / CONFIG_NAME).is_file():
            try:
                os.rename(old, path)
            except OSError:
                continue
            return


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
    _recover(path)
    check_bundle_destination(path, option="bundle path")
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
            if path.exists() and _exchange(tmp, path):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous bundle
            else:
                # no atomic exchange: two renames; a crash between them leaves ``.NAME.old-*``,
                # which the next save or load puts back (_recover)
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
def _weights_limit() -> int:
    from ..sim.budget import memory_budget

    return memory_budget()


def _too_big(what: str, size: int, limit: int, path: Path) -> MemoryBudgetError:
    from ..sim.budget import format_bytes

    return MemoryBudgetError(
        f"{path}: {what} declares {format_bytes(size)}, more than the {format_bytes(limit)} limit; "
        "this is not a bundle this machine can load (or raise NAPARI_DEEPTRACK_MEMORY_GB)",
        need_bytes=int(size),
        budget_bytes=int(limit),
    )


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise _too_big(what, size, limit, path.parent)
    return path.read_bytes()


def _read_members(path: Path) -> tuple[bytes, bytes | None]:
    path = Path(path)
    _recover(path)
    if not path.exists():
        raise FileNotFoundError(f"no bundle at {path}")
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise BundleError(f"{path} is not a model bundle: it has no {CONFIG_NAME}")
        w = path / WEIGHTS_NAME
        cfg = _read_limited(cfg_path, MAX_CONFIG_BYTES, CONFIG_NAME)
        return cfg, (_read_limited(w, _weights_limit(), WEIGHTS_NAME) if w.is_file() else None)
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is not a model bundle (expected a folder or a .zip with {CONFIG_NAME})")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if CONFIG_NAME not in names:
                raise BundleError(
                    f"{path} is not a model bundle: the zip has no {CONFIG_NAME} at its top level"
                )
            limits = {CONFIG_NAME: MAX_CONFIG_BYTES, WEIGHTS_NAME: _weights_limit()}
            out = {}
            for name, limit in limits.items():
                if name not in names:
                    continue
                info = zf.getinfo(name)
                if info.file_size > limit:
                    raise _too_big(name, info.file_size, limit, path)
                if info.compress_size * MAX_ZIP_RATIO < info.file_size and info.file_size > 1024**2:
                    raise BundleError(
                        f"{path}: {name} would inflate {info.compress_size} bytes to {info.file_size} "
                        f"(more than {MAX_ZIP_RATIO}x); refusing a zip bomb"
                    )
                with zf.open(name) as fh:  # never trust the declared size: read at most limit + 1
                    data = fh.read(limit + 1)
                if len(data) > limit:
                    raise _too_big(name, len(data), limit, path)
                out[name] = data
    except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error, ValueError) as exc:
        raise BundleError(f"{path} is a corrupt zip file: {exc}") from None
    except OSError as exc:  # a corrupt central directory makes zipfile seek to invalid offsets
        if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError):
            raise
        raise BundleError(f"{path} is a corrupt zip file: {exc}") from None
    return out[CONFIG_NAME], out.get(WEIGHTS_NAME)


def _parse_config(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: {CONFIG_NAME} is not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{path}: {CONFIG_NAME} is nested too deeply") from None
    if not isinstance(cfg, dict) or cfg.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: {CONFIG_NAME} is not a napari-deeptrack bundle config (format != {BUNDLE_FORMAT!r})"
        )
    ver = cfg.get("schema_version")
    if not isinstance(ver, int) or ver < 1:
        raise BundleError(f"{path}: invalid schema_version {ver!r}")
    if ver > SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema version {ver} was written by a newer napari-deeptrack "
            f"({cfg.get('versions', {}).get('napari_deeptrack', '?')}); "
            f"this version reads up to {SCHEMA_VERSION}. "
            "Please upgrade napari-deeptrack."
        )
    for key in ("model", "task"):
        if key not in cfg:
            raise BundleError(f"{path}: {CONFIG_NAME} lacks the {key!r} entry")
    if not isinstance(cfg["model"], dict) or not isinstance(cfg["task"], dict):
        raise BundleError(f"{path}: {CONFIG_NAME} 'model' and 'task' must be JSON objects")
    if not isinstance(cfg.get("weights", {}), dict):
        raise BundleError(f"{path}: {CONFIG_NAME} 'weights' must be a JSON object")
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
        raise BundleError(f"{path} is not a complete bundle: {WEIGHTS_NAME} is missing")
    _check_safetensors(weights, f"{path}/{WEIGHTS_NAME}")
    expected = cfg.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(weights).hexdigest() != expected:
        raise BundleError(
            f"{path}: {WEIGHTS_NAME} does not match the checksum in {CONFIG_NAME} (corrupt or replaced)"
        )
    try:
        state = st_load(weights)
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors for a corrupt file
        raise BundleError(f"{path}/{WEIGHTS_NAME} is corrupt: {exc}") from None
    # every serialisable class, Task included, lives in sim: decoding needs nothing above io
    try:
        task = from_dict(cfg["task"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BundleError(
            f"{path}: the task in {CONFIG_NAME} is invalid ({type(exc).__name__}: {exc})"
        ) from None
    if model is None:
        if cfg["model"].get("type") == "custom":
            raise BundleError(
                f"{path} holds a user-defined model ({cfg['model'].get('class')}); "
                "pass it as load_bundle(..., model=...)"
            )
        from ..sim.budget import estimate_model

        try:
            estimate_model(cfg["model"], what=f"the model of {path}").check()
            model = build_model(cfg["model"])
        except MemoryBudgetError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BundleError(f"{path}: the model in {CONFIG_NAME} is invalid ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: the weights do not fit the model: {exc}") from None
    try:
        model.to(device).eval()
    except (RuntimeError, AssertionError, TypeError) as exc:  # unknown device string, no CUDA build...
        from ..errors import DeviceError

        raise DeviceError(f"device {device!r} is not usable here ({exc})", parameter="device") from None
    return Bundle(model=model, task=task, config=cfg, path=path)
