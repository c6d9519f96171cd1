"""Apply dock widget: run a bundle (or the model just trained) on an image layer.

Frames are validated on the main thread, then predicted in chunks inside a worker (the core's chunk
iterator) that yields after every chunk (progress). Cancel stops after the chunk in progress and the
chunks already finished are merged, linked and written to the layers as a normal run (the status says
how many frames). The tile size is chosen from the memory estimate unless the user sets one. Results
go to named layers
that keep the source layer's scale, translate and units, updated (not duplicated) on every run:

- ``DeepTrack detections`` Points: every detection with its features (probability, frame, z, radius,
  refractive index, track id...), coloured by probability. Run detects and links at the threshold
  slider's value, exactly as ``napari-deeptrack apply --threshold`` (one core call,
  :func:`napari_deeptrack.analysis.predict.predict_chunks`); moving the slider up afterwards hides
  the points below it and their links (no network run), and per-frame counts follow it (exportable
  as CSV); moving it below the value of the run needs another Run;
- ``DeepTrack 3D`` Points (z, y, x in um) when the model estimates z;
- ``DeepTrack labels`` Labels and ``DeepTrack outlines`` Shapes for segmentation;
- ``DeepTrack tracks`` Tracks when linking is on and the layer is a stack;
- ``DeepTrack output`` Image for image-to-image models and density maps.

Before running, the widget warns when the layer's pixel size or statistics fall outside what the
training simulation covered (:func:`napari_deeptrack.analysis.calibrate.coverage_warnings`), and
offers the fix: "Re-match polarity / noise / ... on this layer" asks the Simulate widget (through the
viewer's session) to match the simulation to the layer, ready to retrain.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ._dock import collapsible, scroll_form, text_row
from ._layers import (
    InputError,
    image_frames,
    image_layers,
    layer_pixel_size_um,
    notify,
    spatial_kwargs,
    start_worker,
    widget_alive,
    write_layer,
)
from ._selfsupervised import StarterSource, check_starter_modality, is_starter_choice, starter_choices
from ._session import ApplyResult, MatchRequest, session_for
from ._threshold import DetectionCache

__all__ = ["ApplyWidget"]

SOURCES = ("model trained / fine-tuned in this viewer", "bundle file")
POINTS_ROLE = "detections"


class ApplyWidget(Container):
    """Run a model on the selected layer; threshold live; per-frame counts."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.layer = ComboBox(label="image", choices=self._image_choices, nullable=True)
        # "starter: <preset>": the shipped starter models, usable without training
        self.source = ComboBox(label="model", choices=SOURCES + starter_choices(), value=SOURCES[1])
        self.bundle_path = FileEdit(label="bundle", mode="r", filter="*.zip *.json")
        self.bundle_info = Label(value="no model loaded")
        self.batch_size = SpinBox(label="frames per batch", value=8, min=1, max=1024)
        tiles = [("auto (from memory)", 0)] + [
            (f"{t} px", t) for t in (64, 128, 256, 512, 1024, 2048, 4096, 8192)
        ]
        self.tile_size = ComboBox(label="tile size", choices=tiles, value=0)
        self.tile_size.tooltip = (
            "Frames larger than this run in overlapping tiles, merged without seams (whole slides). "
            "auto: the largest tile whose forward pass fits the memory budget (sim.budget.estimate_apply)."
        )
        self.tile_label = Label(value="")
        self.link = CheckBox(label="link tracks (stacks)", value=True)
        self.search_range = FloatSpinBox(label="track search range (px)", value=5.0, min=0.1, max=500.0)
        self.memory = SpinBox(label="memory (frames)", value=0, min=0, max=100)
        self.memory.tooltip = "Frames a particle may vanish and keep its track (0: the task's default)."
        self.min_track_length = SpinBox(label="min track length", value=1, min=1, max=10**5)
        self.min_track_length.tooltip = "Shorter tracks (stubs) are not linked: their detections stay."
        self.preview_btn = PushButton(text="Preview this frame")
        self.preview_btn.tooltip = (
            "Detect on the frame shown only (well under a second), before the whole stack."
        )
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.0, max=1.0, step=0.01)
        self.counts_label = Label(value="")
        self.export_btn = PushButton(text="Export counts CSV...")
        self.warnings_label = Label(value="")
        # coverage warnings come with their fix: re-match the simulation to this layer (Simulate widget)
        self.fix_btn = PushButton(text="Re-match")
        self.fix_btn.visible = False
        self.fix_btn.tooltip = (
            "Opens the Simulate widget and runs Match to layer on this image; check the estimates, then "
            "retrain (Train: the Simulate widget's simulation)."
        )
        self.status_label = Label(value="")
        # segmentation post-processing, live on the instances (no network run)
        self.min_size = SpinBox(label="min object size (px)", value=0, min=0, max=10**7)
        self.exclude_border = CheckBox(label="drop objects on the border", value=False)
        self.outlines_only = CheckBox(label="show outlines only", value=False)
        super().__init__(widgets=[])
        seg_box, _ = collapsible(
            "Segmentation: object filters", [self.min_size, self.exclude_border, self.outlines_only]
        )
        link_box, _ = collapsible(
            "Tracking: linking", [self.link, self.search_range, self.memory, self.min_track_length]
        )
        self.form = Container(
            widgets=[
                self.layer,
                self.source,
                self.bundle_path,
                text_row(self.bundle_info),
                self.batch_size,
                self.tile_size,
                text_row(self.tile_label),
                self.preview_btn,
                Container(widgets=[self.run_btn, self.cancel_btn], layout="horizontal", labels=False),
                self.progress,
                text_row(self.status_label),
                self.threshold,
                text_row(self.counts_label),
                self.export_btn,
                text_row(self.warnings_label),
                self.fix_btn,
            ]
        )
        lay = self.form.native.layout()
        lay.insertWidget(lay.indexOf(self.batch_size.native.parent()) + 1, link_box)
        lay.insertWidget(lay.indexOf(self.threshold.native.parent()) + 1, seg_box)
        scroll_form(self, self.form)
        self.cancel_btn.enabled = False
        self.bundle = None
        self.cache: DetectionCache | None = None
        self.results: dict | None = None
        self.worker = None
        self.last_warnings: list[str] = []
        self._warned_layer = ""
        self._stop = threading.Event()
        self._points_layer = None
        self._tracks_layer = None
        self._labels_layer = None
        self._writing = False
        self._worker_done = False
        self.instances = None  # segmentation: one row per instance (label, frame, area, probability...)
        self._raw_labels = None
        self._was_2d = True
        self.starters = StarterSource(self)
        from ._compute import start as start_helper

        start_helper()  # the helper process for the coverage check and linking, started at opening
        _warm_up_imports()
        self.session = session_for(napari_viewer)
        self.session.model_changed.connect(self._session_model_changed)
        if self.session.model is not None:
            self._session_model_changed(self.session.model)
        self.bundle_path.changed.connect(lambda *_: self.load_bundle())
        self.run_btn.changed.connect(self.run)
        self.preview_btn.changed.connect(self.preview_frame)
        self.cancel_btn.changed.connect(self.cancel)
        self.fix_btn.changed.connect(self.fix_coverage)
        self.threshold.changed.connect(self.apply_threshold)
        for w in (self.min_size, self.exclude_border):
            w.changed.connect(self.apply_threshold)
        self.outlines_only.changed.connect(self._outline_mode)
        self.export_btn.changed.connect(lambda: self.export_counts())
        for ev in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, ev).connect(self._refresh_layers)

    def _image_choices(self, _=None):
        return [
            (layer.name, layer)
            for layer in image_layers(self.viewer)
            if not layer.metadata.get("napari_deeptrack")
        ]

    def _refresh_layers(self, event=None):
        try:
            self.layer.reset_choices()
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ model
    def load_bundle(self, path: str | Path | None = None):
        """Load a bundle file (validated; a clear notification when it is not one)."""
        from ..io.bioimageio import load_model as load_bundle  # a bundle or a bioimage.io package

        path = Path(path) if path is not None else Path(self.bundle_path.value)
        is_model_dir = any((path / n).exists() for n in ("config.json", "rdf.yaml"))
        if not str(path) or not path.exists() or path.is_dir() and not is_model_dir:
            return None
        try:
            bundle = load_bundle(path)
        except (ValueError, OSError, KeyError) as exc:
            notify(f"Cannot load the model bundle: {exc}", "error")
            return None
        return self.set_bundle(bundle)

    def set_bundle(self, bundle):
        from ..tasks.base import KINDS  # the Apply widget writes layers for every task kind

        if bundle.task.kind not in KINDS:
            notify(f"The bundle is for a '{bundle.task.kind}' task, which Apply cannot run.", "error")
            return None
        self.bundle = bundle
        self.source.value = SOURCES[1]
        self.bundle_info.value = (
            f"{bundle.task.name} ({bundle.task.kind}), trained at {bundle.task.pixel_size_um:g} um/px"
        )
        thr = (bundle.task.postprocess or {}).get("threshold")
        if thr is not None:
            self.threshold.value = float(thr)
        return bundle

    def _session_model_changed(self, bundle) -> None:
        """A model was trained (Train) or fine-tuned (Review): use it."""
        if bundle is None:
            return
        try:
            self.source.value = SOURCES[0]
            task = bundle.task
            self.bundle_info.value = (
                f"{task.name} ({task.kind}), {self.session.model_origin} in this viewer, not saved yet"
            )
        except RuntimeError:  # widget deleted
            pass

    def current_bundle(self):
        if is_starter_choice(self.source.value):
            return self.starters.current()
        if self.source.value == SOURCES[0]:
            bundle = self.session.model
            if bundle is None:
                raise InputError(
                    "No model has been trained in this viewer yet: train one (Train widget) or choose "
                    "'bundle file' and load a .zip."
                )
            return bundle
        if self.bundle is None:
            raise InputError("No model: choose a bundle file (.zip) or train one in the Train widget.")
        return self.bundle

    # ------------------------------------------------------------------ run
    def run(self, *_):
        """Validate, snapshot the frames, and predict in a worker. Returns the worker (or None)."""
        if self.worker is not None:
            notify("Apply is already running.", "warning")
            return None
        layer = self.layer.value
        try:
            bundle = self.current_bundle()
            frames, was_2d = _apply_frames(layer)
            _check_bundle_fits(bundle, frames)
            check_starter_modality(bundle, frames)
        except InputError as exc:
            notify(str(exc), "error")
            return None
        px = layer_pixel_size_um(layer)
        self.warnings_label.value = "comparing the layer with the training simulation..."
        self.fix_btn.visible = False
        self._warned_layer = layer.name
        self.status_label.value = f"running on {frames.shape[0]} frame(s)..."
        self._stop = threading.Event()
        self.progress.max = frames.shape[0]
        self.progress.value = 0
        meta = {
            "source": layer,
            "was_2d": was_2d,
            "pixel_size_um": px,
            "n_frames": frames.shape[0],
            "link": bool(self.link.value) and frames.shape[0] > 1,
            "search_range": float(self.search_range.value),
        }
        worker = start_worker(
            _apply_job,
            bundle,
            frames,
            px,
            (
                int(self.batch_size.value),
                float(self.threshold.value),
                meta["link"],
                meta["search_range"],
                int(self.memory.value) if self.memory.value > 0 else None,
                int(self.tile_size.value) or None,
            ),
            error="Apply failed",
            min_track_length=int(self.min_track_length.value),
            stop=self._stop,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda res: self._show(res, bundle, meta))
        worker.errored.connect(
            lambda *_: setattr(self.status_label, "value", "Apply failed (see the message).")
        )
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_btn.enabled = False
        self.cancel_btn.enabled = True
        worker.start()
        return worker

    def preview_frame(self, *_):
        """Detect on the frame shown only (the trackpy loop: tune on one frame, then run the stack).

        The detections of that frame replace the Points layer's content for a quick look; Run then
        processes every frame. Returns the worker (or None).
        """
        if self.worker is not None:
            notify("Apply is already running.", "warning")
            return None
        layer = self.layer.value
        try:
            bundle = self.current_bundle()
            if layer is None:
                raise InputError("No image layer selected: open or select a grey-scale image for Apply.")
            t = 0
            if layer.ndim == 3 and not layer.rgb and hasattr(layer, "data_to_world"):
                t = int(self.viewer.dims.current_step[0])
                t = min(max(t, 0), layer.data.shape[0] - 1)
                frames = np.asarray(layer.data[t], dtype=np.float32)[None]  # this frame only
                if not np.isfinite(frames).all() or float(frames.max()) == float(frames.min()):
                    raise InputError(f"Frame {t} of '{layer.name}' is empty or not finite.")
            else:
                frames, _ = image_frames(layer, what="Apply")
            _check_bundle_fits(bundle, frames)
            check_starter_modality(bundle, frames)
        except InputError as exc:
            notify(str(exc), "error")
            return None
        meta = {
            "source": layer,
            "was_2d": layer.ndim == 2,
            "pixel_size_um": layer_pixel_size_um(layer),
            "n_frames": layer.data.shape[0] if layer.ndim == 3 else 1,
            "frame_offset": t,
        }
        t0 = time.perf_counter()
        worker = start_worker(
            predict_chunks,
            bundle,
            frames,
            1,
            float(self.threshold.value),
            False,
            None,
            error="Preview failed",
        )

        def show(res):
            det = res.get("detections")
            if det is not None:
                det = det.copy()
                det["frame"] = t
                res = {**res, "detections": det, "labels": None, "image": None, "counts": None}
            self.last_preview_s = time.perf_counter() - t0
            self._show(res, bundle, meta, record=False)
            self.warnings_label.value = (
                f"preview of frame {t}: {len(det) if det is not None else 0} detections in "
                f"{self.last_preview_s:.2f} s; Run processes every frame"
            )

        worker.returned.connect(show)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_btn.enabled = self.preview_btn.enabled = False
        worker.start()
        return worker

    def _on_progress(self, item) -> None:
        """Worker progress: the coverage warnings first (a tuple), then frames done after every chunk."""
        if isinstance(item, tuple) and item and item[0] == "warnings":
            self.last_warnings = list(item[1])
            if self.last_warnings:
                msg = "Outside the training simulation: " + "; ".join(self.last_warnings)
                self.warnings_label.value = "\n".join(f"! {w}" for w in self.last_warnings)
                notify(msg, "warning")
            else:
                self.warnings_label.value = "the layer is within the training simulation's range"
            self._offer_fix()
            return
        if isinstance(item, tuple) and item and item[0] == "tile":
            self.tile_label.value = item[1]
            return
        self.progress.value = int(item)

    def cancel(self, *_):
        """Stop after the chunk in progress; the chunks already finished are written to the layers."""
        if self.worker is not None:
            self._stop.set()
            self.status_label.value = "cancelling after the chunk in progress..."

    # ------------------------------------------------------------------ coverage fixes
    def _offer_fix(self) -> None:
        """Coverage warnings come with their fix: a button that re-matches the simulation to the layer."""
        fixes = coverage_fixes(self.last_warnings)
        if not fixes:
            self.fix_btn.visible = False
            return
        names = ", ".join(label for label, _ in fixes)
        self.fix_btn.text = f"Re-match {names} on '{self._warned_layer}'"
        self.fix_btn.visible = True

    def fix_coverage(self, *_) -> bool:
        """Ask the Simulate widget (opened if needed) to match the simulation to the warned layer.

        Goes through the viewer's session (widgets never import each other); the Simulate widget runs
        Match to layer, highlights the estimates the warnings are about, and publishes the matched
        simulation for the Train widget. Returns whether the request was handed over.
        """
        fixes = coverage_fixes(self.last_warnings)
        if not self._warned_layer:
            return False
        focus = [name for _, names in fixes for name in names]
        request = MatchRequest(self._warned_layer, focus, "; ".join(self.last_warnings))
        taken = self.session.request_match(request)
        if not taken:  # no Simulate widget yet: open it (it takes the pending request when it opens)
            try:
                self.viewer.window.add_plugin_dock_widget("napari-deeptrack", "Simulate")
            except Exception as exc:  # noqa: BLE001 - a viewer without a window (headless)
                notify(f"Open the Simulate widget to re-match: {exc}", "warning")
                return False
        self.warnings_label.value = (
            f"Matching the simulation to '{self._warned_layer}' in the Simulate widget: check the "
            "highlighted estimates, then retrain (Train: the Simulate widget's simulation) and run again."
        )
        self.fix_btn.visible = False
        return True

    def _finished(self):
        self._worker_done = True
        if not self._writing:  # layers are still being written: release when done
            self._release()

    def _release(self):
        self.worker = None
        self._worker_done = False
        self.run_btn.enabled = self.preview_btn.enabled = True
        self.cancel_btn.enabled = False

    # ------------------------------------------------------------------ results -> layers
    def _show(self, res: dict, bundle, meta: dict, record: bool = True) -> None:
        """Write the results layer by layer, one per event-loop turn (napari stays responsive)."""
        from qtpy.QtCore import QTimer

        steps = self._show_steps(res, bundle, meta, record)
        self._writing = True

        def step():
            t0 = time.perf_counter()
            try:
                while time.perf_counter() - t0 < 0.03:  # small steps back to back, big ones alone
                    next(steps)
            except StopIteration:
                self._writing = False
                if self._worker_done:
                    self._release()
                return
            except Exception:
                self._writing = False
                self._release()
                raise
            QTimer.singleShot(0, step)

        QTimer.singleShot(0, step)

    def _show_steps(self, res: dict, bundle, meta: dict, record: bool = True):
        if not widget_alive(self):
            return
        if res is None:
            return
        source, was_2d = meta["source"], meta["was_2d"]
        self.results = res
        self.instances, self._raw_labels = None, None
        det = res.get("detections")
        lead = 0 if was_2d else 1
        n_frames = res["cancelled"][0] if res.get("cancelled") else meta["n_frames"]
        if det is not None:
            det = det.reset_index(drop=True)
            self.cache = DetectionCache(det, n_frames)
            coords = (
                det[(["frame"] if lead else []) + ["y", "x"]].to_numpy(dtype=float)
                if len(det)
                else np.zeros((0, 2 + lead))
            )
            features = det.drop(columns=[c for c in ("y", "x") if c in det.columns])
            self._points_layer = write_layer(
                self.viewer,
                "DeepTrack detections",
                "points",
                coords,
                role=POINTS_ROLE,
                features=features,
                # hollow markers: the ring (coloured by probability) leaves the particle visible
                face_color="transparent",
                border_color="probability" if len(det) else "yellow",
                border_colormap="viridis",
                border_width=0.2,
                size=7,
                shown=self.cache.mask(self.threshold.value),
                **spatial_kwargs(source, 2 + lead),
            )
            yield
            if "z_um" in det.columns and len(det) and meta["pixel_size_um"]:
                px = meta["pixel_size_um"]
                z = det["z_um"].to_numpy(dtype=float) / px  # pixel units: the layer scale makes them um
                c3 = np.column_stack(([det["frame"].to_numpy()] if lead else []) + [z, det["y"], det["x"]])
                sk = spatial_kwargs(source, 3 + lead, leading=(1.0, px) if lead else (px,))
                write_layer(
                    self.viewer,
                    "DeepTrack 3D",
                    "points",
                    c3.astype(float),
                    role="positions 3d",
                    features=features,
                    face_color="probability",
                    face_colormap="viridis",
                    size=4,
                    **sk,
                )
            yield
            if "track_id" in det.columns and len(det) and lead:
                linked = det[det["track_id"] >= 0]
                tracks = linked[["track_id", "frame", "y", "x"]].to_numpy(dtype=float)
                self._tracks_layer = write_layer(
                    self.viewer,
                    "DeepTrack tracks",
                    "tracks",
                    tracks,
                    role="tracks",
                    **spatial_kwargs(source, 3),
                )
            self.apply_threshold()
        yield
        labels = res.get("labels")
        if labels is not None:
            data = labels[0] if was_2d and labels.ndim == 3 else labels
            self._raw_labels = np.asarray(data, dtype=np.int32)
            self.instances = res.get("instances")
            if self.min_size.value == 0:
                self.min_size.value = _default_min_area(bundle.task)
            self._labels_layer = write_layer(
                self.viewer,
                "DeepTrack labels",
                "labels",
                self._filtered_labels(),
                role="labels",
                **spatial_kwargs(source, data.ndim),
            )
            yield
            self._outline_mode()
            self.apply_threshold()
        yield
        image = res.get("image")
        if image is not None:
            data = image[0] if was_2d and image.ndim == 3 else image
            write_layer(
                self.viewer,
                "DeepTrack output",
                "image",
                data.astype(np.float32),
                role="output",
                colormap="magma",
                blending="additive",
                **spatial_kwargs(source, data.ndim),
            )
        if det is None and res.get("counts") is not None:
            counts = np.asarray(res["counts"])
            self.cache = None
            self.counts_label.value = "counts per frame: " + ", ".join(f"{c:.1f}" for c in counts[:20])
        if not record:  # a one-frame preview: not an Apply result for Review
            return
        self.session.set_result(
            ApplyResult(
                bundle=bundle,
                source_layer=getattr(source, "name", ""),
                kind=bundle.task.kind,
                summary=str(res.get("summary", "")),
            )
        )
        summary = self.counts_label.value if self.instances is not None else res.get("summary", "")
        if res.get("cancelled"):
            done, asked = res["cancelled"]
            self.status_label.value = (
                f"Cancelled after {done} of {asked} frames: the results of frames 0-{done - 1} are in the "
                "layers (Run again for all frames)."
            )
            notify(f"Apply cancelled: {summary}")
        else:
            self.status_label.value = f"Done: {res.get('summary', '')}"
            notify(f"Apply finished: {summary}")

    # ------------------------------------------------------------------ threshold & counts
    def apply_threshold(self, *_):
        """Re-filter the shown results at the slider's threshold (no network run).

        Detections: points below the threshold are hidden. Segmentation: instances whose mean
        probability is below the threshold, smaller than the minimum size or (optionally) touching the
        border are removed from the Labels layer and their centroids hidden; every count shown (this
        widget, the notification, the Points and Labels layers) is the number of instances kept.
        """
        if self.instances is not None:
            self._filter_instances()
            return
        if self.cache is None:
            return
        layer = self._points_layer
        if layer is not None and layer in self.viewer.layers and len(layer.data) == len(self.cache):
            layer.shown = self.cache.mask(self.threshold.value)
        self._filter_tracks()
        counts = self.cache.counts(self.threshold.value)
        head = ", ".join(str(int(c)) for c in counts[:20]) + (" ..." if len(counts) > 20 else "")
        self.counts_label.value = f"{int(counts.sum())} detections; per frame: {head}"

    def _instance_keep(self) -> np.ndarray:
        from ..analysis.segment import filter_instances

        return filter_instances(
            self.instances, self.threshold.value, self.min_size.value, self.exclude_border.value
        )

    def _filtered_labels(self) -> np.ndarray:
        from ..analysis.segment import keep_lut

        if self.instances is None or not len(self.instances):
            return self._raw_labels
        lut = keep_lut(self.instances, self._instance_keep(), int(self._raw_labels.max(initial=0)))
        return lut[self._raw_labels]

    def _filter_instances(self) -> None:
        keep = self._instance_keep()
        layer = self._labels_layer
        if layer is not None and layer in self.viewer.layers and self._raw_labels is not None:
            layer.data = self._filtered_labels()
        kept = set(self.instances["label"].to_numpy()[keep].tolist())
        pts = self._points_layer
        if self.cache is not None and "label" in self.cache.table:
            shown = self.cache.table["label"].isin(kept).to_numpy()
            if pts is not None and pts in self.viewer.layers and len(pts.data) == len(shown):
                pts.shown = shown
        n_frames = int(self.instances["frame"].max()) + 1 if len(self.instances) else 1
        counts = np.bincount(self.instances["frame"].to_numpy()[keep], minlength=n_frames)
        self.instance_counts = counts
        head = ", ".join(str(int(c)) for c in counts[:20]) + (" ..." if len(counts) > 20 else "")
        removed = int((~keep).sum())
        self.counts_label.value = (
            f"{int(counts.sum())} objects ({removed} removed by the filters); per frame: {head}"
        )

    def _outline_mode(self, *_) -> None:
        layer = self._labels_layer
        if layer is not None and layer in self.viewer.layers:
            layer.contour = 2 if self.outlines_only.value else 0

    def _filter_tracks(self) -> None:
        """Links follow the points: the tracks layer keeps only the shown detections' positions."""
        tracks = self._tracks_layer
        if tracks is None or tracks not in self.viewer.layers or "track_id" not in self.cache.table:
            return
        shown = self.cache.shown_table(self.threshold.value)
        shown = shown[shown["track_id"] >= 0]  # stubs are not tracks
        if len(shown):
            tracks.data = shown[["track_id", "frame", "y", "x"]].to_numpy(dtype=float)
        tracks.visible = bool(len(shown))

    def counts_table(self) -> pd.DataFrame:
        if self.instances is not None:
            self._filter_instances()
            c = self.instance_counts
            return pd.DataFrame({"frame": np.arange(len(c)), "count": c})
        if self.cache is None:
            if self.results is not None and self.results.get("counts") is not None:
                c = np.asarray(self.results["counts"])
                return pd.DataFrame({"frame": np.arange(len(c)), "count": c})
            return pd.DataFrame({"frame": [], "count": []})
        return self.cache.counts_table(self.threshold.value)

    def export_counts(self, path: str | Path | None = None) -> Path | None:
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(None, "Export counts", "counts.csv", "CSV (*.csv)")
            if not path:
                return None
        self.counts_table().to_csv(path, index=False)
        notify(f"Counts written to {path}")
        return Path(path)


