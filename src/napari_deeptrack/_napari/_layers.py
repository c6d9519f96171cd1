"""Layer helpers shared by the dock widgets: input validation, named output layers, notifications.

Rules every widget follows:

- Input data is read and validated on the main thread (:func:`image_frames`) before any worker starts.
- Output layers carry ``metadata["napari_deeptrack"]``; :func:`write_layer` updates such a layer in place
  and never touches a layer the plugin did not create (a user layer with the same name is left alone and
  the output gets a free name instead).
- Outputs keep the source layer's scale, translate and units (:func:`spatial_kwargs`).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
import pandas as pd

from ._session import unwrap_viewer

__all__ = [
    "PLUGIN_KEY",
    "InputError",
    "image_frames",
    "image_layers",
    "is_plugin_layer",
    "layer_pixel_size_um",
    "notify",
    "spatial_kwargs",
    "start_worker",
    "widget_alive",
    "write_layer",
]

PLUGIN_KEY = "napari_deeptrack"


class InputError(ValueError):
    """A user-facing problem with the input (shown as a napari notification, never a traceback)."""


def notify(message: str, level: str = "info") -> None:
    """Show ``message`` in napari's notification area (``info``, ``warning`` or ``error``)."""
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning}.get(
        level, notifications.show_info
    )(message)


def worker_error_message(context: str, exc: BaseException) -> str:
    """One line for a failed worker: ``"<context>: <message>"`` (no traceback for expected errors)."""
    from ..errors import describe_error

    message, expected = describe_error(exc)
    if not expected:
        from ..errors import report_bug

        message = report_bug(exc, context)
    return f"{context}: {message}"


def start_worker(func, *args, error: str, **kwargs):
    """A thread worker (not started) whose errors are shown ONCE, as one notification without traceback.

    napari's own ``create_worker`` relays every worker error with its raw traceback, on top of the
    widget's message; superqt's worker (napari's base) with an ``errored`` connection does neither.
    """
    from superqt.utils import create_worker

    return create_worker(
        func,
        *args,
        _start_thread=False,
        _connect={"errored": lambda exc: notify(worker_error_message(error, exc), "error")},
        **kwargs,
    )


def image_layers(viewer) -> list:
    """Image layers of ``viewer`` (most recent last)."""
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def image_frames(layer, allow_stack: bool = True, what: str = "this step") -> tuple[np.ndarray, bool]:
    """Validated grey frames ``[T, H, W]`` (float32 copy) of an image layer, and whether it was 2D.

    Raises
    ------
    InputError
        No layer, not an image, RGB, wrong dimensionality, empty or constant data.
    """
    from napari.layers import Image

    if layer is None:
        raise InputError(f"No image layer selected: open or select a grey-scale image for {what}.")
    if not isinstance(layer, Image):
        raise InputError(
            f"Layer '{layer.name}' is a {type(layer).__name__} layer; {what} needs an image layer."
        )
    if layer.rgb:
        raise InputError(
            f"Layer '{layer.name}' is RGB; {what} needs a grey-scale image (split the channels first: "
            "right-click the layer > Split RGB)."
        )
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    shape = tuple(data.shape)
    if len(shape) not in ((2, 3) if allow_stack else (2,)):
        expected = "2D [Y, X] or a 3D stack [T, Y, X]" if allow_stack else "2D [Y, X]"
        raise InputError(
            f"Layer '{layer.name}' has {len(shape)} dimensions {shape}; {what} expects {expected}."
        )
    if int(np.prod(shape)) == 0 or min(shape[-2:]) < 8:
        raise InputError(f"Layer '{layer.name}' is empty or smaller than 8x8 pixels (shape {shape}).")
    frames = np.asarray(data, dtype=np.float32)
    if frames.ndim == 2:
        frames, was_2d = frames[None], True
    else:
        was_2d = False
    if not np.isfinite(frames).all():
        raise InputError(f"Layer '{layer.name}' contains NaN or infinite values.")
    if float(frames.max()) == float(frames.min()):
        raise InputError(f"Layer '{layer.name}' is empty: every pixel has the value {float(frames.min()):g}.")
    return frames, was_2d


def layer_pixel_size_um(layer) -> float | None:
    """The pixel size in micrometres from the layer's scale and units (None when not physical)."""
    if layer is None:
        return None
    scale = float(layer.scale[-1])
    units = getattr(layer, "units", None)
    unit = str(units[-1]) if units is not None else "pixel"
    factors = {
        "micrometer": 1.0,
        "micron": 1.0,
        "um": 1.0,
        "µm": 1.0,
        "nanometer": 1e-3,
        "nm": 1e-3,
        "millimeter": 1e3,
        "mm": 1e3,
    }
    for key, f in factors.items():
        if unit.lower() == key:
            return scale * f
    if unit in ("pixel", "px", "") and scale != 1.0:
        return scale  # a scale without units: assume micrometres (napari's default convention)
    px = (getattr(layer, "metadata", None) or {}).get("pixel_size_um")
    return float(px) if px else None


