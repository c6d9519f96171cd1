"""Parameter distributions, sampled for a whole batch at once from a seeded ``torch.Generator``.

Any simulation parameter may be a plain number (a constant) or one of these distributions.
``sample(value, shape, generator)`` draws a tensor of the requested shape, for example ``(B,)``
for a per-image parameter or ``(B, N)`` for a per-particle one. The same generator state gives the
same values, so the same seed gives the same batch.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> sample(Uniform(-1.0, 1.0), (4,), g).shape
torch.Size([4])
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .serialize import register

Number = int | float


class Distribution:
    """Base class: a random parameter sampled batch-wise."""

    def sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        context: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def support(self) -> tuple[float, float]:
        """Smallest and largest value the distribution can produce (may be infinite)."""
        return (-math.inf, math.inf)


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return generator.device
    return torch.device("cpu")


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_device(generator, device), dtype=torch.float32)


@register
@dataclass
class Constant(Distribution):
    """A fixed value."""

    value: float = 0.0

    def sample(self, shape, generator=None, device=None, context=None):
        return torch.full(shape, float(self.value), device=_device(generator, device), dtype=torch.float32)

    def support(self):
        return (float(self.value), float(self.value))


@register
@dataclass
class Uniform(Distribution):
    """Uniform on [low, high]."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        if not float(self.low) <= float(self.high):
            raise ValueError(f"Uniform: empty range, low ({self.low}) must be <= high ({self.high})")

    def sample(self, shape, generator=None, device=None, context=None):
        return self.low + (self.high - self.low) * _rand(shape, generator, device)

    def support(self):
        return (float(self.low), float(self.high))


@register
@dataclass
class LogUniform(Distribution):
    """Log-uniform on [low, high] (both > 0): equal probability per decade."""

    low: float = 1.0
    high: float = 10.0

    def __post_init__(self):
        if not 0 < float(self.low) <= float(self.high):
            raise ValueError(f"LogUniform: need 0 < low <= high, got low={self.low}, high={self.high}")

    def sample(self, shape, generator=None, device=None, context=None):
        lo, hi = math.log(self.low), math.log(self.high)
        return torch.exp(lo + (hi - lo) * _rand(shape, generator, device))

    def support(self):
        return (float(self.low), float(self.high))


@register
@dataclass
class Normal(Distribution):
    """Normal(mean, std), optionally clipped to [low, high]."""

    mean: float = 0.0
    std: float = 1.0
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        if self.std < 0:
            raise ValueError(f"Normal: std must be >= 0, got {self.std}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Normal: empty clip range, low ({self.low}) must be <= high ({self.high})")

    def sample(self, shape, generator=None, device=None, context=None):
        x = torch.randn(shape, generator=generator, device=_device(generator, device), dtype=torch.float32)
        x = self.mean + self.std * x
        if self.low is not None or self.high is not None:
            x = x.clamp(min=self.low, max=self.high)
        return x

    def support(self):
        lo = -math.inf if self.low is None else float(self.low)
        hi = math.inf if self.high is None else float(self.high)
        if self.std == 0:
            return (float(self.mean), float(self.mean))
        return (lo, hi)


@register
@dataclass
class IntUniform(Distribution):
    """Integers uniformly in [low, high] (both inclusive); sampled as int64."""

    low: int = 0
    high: int = 10

    def __post_init__(self):
        if int(self.low) > int(self.high):
            raise ValueError(f"IntUniform: empty range, low ({self.low}) must be <= high ({self.high})")

    def sample(self, shape, generator=None, device=None, context=None):
        return torch.randint(
            int(self.low), int(self.high) + 1, shape, generator=generator, device=_device(generator, device)
        )

    def support(self):
        return (float(self.low), float(self.high))