def _default_min_area(task) -> int:
    """Smallest object kept by default: the task's ``min_area_px``, else a quarter of the area of the
    smallest simulated object (a nucleus of radius 8 px: 50 px), else 10 px."""
    pp = getattr(task, "postprocess", None) or {}
    if pp.get("min_area_px"):
        return int(pp["min_area_px"])
    try:
        from ..sim.params import support

        px = float(task.pixel_size_um)
        radii = [
            support(pop.scatterer.radius_um)[0]
            for pop in task.pipeline.particles
            if hasattr(pop.scatterer, "radius_um")
        ]
        if radii and px > 0:
            r_px = min(radii) / px
            return max(int(np.pi * (r_px / 2) ** 2), 4)
    except (AttributeError, TypeError, ValueError):
        pass
    return 10


#: Modules a run imports in its worker thread. Importing a module runs its C initialisation with the
#: GIL held (scipy.ndimage alone ~0.3 s), which froze the event loop at the start of the first run;
#: they are imported in a thread while the dock opens instead.
_WORKER_MODULES = (
    "napari_deeptrack.analysis.calibrate",
    "napari_deeptrack.analysis.predict",
    "napari_deeptrack.analysis.segment",
    "napari_deeptrack.analysis.tracking",
)


def _warm_up_imports() -> None:
    import importlib

    def run():
        for name in _WORKER_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a failing import shows itself, with its message, at Run
                pass

    threading.Thread(target=run, name="deeptrack-warm-up", daemon=True).start()


