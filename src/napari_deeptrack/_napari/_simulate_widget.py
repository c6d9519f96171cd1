"""Simulate dock widget: describe the microscope and sample, match them to a real layer, preview.

The form builds a :class:`~napari_deeptrack.sim.Pipeline` (:meth:`SimulateWidget.build_pipeline`).
"Match to layer" measures on the selected image what the form's simulation family can learn from it
(:func:`napari_deeptrack.analysis.match.calibrate`, in a helper process: ``_compute``) and shows every
estimate in a table (parameter | value | +- | unit | from, ``_estimates``); editing a value re-applies the
calibration (:func:`~napari_deeptrack.analysis.match.apply_calibration`) and the preview follows. The
preview is simulated off the main thread, debounced, and shown beside the real image (a "compare" grid
toggle) or over it, with the same frame shape (H, W), scale and contrast limits, together with the
per-component sim-vs-real distance and coverage verdict
(:func:`~napari_deeptrack.analysis.realism.sim_real_distance`). Apply's coverage warnings ask for a new
match through the viewer's session (``match_requested``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from qtpy.QtCore import QTimer

from ._dock import collapsible, scroll_form, text_row
from ._estimates import EstimatesTable, coverage_html
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
from ._numbers import SigFloatSpinBox, format_number
from ._session import session_for

__all__ = ["PREVIEW_ROLE", "SimulateWidget"]

PREVIEW_ROLE = "simulation preview"
PREVIEW_NAME = "DeepTrack simulation"
MODALITIES = ("fluorescence", "brightfield", "holography")
PARTICLES = ("point", "sphere", "Mie sphere", "cell")
ABERRATIONS = ("none", "defocus", "astigmatism", "coma_x", "coma_y", "spherical", "trefoil_x")


def _make(cls, **kwargs):
    """Instantiate a sim dataclass with the keyword arguments it accepts."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def _range(lo: float, hi: float):
    from ..sim import Uniform

    lo, hi = float(lo), float(hi)
    return lo if hi <= lo else Uniform(lo, hi)


def _bounds(value) -> tuple[float, float]:
    from ..sim.params import support

    try:
        lo, hi = support(value)
    except TypeError:
        return 0.0, 0.0
    return float(lo), float(hi)


