"""Learning from the user's own images in napari (issue 17): the pieces the Train, Apply and Review
widgets plug in.

- :class:`CropsPanel` (Train widget, self-supervised presets): pick the image layer and a Shapes layer of
  rectangles, each drawn around ONE object; :meth:`CropsPanel.crops` turns them into checked crops on
  the main thread, and the training runs :func:`~napari_deeptrack.train.selfsupervised.train_selfsupervised`
  in the Train widget's worker (:func:`relay_events`: progress, Stop, best checkpoint).
- :class:`StarterSource` (Apply widget): "starter: <preset>" choices that load the shipped starter models
  (:mod:`napari_deeptrack.io.starters`) in a worker, so Apply needs no training step.
- :class:`AnnotateFewPanel` (Review widget): fine-tune the reviewed model on the corrected Points layer with
  :func:`~napari_deeptrack.train.few_shot.annotate_few` (held-back frames scored before and after), and
  show where to annotate next (``DeepTrack suggested annotations`` Shapes).

Layers are read and written on the main thread only; the training, the loading and the scoring run in
workers.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, SpinBox

from ._dock import text_row
from ._layers import (
    InputError,
    image_frames,
    image_layers,
    is_plugin_layer,
    notify,
    points_table,
    relay_events,
    spatial_kwargs,
    start_worker,
    widget_alive,
    write_layer,
)

__all__ = [
    "AnnotateFewPanel",
    "CropsPanel",
    "StarterSource",
    "boxes_from_shapes",
    "is_selfsupervised",
    "starter_choices",
]

STARTER_PREFIX = "starter: "
SUGGESTIONS = "DeepTrack suggested annotations"


def is_selfsupervised(task) -> bool:
    """Whether ``task`` learns from crops of real objects (LodeSTAR loss) rather than from simulation."""
    return (getattr(task, "loss", None) or {}).get("type") == "lodestar"


# ---------------------------------------------------------------------------- self-supervised crops
def boxes_from_shapes(shapes, image, frame: int = 0) -> list[tuple[int, int, int, int, int]]:
    """Rectangles of a Shapes layer -> ``(frame, y0, x0, y1, x1)`` in pixels of ``image`` (rows
    ``y0:y1``, columns ``x0:x1``; each shape's bounding box, world coordinates mapped through both layers'
    scale and translate). Shapes drawn in 2D on a stack take ``frame`` (the frame shown).

    Raises
    ------
    InputError
        No shapes layer, no rectangle, a rectangle outside the image.
    """
    from napari.layers import Shapes

    if shapes is None or not isinstance(shapes, Shapes):
        raise InputError(
            "No rectangles layer: add a Shapes layer (the 'New rectangles layer' button), draw a rectangle "
            "around each of one to three single objects, and select it as 'crops: rectangles'."
        )
    if len(shapes.data) == 0:
        raise InputError(
            f"The Shapes layer '{shapes.name}' is empty: draw a rectangle around one object (rectangle tool)."
        )
    h, w = image.data.shape[-2:]
    n_frames = image.data.shape[0] if image.ndim == 3 else 1
    s_scale, s_trans = np.asarray(shapes.scale, float), np.asarray(shapes.translate, float)
    i_scale, i_trans = np.asarray(image.scale, float), np.asarray(image.translate, float)
    boxes = []
    for k, verts in enumerate(shapes.data, 1):
        v = np.asarray(verts, float)
        world = v * s_scale + s_trans
        yx = (world[:, -2:] - i_trans[-2:]) / i_scale[-2:]
        t = frame
        if v.shape[1] >= 3 and n_frames > 1:
            tw = world[:, -3].mean()
            t = int(round((tw - i_trans[0]) / i_scale[0]))
        ymin, xmin = yx.min(0)
        ymax, xmax = yx.max(0)
        y0, x0 = int(np.floor(ymin + 0.5)), int(np.floor(xmin + 0.5))
        y1, x1 = int(np.floor(ymax + 0.5)), int(np.floor(xmax + 0.5))
        if not 0 <= t < n_frames:
            raise InputError(
                f"Rectangle {k} is on frame {t}, outside the {n_frames} frame(s) of '{image.name}'."
            )
        if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
            raise InputError(
                f"Rectangle {k} (rows {y0}:{y1}, columns {x0}:{x1}) lies outside the {h}x{w} image "
                f"'{image.name}': draw it inside the image."
            )
        boxes.append((t, y0, x0, y1, x1))
    return boxes


class CropsPanel(Container):
    """Image layer and rectangles (Shapes) layer for training a self-supervised detector from crops."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.help = Label(
            value="Self-supervised: draw rectangles (Shapes layer) each around ONE object with some "
            "background around it (1-3 objects like the ones to detect); no simulation, no annotation."
        )
        self.image = ComboBox(label="crops: image", choices=self._images, nullable=True)
        self.shapes = ComboBox(label="crops: rectangles", choices=self._shapes, nullable=True)
        self.new_btn = PushButton(text="New rectangles layer")
        super().__init__(widgets=[text_row(self.help), self.image, self.shapes, self.new_btn])
        self.margins = (0, 0, 0, 0)
        self._refresh()
        self.new_btn.changed.connect(lambda *_: self.new_shapes_layer())
        for ev in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, ev).connect(self._refresh)

    def _images(self, _=None):
        return [(lyr.name, lyr) for lyr in image_layers(self.viewer) if not is_plugin_layer(lyr)]

    def _shapes(self, _=None):
        from napari.layers import Shapes

        return [
            (lyr.name, lyr)
            for lyr in self.viewer.layers
            if isinstance(lyr, Shapes) and not is_plugin_layer(lyr)
        ]

    def _refresh(self, event=None):
        for w in (self.image, self.shapes):
            try:
                w.reset_choices()
                if w.value is None and len(w.choices) > 1:  # the newest layer (choices: None first)
                    w.value = w.choices[-1]
            except RuntimeError:  # widget deleted
                pass

    def new_shapes_layer(self):
        """An empty Shapes layer aligned with the image, in rectangle mode, selected as the crops layer."""
        from ._session import unwrap_viewer

        img = self.image.value
        kwargs = spatial_kwargs(img, img.ndim) if img is not None else {}
        layer = unwrap_viewer(
            self.viewer.add_shapes(
                ndim=img.ndim if img is not None else 2,
                name="crops",
                edge_color="yellow",
                face_color="transparent",
                edge_width=1,
                **kwargs,
            )
        )
        layer.mode = "add_rectangle"
        # napari compiles its rectangle mesh code on the first rectangle drawn (1-3 s): do it now, aside
        threading.Thread(target=_warm_up_shapes, name="napari-deeptrack-warm", daemon=True).start()
        self.shapes.reset_choices()
        self.shapes.value = layer
        return layer

    def crops(self) -> tuple[np.ndarray, list[tuple[int, ...]], list[tuple[int, ...]]]:
        """The frames holding crops ``[N, H, W]``, the boxes renumbered onto them, and the boxes in the
        image's own frame numbers. Each crop is checked to show one object (main thread; cheap).

        Raises
        ------
        InputError
            No image, no or empty Shapes layer, a rectangle outside the image, too small, with no
            object or with several.
        """
        from ..train.selfsupervised import _box, check_crop

        img = self.image.value
        if img is None:
            raise InputError("Self-supervised training needs an image: choose it in 'crops: image'.")
        if getattr(img, "rgb", False) or img.ndim not in (2, 3):
            raise InputError(f"Layer '{img.name}' must be a grey 2D image or a [T, Y, X] stack.")
        frame = 0
        if img.ndim == 3:
            frame = int(np.clip(self.viewer.dims.current_step[0], 0, img.data.shape[0] - 1))
        boxes = boxes_from_shapes(self.shapes.value, img, frame)
        if len(boxes) > 16:
            raise InputError(f"{len(boxes)} rectangles: use at most 16 (one to three usually suffice).")
        used = sorted({b[0] for b in boxes})
        frames = np.stack(
            [np.asarray(img.data[t] if img.ndim == 3 else img.data, dtype=np.float32) for t in used]
        )
        if not np.isfinite(frames).all():
            raise InputError(f"Layer '{img.name}' contains NaN or infinite values.")
        local = []
        for k, (t, y0, x0, y1, x1) in enumerate(boxes, 1):
            b = (used.index(t), y0, x0, y1, x1)
            try:
                _box(b, len(used), frames.shape[1:])
                check_crop(frames[b[0], y0:y1, x0:x1], name=f"rectangle {k} (frame {t})")
            except ValueError as exc:
                raise InputError(str(exc).replace(f"crop {b}", f"rectangle {k}")) from None
            local.append(b)
        return frames, local, boxes


