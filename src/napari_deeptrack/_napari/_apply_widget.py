"""Apply dock widget: run a bundle (or the model just trained) on an image layer.

All frames are read on the main thread, then predicted in chunks inside a worker (the core's chunk
iterator) that yields after every chunk (progress; Cancel stops at the next chunk and writes
nothing). Results go to named layers
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
training simulation covered (:func:`napari_deeptrack.analysis.calibrate.coverage_warnings`).
"""

from __future__ import annotations

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

from ._layers import (
    InputError,
    image_frames,
    image_layers,
    layer_pixel_size_um,
    notify,
    spatial_kwargs,
    widget_alive,
    write_layer,
)
from ._session import ApplyResult, session_for
from ._threshold import DetectionCache

__all__ = ["ApplyWidget"]

SOURCES = ("model trained / fine-tuned in this viewer", "bundle file")
POINTS_ROLE = "detections"


class ApplyWidget(Container):
    """Run a model on the selected layer; threshold live; per-frame counts."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.layer = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.source = ComboBox(label="model", choices=SOURCES, value=SOURCES[1])
        self.bundle_path = FileEdit(label="bundle", mode="r", filter="*.zip *.json")
        self.bundle_info = Label(value="no model loaded")
        self.batch_size = SpinBox(label="frames per batch", value=8, min=1, max=1024)
        self.link = CheckBox(label="link tracks (stacks)", value=True)
        self.search_range = FloatSpinBox(label="track search range (px)", value=5.0, min=0.1, max=500.0)
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.0, max=1.0, step=0.01)
        self.counts_label = Label(value="")
        self.export_btn = PushButton(text="Export counts CSV...")
        self.warnings_label = Label(value="")
        super().__init__(
            widgets=[
                self.layer,
                self.source,
                self.bundle_path,
                self.bundle_info,
                self.batch_size,
                self.link,
                self.search_range,
                Container(widgets=[self.run_btn, self.cancel_btn], layout="horizontal", labels=False),
                self.progress,
                self.threshold,
                self.counts_label,
                self.export_btn,
                self.warnings_label,
            ],
            scrollable=True,
        )
        self.cancel_btn.enabled = False
        self.bundle = None
        self.cache: DetectionCache | None = None
        self.results: dict | None = None
        self.worker = None
        self.last_warnings: list[str] = []
        self._points_layer = None
        self._tracks_layer = None
        self.session = session_for(napari_viewer)
        self.session.model_changed.connect(self._session_model_changed)
        if self.session.model is not None:
            self._session_model_changed(self.session.model)
        self.bundle_path.changed.connect(lambda *_: self.load_bundle())
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)
        self.threshold.changed.connect(self.apply_threshold)
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
        from napari.qt.threading import create_worker

        if self.worker is not None:
            notify("Apply is already running.", "warning")
            return None
        layer = self.layer.value
        try:
            bundle = self.current_bundle()
            frames, was_2d = image_frames(layer, what="Apply")
            _check_bundle_fits(bundle, frames)
        except InputError as exc:
            notify(str(exc), "error")
            return None
        px = layer_pixel_size_um(layer)
        try:
            from ..analysis.calibrate import coverage_warnings

            self.last_warnings = coverage_warnings(bundle.task, frames[:4], pixel_size_um=px)
        except Exception as exc:  # noqa: BLE001 - a failed check must not block applying
            self.last_warnings = [f"could not compare with the training simulation: {exc}"]
        if self.last_warnings:
            msg = "Outside the training simulation: " + "; ".join(self.last_warnings)
            self.warnings_label.value = "\n".join(f"! {w}" for w in self.last_warnings)
            notify(msg, "warning")
        else:
            self.warnings_label.value = "the layer is within the training simulation's range"
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
        worker = create_worker(
            predict_chunks,
            bundle,
            frames,
            int(self.batch_size.value),
            float(self.threshold.value),
            meta["link"],
            meta["search_range"],
            _start_thread=False,
        )
        worker.yielded.connect(lambda done: setattr(self.progress, "value", int(done)))
        worker.returned.connect(lambda res: self._show(res, bundle, meta))
        worker.errored.connect(lambda exc: notify(f"Apply failed: {exc}", "error"))
        worker.aborted.connect(lambda: notify("Apply cancelled: no layer was changed."))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_btn.enabled = False
        self.cancel_btn.enabled = True
        worker.start()
        return worker

    def cancel(self, *_):
        if self.worker is not None:
            self.worker.quit()

    def _finished(self):
        self.worker = None
        self.run_btn.enabled = True
        self.cancel_btn.enabled = False

    # ------------------------------------------------------------------ results -> layers
    def _show(self, res: dict, bundle, meta: dict) -> None:
        if not widget_alive(self):
            return
        if res is None:
            return
        source, was_2d = meta["source"], meta["was_2d"]
        self.results = res
        det = res.get("detections")
        lead = 0 if was_2d else 1
        if det is not None:
            det = det.reset_index(drop=True)
            self.cache = DetectionCache(det, meta["n_frames"])
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
                face_color="probability" if len(det) else "yellow",
                face_colormap="viridis",
                size=4,
                border_color="white",
                shown=self.cache.mask(self.threshold.value),
                **spatial_kwargs(source, 2 + lead),
            )
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
            if "track_id" in det.columns and len(det) and lead:
                tracks = det[["track_id", "frame", "y", "x"]].to_numpy(dtype=float)
                self._tracks_layer = write_layer(
                    self.viewer,
                    "DeepTrack tracks",
                    "tracks",
                    tracks,
                    role="tracks",
                    **spatial_kwargs(source, 3),
                )
            self.apply_threshold()
        labels = res.get("labels")
        if labels is not None:
            data = labels[0] if was_2d and labels.ndim == 3 else labels
            write_layer(
                self.viewer,
                "DeepTrack labels",
                "labels",
                data.astype(np.int32),
                role="labels",
                **spatial_kwargs(source, data.ndim),
            )
            shapes = res.get("shapes")
            if shapes:
                polys = [
                    np.asarray(p, dtype=float)[:, -2:] if was_2d else np.asarray(p, dtype=float)
                    for p in shapes
                ]
                write_layer(
                    self.viewer,
                    "DeepTrack outlines",
                    "shapes",
                    polys,
                    role="outlines",
                    shape_type="polygon",
                    edge_color="yellow",
                    face_color="transparent",
                    **spatial_kwargs(source, polys[0].shape[1]),
                )
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
        self.session.set_result(
            ApplyResult(
                bundle=bundle,
                source_layer=getattr(source, "name", ""),
                kind=bundle.task.kind,
                summary=str(res.get("summary", "")),
            )
        )
        notify(f"Apply finished: {res.get('summary', '')}")

    # ------------------------------------------------------------------ threshold & counts
    def apply_threshold(self, *_):
        """Re-filter the shown detections at the slider's threshold (no network run)."""
        if self.cache is None:
            return
        layer = self._points_layer
        if layer is not None and layer in self.viewer.layers and len(layer.data) == len(self.cache):
            layer.shown = self.cache.mask(self.threshold.value)
        self._filter_tracks()
        counts = self.cache.counts(self.threshold.value)
        head = ", ".join(str(int(c)) for c in counts[:20]) + (" ..." if len(counts) > 20 else "")
        self.counts_label.value = f"{int(counts.sum())} detections; per frame: {head}"

    def _filter_tracks(self) -> None:
        """Links follow the points: the tracks layer keeps only the shown detections' positions."""
        tracks = self._tracks_layer
        if tracks is None or tracks not in self.viewer.layers or "track_id" not in self.cache.table:
            return
        shown = self.cache.shown_table(self.threshold.value)
        if len(shown):
            tracks.data = shown[["track_id", "frame", "y", "x"]].to_numpy(dtype=float)
        tracks.visible = bool(len(shown))

    def counts_table(self) -> pd.DataFrame:
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


# ---------------------------------------------------------------------------- worker side
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
):
    """Worker generator over the core's :func:`~napari_deeptrack.analysis.predict.predict_chunks`:
    yields frames done after every chunk, returns the merged, thresholded, linked results as layer data.

    The same call as ``napari-deeptrack apply`` (same threshold, linking after thresholding, the
    task's linking memory), so the widget and the command line give the same detections and tracks.
    """
    from ..analysis.predict import predict_chunks as core_predict_chunks

    gen = core_predict_chunks(
        bundle,
        frames,
        chunk_frames=int(chunk),
        batch_size=int(chunk),
        threshold=threshold,
        link=link,
        search_range_px=search_range_px,
    )
    while True:
        try:
            part = next(gen)
        except StopIteration as done:
            return _layer_data(done.value)
        yield part.stop


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
    return out