@register
@dataclass
class Choice(Distribution):
    """One of ``values`` (numbers), with optional probabilities."""

    values: list[float] = field(default_factory=lambda: [0.0])
    probabilities: list[float] | None = None

    def __post_init__(self):
        if len(self.values) == 0:
            raise ValueError("Choice: values must not be empty")
        if self.probabilities is not None:
            if len(self.probabilities) != len(self.values):
                raise ValueError("Choice: probabilities must have one entry per value")
            if any(p < 0 for p in self.probabilities) or sum(self.probabilities) <= 0:
                raise ValueError("Choice: probabilities must be >= 0 with a positive sum")

    def sample(self, shape, generator=None, device=None, context=None):
        dev = _device(generator, device)
        n = int(torch.Size(shape).numel())
        if self.probabilities is None:
            idx = torch.randint(0, len(self.values), (n,), generator=generator, device=dev)
        else:
            p = torch.tensor(self.probabilities, dtype=torch.float32, device=dev)
            idx = torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)
        vals = torch.tensor([float(v) for v in self.values], dtype=torch.float32, device=dev)
        return vals[idx].reshape(shape)

    def support(self):
        return (float(min(self.values)), float(max(self.values)))


_SAFE_FUNCS = {
    "sqrt": torch.sqrt,
    "exp": torch.exp,
    "log": torch.log,
    "abs": torch.abs,
    "sin": torch.sin,
    "cos": torch.cos,
    "minimum": torch.minimum,
    "maximum": torch.maximum,
    "clip": torch.clamp,
    "round": torch.round,
    "floor": torch.floor,
}
_SAFE_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Call,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.USub,
    ast.UAdd,
    ast.Mod,
    ast.FloorDiv,
)


#: Bounds of a ``Derived`` expression: characters, AST nodes, nesting depth, largest number literal.
MAX_EXPR_CHARS = 1000
MAX_EXPR_NODES = 200
MAX_EXPR_DEPTH = 32
MAX_LITERAL = 1e30


def _depth(node: ast.AST, level: int = 0) -> int:
    children = list(ast.iter_child_nodes(node))
    if level > MAX_EXPR_DEPTH:
        return level
    return max([level] + [_depth(c, level + 1) for c in children])


@register
@dataclass
class Derived(Distribution):
    """A parameter computed from other parameters of the same object, as an arithmetic expression.

    ``expr`` may use the names of parameters already sampled (given in ``context``), numbers,
    ``+ - * / ** % //`` and the functions sqrt, exp, log, abs, sin, cos, minimum, maximum, clip,
    round, floor. The expression is parsed and checked, never passed to ``eval``, so configurations
    stay safe to load. Example: ``Derived("0.5 * radius_um")``.

    The evaluator is bounded: at most 1000 characters, 200 syntax nodes and 32 levels of nesting;
    numbers are float32 tensors (``9**9**9`` is ``inf`` at once, never a huge integer); a result that
    is not finite (``1/0``, ``log(0)``) is an error naming the expression. Errors are
    :class:`~napari_deeptrack.errors.ConfigError` (a ``ValueError``).
    """

    expr: str = "0"

    def __post_init__(self):
        from ..errors import ConfigError

        if not isinstance(self.expr, str):
            raise ConfigError(f"Derived: expr must be a string, got {type(self.expr).__name__}")
        if len(self.expr) > MAX_EXPR_CHARS:
            raise ConfigError(f"Derived: expression longer than {MAX_EXPR_CHARS} characters")
        try:
            tree = ast.parse(self.expr.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise ConfigError(f"Derived: {self.expr!r} is not a valid expression ({exc})") from None
        nodes = list(ast.walk(tree))
        if len(nodes) > MAX_EXPR_NODES:
            raise ConfigError(f"Derived: {self.expr!r} has more than {MAX_EXPR_NODES} terms")
        if _depth(tree) > MAX_EXPR_DEPTH:
            raise ConfigError(f"Derived: {self.expr!r} is nested more than {MAX_EXPR_DEPTH} levels deep")
        for node in nodes:
            if not isinstance(node, _SAFE_NODES):
                raise ConfigError(f"Derived: unsupported syntax {type(node).__name__} in {self.expr!r}")
            if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id in _SAFE_FUNCS
            ):
                raise ConfigError(f"Derived: only {sorted(_SAFE_FUNCS)} may be called in {self.expr!r}")
            if isinstance(node, ast.Constant):
                v = node.value
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ConfigError(f"Derived: only numbers may appear as constants, got {v!r}")
                if not abs(float(v)) <= MAX_LITERAL:
                    raise ConfigError(f"Derived: number {v!r} is out of range (|x| <= {MAX_LITERAL:g})")
            if isinstance(node, ast.Name) and node.id in _SAFE_FUNCS:
                parent_ok = any(isinstance(c, ast.Call) and c.func is node for c in nodes)
                if not parent_ok:
                    raise ConfigError(f"Derived: {node.id} is a function; call it, e.g. {node.id}(x)")
        self._tree = tree
        if not self.names:  # a constant expression: evaluate it now, so a bad one fails at loading
            self.sample((1,))

    @property
    def names(self) -> list[str]:
        """Parameter names the expression depends on."""
        return sorted(
            {n.id for n in ast.walk(self._tree) if isinstance(n, ast.Name) and n.id not in _SAFE_FUNCS}
        )

    def sample(self, shape, generator=None, device=None, context=None):
        from ..errors import ConfigError

        context = context or {}
        missing = [n for n in self.names if n not in context]
        if missing:
            raise ConfigError(f"Derived({self.expr!r}) needs {missing}; available: {sorted(context)}")
        dev = _device(generator, device)
        try:
            with torch.no_grad():
                out = _eval(self._tree.body, context, dev)
                out = torch.broadcast_to(out.to(torch.float32), shape).clone()
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"Derived({self.expr!r}) cannot be evaluated: {exc}") from None
        if not bool(torch.isfinite(out).all()):
            raise ConfigError(
                f"Derived({self.expr!r}) gave non-finite values (division by zero, log of 0, overflow?)"
            )
        return out