def selfsupervised_job(panel: CropsPanel, task, settings: dict):
    """Validate the crops (main thread) and bind the training call for :func:`relay_events`."""
    from ..train.selfsupervised import train_selfsupervised

    frames, local, boxes = panel.crops()
    device = settings.get("device", "cpu")
    return functools.partial(
        train_selfsupervised,
        task,
        frames,
        local,
        epochs=settings["epochs"],
        steps_per_epoch=settings["steps_per_epoch"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=settings["seed"],
        device="cpu" if device == "auto" else device,
        max_seconds=settings.get("max_seconds"),
    ), boxes


# ---------------------------------------------------------------------------- starter models
def starter_choices() -> tuple[str, ...]:
    """``"starter: <preset>"`` for every shipped starter model."""
    from ..io.starters import list_starters

    return tuple(STARTER_PREFIX + n for n in list_starters())


def is_starter_choice(value) -> bool:
    return isinstance(value, str) and value.startswith(STARTER_PREFIX)


class StarterSource:
    """Starter models as Apply sources: loaded in a worker on selection, cached per name."""

    def __init__(self, widget):
        self.widget = widget
        self.cache: dict = {}
        self.worker = None
        widget.source.changed.connect(self._selected)

    def _selected(self, value=None) -> None:
        value = self.widget.source.value
        if not is_starter_choice(value):
            return
        name = value[len(STARTER_PREFIX) :]
        if name in self.cache:
            self._show(name, self.cache[name])
            return
        self.load(name)

    def load(self, name: str):
        """Load starter ``name`` in a worker (returns it, or None when already loaded)."""
        from ..io.bundle import load_bundle
        from ..io.starters import resolve_bundle

        if name in self.cache:
            return None
        self.widget.bundle_info.value = f"loading the {name} starter model..."
        worker = start_worker(load_bundle, resolve_bundle(name), error="Cannot load the starter model")

        def loaded(bundle):
            self.cache[name] = bundle
            if widget_alive(self.widget) and self.widget.source.value == STARTER_PREFIX + name:
                self._show(name, bundle)

        worker.returned.connect(loaded)
        worker.finished.connect(lambda: setattr(self, "worker", None))
        self.worker = worker
        worker.start()
        return worker

    def _show(self, name: str, bundle) -> None:
        try:
            t = bundle.task
            self.widget.bundle_info.value = (
                f"starter {name} ({t.kind}): trained on simulation only at {t.pixel_size_um:g} um/px; "
                "fine-tune it on your images in Review"
            )
            thr = (t.postprocess or {}).get("threshold")
            if thr is not None:
                self.widget.threshold.value = float(thr)
        except RuntimeError:  # widget deleted
            pass

    def current(self):
        """The selected starter's bundle (InputError while it is still loading)."""
        name = self.widget.source.value[len(STARTER_PREFIX) :]
        if name not in self.cache:
            if self.worker is None:
                self.load(name)
            raise InputError(f"The {name} starter model is still loading: try again in a moment.")
        return self.cache[name]


def check_starter_modality(bundle, frames) -> None:
    """Refuse a starter model on images of the wrong modality (InputError with what to use instead)."""
    from ..io.starters import check_starter_fits, is_starter

    if bundle.path is None or not is_starter(bundle.path):
        return
    try:
        check_starter_fits(bundle.task, frames)
    except ValueError as exc:
        raise InputError(str(exc)) from None


# ---------------------------------------------------------------------------- annotate a few
def annotate_job(bundle, frames, table, steps: int, n_suggest: int, tile_px: int, callbacks, stop_flag):
    """Worker: fine-tune ``bundle`` on the annotated frames (held-back frames scored before / after),
    then rank the tiles of ``frames`` by the fine-tuned model's uncertainty.

    Returns (result dict, fine-tuned Bundle, suggestions DataFrame).
    """
    from ..io.bundle import load_bundle, save_bundle
    from ..train.few_shot import annotate_few, suggest_regions

    with tempfile.TemporaryDirectory(prefix="napari-deeptrack-few-") as tmp:
        init = bundle.path
        if init is None or not Path(init).is_file():
            cfg = dict(bundle.config or {})
            init = save_bundle(
                Path(tmp) / "init.zip", bundle.model, bundle.task, cfg.get("history"),
                training=cfg.get("training") or None,
            )  # fmt: skip
        out = Path(tmp) / "tuned.zip"
        result = annotate_few(
            init, frames, table, out, steps=steps, batch_size=4, callbacks=callbacks, stop_flag=stop_flag
        )
        tuned = load_bundle(out)
    tuned.path = None  # lives in this viewer only (Train > Save bundle / Export keep it)
    tuned.config = {**(tuned.config or {}), "finetune": {k: v for k, v in result.items() if k != "bundle"}}
    sugg = suggest_regions(tuned, frames, n=n_suggest, tile_px=tile_px)
    if len(sugg):
        _warm_up_shapes()
    return result, tuned, sugg


_SHAPES_WARM = False


def _warm_up_shapes() -> None:
    """Build one throw-away Shapes model (no viewer, no Qt) in the worker: napari's first rectangle
    loads its numba-compiled mesh functions (~1-3 s), which would otherwise freeze the event loop
    when the suggestions layer is added on the main thread."""
    global _SHAPES_WARM
    if _SHAPES_WARM:
        return
    from napari.layers import Shapes

    Shapes([np.array([[0.0, 0.0], [0.0, 4.0], [4.0, 4.0], [4.0, 0.0]])], shape_type="rectangle")
    _SHAPES_WARM = True


def _fmt(m: dict) -> str:
    return f"F1 {m['f1']:.3f} (precision {m['precision']:.2f}, recall {m['recall']:.2f})"


class AnnotateFewPanel(Container):
    """Review section: fine-tune on ~20 corrected points, before/after scores, where to annotate next."""

    def __init__(self, review):
        self.review = review
        self.help = Label(
            value="Annotate a few: mark EVERY object on two or more frames in the corrected Points layer; "
            "every 3rd annotated frame is held back and only scored (before / after fine-tuning)."
        )
        self.steps = SpinBox(label="annotate-a-few steps", value=40, min=1, max=100000)
        self.n_suggest = SpinBox(label="regions to suggest", value=5, min=0, max=100)
        self.tile_px = SpinBox(label="region size (px)", value=64, min=8, max=4096, step=8)
        self.run_btn = PushButton(text="Annotate a few: fine-tune + score")
        self.stop_btn = PushButton(text="Stop")
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.results = Label(value="")
        super().__init__(
            widgets=[
                text_row(self.help),
                self.steps,
                self.n_suggest,
                self.tile_px,
                Container(widgets=[self.run_btn, self.stop_btn], layout="horizontal", labels=False),
                self.progress,
                text_row(self.results),
            ]
        )
        self.margins = (0, 0, 0, 0)
        self.stop_btn.enabled = False
        self.worker = None
        self.result = None
        self.suggestions = None
        self.shown_at = self.show_s = None
        self._stop_flag = None
        self.run_btn.changed.connect(lambda *_: self.run())
        self.stop_btn.changed.connect(lambda *_: self.stop())

    def run(self):
        """Validate on the main thread, then fine-tune and score in a worker. Returns the worker (or None)."""
        from napari.layers import Points

        from ..train.events import StopFlag
        from ..train.few_shot import POINT_KINDS, _check_inside, split_frames

        if self.worker is not None:
            notify("Annotate a few is already running.", "warning")
            return None
        rv = self.review
        try:
            bundle = rv._bundle()
            if bundle is None:
                raise InputError(
                    "No model to fine-tune: run Apply first (a starter model such as 'starter: particles-2d' "
                    "needs no training)."
                )
            task = bundle.task
            if task.kind not in POINT_KINDS or (task.postprocess or {}).get("method") == "lodestar":
                raise InputError(
                    f"Annotate a few fine-tunes detection or counting models trained on simulation; the "
                    f"model is {task.name!r} ({task.kind}"
                    + (
                        ", self-supervised: retrain it from crops instead)."
                        if is_selfsupervised(task)
                        else ")."
                    )
                )
            ref = rv.reference.value
            if not isinstance(ref, Points):
                raise InputError(
                    "Select the corrected Points layer ('Copy output for correction', then mark every "
                    "object)."
                )
            table = points_table(ref)[["frame", "y", "x"]]
            if len(table) == 0:
                raise InputError(f"The corrected layer '{ref.name}' has no points: mark the objects first.")
            frames, _ = image_frames(rv.image.value, what="Annotate a few")
            _check_inside(table, frames.shape[1:])
            split_frames(table, len(frames))
        except (InputError, ValueError) as exc:
            notify(str(exc), "error")
            return None
        steps = int(self.steps.value)
        epochs = max(1, steps // 25)
        self.progress.max, self.progress.value = epochs * max(1, steps // epochs), 0
        self.results.value = "fine-tuning on the annotated frames..."
        self._stop_flag = StopFlag()
        job = functools.partial(
            annotate_job, bundle, frames, table, steps, int(self.n_suggest.value), int(self.tile_px.value)
        )
        self._image = rv.image.value
        worker = start_worker(relay_events, job, self._stop_flag, error="Annotate a few failed")
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._done)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_btn.enabled, self.stop_btn.enabled = False, True
        worker.start()
        return worker

    def stop(self) -> None:
        if self._stop_flag is not None:
            self._stop_flag.stop()

    def _on_event(self, ev: dict) -> None:
        if ev.get("total_steps"):
            self.progress.max = int(ev["total_steps"])
        if ev.get("type") == "batch":
            self.progress.value = min(int(ev["step"]), self.progress.max)

    def _done(self, out) -> None:
        t0 = time.perf_counter()
        self.shown_at = t0
        result, tuned, sugg = out
        self.result, self.suggestions = result, sugg
        b, a, at = result["before"], result["after"], result["after_tuned"]
        thr = result.get("threshold")
        lines = [
            f"held-back frames {result['heldout_frames']} ({result['n_heldout_objects']} objects); "
            f"trained on frames {result['train_frames']} ({result['n_train_objects']} objects)",
            f"before: {_fmt(b)}",
            f"after: {_fmt(a)}",
        ]
        if thr is not None:
            lines.append(f"after, threshold tuned on the training frames ({thr:g}): {_fmt(at)}")
        if len(sugg):
            lines.append(f"annotate next: the {len(sugg)} yellow rectangles in '{SUGGESTIONS}'")
        self.results.value = "\n".join(lines)
        self._show_suggestions(sugg)
        self.review.finetuned = tuned
        self.review.metrics.update({"before fine-tuning (held back)": b, "after fine-tuning (held back)": at})
        self.review.session.set_model(tuned, origin="fine-tuned")
        self.show_s = time.perf_counter() - t0  # main-thread time to show the results
        notify(
            f"Annotate a few: held-back F1 {b['f1']:.3f} -> {at['f1']:.3f}. Apply now uses the "
            "fine-tuned model."
        )

    def _show_suggestions(self, sugg) -> None:
        img = self._image
        if img is None or len(sugg) == 0:
            return
        stack = img.ndim == 3
        rects = []
        for r in sugg.itertuples():
            y0, x0, y1, x1 = r.y0 - 0.5, r.x0 - 0.5, r.y1 - 0.5, r.x1 - 0.5  # pixel edges
            corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
            rects.append(np.array([[r.frame, *c] for c in corners] if stack else corners, float))
        feats = sugg[["frame", "disagreement"]].reset_index(drop=True)
        write_layer(
            self.review.viewer,
            SUGGESTIONS,
            "shapes",
            rects,
            role="suggested annotations",
            shape_type="rectangle",
            edge_color="yellow",
            face_color="transparent",
            features=feats,
            **spatial_kwargs(img, img.ndim),
        )

    def _finished(self) -> None:
        self.worker = None
        try:
            self.run_btn.enabled, self.stop_btn.enabled = True, False
        except RuntimeError:  # widget deleted
            pass
