"""Train dock widget: task preset, model, hyperparameters, device; training in a worker thread.

The worker is a ``thread_worker`` generator that yields every trainer event (one per batch, one per
epoch): the main thread updates the progress bar, ETA and loss curves from ``yielded``. Everything the
training needs (the task, optionally with the Simulate widget's simulation) is built on the main
thread before the worker starts; the worker never touches layers. Stop asks the trainer to stop after
the current batch; the model keeps the best checkpoint (lowest validation loss).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ._dock import scroll_form, text_row
from ._layers import notify, relay_events, start_worker
from ._session import session_for

__all__ = ["TrainWidget", "crop_simulation", "export_bioimageio_package", "train_events"]

DEVICES = ("auto", "cpu", "cuda", "mps")


def _presets() -> list[str]:
    try:
        from ..tasks import list_presets

        return list_presets()
    except Exception:  # pragma: no cover - presets being written
        return []


def _fmt_eta(s) -> str:
    if s is None or s != s:
        return "?"
    s = int(round(s))
    return f"{s // 60:d}:{s % 60:02d}"


_WARM = False


def warm_up_torch() -> None:
    """Import what a training step imports (torch's optimiser pulls in ~800 modules on its first step).

    Done once on the main thread when a widget that trains opens: an import in the worker thread would
    hold the GIL for hundreds of milliseconds and freeze napari in the middle of training.
    """
    global _WARM
    if _WARM:
        return
    import torch

    from ..train import api  # noqa: F401 - imported for its side effect (module loading)

    p = torch.nn.Parameter(torch.zeros(1, 1, 3, 3))
    opt = torch.optim.Adam([p], lr=1e-3)
    x = torch.nn.functional.conv2d(torch.zeros(1, 1, 4, 4), p)
    torch.nn.functional.batch_norm(x, None, None, training=True).sum().backward()
    opt.step()
    _WARM = True


def train_events(task, stop_flag, **settings):
    """Generator run in the worker: trains ``task`` and yields every trainer event; returns the result.

    Training runs in a helper thread that feeds a queue (:func:`relay_events`), so the napari worker
    yields once per batch without the trainer knowing about Qt; quitting the worker stops training.
    """
    from ..train.api import train_task

    job = functools.partial(train_task, task, None, **settings)
    return (yield from relay_events(job, stop_flag))


class TrainWidget(Container):
    """Train a task preset on simulated data; live loss curves; Stop; Save bundle."""

    def __init__(self, napari_viewer):
        from qtpy.QtWidgets import QVBoxLayout, QWidget

        from ._plot import LossPlot

        self.viewer = napari_viewer
        warm_up_torch()
        presets = _presets()
        self.preset = ComboBox(label="task preset", choices=presets, value=presets[0] if presets else None)
        self.description = Label(value="")
        self.use_simulation = CheckBox(label="train on the Simulate widget's simulation", value=False)
        self.simulation_info = Label(value="no simulation from the Simulate widget yet")
        self.model_config = LineEdit(label="model (JSON)")
        self.epochs = SpinBox(label="epochs", value=10, min=1, max=100000)
        self.steps = SpinBox(label="steps per epoch", value=50, min=1, max=1000000)
        self.batch_size = SpinBox(label="batch size", value=16, min=1, max=4096)
        self.lr = FloatSpinBox(label="learning rate", value=1e-3, min=1e-7, max=1.0, step=1e-4)
        self.validation_size = SpinBox(label="validation images", value=64, min=1, max=100000)
        self.time_limit = FloatSpinBox(
            label="time limit (min, 0: none)", value=0.0, min=0.0, max=10000.0, step=1.0
        )
        self.time_limit.tooltip = (
            "Train for at most this long: the run is shortened to the epochs that fit and its "
            "learning-rate schedule compressed to still end at its floor."
        )
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.train_btn = PushButton(text="Train")
        self.stop_btn = PushButton(text="Stop (keep best)")
        self.save_btn = PushButton(text="Save bundle...")
        self.export_btn = PushButton(text="Export bioimage.io...")
        self.export_btn.tooltip = (
            "Write the model trained here (or fine-tuned in Review) as a bioimage.io model package "
            "(.zip) that deepImageJ, ilastik, QuPath and bioimageio.core run."
        )
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(value="idle")
        from ._selfsupervised import CropsPanel

        self.crops_panel = CropsPanel(napari_viewer)  # self-supervised presets: crops of real objects
        self.form = Container(
            widgets=[
                self.preset,
                text_row(self.description),
                self.crops_panel,
                self.use_simulation,
                text_row(self.simulation_info),
                self.model_config,
                self.epochs,
                self.steps,
                self.batch_size,
                self.lr,
                self.validation_size,
                self.time_limit,
                self.device,
                self.seed,
            ]
        )
        super().__init__(widgets=[])
        self.plot = LossPlot()
        footer = QWidget()
        lay = QVBoxLayout(footer)
        lay.setContentsMargins(4, 0, 4, 4)
        for w in (
            Container(
                widgets=[self.train_btn, self.stop_btn, self.save_btn], layout="horizontal", labels=False
            ),
            self.export_btn,
            self.progress,
            self.status,
        ):
            lay.addWidget(w.native)
        lay.addWidget(self.plot)
        scroll_form(self, self.form, footer=footer)
        self.status.native.setWordWrap(False)  # one line; clipped rather than widening the dock
        self.status.native.setMinimumWidth(10)
        self.stop_btn.enabled = False
        self.save_btn.enabled = False
        self.export_btn.enabled = False
        self.export_worker = None
        self.task = None
        self.model = None
        self.history: dict | None = None
        self.settings: dict | None = None
        self.last_event: dict | None = None
        self.worker = None
        self._stop_flag = None
        self.session = session_for(napari_viewer)
        self.session.simulation_changed.connect(self._simulation_changed)
        self._simulation_changed(self.session.simulation)
        self.session.model_changed.connect(self._model_changed)
        self._model_changed(self.session.model)
        self.preset.changed.connect(self._preset_changed)
        self.train_btn.changed.connect(self.start_training)
        self.stop_btn.changed.connect(self.stop)
        self.save_btn.changed.connect(lambda: self.save_bundle())
        self.export_btn.changed.connect(lambda: self.export_bioimageio())
        self._preset_changed()

    # ------------------------------------------------------------------ form
    def _simulation_changed(self, pipeline) -> None:
        try:
            if pipeline is None:
                self.simulation_info.value = (
                    "no simulation from the Simulate widget yet (open it, Match to layer)"
                )
                return
            h, w = pipeline.image_shape
            self.simulation_info.value = f"Simulate: {self.session.simulation_origin} ({h}x{w} frames)"
            if self.session.simulation_matched:
                self.use_simulation.value = True
        except RuntimeError:  # widget deleted
            pass

    def _preset_changed(self, *_):
        from ..tasks import TRAINING_DEFAULTS, get_preset

        if not self.preset.value:
            self.description.value = "no task presets installed"
            return
        task = get_preset(self.preset.value)
        self.description.value = f"{task.kind}: {task.description[:160]}"
        from ._selfsupervised import is_selfsupervised

        self.crops_panel.visible = is_selfsupervised(task)
        self.use_simulation.visible = not is_selfsupervised(task)
        self.model_config.value = json.dumps(task.model)
        s = {**TRAINING_DEFAULTS, **task.training}
        self.epochs.value, self.steps.value = int(s["epochs"]), int(s["steps_per_epoch"])
        self.batch_size.value, self.lr.value = int(s["batch_size"]), float(s["lr"])
        self.validation_size.value = min(int(s["validation_size"]), 256)

    def build_task(self):
        """The task to train: the preset, its model config and optionally the Simulate widget's pipeline."""
        from ..tasks import get_preset

        if not self.preset.value:
            raise ValueError("no task preset selected")
        task = get_preset(self.preset.value)
        text = (self.model_config.value or "").strip()
        if text:
            try:
                model = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"model (JSON) is not valid JSON: {exc}") from None
            if not isinstance(model, dict) or "type" not in model:
                raise ValueError('model (JSON) must be an object with a "type", e.g. {"type": "UNet", ...}')
            task.model = model
        if self.use_simulation.value:
            full = self.session.simulation
            if full is None:
                raise ValueError(
                    "the Simulate widget has no valid simulation: open Plugins > DeepTrack > Simulate "
                    "and Match to layer, or untick 'train on the Simulate widget's simulation'"
                )
            # the simulation's sample, optics and noise; the task's targets; the pixel size of the optics
            task = task.with_simulation(crop_simulation(full, task.pipeline.image_shape))
        task.training = {**task.training, "validation_size": int(self.validation_size.value)}
        return task

    # ------------------------------------------------------------------ training
    def start_training(self, *_):
        """Build everything on the main thread, then train in a worker; returns the worker (or None)."""
        from ..train.events import StopFlag

        if self.worker is not None:
            notify("Training is already running.", "warning")
            return None
        try:
            task = self.build_task()
            settings = {
                "epochs": int(self.epochs.value),
                "steps_per_epoch": int(self.steps.value),
                "batch_size": int(self.batch_size.value),
                "lr": float(self.lr.value),
                "device": self.device.value,
                "seed": int(self.seed.value),
                "num_workers": 0,
                "max_seconds": 60.0 * float(self.time_limit.value) if self.time_limit.value > 0 else None,
            }
            from ..sim.budget import estimate_render
            from ..train.seeding import resolve_device

            resolve_device(settings["device"])
            from ._selfsupervised import is_selfsupervised, selfsupervised_job

            job = None
            if is_selfsupervised(task):  # learns from crops of the user's image, not from simulation
                job, settings["crops"] = selfsupervised_job(self.crops_panel, task, settings)
            else:  # the training batch is simulated on the fly: refuse what cannot fit before starting
                estimate_render(task.pipeline, settings["batch_size"], what="a training batch").check()
        except (ValueError, RuntimeError, TypeError, MemoryError) as exc:
            notify(f"Cannot train: {exc}", "error")
            return None
        self.task, self.settings = task, settings
        self._t0 = time.perf_counter()
        self.plot.clear()
        self.progress.max = settings["epochs"] * settings["steps_per_epoch"]
        self.progress.value = 0
        self.status.value = "simulating the validation set..."
        self._stop_flag = StopFlag()
        if job is not None:
            self.status.value = "training from the crops..."
            worker = start_worker(relay_events, job, self._stop_flag, error="Training failed")
        else:
            worker = start_worker(train_events, task, self._stop_flag, **settings, error="Training failed")
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_done)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.train_btn.enabled = False
        self.stop_btn.enabled = True
        worker.start()
        return worker

    def stop(self, *_):
        """Stop after the current batch; the best checkpoint is kept."""
        if self._stop_flag is not None:
            self._stop_flag.stop()
            self.status.value = "stopping after this batch..."

    def _eta(self, ev: dict):
        """The trainer's ETA, never beyond the time limit (the first estimates ignore it)."""
        eta = ev.get("eta_s")
        limit = (self.settings or {}).get("max_seconds")
        if limit:
            left = max(float(limit) - (time.perf_counter() - self._t0), 0.0)
            eta = left if eta is None or eta != eta else min(float(eta), left)
        return eta

    def _on_event(self, ev: dict) -> None:
        self.last_event = ev
        self.plot.add_event(ev)
        if ev.get("total_steps"):  # a time limit may shorten the run
            self.progress.max = int(ev["total_steps"])
        if ev["type"] == "batch":
            self.progress.value = min(int(ev["step"]), self.progress.max)
            self.status.value = (
                f"epoch {ev['epoch'] + 1}/{ev['epochs']}  loss {ev['loss']:.4g}  "
                f"{ev['samples_per_s']:.0f} img/s  ETA {_fmt_eta(self._eta(ev))}"
            )
        elif ev["type"] == "epoch":
            self.status.value = (
                f"epoch {ev['epoch'] + 1}/{ev['epochs']}  loss {ev['loss']:.4g}  "
                f"val {ev['val_loss']:.4g}  ETA {_fmt_eta(self._eta(ev))}"
            )

    def _on_done(self, result) -> None:
        self.model, self.history = result.model, result.history
        self.task = getattr(result, "task", None) or self.task  # self-supervised: calibrated (reference mass)
        reason = result.history.get("reason", "completed")
        best = result.history.get("best_val_loss")
        self.status.value = f"{reason}: best validation loss {best:.4g}" if best is not None else reason
        self.save_btn.enabled = True
        self.session.set_model(self.trained_bundle(), origin="trained")
        notify(f"Training {reason}. The model is ready for Apply; Save bundle keeps it.")

    def _finished(self):
        self.worker = None
        self.train_btn.enabled = True
        self.stop_btn.enabled = False

    # ------------------------------------------------------------------ results
    def trained_bundle(self):
        """The just-trained model as an in-memory :class:`~napari_deeptrack.io.bundle.Bundle` (or None)."""
        from ..io.bundle import Bundle

        if self.model is None or self.task is None:
            return None
        return Bundle(
            model=self.model.eval(),
            task=self.task,
            config={"history": self.history or {}, "training": self.settings or {}},
            path=None,
        )

    def save_bundle(self, path: str | Path | None = None) -> Path | None:
        """Save the trained model (best checkpoint), task and history as a bundle."""
        from ..io.bundle import save_bundle

        if self.model is None:
            notify("Train a model first.", "warning")
            return None
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(None, "Save model bundle", "", "Bundle (*.zip)")
            if not path:
                return None
        try:
            out = save_bundle(
                path,
                self.model,
                self.task,
                self.history,
                seed=(self.settings or {}).get("seed"),
                training=self.settings,
            )
        except (ValueError, OSError) as exc:
            notify(f"Could not save the bundle: {exc}", "error")
            return None
        notify(f"Bundle saved to {out}")
        return out

    def _model_changed(self, bundle) -> None:
        try:
            self.export_btn.enabled = bundle is not None and self.export_worker is None
        except RuntimeError:  # widget deleted
            pass

    def export_bioimageio(self, path: str | Path | None = None):
        """Export the session's model (trained here or fine-tuned in Review) as a bioimage.io package.

        The export runs in a worker (see :func:`export_bioimageio_package`); returns the worker, or None
        when there is no model or the file dialog was cancelled.
        """
        bundle = self.session.model
        if bundle is None:
            notify("Train a model first (or fine-tune one in Review).", "warning")
            return None
        if self.export_worker is not None:
            notify("A bioimage.io export is already running.", "warning")
            return None
        from ..io.bioimageio import is_bioimageio_package

        if bundle.path is not None and is_bioimageio_package(bundle.path):
            notify(f"The model in use is already a bioimage.io package: {bundle.path}", "warning")
            return None
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            name = f"{bundle.task.name}_bioimageio.zip"
            path, _ = QFileDialog.getSaveFileName(
                None, "Export bioimage.io model package", name, "Zip (*.zip)"
            )
            if not path:
                return None
        path = Path(path)
        if path.suffix.lower() != ".zip":
            notify(f"A bioimage.io package is a .zip file; got {path.name}.", "error")
            return None
        origin = self.session.model_origin or "trained"
        worker = start_worker(
            export_bioimageio_package, bundle, path, origin, error="bioimage.io export failed"
        )
        worker.returned.connect(lambda out: notify(f"bioimage.io package ({origin} model) written to {out}"))
        worker.finished.connect(self._export_finished)
        self.export_worker = worker
        self.export_btn.enabled = False
        self.status.value = f"exporting the {origin} model as a bioimage.io package..."
        worker.start()
        return worker

    def _export_finished(self) -> None:
        self.export_worker = None
        self._model_changed(self.session.model)


