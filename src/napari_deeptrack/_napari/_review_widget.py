"""Review dock widget: score the model against the user's corrections, fine-tune, report.

1. "Copy for correction" duplicates the model's shown output into a new layer that belongs to the
   user (the plugin never writes to it again); the user adds, moves, deletes points or paints labels
   with napari's own tools.
2. "Evaluate" scores the model output and a classical baseline (trackpy's Crocker-Grier locator for
   points, Otsu threshold + connected components for labels) against the corrected layer on the same
   frames: F1, precision, recall, RMSE (points) or IoU, F1 and panoptic quality (labels).
3. "Fine-tune" trains the model further on the corrected frames (targets rendered by the task's own
   target from the corrected annotations) mixed batch by batch with simulated data, in a worker.
4. "Write report" saves Markdown or HTML with the metrics, loss curves, configuration and versions.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox

from ._dock import scroll_form, text_row
from ._layers import (
    InputError,
    image_frames,
    image_layers,
    is_plugin_layer,
    notify,
    points_table,
    start_worker,
)
from ._session import session_for, unwrap_viewer

__all__ = ["ReviewWidget"]

POINT_KINDS = ("detection", "tracking-3d", "counting", "characterization")
LABEL_KINDS = ("segmentation",)


class ReviewWidget(Container):
    """Compare model output with corrected annotations; fine-tune; write a report."""

    def __init__(self, napari_viewer):
        from ._train_widget import warm_up_torch

        self.viewer = napari_viewer
        warm_up_torch()
        self.image = ComboBox(label="image", choices=self._images, nullable=True)
        self.prediction = ComboBox(label="model output", choices=self._annotations, nullable=True)
        self.reference = ComboBox(label="corrected layer", choices=self._annotations, nullable=True)
        self.tolerance = FloatSpinBox(label="match distance (px)", value=3.0, min=0.1, max=100.0)
        self.iou_threshold = FloatSpinBox(label="IoU threshold", value=0.5, min=0.05, max=0.95, step=0.05)
        self.copy_btn = PushButton(text="Copy output for correction")
        self.eval_btn = PushButton(text="Evaluate")
        self.results_label = Label(value="")
        self.epochs = SpinBox(label="fine-tune epochs", value=2, min=1, max=1000)
        self.steps = SpinBox(label="steps per epoch", value=10, min=1, max=100000)
        self.finetune_btn = PushButton(text="Fine-tune on corrections + simulation")
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.report_btn = PushButton(text="Write report...")
        self.model_info = Label(value="")
        from ._selfsupervised import AnnotateFewPanel

        self.annotate_few = AnnotateFewPanel(self)  # fine-tune + held-back scores + where to annotate next
        self.form = Container(
            widgets=[
                text_row(self.model_info),
                self.image,
                self.prediction,
                self.reference,
                self.tolerance,
                self.iou_threshold,
                self.copy_btn,
                self.eval_btn,
                text_row(self.results_label),
                self.epochs,
                self.steps,
                self.finetune_btn,
                self.progress,
                self.annotate_few,
                self.report_btn,
            ]
        )
        super().__init__(widgets=[])
        scroll_form(self, self.form)
        self.session = session_for(napari_viewer)
        self.session.result_changed.connect(self._result_changed)
        self.session.model_changed.connect(self._result_changed)
        self._result_changed()
        self.metrics: dict[str, dict] = {}
        self.finetuned = None
        self.finetune_history: dict | None = None
        self.worker = None
        self.copy_btn.changed.connect(self.copy_for_correction)
        self.eval_btn.changed.connect(self.evaluate)
        self.finetune_btn.changed.connect(self.fine_tune)
        self.report_btn.changed.connect(lambda: self.write_report())
        for ev in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, ev).connect(self._refresh)

    # ------------------------------------------------------------------ choices
    def _images(self, _=None):
        return [(lyr.name, lyr) for lyr in image_layers(self.viewer) if not is_plugin_layer(lyr)]

    def _annotations(self, _=None):
        from napari.layers import Labels, Points

        return [(lyr.name, lyr) for lyr in self.viewer.layers if isinstance(lyr, Points | Labels)]

    def _refresh(self, event=None):
        for w in (self.image, self.prediction, self.reference):
            try:
                w.reset_choices()
            except RuntimeError:
                pass

    # ------------------------------------------------------------------ helpers
    def _result_changed(self, *_) -> None:
        """Follow the session: the model whose output is reviewed, and its output layers."""
        try:
            res = self.session.result
            if res is None:
                self.model_info.value = "model output: run Apply first"
                return
            self.model_info.value = f"reviewing {res.bundle.task.name} on '{res.source_layer}'"
            if self.image.value is None:
                self.image.reset_choices()
                match = [c for c in self.image.choices if getattr(c, "name", None) == res.source_layer]
                if match:
                    self.image.value = match[0]
            if self.prediction.value is None:
                self.prediction.reset_choices()
                for name in ("DeepTrack detections", "DeepTrack labels"):
                    choice = [c for c in self.prediction.choices if getattr(c, "name", None) == name]
                    if choice:
                        self.prediction.value = choice[0]
                        break
        except RuntimeError:  # widget deleted
            pass

    def _bundle(self):
        """The model that made the reviewed output (the last Apply run), else the session's model."""
        res = self.session.result
        if res is not None:
            return res.bundle
        return self.session.model

    def copy_for_correction(self, *_):
        """A user-owned copy of the model output (only the shown points) to edit."""
        from napari.layers import Labels, Points

        src = self.prediction.value
        if src is None:
            notify("Select the model output layer first (run Apply).", "error")
            return None
        kwargs = {
            "scale": src.scale,
            "translate": src.translate,
            "units": src.units,
            "name": f"{src.name} corrected",
        }
        if isinstance(src, Points):
            shown = np.asarray(src.shown, dtype=bool)
            feats = src.features[shown].reset_index(drop=True) if len(src.features) == len(shown) else None
            layer = self.viewer.add_points(
                np.asarray(src.data)[shown],
                features=feats,
                size=src.size[shown] if len(src.size) == len(shown) else 6,
                face_color="transparent",  # hollow: the particle under the marker stays visible
                border_color="cyan",
                border_width=0.2,
                **kwargs,
            )
        elif isinstance(src, Labels):
            layer = self.viewer.add_labels(np.array(src.data, copy=True), **kwargs)
        else:
            return None
        layer = unwrap_viewer(layer)  # the layer itself, not napari's proxy of it
        self.reference.reset_choices()
        self.reference.value = layer
        notify(
            f"'{layer.name}' is yours to correct: add, move, delete points or paint labels, then Evaluate."
        )
        return layer

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, *_) -> dict | None:
        """Metrics of the model output and a classical baseline against the corrected layer."""
        from napari.layers import Labels, Points

        pred, ref = self.prediction.value, self.reference.value
        try:
            if pred is None or ref is None:
                raise InputError("Select the model output layer and the corrected layer.")
            if pred is ref:
                raise InputError(
                    "The model output and the corrected layer are the same layer: "
                    "use 'Copy output for correction' and edit the copy."
                )
            if type(pred) is not type(ref):
                raise InputError(
                    f"Cannot compare a {type(pred).__name__} layer with a {type(ref).__name__} layer."
                )
            bundle = self._bundle()
            if bundle is not None:
                kind = bundle.task.kind
                if isinstance(ref, Points) and kind not in POINT_KINDS:
                    raise InputError(
                        f"The model is a '{kind}' model; points can only score detection models."
                    )
                if isinstance(ref, Labels) and kind not in LABEL_KINDS:
                    raise InputError(
                        f"The model is a '{kind}' model; labels can only score segmentation models."
                    )
            frames = None
            if self.image.value is not None:
                frames, _ = image_frames(self.image.value, what="Review")
            if isinstance(ref, Points):
                metrics = self._points_metrics(pred, ref, frames)
            else:
                metrics = self._labels_metrics(pred, ref, frames)
        except (InputError, ValueError) as exc:
            notify(str(exc), "error")
            return None
        self.metrics.update(metrics)
        self.results_label.value = "\n".join(
            f"{name}: "
            + ", ".join(
                f"{k} {_f(m[k])}"
                for k in ("f1", "precision", "recall", "rmse_xy", "iou", "panoptic_quality")
                if k in m
            )
            for name, m in metrics.items()
        )
        return metrics

    def _points_metrics(self, pred, ref, frames) -> dict:
        from ..analysis.metrics import detection_metrics

        truth = points_table(ref)
        model = points_table(pred, only_shown=True)
        keep = np.unique(truth["frame"]) if len(truth) else np.zeros(0, int)
        if len(keep) == 0:
            raise InputError(f"The corrected layer '{ref.name}' has no points.")
        model = model[model["frame"].isin(keep)]
        out = {"model": detection_metrics(model, truth, self.tolerance.value)}
        if frames is not None:
            from ..analysis.baselines import locate_trackpy
            from ..analysis.calibrate import estimate_statistics

            stats = estimate_statistics(frames[keep])
            sigma = stats.spot_sigma_px or 1.5
            diameter = int(2 * math.ceil(2 * sigma) + 1)
            base = locate_trackpy(
                frames[keep], diameter=diameter, invert=stats.polarity == "dark", minmass=0.0, topn=None
            )
            if len(base):
                base["frame"] = keep[base["frame"].to_numpy().astype(int)]
                # keep features clearly above the background: mass > 5 noise sigmas over the footprint
                area = math.pi * (diameter / 2) ** 2
                base = base[base["mass"] > 5 * stats.noise_sigma * math.sqrt(area)]
            out["baseline (trackpy)"] = detection_metrics(base, truth, self.tolerance.value)
        return out

    def _labels_metrics(self, pred, ref, frames) -> dict:
        from ..analysis.metrics import segmentation_metrics

        p, r = np.asarray(pred.data), np.asarray(ref.data)
        if p.shape != r.shape:
            raise InputError(
                f"The model output '{pred.name}' {p.shape} and the corrected layer '{ref.name}' {r.shape} "
                "differ in shape: correct a copy made with 'Copy output for correction'."
            )
        p3, r3 = (p[None], r[None]) if p.ndim == 2 else (p, r)
        keep = [t for t in range(len(r3)) if r3[t].any()]
        if not keep:
            raise InputError(f"The corrected layer '{ref.name}' has no labels.")
        out = {
            "model": _mean_metrics(
                [segmentation_metrics(p3[t], r3[t], self.iou_threshold.value) for t in keep]
            )
        }
        if frames is not None and frames.shape[-2:] == r.shape[-2:]:
            from scipy import ndimage
            from skimage.filters import threshold_otsu

            base = []
            for t in keep:
                img = frames[t]
                fg = img > threshold_otsu(img)
                lab, _ = ndimage.label(fg)
                base.append(segmentation_metrics(lab, r3[t], self.iou_threshold.value))
            out["baseline (Otsu)"] = _mean_metrics(base)
        return out

    # ------------------------------------------------------------------ fine-tuning
    def fine_tune(self, *_):
        """Fine-tune on the corrected frames mixed with simulation, in a worker. Returns the worker."""
        from napari.layers import Labels, Points

        from ..train.events import StopFlag
        from ..train.finetune import mixed_batches, points_per_frame, targets_from_labels, targets_from_points
        from ._train_widget import train_events

        if self.worker is not None:
            notify("Fine-tuning is already running.", "warning")
            return None
        try:
            bundle = self._bundle()
            if bundle is None:
                raise InputError("No model to fine-tune: run Apply with a bundle or a trained model first.")
            frames, _ = image_frames(self.image.value, what="fine-tuning")
            ref = self.reference.value
            task = copy.deepcopy(bundle.task)
            if isinstance(ref, Points):
                if task.kind not in POINT_KINDS:
                    raise InputError(f"A '{task.kind}' model cannot be fine-tuned on points.")
                table = points_table(ref)
                keep = np.unique(table["frame"]).astype(int)
                points = points_per_frame(table, keep)
                targets = targets_from_points(task, points, frames.shape[-2:]).detach().cpu().numpy()
            elif isinstance(ref, Labels):
                if task.kind not in LABEL_KINDS:
                    raise InputError(f"A '{task.kind}' model cannot be fine-tuned on labels.")
                lab = np.asarray(ref.data)
                lab = lab[None] if lab.ndim == 2 else lab
                keep = np.array([t for t in range(len(lab)) if lab[t].any()])
                targets = targets_from_labels(task, lab[keep])
            else:
                raise InputError("Select the corrected Points or Labels layer.")
            if len(keep) == 0:
                raise InputError("The corrected layer is empty.")
        except (InputError, ValueError) as exc:
            notify(str(exc), "error")
            return None
        model = copy.deepcopy(bundle.model).train()
        epochs, steps = int(self.epochs.value), int(self.steps.value)
        bs = int(task.training.get("batch_size", 8))
        data = mixed_batches(task, frames[keep], targets, batch_size=bs, steps=epochs * steps)
        self.progress.max, self.progress.value = epochs * steps, 0
        self._task = task
        self._base_config = bundle.config
        self._finetune_settings = {
            "epochs": epochs,
            "steps_per_epoch": steps,
            "batch_size": bs,
            "corrected_layer": ref.name,
            "corrected_frames": [int(k) for k in keep],
            "mix": "alternate batches: corrected real crops / simulation",
        }
        worker = start_worker(
            train_events,
            task,
            StopFlag(),
            model=model,
            train_data=data,
            epochs=epochs,
            steps_per_epoch=steps,
            device="cpu",
            error="Fine-tuning failed",
        )
        worker.yielded.connect(
            lambda ev: setattr(self.progress, "value", min(int(ev.get("step", 0)), self.progress.max))
        )
        worker.returned.connect(self._finetuned)
        worker.finished.connect(lambda: setattr(self, "worker", None))
        self.worker = worker
        worker.start()
        return worker

    def _finetuned(self, result) -> None:
        from ..io.bundle import Bundle

        base = dict(self._base_config or {})
        config = {
            "history": base.get("history", {}),
            "training": base.get("training", {}),
            "finetune": {**self._finetune_settings, "history": result.history},
        }
        self.finetuned = Bundle(model=result.model.eval(), task=self._task, config=config, path=None)
        self.finetune_history = result.history
        self.session.set_model(self.finetuned, origin="fine-tuned")
        notify("Fine-tuning finished: Apply now uses the fine-tuned model; run it and Evaluate again.")

    # ------------------------------------------------------------------ report
    def write_report(self, path: str | Path | None = None) -> Path | None:
        import napari

        from ..report import write_validation_report

        if not self.metrics:
            notify("Evaluate first: the report needs metrics.", "warning")
            return None
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(
                None, "Write report", "report.md", "Markdown (*.md);;HTML (*.html)"
            )
            if not path:
                return None
        bundle = self.finetuned or self._bundle()
        config = dict(getattr(bundle, "config", None) or {})
        history = config.get("history") or {}
        settings = {"training": config.get("training") or {}}
        if config.get("finetune"):
            settings["fine-tuning"] = config["finetune"]
        res = self.session.result
        if res is not None:
            settings["applied"] = {"layer": res.source_layer, "summary": res.summary}
        out = write_validation_report(
            path,
            self.metrics,
            task=getattr(bundle, "task", None),
            history=history or {},
            settings=settings,
            notes="Metrics against the user's corrected layer; "
            "baseline = classical method on the same frames.",
            versions={"napari": napari.__version__},
        )
        notify(f"Report written to {out}")
        return out


# ---------------------------------------------------------------------------- pure helpers
def _f(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _mean_metrics(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["n_frames"] = len(rows)
    return out
