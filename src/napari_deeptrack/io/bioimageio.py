"""bioimage.io model packages: export a bundle as a package other tools run, and load one back.

:func:`export_bioimageio` writes a zip in the bioimage.io model spec (format 0.5): ``rdf.yaml``,
TorchScript weights (and ONNX where the model exports), test input / output tensors (``.npy``)
computed by the bundle's own model, a cover image, a README with what the simulation was and the
measured accuracy, and the DeepTrack 2.0 citation. Axes carry the pixel size (``scale`` in
micrometres); the input normalisation and the output activation are written as the spec's
pre/post-processing steps where the spec has them:

===========================  ==========================================================
our normalisation            rdf.yaml
===========================  ==========================================================
``percentile`` (low, high)   ``scale_range`` over y, x (min/max percentile, eps 1e-6)
``minmax``                   ``scale_range`` 0 / 100 %
``zscore``                   ``zero_mean_unit_variance`` over y, x
``robust`` (median / MAD)    no spec equivalent: computed inside the exported weights
``none``                     nothing
activation ``sigmoid``       postprocessing ``sigmoid``
activation ``softmax``       computed inside the exported weights
===========================  ==========================================================

What the weights compute in addition to the network is recorded in
``config.napari_deeptrack.inside_weights``, so :func:`load_bioimageio` does not apply it twice.

:func:`load_bioimageio` reads a package (ours or another tool's) whose axes fit one of our task
kinds and returns a :class:`~napari_deeptrack.io.bundle.Bundle` that ``analysis.predict`` runs. ONNX
weights are preferred (a protobuf, run by onnxruntime); TorchScript is used when there is no ONNX.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import io
import json
import os
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEEPTRACK_CITATION",
    "FORMAT_VERSION",
    "export_bioimageio",
    "is_bioimageio_package",
    "load_bioimageio",
    "load_model",
    "read_rdf",
]

#: bioimage.io model description format written (0.5 family; validators of later 0.5.x accept it)
FORMAT_VERSION = "0.5.4"
DEEPTRACK_CITATION = {
    "text": (
        "Midtvedt, B., Helgadottir, S., Argun, A., Pineda, J., Midtvedt, D. & Volpe, G. "
        "Quantitative digital microscopy with deep learning. Applied Physics Reviews 8, 011310 (2021)."
    ),
    "doi": "10.1063/5.0034891",
}
RDF_NAME = "rdf.yaml"
TORCHSCRIPT_NAME = "weights_torchscript.pt"
ONNX_NAME = "weights.onnx"
ONNX_OPSET = 17
INPUT_ID = "raw"
OUTPUT_ID = "prediction"
_FULLY_CONVOLUTIONAL = ("detection", "counting", "segmentation", "tracking-3d", "image-to-image")
_VECTOR_KINDS = ("localization", "characterization", "classification")


# ---------------------------------------------------------------------------- the packaged network
class _Packaged(nn.Module):
    """Network + what the spec cannot express (robust normalisation, softmax), for TorchScript / ONNX.

    The robust z-score is computed with a sort (lower median, as ``torch.median``) so it exports
    to ONNX; it equals :func:`napari_deeptrack.sim.normalize_images` with ``mode="robust"``.
    """

    def __init__(self, net: nn.Module, robust: bool, softmax: bool, eps: float = 1e-6):
        super().__init__()
        self.net = net
        self.robust = bool(robust)
        self.softmax = bool(softmax)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.robust:
            b, c, h, w = x.shape
            flat = x.reshape(b, c, h * w)
            mid = (h * w - 1) // 2
            med = torch.sort(flat, dim=-1)[0][..., mid : mid + 1]
            dev = (flat - med).abs()
            sigma = 1.4826 * torch.sort(dev, dim=-1)[0][..., mid : mid + 1]
            sigma = torch.where(sigma > 0, sigma, 1.2533 * dev.mean(-1, keepdim=True))
            x = ((flat - med) / sigma.clamp(min=self.eps)).reshape(b, c, h, w)
        y = self.net(x)
        if self.softmax:
            y = torch.softmax(y, dim=1)
        return y


# ---------------------------------------------------------------------------- helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _spec_name(name: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    clean = "".join(ch if ch in allowed else "-" for ch in name).strip() or "napari-deeptrack model"
    return clean[:128]


def _down_factor(model_cfg: dict) -> int:
    depth = model_cfg.get("depth") if isinstance(model_cfg, dict) else None
    return 2 ** int(depth) if isinstance(depth, int) and depth >= 0 else 1


def _processing(norm: dict, activation: str) -> tuple[list[dict], list[dict], dict]:
    """Spec pre/post-processing for our normalisation and activation, and what goes inside the weights."""
    mode = str(norm.get("mode", "percentile"))
    pre: list[dict] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    inside = {"robust_normalization": False, "softmax": False}
    if mode == "percentile":
        pre.append(
            {
                "id": "scale_range",
                "kwargs": {
                    "axes": ["y", "x"],
                    "min_percentile": float(norm.get("low", 1.0)),
                    "max_percentile": float(norm.get("high", 99.8)),
                    "eps": 1e-6,
                },
            }
        )
    elif mode == "minmax":
        pre.append(
            {
                "id": "scale_range",
                "kwargs": {"axes": ["y", "x"], "min_percentile": 0.0, "max_percentile": 100.0, "eps": 1e-6},
            }
        )
    elif mode == "zscore":
        pre.append({"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"], "eps": 1e-6}})
    elif mode == "robust":
        inside["robust_normalization"] = True
    elif mode != "none":
        raise ValueError(f"input normalisation mode {mode!r} cannot be exported")
    post: list[dict] = []
    if activation == "sigmoid":
        post.append({"id": "sigmoid"})
    elif activation == "softmax":
        inside["softmax"] = True
    elif activation not in ("none", "", None):
        raise ValueError(f"activation {activation!r} cannot be exported")
    return pre, post, inside


def _test_image(bundle, seed: int) -> np.ndarray:
    """One simulated training image ``[1, C, H, W]`` (raw, before normalisation)."""
    batch = bundle.task.pipeline(1, seed=seed)
    return batch.image.detach().cpu().numpy().astype(np.float32)


def _our_output(bundle, x: np.ndarray) -> np.ndarray:
    """The bundle's own prediction on raw ``x``: its normalisation, its network, its activation."""
    from ..sim import normalize_images

    model = bundle.model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    norm = dict(bundle.task.input_normalization or {})
    xn = xt if norm.get("mode", "percentile") == "none" else normalize_images(xt, **norm)
    with torch.no_grad():
        out = model(xn.to(next(iter(model.parameters()), torch.empty(0)).device)).float().cpu()
    act = bundle.task.postprocess.get("activation", "none")
    if act == "sigmoid":
        out = torch.sigmoid(out)
    elif act == "softmax":
        out = torch.softmax(out, dim=1)
    return out.numpy()