class SimulateWidget(Container):
    """Simulation builder with "Match to layer", preview and JSON / Python export."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.layer = ComboBox(label="real image", choices=self._image_choices, nullable=True)
        self.modality = ComboBox(label="modality", choices=MODALITIES, value="fluorescence")
        # optics
        self.NA = FloatSpinBox(label="NA", value=1.3, min=0.05, max=1.7, step=0.05)
        self.wavelength_um = FloatSpinBox(label="wavelength (um)", value=0.6, min=0.2, max=2.0, step=0.01)
        self.pixel_size_um = FloatSpinBox(label="pixel size (um)", value=0.1, min=0.001, max=20.0, step=0.005)
        self.magnification = FloatSpinBox(
            label="magnification (0: use pixel size)", value=0.0, min=0.0, max=250.0
        )
        self.camera_pixel_um = FloatSpinBox(label="camera pixel (um)", value=6.5, min=0.5, max=50.0)
        self.medium_index = FloatSpinBox(label="medium index", value=1.33, min=1.0, max=2.0, step=0.01)
        self.aberration = ComboBox(label="aberration", choices=ABERRATIONS, value="none")
        self.aberration_rad = FloatSpinBox(
            label="aberration (rad rms)", value=0.0, min=-5.0, max=5.0, step=0.1
        )
        # sample
        self.particle = ComboBox(label="particle", choices=PARTICLES, value="point")
        self.count_min = SpinBox(label="count min", value=5, min=0, max=10000)
        self.count_max = SpinBox(label="count max", value=15, min=0, max=10000)
        self.radius_um = FloatSpinBox(label="radius (um)", value=0.5, min=0.01, max=50.0, step=0.05)
        self.intensity_min = SigFloatSpinBox(label="photons min", value=500.0, min=0.0, max=1e8, step=100)
        self.intensity_max = SigFloatSpinBox(label="photons max", value=1500.0, min=0.0, max=1e8, step=100)
        self.particle_index = FloatSpinBox(label="particle index", value=1.5, min=1.0, max=3.0, step=0.01)
        self.z_min_um = FloatSpinBox(label="z min (um)", value=0.0, min=-100.0, max=100.0, step=0.1)
        self.z_max_um = FloatSpinBox(label="z max (um)", value=0.0, min=-100.0, max=100.0, step=0.1)
        # noise
        self.background = SigFloatSpinBox(label="background (photons/px)", value=20.0, min=0.0, max=1e7)
        self.background.tooltip = (
            "Fluorescence: background photons per pixel. Bright field and holography: the illumination, "
            "detected photons per pixel (the particles' contrast is relative to it)."
        )
        self.shot_noise = CheckBox(label="shot noise (Poisson)", value=True)
        self.read_noise = SigFloatSpinBox(label="read noise (grey values)", value=0.0, min=0.0, max=1e5)
        # significant digits, scientific when small: a matched gain of 2.3e-05 must not read 0.000023
        self.gain = SigFloatSpinBox(label="camera gain (grey/photon)", value=1.0, min=1e-9, max=1e4, step=0.1)
        # preview
        self.auto_preview = CheckBox(label="live preview", value=True)
        self.compare = CheckBox(label="compare side by side (grid view)", value=False)
        self.compare.tooltip = "Show the preview beside the real image; untick to restore your view."
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.match_btn = PushButton(text="Match to layer")
        self.preview_btn = PushButton(text="Preview")
        self.save_btn = PushButton(text="Save JSON...")
        self.load_btn = PushButton(text="Load JSON...")
        self.export_btn = PushButton(text="Export Python...")
        self.stats_label = Label(value="sim vs real distance: -")
        self.stats_label.tooltip = (
            "Each component is 0 for identical images; above its limit it is a mismatch worth fixing "
            "(analysis.realism.sim_real_distance). The verdict drives Apply's coverage warnings."
        )
        self.match_label = Label(value="")
        self.estimates = EstimatesTable(self._estimate_edited)
        self.reset_estimates_btn = PushButton(text="Reset edited estimates")
        self.reset_estimates_btn.visible = False
        self.memory_label = Label(value="")
        _set_decimals(
            {
                self.NA: 3,
                self.wavelength_um: 4,
                self.pixel_size_um: 5,
                self.camera_pixel_um: 3,
                self.medium_index: 4,
                self.radius_um: 4,
                self.particle_index: 4,
                self.z_min_um: 3,
                self.z_max_um: 3,
                self.aberration_rad: 3,
            }
        )
        super().__init__(widgets=[])
        optics_box, _ = collapsible(
            "Advanced optics (camera, medium, aberrations)",
            [
                self.magnification,
                self.camera_pixel_um,
                self.medium_index,
                self.aberration,
                self.aberration_rad,
            ],
        )
        noise_box, _ = collapsible(
            "Camera and noise", [self.shot_noise, self.read_noise, self.gain], expanded=False
        )
        match_row = text_row(self.match_label)
        self.form = Container(
            widgets=[
                self.layer,
                Container(widgets=[self.match_btn, self.preview_btn], layout="horizontal", labels=False),
                match_row,
                self.reset_estimates_btn,
                self.compare,
                text_row(self.stats_label),
                text_row(self.memory_label),
                self.modality,
                Label(value="<b>Optics</b>"),
                self.NA,
                self.wavelength_um,
                self.pixel_size_um,
                Label(value="<b>Sample</b>"),
                self.particle,
                self.count_min,
                self.count_max,
                self.radius_um,
                self.intensity_min,
                self.intensity_max,
                self.particle_index,
                self.z_min_um,
                self.z_max_um,
                self.background,
                Label(value="<b>Preview</b>"),
                self.auto_preview,
                self.seed,
                Container(
                    widgets=[self.save_btn, self.load_btn, self.export_btn], layout="horizontal", labels=False
                ),
            ]
        )
        lay = self.form.native.layout()
        lay.insertWidget(lay.indexOf(match_row.native.parent()) + 1, self.estimates.native)
        lay.insertWidget(lay.indexOf(self.pixel_size_um.native.parent()) + 1, optics_box)
        lay.insertWidget(lay.indexOf(self.background.native.parent()) + 1, noise_box)
        scroll_form(self, self.form)
        self._saved_view = None
        self.session = session_for(napari_viewer)
        self.last_result: dict | None = None
        self._worker = None
        self._match_worker = None
        self.calibration = None  # the last Match's estimates (analysis.match.Calibration)
        self._match_template = None  # the form's pipeline Match calibrated (edits re-apply to it)
        self._match_layer_name = ""
        self.edited_estimates: dict = {}
        self._apply_worker = None
        self._apply_pending = False
        self._filling = False
        self._pending = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.preview)
        self.match_btn.changed.connect(self.match_to_layer)
        self.reset_estimates_btn.changed.connect(self.reset_estimates)
        self.session.match_requested.connect(self._match_requested)
        self.preview_btn.changed.connect(self.preview)
        self.save_btn.changed.connect(lambda: self.save_config())
        self.load_btn.changed.connect(lambda: self.load_config())
        self.export_btn.changed.connect(lambda: self.export_python())
        for w in self._parameter_widgets():
            w.changed.connect(self._parameters_changed)
        self.compare.changed.connect(self._compare_changed)
        _warm_imports()  # once, when the widget opens: not in the middle of a click
        from ._compute import start as start_helper

        start_helper()  # the helper process for Match / preview (its start would stall a run)
        self.modality.changed.connect(self._particle_for_modality)
        for ev in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, ev).connect(self._refresh_layers)
        if self.session.pending_match is not None:  # opened by Apply's "Re-match" fix
            QTimer.singleShot(0, self._match_requested)

    # ------------------------------------------------------------------ layers
    def _image_choices(self, _=None):
        return [
            (layer.name, layer)
            for layer in image_layers(self.viewer)
            if PREVIEW_ROLE != layer.metadata.get("napari_deeptrack")
        ]

    def _refresh_layers(self, event=None):
        try:
            self.layer.reset_choices()
        except RuntimeError:  # widget already deleted
            pass

    def _parameter_widgets(self):
        return [
            self.modality,
            self.NA,
            self.wavelength_um,
            self.pixel_size_um,
            self.magnification,
            self.camera_pixel_um,
            self.medium_index,
            self.aberration,
            self.aberration_rad,
            self.particle,
            self.count_min,
            self.count_max,
            self.radius_um,
            self.intensity_min,
            self.intensity_max,
            self.particle_index,
            self.z_min_um,
            self.z_max_um,
            self.background,
            self.shot_noise,
            self.read_noise,
            self.gain,
            self.seed,
        ]

    def _parameters_changed(self, *_):
        if self._filling:
            return
        self.publish()
        if self.auto_preview.value:
            self._timer.start()  # debounced: restarts on every change

    def publish(self, matched: bool | None = None) -> None:
        """Hand the form's simulation to the other widgets (through the viewer's session)."""
        layer = self.layer.value
        try:
            pipeline = self.build_pipeline()
        except (ValueError, TypeError):
            pipeline = None
        origin = f"matched to '{layer.name}'" if layer is not None else "Simulate form"
        self.session.set_simulation(pipeline, origin=origin, matched=matched)

    # ------------------------------------------------------------------ pipeline <-> form
    def build_pipeline(self, image_shape: tuple[int, int] | None = None, modality: str | None = None):
        """The simulation described by the form (``image_shape`` defaults to the selected layer's;
        ``modality`` replaces the form's, with spheres for coherent optics)."""
        from .. import sim

        if image_shape is None:
            layer = self.layer.value
            image_shape = tuple(layer.data.shape[-2:]) if layer is not None and not layer.rgb else (128, 128)
        mod = modality or self.modality.value
        optics_kwargs = {
            "NA": self.NA.value,
            "wavelength_um": self.wavelength_um.value,
            "refractive_index_medium": self.medium_index.value,
        }
        if self.magnification.value > 0:
            optics_kwargs.update(
                camera_pixel_um=self.camera_pixel_um.value, magnification=self.magnification.value
            )
        else:
            optics_kwargs["pixel_size_um"] = self.pixel_size_um.value
        if self.aberration.value != "none" and self.aberration_rad.value != 0:
            optics_kwargs["aberrations"] = [
                sim.Zernike.named(self.aberration.value, self.aberration_rad.value)
            ]
        optics_cls = {
            "fluorescence": "Fluorescence",
            "brightfield": "Brightfield",
            "holography": "Holography",
        }[mod]
        optics = _make(getattr(sim, optics_cls), **optics_kwargs)
        kind = self.particle.value
        if kind == "point" and mod in ("brightfield", "holography"):
            kind = "sphere"
        n_p = self.particle_index.value
        if kind == "point":
            scatterer = sim.PointParticle()
        elif kind == "sphere":
            scatterer = _make(sim.Sphere, radius_um=self.radius_um.value, refractive_index=n_p)
        elif kind == "Mie sphere":
            scatterer = _make(sim.MieSphere, radius_um=self.radius_um.value, refractive_index=n_p)
        else:
            scatterer = _make(sim.CellBody, radius_um=self.radius_um.value)
        lo, hi = sorted((int(self.count_min.value), int(self.count_max.value)))
        particles = sim.Particles(
            scatterer,
            count=sim.IntUniform(lo, hi) if hi > lo else hi,
            intensity=_range(*sorted((self.intensity_min.value, self.intensity_max.value))),
            z_um=_range(*sorted((self.z_min_um.value, self.z_max_um.value))),
        )
        transforms = []
        if mod == "fluorescence":
            transforms.append(sim.Background(self.background.value))
        elif self.background.value > 0:  # coherent images are 1 = the illumination: scale to photons
            transforms.append(sim.IlluminationPhotons(self.background.value))
        if self.shot_noise.value:
            transforms.append(sim.Poisson())
        if self.gain.value != 1.0:
            transforms.append(_make(sim.Camera, gain=self.gain.value, offset=0.0))
        if self.read_noise.value > 0:
            transforms.append(_make(sim.ReadNoise, sigma=self.read_noise.value))
        return sim.Pipeline(
            image_shape=tuple(int(s) for s in image_shape),
            particles=[particles],
            optics=optics,
            transforms=transforms,
        )

    def set_pipeline(self, pipeline) -> None:
        """Fill the form from a pipeline (first population; unknown objects keep the form's values)."""
        was, self._filling = self._filling, True
        try:
            with self.changed.blocked():
                self._set_pipeline(pipeline)
        finally:
            self._filling = was
        self._parameters_changed()

    def _set_pipeline(self, pipeline) -> None:
        from .. import sim

        optics = pipeline.optics
        for cls in (sim.Holography, sim.Brightfield, sim.Fluorescence):  # subclasses first
            if isinstance(optics, cls) and cls.__name__.lower() in MODALITIES:
                self.modality.value = cls.__name__.lower()
                break
        for attr, widget in (
            ("NA", self.NA),
            ("wavelength_um", self.wavelength_um),
            ("refractive_index_medium", self.medium_index),
        ):
            if getattr(optics, attr, None) is not None:
                widget.value = float(getattr(optics, attr))
        if getattr(optics, "pixel_size_um", None):
            self.pixel_size_um.value = float(optics.pixel_size_um)
            self.magnification.value = 0.0
        elif getattr(optics, "magnification", None):
            self.magnification.value = float(optics.magnification)
            self.camera_pixel_um.value = float(optics.camera_pixel_um)
        if pipeline.particles:
            pop = pipeline.particles[0]
            lo, hi = _bounds(pop.count)
            self.count_min.value, self.count_max.value = int(lo), int(min(hi, 10000))
            lo, hi = _bounds(pop.intensity)
            self.intensity_min.value, self.intensity_max.value = lo, hi
            lo, hi = _bounds(pop.z_um)
            self.z_min_um.value, self.z_max_um.value = lo, hi
            kinds = {sim.PointParticle: "point", sim.Sphere: "sphere", sim.MieSphere: "Mie sphere"}
            kinds[sim.CellBody] = "cell"
            self.particle.value = kinds.get(type(pop.scatterer), self.particle.value)
            if hasattr(pop.scatterer, "radius_um"):
                self.radius_um.value = float(np.mean(_bounds(pop.scatterer.radius_um)))
            if hasattr(pop.scatterer, "refractive_index"):
                self.particle_index.value = float(np.real(np.mean(_bounds(pop.scatterer.refractive_index))))
        self.shot_noise.value = False
        self.read_noise.value = 0.0
        self.gain.value = 1.0
        for tr in pipeline.transforms:
            if isinstance(tr, sim.Background):
                self.background.value = float(np.mean(_bounds(tr.level)))
            elif isinstance(tr, sim.IlluminationPhotons):
                self.background.value = float(np.mean(_bounds(tr.photons_per_px)))
            elif isinstance(tr, sim.Poisson):
                self.shot_noise.value = True
            elif isinstance(tr, sim.Camera):
                self.gain.value = float(np.mean(_bounds(tr.gain)))
            elif isinstance(tr, sim.ReadNoise):
                self.read_noise.value = float(np.mean(_bounds(tr.sigma)))

    # ------------------------------------------------------------------ match
    def match_to_layer(self, *_):
        """Measure on the selected layer what the form's simulation family can learn from it.

        The frames are validated here; the calibration (:func:`napari_deeptrack.analysis.match.calibrate`)
        runs in a helper process (``_compute``: scipy there cannot stall napari), waited for by a worker
        thread. When it returns, the estimates fill the table (editable) and the form. Dark particles
        with a fluorescence form are calibrated as bright field (spheres), the family that can measure
        their radius, rings and defocus. Returns the worker (or None when the input is refused).
        """
        if self._match_worker is not None:
            notify("Match to layer is already running.", "warning")
            return None
        layer = self.layer.value
        try:
            frames, _ = image_frames(layer, what="Match to layer")
            px = layer_pixel_size_um(layer)
            shape = frames.shape[-2:]
            template = self.build_pipeline(shape)
            dark_template = None
            if self.modality.value == "fluorescence":
                dark_template = self.build_pipeline(shape, modality="brightfield")
        except (InputError, ValueError, TypeError) as exc:
            notify(str(exc), "error")
            return None
        self.match_label.value = f"matching '{layer.name}'..."
        source = "the layer's scale" if px else "unknown"
        from ._compute import match_layer

        worker = start_worker(
            match_layer, template, dark_template, frames, px, source, error="Match to layer failed"
        )
        worker.returned.connect(lambda out: self._matched(out, layer.name, px))
        worker.errored.connect(lambda *_: setattr(self.match_label, "value", ""))
        worker.finished.connect(lambda: setattr(self, "_match_worker", None))
        self._match_worker = worker
        worker.start()
        return worker

    def _matched(self, out: tuple, layer_name: str, px: float | None) -> None:
        if not widget_alive(self):
            return
        template, cal, matched = out
        self.calibration = cal
        self._match_template = template
        self._match_layer_name = layer_name
        self.edited_estimates = {}
        self._show_matched(cal, matched)
        stats = cal.stats
        sigma = f"{stats.spot_sigma_px:.2f} px" if stats.spot_sigma_px else "no spots found"
        pixel = f"pixel {format_number(px)} um" if px else "pixel size unknown: enter it above"
        self.match_label.value = (
            f"{cal.family} estimates from '{layer_name}' ({pixel}; spot sigma {sigma}, "
            f"{stats.spots_per_frame:.0f} spots/frame, {stats.polarity} particles). "
            "Double-click a value to edit it."
        )
        notify(
            f"Simulation matched to '{layer_name}' ({cal.family}): "
            + ", ".join(f"{e.name} {_short(e)}" for e in cal.estimates[:6])
        )

    def _show_matched(self, cal, matched) -> None:
        """The calibration ``cal`` and its pipeline ``matched``: table, form, session, preview."""
        if not widget_alive(self):
            return
        self.estimates.show_calibration(cal, self.edited_estimates)
        self.reset_estimates_btn.visible = bool(self.edited_estimates)
        self._filling = True
        try:
            self.set_pipeline(matched)
            if cal.get("polarity") == "dark" and self.modality.value == "fluorescence":
                self.modality.value = "brightfield"
            self._particle_for_modality()
        finally:
            self._filling = False
        self.publish(matched=True)
        self._parameters_changed()

    def _fill_from_calibration(self):
        """Apply the calibration with the user's edits (off the main thread: bright field simulates
        particle contrasts, ~1 s), then show it. Returns the worker (None: one is running; it re-runs)."""
        cal = self.calibration.with_overrides(self.edited_estimates)
        self.estimates.show_calibration(cal, self.edited_estimates)  # the edit shows at once
        self.reset_estimates_btn.visible = bool(self.edited_estimates)
        if self._apply_worker is not None:
            self._apply_pending = True
            return None
        from ._compute import apply_estimates

        worker = start_worker(
            apply_estimates, self._match_template, cal, error="Applying the estimates failed"
        )
        worker.returned.connect(lambda matched: self._show_matched(cal, matched))
        worker.finished.connect(self._apply_done)
        self._apply_worker = worker
        worker.start()
        return worker

    def _apply_done(self) -> None:
        self._apply_worker = None
        if self._apply_pending and widget_alive(self):
            self._apply_pending = False
            self._fill_from_calibration()

    def _estimate_edited(self, name: str, value) -> None:
        """An estimate edited in the table: re-apply the calibration; the preview follows (debounced)."""
        if self.calibration is None:
            return
        edits = {**self.edited_estimates, name: value}
        try:
            self.calibration.with_overrides(edits)
            if name == "polarity" and value not in ("bright", "dark"):
                raise ValueError("polarity is 'bright' or 'dark'")
        except ValueError as exc:
            notify(f"Estimate not changed: {exc}", "error")
            self.estimates.show_calibration(
                self.calibration.with_overrides(self.edited_estimates), self.edited_estimates
            )
            return
        self.edited_estimates = edits
        self._fill_from_calibration()

    def reset_estimates(self, *_) -> None:
        """Back to the measured estimates (drop the user's edits)."""
        if self.calibration is None:
            return
        self.edited_estimates = {}
        self._fill_from_calibration()

    def _match_requested(self, request=None) -> None:
        """Another widget (Apply's coverage warnings) asked to match the simulation to a layer."""
        if not widget_alive(self):
            return
        request = self.session.take_match_request()
        if request is None:
            return
        layer = next((lyr for _, lyr in self._image_choices() if lyr.name == request.layer_name), None)
        if layer is None:
            notify(f"Cannot match: no image layer named '{request.layer_name}'.", "error")
            return
        self._refresh_layers()
        self.layer.value = layer
        worker = self.match_to_layer()
        if worker is not None and request.focus:
            worker.returned.connect(lambda *_: widget_alive(self) and self.estimates.highlight(request.focus))

    def _particle_for_modality(self, *_) -> None:
        """Coherent optics (bright-field, holography) cannot image point particles: use spheres."""
        if self.modality.value in ("brightfield", "holography") and self.particle.value == "point":
            self.particle.value = "sphere"

    # ------------------------------------------------------------------ preview
    def preview(self, *_):
        """Simulate a preview (in a worker) and show it next to the selected layer."""
        if not widget_alive(self):
            self._timer.stop()
            return None
        if self._worker is not None:
            self._pending = True
            return None
        layer = self.layer.value
        frames = None
        try:
            if layer is not None:
                frames, _ = image_frames(layer, what="the preview")
            shape = frames.shape[-2:] if frames is not None else (128, 128)
            pipeline = self.build_pipeline(shape)
        except (InputError, ValueError, TypeError) as exc:
            notify(str(exc), "error")
            return None
        n = 1 if frames is None or frames.shape[0] == 1 else min(frames.shape[0], 3)
        if frames is not None:
            frames = frames[:: max(1, len(frames) // 4)][:4]  # a few frames are enough to compare
        if not self._memory_ok(pipeline, n, "the preview"):
            return None
        meta = {
            "source": layer,
            "contrast_limits": tuple(layer.contrast_limits) if layer is not None else None,
        }
        from ._compute import simulate_preview

        worker = start_worker(
            simulate_preview, pipeline, n, int(self.seed.value), frames, error="Simulation failed"
        )
        worker.returned.connect(lambda result: self._show_preview(result, meta))
        worker.finished.connect(self._preview_done)
        self._worker = worker
        worker.start()
        return worker

    def _preview_done(self):
        self._worker = None
        if self._pending:
            self._pending = False
            self.preview()

    def _show_preview(self, result: dict, meta: dict) -> None:
        if not widget_alive(self):
            return
        images = result["images"]
        # one simulated frame, (H, W) like the real layer's frames: a 2D layer shows at every time point
        data = images[0]
        source = meta["source"]
        kwargs = spatial_kwargs(source, data.ndim) if source is not None else {}
        kwargs["contrast_limits"] = preview_contrast_limits(data, meta.get("contrast_limits"))
        kwargs["colormap"] = getattr(source, "colormap", None).name if source is not None else "gray"
        kwargs["metadata"] = {"pipeline": result["pipeline_json"]}
        write_layer(self.viewer, PREVIEW_NAME, "image", data, role=PREVIEW_ROLE, **kwargs)
        self.last_result = result
        cmp = result.get("comparison")
        if cmp is not None:
            self.stats_label.value = coverage_html(cmp)
        else:
            self.stats_label.value = "sim vs real distance: - (no real image selected)"
        if self.compare.value:
            self._compare_changed(True)

    def _memory_ok(self, pipeline, batch: int, what: str) -> bool:
        """Estimate the simulation's memory first (``sim.budget``); refuse, naming what to change."""
        from ..errors import MemoryBudgetError
        from ..sim.budget import estimate_render, format_bytes, memory_budget

        est = estimate_render(pipeline, batch, what=what)
        try:
            est.check()
        except MemoryBudgetError as exc:
            self.memory_label.value = f"! {exc}"
            notify(f"Not simulated: {exc}", "error")
            return False
        self.memory_label.value = f"memory: {format_bytes(est.bytes)} of {format_bytes(memory_budget())}"
        return True

    def _compare_changed(self, on=None, *_):
        """Grid view to compare preview and data; turning it off restores the user's grid and camera."""
        grid, camera = _grid(self.viewer), self.viewer.camera
        if self.compare.value:
            if self._saved_view is None:
                self._saved_view = {
                    "grid": bool(grid.enabled),
                    "center": tuple(camera.center),
                    "zoom": float(camera.zoom),
                }
            grid.enabled = True
        elif self._saved_view is not None:
            saved, self._saved_view = self._saved_view, None
            grid.enabled = saved["grid"]
            camera.center, camera.zoom = saved["center"], saved["zoom"]

    # ------------------------------------------------------------------ files
    def save_config(self, path: str | Path | None = None) -> Path | None:
        """Save the simulation as JSON (``sim.serialize.to_json``)."""
        from ..sim.serialize import to_json

        return self._write_pipeline(path, to_json, "Save simulation", "JSON (*.json)", "save", "saved")

    def _write_pipeline(self, path, serialise, title: str, file_filter: str, verb: str, done: str):
        """Write ``serialise(pipeline)`` to ``path`` (asked for when None); notify; return the path."""
        path = path or _file_dialog("save", title, file_filter)
        if not path:
            return None
        try:
            Path(path).write_text(serialise(self.build_pipeline()))
        except (ValueError, TypeError, OSError) as exc:
            notify(f"Could not {verb} the simulation: {exc}", "error")
            return None
        notify(f"Simulation {done} to {path}")
        return Path(path)

    def load_config(self, path: str | Path | None = None):
        """Load a simulation JSON into the form."""
        from ..sim.pipeline import Pipeline
        from ..sim.serialize import from_json

        path = path or _file_dialog("open", "Load simulation", "JSON (*.json)")
        if not path:
            return None
        try:
            obj = from_json(Path(path).read_text())
            if not isinstance(obj, Pipeline):
                obj = getattr(obj, "pipeline", None)
            if not isinstance(obj, Pipeline):
                raise ValueError("the file holds no simulation pipeline")
        except (ValueError, TypeError, OSError, json.JSONDecodeError) as exc:
            notify(f"Could not load {path}: {exc}", "error")
            return None
        self.set_pipeline(obj)
        return obj

    def export_python(self, path: str | Path | None = None) -> Path | None:
        """Export the simulation as a Python script (``sim.serialize.to_python``)."""
        from ..sim.serialize import to_python

        return self._write_pipeline(
            path, to_python, "Export simulation as Python", "Python (*.py)", "export", "exported"
        )


def _grid(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _file_dialog(mode: str, title: str, filt: str) -> str | None:
    from qtpy.QtWidgets import QFileDialog

    if mode == "save":
        path, _ = QFileDialog.getSaveFileName(None, title, "", filt)
    else:
        path, _ = QFileDialog.getOpenFileName(None, title, "", filt)
    return path or None


def _warm_imports() -> None:
    """Import what Match and Preview need (scipy, scikit-image, calibrate, the worker machinery)."""
    from superqt.utils import create_worker  # noqa: F401

    from ..analysis import calibrate  # noqa: F401
    from ..sim import budget  # noqa: F401


def _short(estimate) -> str:
    value = estimate.value if isinstance(estimate.value, str) else format_number(estimate.value, 3)
    return f"{value} {estimate.unit}".rstrip()


def preview_contrast_limits(data: np.ndarray, real_limits=None) -> tuple[float, float]:
    """Contrast limits for the preview: the real layer's when the simulation lives in the same grey-value
    range (then brightness compares directly), else its own (0.5-99.5 percentiles): a bright-field
    simulation of ~1 photon/px shown with a camera's grey values (hundreds) would be black."""
    lo, hi = (float(v) for v in np.percentile(data, (0.5, 99.5)))
    hi = hi if hi > lo else lo + 1.0
    if real_limits is not None:
        r_lo, r_hi = (float(v) for v in real_limits)
        top = float(np.max(data))  # sparse bright spots lie above the 99.5th percentile
        overlap = min(top, r_hi) - max(lo, r_lo)
        if r_hi > r_lo and overlap > 0.5 * (top - lo) and overlap > 0.2 * (r_hi - r_lo):
            return r_lo, r_hi
    return lo, hi


def _set_decimals(widgets: dict) -> None:
    """Show enough digits (a gain of 0.0035 or a wavelength of 0.447 um must not be rounded)."""
    for w, decimals in widgets.items():
        value = w.value
        w.native.setDecimals(int(decimals))
        w.value = value
