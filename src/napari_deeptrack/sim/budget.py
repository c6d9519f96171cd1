"""Memory estimates made before allocating: simulation batches, models, training batches and apply.

Every path that renders, builds a network or runs one over a stack asks here first, and gets a
:class:`~napari_deeptrack.errors.MemoryBudgetError` naming the parameter to change instead of an
out-of-memory kill::

    >>> from napari_deeptrack.sim import budget
    >>> est = budget.estimate_render(pipeline, batch_size=32)       # doctest: +SKIP
    >>> est.check()                                                  # doctest: +SKIP
    MemoryBudgetError: simulation would need 23.1 GB (> 4.0 GB budget): lower `count` (850) or ...

The estimates are deliberately simple upper bounds of the largest tensors each renderer creates (they
follow the code of :mod:`~napari_deeptrack.sim.optics.fluorescence` and
:mod:`~napari_deeptrack.sim.optics.coherent`), accurate to a factor of about two: enough to refuse what
cannot fit, cheap enough (pure arithmetic, microseconds) to run before every batch.

Budget
------
:func:`memory_budget` is ``min(cap, fraction * available RAM)``; for simulation and training the cap is
4 GB and the fraction 50 %. ``NAPARI_DEEPTRACK_MEMORY_GB`` (environment) replaces the cap, e.g. ``16``
on a large workstation (it is still limited by the RAM available).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, MemoryBudgetError, TimeBudgetError
from ..nn.memory import (  # noqa: F401 - the budget's home is nn (the bottom layer); re-exported here
    DEFAULT_CAP_GB,
    DEFAULT_FRACTION,
    ENV_CAP,
    GB,
    MAX_DEPTH,
    MAX_LIST,
    available_memory_bytes,
    check_config_sizes,
    format_bytes,
    memory_budget,
)
from .params import support

__all__ = [
    "Estimate",
    "available_memory_bytes",
    "check",
    "check_render",
    "count_parameters",
    "estimate_apply",
    "estimate_model",
    "estimate_render",
    "estimate_training",
    "format_bytes",
    "frames_per_chunk",
    "memory_budget",
    "TimeEstimate",
    "announce_time",
    "extrapolate_time",
    "format_duration",
    "max_run_seconds",
]


@dataclass
class Estimate:
    """A memory estimate: ``bytes`` needed by ``what``, and the parameters that would lower it.

    ``parameters`` are short hints such as ``"`count` (850)"``, most effective first; ``detail`` holds
    the numbers the estimate used (for logs and tests).
    """

    bytes: int
    what: str
    parameters: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def gb(self) -> float:
        return self.bytes / GB

    def check(self, budget: int | None = None) -> Estimate:
        """Raise :class:`MemoryBudgetError` if over ``budget`` (default :func:`memory_budget`)."""
        check(self, budget)
        return self


def check(estimate: Estimate, budget: int | None = None) -> None:
    """Raise :class:`~napari_deeptrack.errors.MemoryBudgetError` when ``estimate`` exceeds ``budget``.

    The message reads ``"simulation would need 23.1 GB (> 4.0 GB budget): lower `count` (850) or
    image_shape (424x640), or batch_size (32)"``.
    """
    budget = memory_budget() if budget is None else int(budget)
    if estimate.bytes <= budget:
        return
    hints = list(estimate.parameters)
    if len(hints) > 1:
        todo = "lower " + ", ".join(hints[:-1]) + f", or {hints[-1]}"
    elif hints:
        todo = f"lower {hints[0]}"
    else:
        todo = "use smaller inputs"
    raise MemoryBudgetError(
        f"{estimate.what} would need {format_bytes(estimate.bytes)} (> {format_bytes(budget)} budget): "
        f"{todo} (or raise the budget with {ENV_CAP}=<GB>)",
        parameter=estimate.parameters[0].split("`")[1] if "`" in "".join(estimate.parameters[:1]) else None,
        need_bytes=estimate.bytes,
        budget_bytes=budget,
    )


# ------------------------------------------------------------------------------------------ render
def _hi(value, default: float = 0.0) -> float:
    """Largest absolute value a parameter can take (finite; ``default`` if unknown)."""
    try:
        lo, hi = support(value)
    except Exception:  # noqa: BLE001 - a Derived or foreign object: unknown range
        return default
    m = max(abs(float(lo)), abs(float(hi)))
    return m if math.isfinite(m) else default


def _extent_um(scatterer, pixel_um: float) -> float:
    """Largest object radius (um) a scatterer can draw, from its ``*radius*`` / ``axis*`` fields."""
    if not dataclasses.is_dataclass(scatterer):
        return 0.0
    ext = 0.0
    for f in dataclasses.fields(scatterer):
        name = f.name
        if ("radius" in name or name.startswith("axis")) and (name.endswith("_um") or name.endswith("_px")):
            v = _hi(getattr(scatterer, name, 0.0))
            ext = max(ext, v * (pixel_um if name.endswith("_px") else 1.0))
    return ext


def _counts(pipeline) -> list[int]:
    out = []
    for pop in pipeline.particles:
        try:
            out.append(int(pop.max_count))
        except (ValueError, OverflowError):
            out.append(0)
    return out


def _count_hint(pipeline) -> str:
    counts = _counts(pipeline)
    if not counts:
        return ""
    return "`count` (" + ", ".join(str(c) for c in counts) + ")"


def _fluorescence_peak(optics, pipeline, batch: int) -> tuple[int, dict]:
    """Largest per-population working set of ``Fluorescence.render`` (bytes) and its numbers."""
    h, w = pipeline.image_shape
    dx = float(optics.sample_pixel_um)
    os_ = int(optics.oversample_factor)
    cutoff = float(optics.cutoff_per_um)
    peak, info = 0, {}
    for pop, n in zip(pipeline.particles, _counts(pipeline)):
        if n == 0:
            continue
        m = batch * n
        zmax = _hi(pop.z_um)
        extent = _extent_um(pop.scatterer, dx)
        p = int(optics.patch_size(zmax, extent, (h, w)))
        pf = p * os_
        df = min(1.0 / (2 * p * dx), cutoff / 6)
        nk = 2 * int(math.floor(cutoff / df + 1e-9)) + 1
        per = (
            pf * pf * (8 + 8 + 4 * 3)  # field (complex), einsum temporary, re/im/intensity
            + nk * nk * 8 * 3  # pupil factors u, ramps, phase
            + pf * nk * 8  # first half of the matrix DFT
            + (pf * pf * 8 * 2 if extent > 0 else 0)  # object spectrum and its product
            + p * p * (8 + 4)  # scatter indices (int64 worst case) and the binned patch
        )
        if m * per > peak:
            peak = m * per
            info = {"particles": m, "patch_px": p, "oversample": os_, "pupil_samples": nk}
    return peak, info


def _coherent_peak(optics, pipeline, batch: int) -> tuple[int, dict]:
    """Working set of ``Brightfield._field`` / ``render`` (bytes) and its numbers."""
    from .optics.propagation import fft_size

    h, w = pipeline.image_shape
    s = int(optics._oversample())
    pad = max(h, w) // 2 if optics.padding_px is None else int(optics.padding_px)
    hg, wg = fft_size(h + 2 * pad) * s, fft_size(w + 2 * pad) * s
    dxg = float(optics.sample_pixel_um) / s
    cutoff = float(optics.NA) / float(optics.wavelength_um)
    inside = min(hg * wg, int(math.pi * cutoff**2 * (hg * dxg) * (wg * dxg) * 1.1) + 64)
    grid = hg * wg * (8 * 3 + 4 * 2) + inside * 8 * 8  # frequency tables (float64) + pupil points
    frames = batch * hg * wg * 8 * 3 + batch * inside * 8 * 2  # full spectrum, ifft, crop; spectra
    worst, info = 0, {}
    n_med, lam = float(optics.refractive_index_medium), float(optics.wavelength_um)
    for pop, n in zip(pipeline.particles, _counts(pipeline)):
        if n == 0:
            continue
        p = batch * n
        cls = type(pop.scatterer).__name__
        per = inside * 48  # a_p, phase, polar ones, contrib (complex64 / float32)
        extra = 0
        if cls in ("MieSphere", "CoreShellSphere"):
            x = 2 * math.pi * n_med * _extent_um(pop.scatterer, dxg) / lam
            orders = int(x + 4 * max(x, 0) ** (1 / 3) + 2)
            extra = inside * orders * (8 * 2 + 4 * 2 + 8 * 2) + p * orders * 16 * 4
        elif cls in ("Sphere", "Ellipsoid", "Ellipse"):
            per += hg * wg * 16  # each particle's padded transmission and its FFT
        if p * per + extra > worst:
            worst = p * per + extra
            info = {"particles": p, "grid": [hg, wg], "oversample": s, "pupil_points": inside}
    info.setdefault("grid", [hg, wg])
    return grid + frames + worst, info


#: Memory the first render of a process touches besides its tensors (FFT plans, BLAS buffers, the code
#: pages of torch's kernels): measured 15-35 MB on tiny scenes (docs/reliability.md), rounded up.
RUNTIME_BYTES = 64 * 2**20


def _optics_peak(optics, pipeline, b: int, frame: int, ch: int) -> tuple[int, dict]:
    """Working set of ``optics.render`` for the pipeline's scene (bytes) and its numbers."""
    if hasattr(optics, "_psf_patches") and hasattr(optics, "patch_size"):
        return _fluorescence_peak(optics, pipeline, b)
    if hasattr(optics, "_field") and hasattr(optics, "_oversample"):
        return _coherent_peak(optics, pipeline, b)
    return frame * ch * 8, {}  # other renderers (digits, generator optics): a few frames