def _apply_job(bundle, frames, pixel_size_um, predict_args: tuple, min_track_length: int = 1, stop=None):
    """Worker: the coverage check (seconds on big stacks, so not on the main thread), the automatic
    tile size, the prediction (yields frames done; ``stop`` set: ends after the chunk in progress with
    the finished chunks) and, for segmentation, the instance table the live filters act on."""
    try:
        from ..analysis.calibrate import coverage_warnings
        from ._compute import in_helper_process

        first = np.asarray(frames[:4], dtype=np.float32)  # simulation + spot fits: in the helper process
        warnings = in_helper_process(coverage_warnings, bundle.task, first, pixel_size_um=pixel_size_um)
    except Exception as exc:  # noqa: BLE001 - a failed check must not block applying
        warnings = [f"could not compare with the training simulation: {exc}"]
    yield ("warnings", warnings)
    predict_args = list(predict_args)
    if predict_args[5] is None:  # tile size: automatic from the memory estimate
        tile, note = auto_tile_size(bundle, tuple(frames.shape[-2:]), int(predict_args[0]))
        predict_args[5] = tile
        yield ("tile", note)
    out = yield from predict_chunks(bundle, frames, *predict_args, stop=stop)
    det = out.get("detections")
    if min_track_length > 1 and det is not None and "track_id" in det and len(det):
        # trackpy's filter_stubs: short tracks are not tracks (their detections stay, unlinked: -1)
        length = det.groupby("track_id")["frame"].transform("size").to_numpy()
        det = det.copy()
        det.loc[length < min_track_length, "track_id"] = -1
        out["detections"] = det
    labels = out.get("labels")
    if labels is not None:
        from ..analysis.segment import instance_table

        table = instance_table(labels)
        det = out.get("detections")
        if det is not None and len(det) and "label" in det:
            prob = pd.Series(det["probability"].to_numpy(), index=det["label"].to_numpy())
            table["probability"] = table["label"].map(prob).fillna(1.0).to_numpy()
        out["instances"] = table
    return out