def _cover_png(x: np.ndarray, y: np.ndarray) -> bytes:
    """Input and (for image outputs) output side by side, each scaled to its 0.5-99.5 % range."""
    from matplotlib.image import imsave

    def scaled(a):
        lo, hi = np.percentile(a, [0.5, 99.5])
        return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)

    img = scaled(x[0, 0])
    if y.ndim == 4:
        out = y[0, 0] if y.shape[1] == 1 else y[0].argmax(0).astype(np.float32)
        img = np.concatenate([img, scaled(out)], axis=1)
    # the spec asks for a 2:1 or 1:1 cover of at least 256 px: repeat pixels (nearest neighbour)
    k = max(1, int(np.ceil(256 / img.shape[0])))
    img = np.kron(img, np.ones((k, k)))
    if img.shape[1] != img.shape[0] and img.shape[1] != 2 * img.shape[0]:
        pad = 2 * img.shape[0] - img.shape[1]
        img = np.pad(img, ((0, 0), (0, max(pad, 0))), constant_values=1.0)
    buf = io.BytesIO()
    imsave(buf, img, cmap="gray", vmin=0, vmax=1, format="png")
    return buf.getvalue()


def _readme(bundle, inside: dict, pre: list, post: list, weights: list[str]) -> str:
    cfg = bundle.config or {}
    task = bundle.task
    lines = [
        f"# {task.name} (napari-deeptrack)",
        "",
        task.description,
        "",
        "## How it was made",
        "",
        f"Task kind: **{task.kind}**. The network was trained with napari-deeptrack on physically simulated "
        f"images only (no manual annotation): {task.pipeline.image_shape[0]}x{task.pipeline.image_shape[1]} "
        f"px crops at {float(task.pixel_size_um):g} um per pixel, simulated with the pipeline stored under "
        "`config.napari_deeptrack.task` in rdf.yaml (optics, particles, noise, target).",
        "",
        f"Model: `{json.dumps(cfg.get('model', task.model))}` "
        f"({cfg.get('n_parameters', '?')} parameters). Loss: `{json.dumps(task.loss)}`.",
        f"Training: `{json.dumps(cfg.get('training', task.training))}`, seed {cfg.get('seed')}.",
        "",
        "## Measured accuracy (validation on simulated images, from the bundle)",
        "",
    ]
    metrics = cfg.get("metrics") or {}
    if metrics:
        lines += [f"- {k}: {v}" for k, v in metrics.items() if not isinstance(v, dict | list)]
    else:
        lines.append("- none recorded in the bundle")
    hist = cfg.get("history") or {}
    if hist.get("val_loss"):
        lines.append(f"- final validation loss: {hist['val_loss'][-1]}")
    lines += [
        "",
        "## Input and output",
        "",
        "Input: raw camera images (counts, float32), axes batch, channel, y, x; the pixel size is the "
        "axes' `scale` in micrometres. Images should have the training pixel size.",
        f"Pre-processing (spec terms): {', '.join(p['id'] for p in pre)}.",
        f"Post-processing (spec terms): {', '.join(p['id'] for p in post) or 'none'}.",
    ]
    if inside["robust_normalization"]:
        lines.append(
            "The robust normalisation (median -> 0, 1.4826 x median absolute deviation -> 1, per image "
            "and channel) has no equivalent in the spec, so the weights compute it: feed raw images."
        )
    if inside["softmax"]:
        lines.append("The softmax over channels is computed inside the weights.")
    post_text = {
        "detection": "probability that a pixel lies within the disk of a particle; detections are the "
        "centroids of the thresholded blobs",
        "counting": "density map whose integral is the number of objects",
        "segmentation": "foreground probability; instances by seeded watershed",
        "tracking-3d": "z-binned probability volume (channels are z bins)",
        "image-to-image": "restored image",
        "localization": "particle position relative to the crop centre (px)",
        "characterization": "particle properties (see channel names)",
        "classification": "class probabilities",
    }[task.kind]
    lines += [
        f"Output: {post_text}. Threshold used by napari-deeptrack: "
        f"{task.postprocess.get('threshold', 'n/a')}.",
        "",
        f"Weights: {', '.join(weights)} (exported from the safetensors bundle, napari-deeptrack "
        f"{cfg.get('versions', {}).get('napari_deeptrack', '?')}, torch {torch.__version__}).",
        "",
        "## Citation",
        "",
        DEEPTRACK_CITATION["text"] + f" doi:{DEEPTRACK_CITATION['doi']}",
        "",
    ]
    return "\n".join(lines)