def _target_bytes(pipeline, b: int, frame: int) -> tuple[int, int]:
    """Targets' frames (and warped copies), and the largest working set of a target that renders itself.

    ``frame`` is one float32 channel of the batch. A target with ``n_bins`` (a z-binned volume) has that
    many channels; one with its own ``optics`` (``CleanImage``) renders the scene again after the image,
    reusing the memory the image's render freed (measured: the peak is the larger render's, not the sum).
    """
    # a target and the splat that builds it; geometric augmentations (sim.augment) warp a copy of each
    warps = any(type(t).__module__.endswith(".augment") for t in getattr(pipeline, "transforms", []) or [])
    copies = 4 if warps else 2
    # the sampling grid [B, H, W, 2] of a warp and its temporaries (without them: 1.05x measured)
    grid = frame * 4 if warps else 0
    total, extra = 0, 0
    for t in (getattr(pipeline, "targets", {}) or {}).values():
        ch = int(getattr(t, "n_bins", 0) or 0) or 1
        optics = getattr(t, "optics", None)
        if optics is not None:
            ch = max(ch, int(getattr(optics, "n_channels", 1) or 1))
            try:
                extra = max(extra, _optics_peak(optics, pipeline, b, frame, ch)[0])
            except Exception:  # noqa: BLE001 - an optics we cannot size: a few frames
                extra = max(extra, frame * ch * 8)
        total += frame * ch * copies
    return max(total, frame * copies) + grid, extra  # at least one target-sized map