# ---------------------------------------------------------------------------- worker side
def _apply_frames(layer) -> tuple:
    """The layer's frames ``[T, H, W]`` for Apply, and whether the layer is 2D.

    In-memory layers give a validated float32 copy (:func:`image_frames`). Lazy layers (dask, zarr:
    big stacks, OME-Zarr, multiscale pyramids at full resolution) are checked on their shape only and
    handed to the core as they are: the core reads one chunk of frames at a time, so the stack is never
    loaded whole.
    """
    from napari.layers import Image

    data = getattr(layer, "data", None)
    if isinstance(layer, Image) and getattr(layer, "multiscale", False):
        data = data[0]
    lazy = isinstance(layer, Image) and not layer.rgb and not isinstance(data, np.ndarray | None)
    if not lazy:
        return image_frames(layer, what="Apply")
    from ..io.lazy import as_lazy_stack

    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in (2, 3):
        raise InputError(
            f"Layer '{layer.name}' has {len(shape)} dimensions {shape}; Apply expects 2D [Y, X] or a 3D "
            "stack [T, Y, X]."
        )
    if int(np.prod(shape)) == 0 or min(shape[-2:]) < 8:
        raise InputError(f"Layer '{layer.name}' is empty or smaller than 8x8 pixels (shape {shape}).")
    return as_lazy_stack(data, where=f"layer '{layer.name}'"), len(shape) == 2


