"""The :class:`Task`: everything that defines one use case, serialisable to JSON.

A task couples a simulation pipeline (how training images and their ground truth are made), the name
of the pipeline target the network learns, a model config (:func:`napari_deeptrack.nn.build_model`),
a loss config (:func:`napari_deeptrack.train.losses.build_loss`), the input normalisation applied
identically to simulated and real images (:func:`napari_deeptrack.sim.normalize_images` keyword
arguments), post-processing settings (decision thresholds...), the pixel size, and training
defaults. Model bundles store the task, so a trained model always knows how it was made.

The task is a record of plain settings beside its pipeline: it lives in ``sim`` so that any task file
or bundle decodes with :func:`napari_deeptrack.sim.serialize.from_dict` alone (``tasks/`` holds the
preset factories that build tasks; ``tasks.base`` re-exports this module).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from .pipeline import Pipeline
from .serialize import from_dict, register, registered_types, to_dict

__all__ = ["KINDS", "TRAINING_DEFAULTS", "Task"]

KINDS = (
    "detection",
    "localization",
    "counting",
    "segmentation",
    "tracking-3d",
    "characterization",
    "classification",
    "image-to-image",
)

#: Training settings understood by :func:`napari_deeptrack.train.train_task` (a task's ``training``
#: dict overrides these; the command line overrides the task).
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "steps_per_epoch": 50,
    "batch_size": 16,
    "optimizer": "adam",  # adam | adamw
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",  # cosine | step | none
    "grad_clip": 0.0,  # max gradient norm, 0 = off
    "validation_size": 256,  # images simulated once from a separate seed
    "num_workers": 0,  # DataLoader worker processes simulating batches
    "replay_max_uses": 1,  # >1: reuse each simulated sample up to this many times
    "replay_capacity": 0,  # samples kept for replay (0: 8 batches)
    "early_stopping_patience": 0,  # epochs without improvement before stopping, 0 = off
    "deterministic": False,
    "seed": 0,
}


@register
@dataclass
class Task:
    """One use case: simulation + target + model + loss + normalisation + post-processing.

    Parameters
    ----------
    name : str
        Preset name (``particles-2d``...).
    kind : str
        One of :data:`KINDS`; decides how network outputs are post-processed.
    description : str
        One paragraph for the user.
    pipeline : Pipeline
        Simulation of training images and ground truth.
    target : str
        Key of ``pipeline.targets`` the network is trained to output.
    model : dict
        Model config for :func:`napari_deeptrack.nn.build_model`.
    loss : dict
        Loss config for :func:`napari_deeptrack.train.losses.build_loss`.
    input_normalization : dict
        Keyword arguments of :func:`napari_deeptrack.sim.normalize_images` (``mode``, ``low``, ``high``).
    postprocess : dict
        Post-processing settings, e.g. ``{"activation": "sigmoid", "threshold": 0.5}``. ``activation``
        maps network outputs (logits) to what the task reports (``sigmoid``, ``softmax`` or ``none``).
    pixel_size_um : float, optional
        Pixel size of the training images in micrometres: the optics' sample-plane pixel
        (``pipeline.optics.sample_pixel_um``). None takes it from the optics; a value that disagrees
        with the optics is refused (ValueError). Required only for optics without a physical pixel.
    training : dict
        Training defaults (see :data:`TRAINING_DEFAULTS`).
    """

    name: str
    kind: str
    description: str
    pipeline: Pipeline
    target: str
    model: dict = field(default_factory=dict)
    loss: dict = field(default_factory=lambda: {"type": "mse"})
    input_normalization: dict = field(
        default_factory=lambda: {"mode": "percentile", "low": 1.0, "high": 99.8}
    )
    postprocess: dict = field(default_factory=dict)
    pixel_size_um: float | None = None
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.pipeline, Pipeline):
            raise ValueError(f"pipeline must be a Pipeline, got {type(self.pipeline).__name__}")
        if self.target not in self.pipeline.targets:
            raise ValueError(
                f"target {self.target!r} is not a pipeline target; "
                f"pipeline targets: {sorted(self.pipeline.targets)}"
            )
        self.pixel_size_um = _checked_pixel_size(self.pixel_size_um, self.pipeline)
        unknown = sorted(set(self.training) - set(TRAINING_DEFAULTS))
        if unknown:
            raise ValueError(
                f"training: unknown setting(s) {unknown}; valid settings: {sorted(TRAINING_DEFAULTS)}"
            )

    def training_settings(self, **overrides: Any) -> dict[str, Any]:
        """Training defaults, updated by the task's ``training`` dict, then by non-None ``overrides``."""
        out = dict(TRAINING_DEFAULTS)
        out.update(self.training)
        for k, v in overrides.items():
            if k not in TRAINING_DEFAULTS:
                raise ValueError(
                    f"unknown training setting {k!r}; valid settings: {sorted(TRAINING_DEFAULTS)}"
                )
            if v is not None:
                out[k] = v
        return out

    def with_pipeline(self, pipeline: Pipeline) -> Task:
        """A validated copy that trains on ``pipeline``; its pixel size follows the new optics.

        (Optics without a physical pixel keep the task's pixel size.)
        """
        px = None if getattr(pipeline.optics, "sample_pixel_um", None) is not None else self.pixel_size_um
        return replace(copy.deepcopy(self), pipeline=pipeline, pixel_size_um=px)

    def with_simulation(self, simulation: Pipeline) -> Task:
        """A copy that trains on another simulation of the sample (e.g. one matched to real images).

        ``simulation`` brings the image shape, particles, optics and noise model (its transforms); the
        task keeps its targets, its transforms that are not noise (augmentations, normalisations...;
        :attr:`~napari_deeptrack.sim.pipeline.Transform.is_noise`) and its minimum distance. The pixel
        size follows the new optics (:meth:`with_pipeline`).
        """
        keep = [t for t in self.pipeline.transforms if not t.is_noise]
        pipeline = simulation.with_(
            targets=self.pipeline.targets,
            transforms=list(simulation.transforms) + keep,
            min_distance_px=self.pipeline.min_distance_px,
        )
        return self.with_pipeline(pipeline)

    def edited(self, changes: dict[str, Any]) -> Task:
        """A validated copy with fields changed by dotted keys.

        Keys walk dataclass fields, dict keys and list indices, e.g. ``{"training.lr": 1e-3,
        "pipeline.image_shape": [32, 32], "pipeline.particles.0.count": 5,
        "loss.pos_weight": 2.0}``. A dict value whose ``type`` is a registered class
        (``{"type": "Uniform", "low": 1, "high": 5}``) becomes that object.

        Raises
        ------
        ValueError
            Unknown key (the message lists the valid ones) or an invalid resulting task.
        """
        obj = copy.deepcopy(self)
        for key, value in changes.items():
            _assign(obj, key, value)
        if "pixel_size_um" not in changes and any(k.startswith("pipeline") for k in changes):
            # the pixel size follows the (possibly edited) optics
            obj.pixel_size_um = _checked_pixel_size(None, obj.pipeline, fallback=self.pixel_size_um)
        return from_dict(to_dict(obj))