def estimate_render(pipeline, batch_size: int, what: str = "simulation") -> Estimate:
    """Peak memory of ``pipeline(batch_size)``: frames, targets, transforms and the optics' work.

    Parameters
    ----------
    pipeline : Pipeline
        The simulation (``image_shape``, particle populations, optics).
    batch_size : int
        Images rendered at once (``batch_size * n_frames`` for a movie).
    """
    b = max(int(batch_size), 1)
    h, w = (int(v) for v in pipeline.image_shape)
    optics = pipeline.optics
    ch = int(getattr(optics, "n_channels", 1) or 1)
    frame = b * h * w * 4
    # image + noise / augmentation copies; targets (channels each, their warped copies, own renders);
    # the runtime's first-use overhead
    targets, target_render = _target_bytes(pipeline, b, frame)
    base = frame * ch * 6 + targets + RUNTIME_BYTES
    detail: dict[str, Any] = {"batch_size": b, "image_shape": [h, w]}
    optics_bytes, info = _optics_peak(optics, pipeline, b, frame, ch)
    optics_bytes = max(optics_bytes, target_render)
    detail.update(info)
    hints = [h_ for h_ in (_count_hint(pipeline),) if h_]
    if "patch_px" in detail:
        hints.append(
            f"the PSF patch (`patch_size_px`, {detail['patch_px']} px: higher NA or smaller z range)"
        )
    hints += [f"`image_shape` ({h}x{w})", f"`batch_size` ({b})"]
    detail["optics_bytes"] = int(optics_bytes)
    return Estimate(int(base + optics_bytes), what, hints, detail)


def check_render(pipeline, batch_size: int, budget: int | None = None, what: str = "simulation") -> Estimate:
    """:func:`estimate_render` then :func:`check`; returns the estimate."""
    return estimate_render(pipeline, batch_size, what).check(budget)