def _eval(node: ast.AST, ctx: dict[str, Any], device=None) -> torch.Tensor:
    """Evaluate a checked expression with float32 tensors only (no Python big integers)."""
    if isinstance(node, ast.Constant):
        return torch.tensor(float(node.value), dtype=torch.float32, device=device)
    if isinstance(node, ast.Name):
        v = ctx[node.id]
        return (
            v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float32, device=device)
        )
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, ctx, device)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, ctx, device), _eval(node.right, ctx, device)
        a, b = a.to(torch.float32), b.to(torch.float32)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            return a / b
        if isinstance(op, ast.Pow):
            return torch.pow(a, b)
        if isinstance(op, ast.Mod):
            return torch.remainder(a, b)
        if isinstance(op, ast.FloorDiv):
            return torch.floor_divide(a, b)
    if isinstance(node, ast.Call):
        args = [_eval(a, ctx, device).to(torch.float32) for a in node.args]
        return _SAFE_FUNCS[node.func.id](*args)
    raise ValueError(f"unsupported expression node {type(node).__name__}")  # pragma: no cover


ParamLike = Number | Distribution


def sample(
    value: ParamLike,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    context: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Draw ``value`` (a number or a :class:`Distribution`) as a float32/int64 tensor of ``shape``."""
    if isinstance(value, Distribution):
        return value.sample(tuple(shape), generator, device, context)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"parameter must be a number or a Distribution, got {type(value).__name__}")
    return torch.full(tuple(shape), float(value), dtype=torch.float32, device=_device(generator, device))


def support(value: ParamLike) -> tuple[float, float]:
    """Range of values ``value`` can take."""
    if isinstance(value, Distribution):
        return value.support()
    return (float(value), float(value))


def check_range(
    name: str,
    value: ParamLike,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` and its valid range if ``value`` can leave [low, high].

    Derived parameters are not checked here (their range depends on other parameters).
    """
    if isinstance(value, Derived):
        return
    lo, hi = support(value)
    bad = False
    if low is not None:
        bad |= lo < low if low_inclusive else lo <= low
    if high is not None:
        bad |= hi > high if high_inclusive else hi >= high
    if bad or math.isnan(lo) or math.isnan(hi):
        left = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        right = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ValueError(f"{name} must lie in {left}, {right}; got {value!r}")
