"""One shared, evented session per napari viewer: what the dock widgets hand to each other.

napari gives every plugin widget its *own* proxy of the viewer (``PublicOnlyProxy``), so anything keyed
by ``id(viewer)`` differs from widget to widget. :func:`session_for` unwraps the proxy and keys the
session by the real viewer object (weakly: the session goes away with the viewer).

The session holds

- ``simulation``: the Simulate form's current pipeline (full-frame image shape), with where it came from;
- ``model``: the model to use next (a :class:`~napari_deeptrack.io.bundle.Bundle` trained in the Train
  widget, loaded from a file in Apply, or fine-tuned in Review), with its origin;
- ``result``: the last Apply run (the bundle it used, the source layer's name, the kind of output).

Each has a signal (``simulation_changed``, ``model_changed``, ``result_changed``) that widgets subscribe
to; widgets never import each other. No Qt here (psygnal only).

A widget can also ask for a fix another widget provides: :meth:`Session.request_match` (Apply's coverage
warnings: "Re-match polarity on this layer") emits ``match_requested`` with a :class:`MatchRequest`;
the Simulate widget takes it (:meth:`Session.take_match_request`), selects the layer and runs Match to
layer. A request nobody has taken yet stays ``pending_match`` until a Simulate widget opens.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

__all__ = ["ApplyResult", "MatchRequest", "Session", "session_for", "unwrap_viewer"]


@dataclass
class ApplyResult:
    """What the last Apply run produced (for Review and the report)."""

    bundle: Any
    source_layer: str
    kind: str
    summary: str = ""
    layers: list[str] = field(default_factory=list)


@dataclass
class MatchRequest:
    """A request to match the simulation to a layer (from Apply's coverage warnings).

    ``focus``: the estimates the warning is about (``polarity``, ``noise_sigma``...), highlighted in the
    Simulate widget's table; ``reason``: the warning, shown there.
    """

    layer_name: str
    focus: list[str] = field(default_factory=list)
    reason: str = ""


class Session:
    """Shared state of the plugin's widgets in one viewer (see the module docstring)."""

    simulation_changed = Signal(object)
    model_changed = Signal(object)
    result_changed = Signal(object)
    match_requested = Signal(object)

    def __init__(self) -> None:
        self.simulation = None
        self.simulation_origin = ""
        self.simulation_matched = False
        self.model = None
        self.model_origin = ""
        self.result: ApplyResult | None = None
        self.pending_match: MatchRequest | None = None

    def set_simulation(self, pipeline, origin: str = "", matched: bool | None = None) -> None:
        """Publish the Simulate form's pipeline (``None``: the form does not describe a valid one)."""
        self.simulation = pipeline
        self.simulation_origin = origin
        if matched is not None:
            self.simulation_matched = bool(matched)
        self.simulation_changed.emit(pipeline)

    def set_model(self, bundle, origin: str) -> None:
        """Publish the model to use next (``origin``: "trained", "fine-tuned", "file")."""
        self.model = bundle
        self.model_origin = origin
        self.model_changed.emit(bundle)

    def set_result(self, result: ApplyResult) -> None:
        self.result = result
        self.result_changed.emit(result)

    def request_match(self, request: MatchRequest) -> bool:
        """Ask the Simulate widget to match the simulation to a layer. Returns whether a widget took it
        (False: it waits in ``pending_match`` for the next Simulate widget that opens)."""
        self.pending_match = request
        self.match_requested.emit(request)
        return self.pending_match is None

    def take_match_request(self) -> MatchRequest | None:
        """The pending request, removed from the session (the Simulate widget handles it)."""
        request, self.pending_match = self.pending_match, None
        return request


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unwrap_viewer(obj):
    """The real object (viewer, layer) behind napari's per-widget proxies (``__wrapped__`` chain)."""
    for _ in range(8):
        if not _is_proxy(obj):
            break
        obj = obj.__wrapped__
    return obj


def _is_proxy(obj) -> bool:
    try:
        import wrapt
    except ImportError:  # pragma: no cover - napari depends on wrapt
        return False
    return isinstance(obj, wrapt.ObjectProxy)


def session_for(viewer) -> Session:
    """The session of ``viewer`` (or of the real viewer behind a proxy), created on first use."""
    real = unwrap_viewer(viewer)
    try:
        session = _SESSIONS.get(real)
    except TypeError:  # not weak-referenceable (a test double): keep it on the object
        session = getattr(real, "_napari_deeptrack_session", None)
        if session is None:
            session = Session()
            real._napari_deeptrack_session = session
        return session
    if session is None:
        session = Session()
        _SESSIONS[real] = session
    return session