def _export_weights(packaged: nn.Module, example: torch.Tensor, fully_conv: bool, onnx: bool):
    """TorchScript (traced) bytes, ONNX bytes or None (with the reason)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(packaged, example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    ts = buf.getvalue()
    onnx_bytes, why = None, None
    if onnx:
        dyn = {0: "batch", 2: "y", 3: "x"} if fully_conv else {0: "batch"}
        try:
            obuf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    packaged,
                    (example,),
                    obuf,
                    dynamo=False,
                    input_names=[INPUT_ID],
                    output_names=[OUTPUT_ID],
                    dynamic_axes={INPUT_ID: dyn, OUTPUT_ID: dyn if fully_conv else {0: "batch"}},
                    opset_version=ONNX_OPSET,
                )
            onnx_bytes = obuf.getvalue()
        except Exception as exc:  # an operator without ONNX export: TorchScript only
            why = f"{type(exc).__name__}: {str(exc)[:200]}"
    return ts, onnx_bytes, why


# ---------------------------------------------------------------------------- export
def export_bioimageio(
    bundle,
    out: str | Path,
    *,
    test_image: np.ndarray | None = None,
    seed: int = 0,
    onnx: bool = True,
    authors: list[str] | None = None,
    license: str = "MIT",
) -> Path:
    """Write ``bundle`` as a bioimage.io model package (zip), atomically.

    Parameters
    ----------
    bundle : Bundle
        From :func:`napari_deeptrack.io.bundle.load_bundle`.
    out : str or Path
        Destination ``.zip``; an existing file is replaced only if it is a zip.
    test_image : ndarray, optional
        Raw test input ``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]``; default: one image simulated by
        the task's own pipeline with ``seed``. Fully convolutional tasks need H and W to be multiples
        of the network's down-sampling factor.
    onnx : bool
        Also export ONNX weights (skipped with a note in the README when the model has an operator
        that ONNX lacks).
    authors : list of str
        Author names for ``rdf.yaml`` (default ``["napari-deeptrack user"]``).
    license : str
        SPDX licence identifier of the weights.

    Returns
    -------
    Path
        The package path.
    """
    import yaml

    task = bundle.task
    kind = task.kind
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file; got {out}")
    if out.exists() and not (out.is_file() and zipfile.is_zipfile(out)):
        raise ValueError(f"{out} exists and is not a zip file; refusing to overwrite it")
    fully_conv = kind in _FULLY_CONVOLUTIONAL
    cfg = bundle.config or {}
    model_cfg = cfg.get("model", task.model) or {}
    factor = _down_factor(model_cfg) if fully_conv else 1
    x = _test_image(bundle, seed) if test_image is None else np.asarray(test_image, dtype=np.float32)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"test_image must be [H, W], [C, H, W] or [1, C, H, W], got shape {x.shape}")
    _, c_in, h, w = x.shape
    if fully_conv and (h % factor or w % factor):
        raise ValueError(
            f"test_image is {h}x{w}; this network down-samples by {factor}, so H and W must be multiples "
            f"of {factor} (crop it)"
        )
    if not fully_conv and (h, w) != tuple(task.pipeline.image_shape):
        raise ValueError(f"test_image must be {tuple(task.pipeline.image_shape)} (the training crop size)")
    act = task.postprocess.get("activation", "none")
    pre, post, inside = _processing(dict(task.input_normalization or {}), act)

    y = _our_output(bundle, x)
    net = copy.deepcopy(bundle.model).cpu().eval()
    packaged = _Packaged(net, inside["robust_normalization"], inside["softmax"]).eval()
    # what the package's runtime feeds the weights: x after the spec's pre-processing (ours, in numpy)
    x_pre = _spec_preprocess(x, pre)
    with torch.no_grad():
        check = packaged(torch.from_numpy(x_pre)).numpy()
    if post and post[0]["id"] == "sigmoid":
        check = 1.0 / (1.0 + np.exp(-check))
    err = float(np.max(np.abs(check - y))) if y.size else 0.0
    if not err <= 1e-4:
        raise ValueError(f"the packaged network differs from the bundle's prediction by {err:.3g}")
    ts, onnx_bytes, onnx_why = _export_weights(packaged, torch.from_numpy(x_pre), fully_conv, onnx)

    px = float(task.pixel_size_um)
    in_axes: list[dict] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": [f"channel{i}" for i in range(c_in)]},
    ]
    if fully_conv:
        for ax in ("y", "x"):
            in_axes.append(
                {
                    "type": "space",
                    "id": ax,
                    "size": {"min": factor, "step": factor},
                    "unit": "micrometer",
                    "scale": px,
                }
            )
        out_axes: list[dict] = [
            {"type": "batch"},
            {"type": "channel", "channel_names": [f"channel{i}" for i in range(y.shape[1])]},
        ]
        for ax in ("y", "x"):
            out_axes.append(
                {
                    "type": "space",
                    "id": ax,
                    "size": {"tensor_id": INPUT_ID, "axis_id": ax},
                    "unit": "micrometer",
                    "scale": px,
                }
            )
    else:
        for ax, n in (("y", h), ("x", w)):
            in_axes.append({"type": "space", "id": ax, "size": int(n), "unit": "micrometer", "scale": px})
        y = y.reshape(1, -1)
        tgt = task.pipeline.targets.get(task.target)
        fields = list(getattr(tgt, "fields", []) or [])
        names = fields if len(fields) == y.shape[1] else []
        if len(fields) * 2 == y.shape[1]:  # gaussian_nll: values then log sigmas
            names = fields + [f"log_sigma_{f}" for f in fields]
        if kind == "classification" or not names:
            names = [f"class{i}" if kind == "classification" else f"value{i}" for i in range(y.shape[1])]
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": names}]

    files: dict[str, bytes] = {
        "test_input.npy": _npy_bytes(x),
        "test_output.npy": _npy_bytes(y.astype(np.float32)),
        "cover.png": _cover_png(x, y),
        TORCHSCRIPT_NAME: ts,
    }
    weights: dict[str, Any] = {
        "torchscript": {
            "source": TORCHSCRIPT_NAME,
            "sha256": _sha256(ts),
            "pytorch_version": torch.__version__.split("+")[0],
        }
    }
    wnames = ["TorchScript"]
    if onnx_bytes is not None:
        files[ONNX_NAME] = onnx_bytes
        weights["onnx"] = {
            "source": ONNX_NAME,
            "sha256": _sha256(onnx_bytes),
            "opset_version": ONNX_OPSET,
            "parent": "torchscript",
        }
        wnames.append(f"ONNX (opset {ONNX_OPSET})")
    readme = _readme(bundle, inside, pre, post, wnames)
    if onnx and onnx_bytes is None:
        readme += f"\nONNX export was not possible for this model ({onnx_why}).\n"
    files["README.md"] = readme.encode("utf-8")

    from ..sim.serialize import to_dict

    rdf: dict[str, Any] = {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": _spec_name(f"{task.name} napari-deeptrack"),
        "description": (task.description or task.name)[:1024],
        "authors": [{"name": a} for a in (authors or ["napari-deeptrack user"])],
        "cite": [dict(DEEPTRACK_CITATION)],
        "license": license,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": sorted({"napari-deeptrack", "deeptrack", kind, "2d", "simulation-trained", "pytorch"}),
        "timestamp": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "inputs": [
            {
                "id": INPUT_ID,
                "description": "raw camera images (counts)",
                "axes": in_axes,
                "test_tensor": {"source": "test_input.npy", "sha256": _sha256(files["test_input.npy"])},
                "data": {"type": "float32"},
                "preprocessing": pre,
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": f"{kind} output of napari-deeptrack task {task.name}",
                "axes": out_axes,
                "test_tensor": {"source": "test_output.npy", "sha256": _sha256(files["test_output.npy"])},
                "data": {"type": "float32"},
                "postprocessing": post,
            }
        ],
        "weights": weights,
        "config": {
            "napari_deeptrack": {
                "kind": kind,
                "inside_weights": inside,
                "pixel_size_um": px,
                "down_factor": factor,
                "postprocess": dict(task.postprocess),
                "input_normalization": dict(task.input_normalization),
                "model": model_cfg,
                "metrics": cfg.get("metrics") or {},
                "versions": cfg.get("versions") or {},
                "task": to_dict(task),
            }
        },
    }
    text = yaml.safe_dump(json.loads(json.dumps(rdf, default=_json_default)), sort_keys=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(RDF_NAME, text)
            for name, data in files.items():
                zf.writestr(name, data)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def _spec_preprocess(x: np.ndarray, steps: list[dict]) -> np.ndarray:
    """Apply the spec pre-processing steps we write (per sample and channel over y, x), in numpy."""
    out = np.asarray(x, dtype=np.float32)
    for step in steps:
        kw = step.get("kwargs", {}) or {}
        if step["id"] == "ensure_dtype":
            out = out.astype(np.float32)
        elif step["id"] == "scale_range":
            lo = np.percentile(out, kw.get("min_percentile", 0.0), axis=(-2, -1), keepdims=True)
            hi = np.percentile(out, kw.get("max_percentile", 100.0), axis=(-2, -1), keepdims=True)
            out = ((out - lo) / (hi - lo + kw.get("eps", 1e-6))).astype(np.float32)
        elif step["id"] == "zero_mean_unit_variance":
            mean = out.mean(axis=(-2, -1), keepdims=True)
            std = out.std(axis=(-2, -1), keepdims=True)
            out = ((out - mean) / (std + kw.get("eps", 1e-6))).astype(np.float32)
        else:
            raise ValueError(f"pre-processing {step['id']!r} is not supported")
    return out


# ---------------------------------------------------------------------------- import
def read_rdf(path: str | Path) -> tuple[dict, dict[str, bytes]]:
    """``rdf.yaml`` (as a dict) and the other files of a package (zip or folder)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no bioimage.io package at {path}")
    files: dict[str, bytes] = {}
    if path.is_dir():
        for p in path.iterdir():
            if p.is_file():
                files[p.name] = p.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith("/"):
                    files[name] = zf.read(name)
    else:
        raise ValueError(f"{path} is not a bioimage.io package (expected a .zip or a folder with rdf.yaml)")
    name = next((n for n in (RDF_NAME, "bioimageio.yaml") if n in files), None)
    if name is None:
        cands = [n for n in files if n.endswith(("rdf.yaml", "bioimageio.yaml"))]
        if len(cands) != 1:
            raise ValueError(f"{path} is not a bioimage.io package: no rdf.yaml / bioimageio.yaml")
        name = cands[0]
    try:
        rdf = yaml.safe_load(files.pop(name).decode("utf-8"))
    except Exception as exc:
        raise ValueError(f"{path}: {name} is not valid YAML ({exc})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ValueError(f"{path}: {name} does not describe a model (type: {rdf.get('type')!r})")
    if not str(rdf.get("format_version", "")).startswith("0.5"):
        raise ValueError(
            f"{path}: format_version {rdf.get('format_version')!r} is not supported (0.5.x needed; "
            "update it with `bioimageio update-format`)"
        )
    return rdf, files


class _OnnxModule(nn.Module):
    """An onnxruntime session as a torch module (CPU), so ``analysis.predict`` runs it like a network."""

    def __init__(self, data: bytes):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ValueError("ONNX weights need onnxruntime (pip install onnxruntime)") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(np.float32)
        return torch.from_numpy(self._session.run(None, {self._input: arr})[0])


def _axis_kinds(axes: list[dict]) -> list[str]:
    out = []
    for a in axes:
        t = a.get("type")
        out.append(str(a.get("id", t)) if t == "space" else str(t))
    return out


def _kind_from_axes(rdf: dict, path: Path) -> tuple[str, dict, dict]:
    ins, outs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(
            f"{path}: the package has {len(ins)} input and {len(outs)} output tensors; "
            "napari-deeptrack runs models with one image in and one tensor out"
        )
    tin, tout = ins[0], outs[0]
    a_in, a_out = _axis_kinds(tin.get("axes", [])), _axis_kinds(tout.get("axes", []))
    if a_in != ["batch", "channel", "y", "x"]:
        raise ValueError(
            f"{path}: input axes {a_in} do not fit a napari-deeptrack task (needed: batch, channel, y, x "
            "— 2D images; time, z or other axes are not supported)"
        )
    own = (rdf.get("config") or {}).get("napari_deeptrack") or {}
    if a_out == ["batch", "channel", "y", "x"]:
        kind = own.get("kind", "image-to-image")
        for ax in tout["axes"][2:]:
            size = ax.get("size")
            if not (isinstance(size, dict) and size.get("axis_id") == ax.get("id")):
                raise ValueError(
                    f"{path}: output axis {ax.get('id')} is not the size of the input's, so the output "
                    "is not a map over the image; this package does not fit a napari-deeptrack task"
                )
            if float(ax.get("scale", 1.0)) != float(
                tin["axes"][[a.get("id") for a in tin["axes"]].index(ax["id"])].get("scale", 1.0)
            ):
                raise ValueError(f"{path}: output axis {ax['id']} has another scale than the input's")
    elif a_out in (["batch", "channel"], ["batch", "index"]):
        kind = own.get("kind", "classification")
        for ax in tin["axes"][2:]:
            if not isinstance(ax.get("size"), int):
                raise ValueError(f"{path}: a vector-output model needs fixed input sizes")
    else:
        raise ValueError(
            f"{path}: output axes {a_out} do not fit a napari-deeptrack task (needed: batch, channel, y, x "
            "for maps, or batch, channel for vectors)"
        )
    return kind, tin, tout


def _normalization_from_spec(pre: list[dict], path: Path) -> dict:
    norm: dict = {"mode": "none"}
    for step in pre or []:
        sid, kw = step.get("id"), step.get("kwargs") or {}
        axes = list(kw.get("axes") or [])
        if sid in ("ensure_dtype",):
            continue
        if sid in ("scale_range", "zero_mean_unit_variance") and sorted(axes) != ["x", "y"]:
            raise ValueError(
                f"{path}: pre-processing {sid} over axes {axes} is not supported (napari-deeptrack "
                "normalises each image and channel over y, x)"
            )
        if sid == "scale_range":
            lo, hi = float(kw.get("min_percentile", 0.0)), float(kw.get("max_percentile", 100.0))
            norm = (
                {"mode": "minmax"}
                if (lo, hi) == (0.0, 100.0)
                else {"mode": "percentile", "low": lo, "high": hi}
            )
        elif sid == "zero_mean_unit_variance":
            norm = {"mode": "zscore"}
        else:
            raise ValueError(f"{path}: pre-processing {sid!r} is not supported by napari-deeptrack")
    return norm


def load_bioimageio(path: str | Path, weights: str = "auto"):
    """Load a bioimage.io model package as a :class:`~napari_deeptrack.io.bundle.Bundle`.

    Parameters
    ----------
    path : str or Path
        Package zip or folder (``rdf.yaml`` + files).
    weights : {'auto', 'onnx', 'torchscript'}
        Which weights to run; ``auto`` prefers ONNX (no code in the file), then TorchScript.

    Returns
    -------
    Bundle
        ``model`` (a torch module), ``task`` (ours when the package came from napari-deeptrack, else
        an ``image-to-image`` task for map outputs or a ``classification`` task for vector outputs),
        ``config`` (the rdf) and ``path``. ``analysis.predict`` runs it.

    Raises
    ------
    ValueError
        Not a model package, axes that fit no task kind (3D, time, several inputs...), unsupported
        pre/post-processing or weights formats.
    """
    from ..sim import Fluorescence, Pipeline
    from ..sim.serialize import from_dict
    from ..sim.targets import DiskMask
    from ..sim.task import Task
    from .bundle import Bundle

    path = Path(path)
    rdf, files = read_rdf(path)
    kind, tin, tout = _kind_from_axes(rdf, path)
    own = (rdf.get("config") or {}).get("napari_deeptrack") or {}
    inside = own.get("inside_weights") or {}
    norm = _normalization_from_spec(tin.get("preprocessing") or [], path)
    if inside.get("robust_normalization"):
        norm = {"mode": "none"}  # computed inside the weights
    activation = "none"
    for step in tout.get("postprocessing") or []:
        sid = step.get("id")
        if sid == "sigmoid":
            activation = "sigmoid"
        elif sid == "softmax":
            activation = "softmax"
        elif sid not in ("ensure_dtype",):
            raise ValueError(f"{path}: post-processing {sid!r} is not supported by napari-deeptrack")
    w = rdf.get("weights") or {}
    order = {"auto": ["onnx", "torchscript"], "onnx": ["onnx"], "torchscript": ["torchscript"]}.get(weights)
    if order is None:
        raise ValueError(f"weights must be 'auto', 'onnx' or 'torchscript', got {weights!r}")
    fmt = next((f for f in order if f in w), None)
    if fmt is None:
        raise ValueError(
            f"{path}: no {' or '.join(order)} weights (it has {sorted(w)}); napari-deeptrack runs ONNX "
            "and TorchScript packages"
        )
    src = str(w[fmt].get("source", ""))
    data = files.get(src) or files.get(Path(src).name)
    if data is None:
        raise ValueError(f"{path}: weights file {src!r} is missing from the package")
    sha = w[fmt].get("sha256")
    if sha and _sha256(data) != sha:
        raise ValueError(f"{path}: {src} does not match its sha256 in rdf.yaml (corrupt or replaced)")
    if fmt == "onnx":
        model: nn.Module = _OnnxModule(data)
    else:
        model = torch.jit.load(io.BytesIO(data), map_location="cpu")
    model.eval()
    space = [a for a in tin["axes"] if a.get("type") == "space"]
    px = float(space[0].get("scale", 1.0)) if space else 1.0
    if space and str(space[0].get("unit", "micrometer")) not in ("micrometer", "µm", "um"):
        unit = str(space[0].get("unit"))
        factor = {"nanometer": 1e-3, "millimeter": 1e3}.get(unit)
        if factor is None:
            raise ValueError(f"{path}: spatial unit {unit!r} is not supported")
        px *= factor
    if own.get("task"):
        task = from_dict(own["task"])
    else:
        sizes = [a.get("size") for a in space]
        shape = tuple(int(s) if isinstance(s, int) else 64 for s in sizes)
        task = Task(
            name=_spec_name(str(rdf.get("name", path.stem))),
            kind=kind,
            description=f"bioimage.io package {rdf.get('name', path.stem)}: {rdf.get('description', '')}",
            # a foreign model has no simulation: a placeholder pipeline at the package's pixel size
            pipeline=Pipeline(
                image_shape=shape,
                particles=[],
                optics=Fluorescence(NA=1.0, wavelength_um=0.5, pixel_size_um=px),
                targets={"output": DiskMask(radius_px=1)},
            ),
            target="output",
            model={"type": "bioimageio", "depth": int(np.log2(_size_step(space)))},
            pixel_size_um=px,
        )
    task.input_normalization = norm
    task.postprocess = {**dict(task.postprocess or {}), "activation": activation}
    if "down_factor" in own:
        task.model = {**dict(task.model or {}), "depth": int(round(np.log2(max(1, int(own["down_factor"])))))}
    else:
        task.model = {**dict(task.model or {}), "depth": int(round(np.log2(_size_step(space))))}
    return Bundle(model=model, task=task, config=rdf, path=path)


def _size_step(space: list[dict]) -> int:
    step = 1
    for a in space:
        s = a.get("size")
        if isinstance(s, dict) and "step" in s:
            step = max(step, int(s["step"]), int(s.get("min", 1)))
    # run_model pads to a multiple of 2**depth: use the next power of two of the step
    return 1 << max(0, int(np.ceil(np.log2(step))))


def is_bioimageio_package(path: str | Path) -> bool:
    """True for a folder with ``rdf.yaml`` / ``bioimageio.yaml`` or a zip holding one at its top level."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in (RDF_NAME, "bioimageio.yaml"))
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
        return bool(names & {RDF_NAME, "bioimageio.yaml"}) and "config.json" not in names
    return False


def load_model(path: str | Path, device: str = "cpu"):
    """A napari-deeptrack bundle or a bioimage.io package, as a :class:`~napari_deeptrack.io.bundle.Bundle`.

    What Apply (command line and widget) calls, so both run bioimage.io packages whose axes fit a
    task kind (see :func:`load_bioimageio`). ONNX packages run on the CPU.
    """
    from .bundle import load_bundle

    if is_bioimageio_package(path):
        b = load_bioimageio(path)
        if not isinstance(b.model, _OnnxModule):
            b.model.to(device)
        return b
    return load_bundle(path, device=device)