def _checked_pixel_size(
    pixel_size_um: float | None, pipeline: Pipeline, fallback: float | None = None
) -> float:
    """The task's pixel size: the optics' sample-plane pixel, checked against ``pixel_size_um`` if given."""
    optics_px = getattr(pipeline.optics, "sample_pixel_um", None)
    if pixel_size_um is None:
        pixel_size_um = optics_px if optics_px is not None else fallback
        if pixel_size_um is None:
            raise ValueError(
                f"pixel_size_um must be given: the optics ({type(pipeline.optics).__name__}) "
                "has no pixel size"
            )
    try:
        px = float(pixel_size_um)
    except (TypeError, ValueError):
        raise ValueError(f"pixel_size_um must be a number > 0, got {pixel_size_um!r}") from None
    if not px > 0 or px == float("inf"):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if optics_px is not None and abs(px - float(optics_px)) > 1e-6 * float(optics_px):
        raise ValueError(
            f"pixel_size_um {px:.6g} um disagrees with the optics' sample-plane pixel "
            f"{float(optics_px):.6g} um (its pixel_size_um, or camera_pixel_um / magnification); leave the "
            "task's pixel_size_um out to take the optics' value"
        )
    return px


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") in registered_types():
        return from_dict(value)
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _child(obj: Any, part: str, key: str) -> tuple[Any, Any]:
    """(container kind, accessor) for ``part`` of ``obj``; raises a ValueError naming ``key``."""
    if is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in fields(obj) if f.init]
        if part not in names:
            raise ValueError(f"--set {key}: {type(obj).__name__} has no field {part!r}; fields: {names}")
        return "attr", part
    if isinstance(obj, dict):
        return "item", part
    if isinstance(obj, list | tuple):
        try:
            i = int(part)
            obj[i]
        except (ValueError, IndexError):
            raise ValueError(f"--set {key}: {part!r} is not a valid index (0..{len(obj) - 1})") from None
        return "index", i
    raise ValueError(f"--set {key}: cannot descend into {type(obj).__name__} at {part!r}")


def _assign(root: Any, key: str, value: Any) -> None:
    parts = key.split(".")
    if not key or any(p == "" for p in parts):
        raise ValueError(f"--set: invalid key {key!r} (use dotted names like training.lr)")
    obj = root
    for part in parts[:-1]:
        kind, acc = _child(obj, part, key)
        if kind == "attr":
            obj = getattr(obj, acc)
        elif kind == "item":
            if acc not in obj:
                raise ValueError(f"--set {key}: no key {acc!r}; keys: {sorted(obj)}")
            obj = obj[acc]
        else:
            obj = obj[acc]
    kind, acc = _child(obj, parts[-1], key)
    value = _decode_value(value)
    if kind == "attr":
        setattr(obj, acc, value)
    elif kind == "item":
        obj[acc] = value
    else:
        if isinstance(obj, tuple):
            raise ValueError(f"--set {key}: set the whole tuple instead (e.g. {'.'.join(parts[:-1])}=[...])")
        obj[acc] = value