def _check_bundle_fits(bundle, frames) -> None:
    """Refuse inputs the model cannot take (the core's ``analysis.predict.check_images_fit``)."""
    from ..analysis.predict import check_images_fit

    cfg = (bundle.config or {}).get("model") or getattr(bundle.task, "model", {}) or {}
    try:
        check_images_fit(bundle.task, cfg, frames.shape[-2:], channels=1)
    except ValueError as exc:
        raise InputError(f"Apply cannot run this model on the layer: {exc}") from None


def predict_chunks(
    bundle,
    frames,
    chunk: int,
    threshold: float | None = None,
    link: bool = False,
    search_range_px: float | None = None,
    memory: int | None = None,
    tile_size: int = 512,
    stop: threading.Event | None = None,
):
    """Worker generator over the core's :func:`~napari_deeptrack.analysis.predict.predict_chunks`:
    yields frames done after every chunk, returns the merged, thresholded, linked results as layer data.

    When ``stop`` is set (Cancel), the run ends after the chunk in progress and returns the chunks
    finished so far, merged and linked the same way (``info["cancelled"]``: frames done, frames asked).

    The same call as ``napari-deeptrack apply`` (same threshold, linking after thresholding, the
    task's linking memory), so the widget and the command line give the same detections and tracks.
    ``frames`` may be lazy (dask): only one chunk is read at a time, and output maps are kept only
    when they are shown (density maps, restored images).
    """
    from ..analysis.predict import kind_rule
    from ..analysis.predict import predict_chunks as core_predict_chunks

    keep_maps = kind_rule(bundle.task.kind).maps_are_images
    gen = core_predict_chunks(
        bundle,
        frames,
        chunk_frames=int(chunk),
        batch_size=int(chunk),
        threshold=threshold,
        link=False,  # linked below, in the helper process (trackpy's import and loops hold the GIL)
        tile_size=int(tile_size),
        keep_maps=keep_maps,
    )
    parts = []  # what Cancel keeps (maps only when shown: memory stays bounded on long stacks)
    while True:
        try:
            part = next(gen)
        except StopIteration as done:
            return _layer_data(_link_elsewhere(bundle.task, done.value, link, search_range_px, memory))
        if not keep_maps:
            part.maps = None
        parts.append(part)
        yield part.stop
        if stop is not None and stop.is_set() and part.stop < len(frames):
            gen.close()
            return _layer_data(
                _partial_result(bundle, parts, len(frames), threshold, link, search_range_px, memory)
            )