def export_bioimageio_package(bundle, out: str | Path, origin: str = "trained") -> Path:
    """Run in a worker: save ``bundle`` to a temporary bundle file and export it with the CLI's
    ``export-bioimageio`` in a child process.

    A child process, not this thread: the export imports ONNX, whose extension modules hold the GIL
    for seconds while they load, which would freeze napari's event loop.
    """
    from ..errors import InputError
    from ..io.bundle import save_bundle

    cfg = dict(bundle.config or {})
    training = dict(cfg.get("training") or {})
    notes = f"{origin} in napari"
    if cfg.get("finetune"):
        notes += f"; fine-tuning: {json.dumps(cfg['finetune'], default=str)[:2000]}"
    with tempfile.TemporaryDirectory(prefix="napari-deeptrack-export-") as tmp:
        src = save_bundle(
            Path(tmp) / "model.zip",
            bundle.model,
            bundle.task,
            cfg.get("history"),
            seed=training.get("seed"),
            training=training or None,
            metrics=cfg.get("metrics"),
            notes=notes,
        )
        cmd = [sys.executable, "-m", "napari_deeptrack.cli", "export-bioimageio", str(src), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        message = lines[-1] if lines else f"exit status {proc.returncode}"
        message = message.split(": error: ", 1)[-1]
        raise (InputError if proc.returncode == 2 else RuntimeError)(message)
    return Path(json.loads(proc.stdout.strip().splitlines()[-1])["package"])


def crop_simulation(pipeline, image_shape):
    """The full-frame simulation on training crops of ``image_shape``: particle counts scale with the area.

    A matched simulation counts the particles of a whole frame (e.g. 426-1279 on 424x640); a 64x64 crop
    of the same sample holds ``64*64 / (424*640)`` as many.
    """
    from ..sim import IntUniform
    from ..sim.params import support

    h0, w0 = pipeline.image_shape
    h, w = (int(s) for s in image_shape)
    factor = (h * w) / float(h0 * w0)
    particles = []
    for pop in pipeline.particles:
        try:
            lo, hi = support(pop.count)
        except TypeError:
            particles.append(pop)
            continue
        lo_c = int(round(lo * factor))
        hi_c = max(int(round(hi * factor)), 1 if hi > 0 else 0)
        lo_c = min(lo_c, hi_c)
        count = IntUniform(lo_c, hi_c) if hi_c > lo_c else hi_c
        particles.append(dataclasses.replace(pop, count=count))
    return pipeline.with_(image_shape=(h, w), particles=particles)