def spatial_kwargs(source, ndim: int, leading: tuple[float, ...] | None = None) -> dict[str, Any]:
    """``scale``, ``translate`` and ``units`` for an ``ndim``-dimensional output aligned with ``source``.

    The last two axes (y, x) take the source's; extra leading axes (frame, z) take the source's where it
    has them, else ``leading`` (default 1.0) with translate 0.
    """
    if source is None:
        return {}
    s_scale, s_trans = list(source.scale), list(source.translate)
    s_units = [str(u) for u in source.units] if getattr(source, "units", None) is not None else None
    scale, trans, units = [], [], []
    for i in range(ndim):
        j = len(s_scale) - ndim + i
        if j >= 0:
            scale.append(float(s_scale[j]))
            trans.append(float(s_trans[j]))
            units.append(s_units[j] if s_units else "pixel")
        else:
            lead = leading[i] if leading is not None and i < len(leading) else 1.0
            scale.append(float(lead))
            trans.append(0.0)
            units.append(s_units[-1] if s_units and leading is not None else "pixel")
    out: dict[str, Any] = {"scale": tuple(scale), "translate": tuple(trans)}
    if s_units:
        out["units"] = tuple(units)
    return out


def widget_alive(widget) -> bool:
    """False once the widget's Qt object was deleted (its napari window closed: napari deletes the
    main window and its docks on close), so late worker results are dropped. Public API only."""
    try:
        native = getattr(widget, "native", widget)
        if native is None:
            return False
        native.objectName()
    except (RuntimeError, AttributeError):  # the wrapped C++ object has been deleted
        return False
    return True


def is_plugin_layer(layer) -> bool:
    return bool((getattr(layer, "metadata", None) or {}).get(PLUGIN_KEY))


def _free_name(viewer, name: str) -> str:
    names = {layer.name for layer in viewer.layers}
    k = 2
    candidate = name
    while candidate in names:
        candidate = f"{name} [{k}]"
        k += 1
    return candidate


def write_layer(viewer, name: str, layer_type: str, data, role: str | None = None, **kwargs):
    """Add or update the plugin's output layer called ``name``.

    An existing layer with that name is updated in place only if the plugin created it with the same
    ``role`` and type; a user's layer is never overwritten (the output gets the next free name).
    ``kwargs`` are layer keyword arguments (``scale``, ``features``...).
    """
    role = role or name
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", None) or {}
        if meta.get(PLUGIN_KEY) == role and layer._type_string == layer_type:
            _update(layer, layer_type, data, kwargs)
            return unwrap_viewer(layer)
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[PLUGIN_KEY] = role
    add = getattr(viewer, f"add_{layer_type}")
    return unwrap_viewer(add(data, name=_free_name(viewer, name), metadata=metadata, **kwargs))


def _update(layer, layer_type: str, data, kwargs: dict) -> None:
    kwargs = dict(kwargs)
    kwargs.pop("name", None)
    extra_meta = kwargs.pop("metadata", None)
    if extra_meta:
        layer.metadata = {**layer.metadata, **extra_meta}
    for key in ("scale", "translate", "units"):
        if key in kwargs:
            value = kwargs.pop(key)
            if len(value) == layer.ndim:
                setattr(layer, key, value)
    features = kwargs.pop("features", None)
    if layer_type == "points":
        layer.data = data
        if features is not None:
            layer.features = features
        for key in ("face_color", "face_colormap", "border_colormap", "border_color", "size", "shown"):
            if key in kwargs:
                setattr(layer, key, kwargs.pop(key))
        layer.refresh()
        return
    if layer_type == "shapes":
        layer.data = []
        if len(data):
            layer.add(data, shape_type=kwargs.pop("shape_type", "rectangle"))
        if features is not None and len(features) == len(layer.data):
            layer.features = features
        return
    layer.data = data
    if features is not None and hasattr(layer, "features"):
        try:
            layer.features = features
        except (ValueError, TypeError):  # tracks/labels: features per id, keep going without
            pass
    if layer_type == "image" and "contrast_limits" in kwargs:
        layer.contrast_limits = kwargs["contrast_limits"]


def points_table(layer, only_shown: bool = False) -> pd.DataFrame:
    """Points layer -> table ``frame, y, x`` (+ z_um, probability when present), in data pixels."""
    data = np.asarray(layer.data, dtype=float)
    if only_shown and len(getattr(layer, "shown", [])) == len(data):
        mask = np.asarray(layer.shown, dtype=bool)
    else:
        mask = np.ones(len(data), bool)
    data = data[mask]
    cols = {"y": data[:, -2], "x": data[:, -1]} if len(data) else {"y": [], "x": []}
    table = pd.DataFrame(cols)
    table["frame"] = (
        data[:, 0].round().astype(int) if data.ndim == 2 and data.shape[1] >= 3 and len(data) else 0
    )
    feats = layer.features
    if len(feats) == len(mask):
        for c in ("probability", "z_um"):
            if c in feats:
                table[c] = feats[c].to_numpy()[mask]
    return table


def relay_events(job, stop_flag):
    """Worker generator: runs ``job(callbacks=[...], stop_flag=stop_flag)`` in a helper thread and yields
    every trainer event (so the napari worker reports progress per batch); returns the job's result.

    Quitting the worker stops the job cooperatively.
    """
    events: queue.Queue = queue.Queue()
    done = object()
    box: dict = {}

    def run():
        try:
            box["result"] = job(callbacks=[events.put], stop_flag=stop_flag)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the worker
            box["error"] = exc
        finally:
            events.put(done)

    thread = threading.Thread(target=run, name="napari-deeptrack-learn", daemon=True)
    thread.start()
    try:
        while True:
            ev = events.get()
            if ev is done:
                break
            yield ev
    finally:
        if thread.is_alive():
            stop_flag.stop()
        thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