def _partial_result(bundle, parts: list, n_asked: int, threshold, link, search_range_px, memory):
    """The chunks finished before Cancel as one :class:`PredictionResult` (frames ``0:done``), linked
    over those frames as a full run would (the core's ``link_detections``)."""
    from ..analysis.predict import PredictionResult

    task = bundle.task
    done = int(parts[-1].stop) if parts else 0
    det = pd.concat([p.detections for p in parts], ignore_index=True) if parts else pd.DataFrame()
    info = {
        "threshold": float(
            threshold if threshold is not None else (task.postprocess or {}).get("threshold", 0.5)
        ),
        "n_frames": done,
        "cancelled": [done, int(n_asked)],
    }

    def cat(name):
        chunks = [getattr(p, name) for p in parts if getattr(p, name) is not None]
        return np.concatenate(chunks) if chunks else None

    res = PredictionResult(
        kind=task.kind,
        detections=det,
        maps=cat("maps"),
        labels=cat("labels"),
        counts=cat("counts"),
        info=info,
    )
    return _link_elsewhere(task, res, link, search_range_px, memory)


def _link_elsewhere(task, res, link: bool, search_range_px, memory):
    """Link ``res``'s merged, thresholded detections as the core does (``link_detections``: same search
    range, memory and per-track properties), in the helper process: trackpy's import (numba, ~4 s) and
    its linking loops would hold the GIL and stall napari for up to 1 s from a worker thread."""
    from ..analysis.predict import link_detections
    from ._compute import in_helper_process

    det, n = res.detections, int(res.info.get("n_frames", 0))
    if link and len(det) and n > 1:
        det, _, props, settings = in_helper_process(link_detections, task, det, n, search_range_px, memory)
        res.detections, res.track_properties = det, props
        res.info.update(settings)
    elif link and len(det):
        res.detections = det.assign(track_id=np.arange(len(det), dtype=np.int64))
    return res