# ------------------------------------------------------------------------------------------ models
def _meta_model(config: dict[str, Any]):
    import torch

    from ..nn.registry import build_model

    check_config_sizes(config)
    with torch.device("meta"):
        return build_model(config, check_memory=False)


def count_parameters(config: dict[str, Any]) -> int:
    """Number of parameters of the model ``config`` describes, without allocating it (meta tensors).

    Raises :class:`~napari_deeptrack.errors.ConfigError` (a ``ValueError``) for an invalid config.
    """
    try:
        model = _meta_model(config)
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid model config: {exc}") from exc
    return int(sum(p.numel() for p in model.parameters()))


def _widest_hint(config: dict[str, Any]) -> list[str]:
    hints = []
    for key in ("base_channels", "channels", "max_channels", "depth", "dense", "hidden"):
        if key in config:
            hints.append(f"`{key}` ({config[key]})")
    return hints


def estimate_model(config: dict[str, Any], what: str = "model construction") -> Estimate:
    """Memory of the model's weights (float32) before building it: :func:`count_parameters` x 4 bytes."""
    n = count_parameters(config)
    return Estimate(n * 4, what, _widest_hint(config), {"parameters": n})


def _activation_numel(config_or_model, input_shape: tuple[int, ...], train: bool) -> int | None:
    """Sum of the outputs of every leaf module for one forward pass on meta tensors (None if unknown)."""
    import torch

    try:
        if isinstance(config_or_model, dict):
            model = _meta_model(config_or_model)
        else:
            model = config_or_model
            if any(p.device.type != "meta" for p in model.parameters()):
                model = None
        if model is None:
            return None
        total = [0]

        def hook(_mod, _inp, out):
            if isinstance(out, torch.Tensor):
                total[0] += out.numel()

        leaves = [m for m in model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            model.train(train)
            with torch.no_grad():
                model(torch.empty(*input_shape, device="meta"))
        finally:
            for h_ in handles:
                h_.remove()
        return int(total[0])
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot run on meta tensors: use the fallback
        return None


def estimate_training(
    config: dict[str, Any], input_shape: tuple[int, ...], what: str = "training"
) -> Estimate:
    """Memory of one training step: weights, gradients, Adam state and the stored activations.

    ``input_shape`` is the batch ``(B, C, H, W)``.
    """
    n = count_parameters(config)
    shape = tuple(int(v) for v in input_shape)
    act = _activation_numel(config, shape, train=True)
    if act is None:  # unknown architecture: assume 64 float activations per input value
        act = 64 * math.prod(shape)
    total = n * 4 * 4 + act * 4 * 2  # params, grads, Adam m and v; activations and their gradients
    hints = [f"`batch_size` ({shape[0]})", f"the image size ({'x'.join(str(v) for v in shape[2:])})"]
    return Estimate(int(total), what, hints + _widest_hint(config), {"parameters": n, "activations": act})


def estimate_apply(
    config_or_model,
    frame_shape: tuple[int, ...],
    n_frames: int,
    chunk: int | None = None,
    what: str = "apply",
) -> Estimate:
    """Peak memory of running a model over ``n_frames`` frames of ``frame_shape`` ``(C, H, W)``.

    With ``chunk`` (frames per forward pass) the network's activations scale with ``chunk``; the
    input stack and the outputs kept per frame (one float32 map per frame) with ``n_frames``.
    """
    import torch

    c_h_w = tuple(int(v) for v in frame_shape)
    if len(c_h_w) == 2:
        c_h_w = (1, *c_h_w)
    per_frame = math.prod(c_h_w) * 4
    chunk = int(n_frames if chunk is None else max(1, min(int(chunk), int(n_frames))))
    if isinstance(config_or_model, dict):
        n = count_parameters(config_or_model)
    else:
        n = (
            int(sum(p.numel() for p in config_or_model.parameters()))
            if isinstance(config_or_model, torch.nn.Module)
            else 0
        )
    act = _activation_numel(config_or_model, (1, *c_h_w), train=False)
    if act is None:
        act = 64 * math.prod(c_h_w)
    # inference keeps a fraction of the activations alive (skip connections); take half as the peak
    total = n * 4 + chunk * act * 4 // 2 + int(n_frames) * per_frame * 2
    hints = [
        f"the number of frames ({n_frames})",
        f"the chunk size ({chunk})",
        f"the frame size ({'x'.join(str(v) for v in c_h_w[1:])})",
    ]
    return Estimate(int(total), what, hints, {"parameters": n, "activations_per_frame": act, "chunk": chunk})


def frames_per_chunk(
    config_or_model, frame_shape: tuple[int, ...], budget: int | None = None, limit: int = 64
) -> int:
    """Largest number of frames (1..``limit``) whose forward pass fits in ``budget`` (at least 1)."""
    budget = memory_budget() if budget is None else int(budget)
    one = estimate_apply(config_or_model, frame_shape, 1, 1)
    act = max(one.detail["activations_per_frame"] * 4 // 2 + math.prod(frame_shape) * 8, 1)
    free = budget - one.detail["parameters"] * 4
    return int(max(1, min(limit, free // act)))


# ------------------------------------------------------------------------------------------ time
#: Longest run accepted without ``--force`` (hours); ``NAPARI_DEEPTRACK_MAX_HOURS`` replaces it.
MAX_HOURS = 24.0
ENV_MAX_HOURS = "NAPARI_DEEPTRACK_MAX_HOURS"
#: Estimates at least this long (seconds) are printed before the run.
ANNOUNCE_AFTER_S = 30.0


def max_run_seconds() -> float:
    """The time limit (seconds): ``$NAPARI_DEEPTRACK_MAX_HOURS`` or 24 h."""
    env = os.environ.get(ENV_MAX_HOURS)
    try:
        hours = float(env) if env else MAX_HOURS
    except ValueError:
        hours = MAX_HOURS
    if not (hours > 0 and math.isfinite(hours)):
        hours = MAX_HOURS
    return hours * 3600.0


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``12 days``."""
    s = float(seconds)
    if not math.isfinite(s):
        return "forever"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} days"


@dataclass
class TimeEstimate:
    """How long ``what`` will take: ``seconds``, extrapolated from a timed sample (``basis``).

    ``parameters`` are short hints (``"`--frames` (100000)"``) naming what would shorten it.
    """

    seconds: float
    what: str
    parameters: list[str] = field(default_factory=list)
    basis: str = ""

    def message(self) -> str:
        """``"simulation: about 3.5 h (0.12 s per frame x 100000 frames)"``."""
        basis = f" ({self.basis})" if self.basis else ""
        return f"{self.what}: about {format_duration(self.seconds)}{basis}"

    def check(self, force: bool = False, limit_seconds: float | None = None) -> TimeEstimate:
        """Raise :class:`~napari_deeptrack.errors.TimeBudgetError` over the limit unless ``force``."""
        limit = max_run_seconds() if limit_seconds is None else float(limit_seconds)
        if force or self.seconds <= limit:
            return self
        hints = " or ".join(self.parameters) or "the amount of work"
        raise TimeBudgetError(
            f"{self.message()}, more than the {format_duration(limit)} limit: lower {hints}, or pass "
            f"--force to run it anyway (or set {ENV_MAX_HOURS}=<hours>)",
            parameter=self.parameters[0].split("`")[1] if "`" in "".join(self.parameters[:1]) else None,
            seconds=self.seconds,
            limit_seconds=limit,
        )


def extrapolate_time(
    sample_seconds: float,
    sample_units: float,
    total_units: float,
    what: str,
    parameters: list[str] | None = None,
    unit: str = "frame",
) -> TimeEstimate:
    """Linear extrapolation of a timed sample: ``sample_seconds / sample_units * total_units``.

    The sample usually includes one-off costs (first call, caches), so the estimate errs long.
    """
    per = float(sample_seconds) / max(float(sample_units), 1e-12)
    total = per * float(total_units)
    count = f"{int(total_units):,}" if float(total_units).is_integer() else f"{total_units:g}"
    units = unit + ("es" if unit.endswith(("s", "ch", "sh", "x")) else "s")
    basis = f"{format_duration(per) if per >= 90 else f'{per:.3g} s'} per {unit} x {count} {units}"
    return TimeEstimate(total, what, list(parameters or []), basis)


def announce_time(estimate: TimeEstimate, force: bool = False, stream=None) -> TimeEstimate:
    """Print a long estimate to ``stream`` (stderr), then :meth:`TimeEstimate.check` it."""
    import sys

    if estimate.seconds >= ANNOUNCE_AFTER_S:
        note = " (--force: running anyway)" if force and estimate.seconds > max_run_seconds() else ""
        print(f"estimated time: {estimate.message()}{note}", file=stream or sys.stderr)
    return estimate.check(force)
