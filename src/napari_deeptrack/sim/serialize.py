"""JSON round trip and Python-script export for every pipeline object.

Every simulation object (distributions, scatterers, optics, noise, targets, pipelines) is a dataclass
registered here with :func:`register`. :func:`to_dict` turns a tree of such objects into plain JSON
data (``{"type": "Uniform", "low": 0.0, "high": 1.0}``), :func:`from_dict` rebuilds it, and
:func:`to_python` writes a readable Python expression that rebuilds it.

Only registered classes can be rebuilt: loading a configuration never executes code.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a dataclass JSON round-trippable under its class name."""
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        existing = _REGISTRY[name]
        if f"{existing.__module__}.{existing.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
            raise TypeError(f"two serialisable classes named {name!r}: {existing} and {cls}")
    _REGISTRY[name] = cls
    return cls


def registered_types() -> dict[str, type]:
    """Return a copy of the registry (name -> class)."""
    return dict(_REGISTRY)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _REGISTRY.get(name) is not type(value):
            raise TypeError(f"{name} is not registered for serialisation (use @register)")
        out: dict[str, Any] = {"type": name}
        for f in dataclasses.fields(value):
            if not f.init or f.name.startswith("_"):
                continue
            out[f.name] = _encode(getattr(value, f.name))
        return out
    if isinstance(value, complex):
        return {"type": "complex", "real": value.real, "imag": value.imag}
    if isinstance(value, tuple):
        return {"type": "tuple", "items": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only dicts with string keys can be serialised")
        return {"type": "dict", "items": {k: _encode(v) for k, v in value.items()}}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        return _encode(value.item())
    raise TypeError(f"cannot serialise value of type {type(value).__name__}: {value!r}")


def _decode(data: Any) -> Any:
    if isinstance(data, list):
        return [_decode(v) for v in data]
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "complex":
            return complex(data["real"], data["imag"])
        if kind == "tuple":
            return tuple(_decode(v) for v in data["items"])
        if kind == "dict":
            return {k: _decode(v) for k, v in data["items"].items()}
        if kind is None:
            raise ValueError(f"object without a 'type' key in configuration: {sorted(data)}")
        cls = _REGISTRY.get(kind)
        if cls is None:
            raise ValueError(
                f"unknown object type {kind!r} in configuration; known types: {sorted(_REGISTRY)}"
            )
        kwargs = {k: _decode(v) for k, v in data.items() if k != "type"}
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(kwargs) - names
        if unknown:
            raise ValueError(f"{kind}: unknown field(s) {sorted(unknown)}; valid fields: {sorted(names)}")
        try:
            return cls(**kwargs)
        except (TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
            from ..errors import ConfigError  # a wrong value type (a string for a number...)

            raise ConfigError(f"{kind}: invalid field value(s) ({type(exc).__name__}: {exc})") from None
        except ValueError as exc:
            from ..errors import ConfigError, DeepTrackError

            if isinstance(exc, DeepTrackError) or str(exc).startswith(kind):
                raise
            raise ConfigError(f"{kind}: {exc}") from None
    return data


#: Deepest nesting of lists / objects a configuration may have (real ones have fewer than 15 levels).
MAX_DEPTH = 64


def _check_depth(data: Any) -> None:
    from ..errors import ConfigError

    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"configuration nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)


def _check_text_depth(text: str) -> None:
    """Bracket depth of JSON text, counted outside strings, before ``json.loads`` can recurse."""
    from ..errors import ConfigError

    depth, in_str, escape = 0, False, False
    for ch in text:
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"configuration nested more than {MAX_DEPTH} levels deep")
        elif ch in "]}":
            depth -= 1


def to_dict(obj: Any) -> Any:
    """Encode a tree of registered dataclasses as JSON-compatible data."""
    return _encode(obj)


def from_dict(data: Any) -> Any:
    """Rebuild a tree of registered dataclasses from :func:`to_dict` output.

    The one decoder of configurations (task files, bundles, the Simulate widget's JSON, tests). Every
    serialisable class lives in ``napari_deeptrack.sim`` and the package imports all its modules, so
    whatever imports this module can decode any configuration.
    """
    from ..errors import ConfigError, DeepTrackError

    _check_depth(data)
    try:
        return _decode(data)
    except DeepTrackError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # malformed structure
        raise ConfigError(f"invalid configuration ({type(exc).__name__}: {exc})") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # a field's own check: one documented type
        raise ConfigError(str(exc) or type(exc).__name__) from None


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Encode ``obj`` as a JSON string."""
    return json.dumps(to_dict(obj), indent=indent)


def from_json(text: str) -> Any:
    """Rebuild an object from :func:`to_json` output.

    Raises :class:`~napari_deeptrack.errors.ConfigError` (a ``ValueError``) for text that is not JSON,
    is nested more than :data:`MAX_DEPTH` levels, or does not describe registered objects.
    """
    from ..errors import ConfigError

    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"configuration is not UTF-8 text ({exc})") from None
    _check_text_depth(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"configuration is not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError("configuration nested too deeply") from None
    return from_dict(data)


def _py(value: Any, indent: int) -> str:
    pad = "    " * (indent + 1)
    end = "    " * indent
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = []
        for f in dataclasses.fields(value):
            if not f.init or f.name.startswith("_"):
                continue
            v = getattr(value, f.name)
            if f.default is not dataclasses.MISSING and _safe_eq(v, f.default):
                continue
            parts.append(f"{pad}{f.name}={_py(v, indent + 1)},")
        if not parts:
            return f"{type(value).__name__}()"
        return f"{type(value).__name__}(\n" + "\n".join(parts) + f"\n{end})"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + "\n".join(f"{pad}{_py(v, indent + 1)}," for v in value) + f"\n{end}]"
    if isinstance(value, tuple):
        inner = ", ".join(_py(v, indent + 1) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = "\n".join(f"{pad}{k!r}: {_py(v, indent + 1)}," for k, v in value.items())
        return "{\n" + items + f"\n{end}}}"
    return repr(value)


def _safe_eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _collect_types(value: Any, found: set[type]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found.add(type(value))
        for f in dataclasses.fields(value):
            _collect_types(getattr(value, f.name), found)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect_types(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_types(v, found)


def to_python(obj: Any, name: str = "pipeline") -> str:
    """Export ``obj`` as a readable Python script that rebuilds it.

    The script imports every class it uses from its defining module and assigns the object to
    ``name``. ``exec`` of the script followed by ``to_dict(namespace[name])`` gives back
    ``to_dict(obj)``.
    """
    types: set[type] = set()
    _collect_types(obj, types)
    by_module: dict[str, list[str]] = {}
    for t in sorted(types, key=lambda t: (t.__module__, t.__name__)):
        by_module.setdefault(t.__module__, []).append(t.__name__)
    lines = ['"""Simulation pipeline exported by napari-deeptrack."""', ""]
    for mod, names in sorted(by_module.items()):
        lines.append(f"from {mod} import {', '.join(names)}")
    lines += ["", f"{name} = {_py(obj, 0)}", ""]
    return "\n".join(lines)