def auto_tile_size(bundle, frame_shape: tuple[int, int], batch_size: int, budget: int | None = None):
    """The tile size Apply uses when "auto" (the core's
    :func:`~napari_deeptrack.analysis.predict.auto_tile_size`: the whole frame when a chunk of
    ``batch_size`` frames fits the memory budget, else the largest tile that does), and a line for the
    widget. Returns ``(tile_px, note)``; a run that cannot fit even in the smallest tiles raises
    :class:`~napari_deeptrack.errors.MemoryBudgetError` (shown as the worker's error)."""
    from ..analysis.predict import auto_tile_size as core_auto_tile_size
    from ..nn.memory import format_bytes, memory_budget

    budget = memory_budget() if budget is None else int(budget)
    h, w = (int(v) for v in frame_shape[-2:])
    tile = core_auto_tile_size(bundle, (h, w), budget, int(batch_size), int(batch_size))
    what = "whole frames, no tiling" if tile >= max(h, w) else f"tiles of {tile} px"
    return int(tile), f"tile size auto: {what} (memory budget {format_bytes(budget)})"


def _layer_data(res) -> dict:
    """A :class:`~napari_deeptrack.analysis.predict.PredictionResult` as the data of the output layers."""
    from ..analysis.predict import kind_rule

    rule = kind_rule(res.kind)
    det = res.detections.reset_index(drop=True) if rule.has_detections else None
    out: dict = {"detections": det, "counts": res.counts, "labels": res.labels, "info": res.info}
    if res.maps is not None and res.maps.ndim == 4 and rule.maps_are_images:
        out["image"] = res.maps[:, 0]
    if res.labels is not None:
        from ..analysis.segment import labels_to_shapes

        out["shapes"], _ = labels_to_shapes(res.labels, kind="polygon")
    n_frames = int(res.info.get("n_frames", 0))
    out["summary"] = (
        f"{len(det)} detections in {n_frames} frame(s) at threshold {res.info.get('threshold', 0):.2f}"
        if det is not None
        else f"{n_frames} frame(s)"
    )
    if res.info.get("cancelled"):
        done, asked = res.info["cancelled"]
        out["cancelled"] = (int(done), int(asked))
        out["summary"] = (
            f"cancelled after {done} of {asked} frames; the results of frames 0-{done - 1} are in the "
            f"layers ({out['summary']})"
        )
    return out


#: what a coverage warning is about -> (button wording, the calibration estimates to look at)
_FIXES = (
    ("polarity", "polarity", ["polarity"]),
    ("noise", "noise", ["background", "noise_sigma", "photons_per_grey"]),
    ("spot width", "spot width", ["spot_sigma_px"]),
    ("pixel size", "pixel size", ["pixel_size_um"]),
)


def coverage_fixes(warnings: list[str]) -> list[tuple[str, list[str]]]:
    """The fixes the coverage ``warnings`` call for: ``[(what to re-match, estimate names)]``."""
    out = []
    for key, label, names in _FIXES:
        if any(key in w.lower() for w in warnings) and label not in [x for x, _ in out]:
            out.append((label, names))
    return out
