"""Diffusion dock widget: ensemble mean squared displacement and diffusion coefficient of a Tracks layer.

Takes any Tracks layer (the Apply widget's *DeepTrack tracks*, a TrackMate file, your own), reads the
pixel size and the frame interval from the layer's scale and units (editable), and fits
``MSD = 4 D tau + offset`` over the first lags
(:func:`napari_deeptrack.analysis.tracking.diffusion_coefficients`, as the command line and the
benchmarks do). The computation runs in a worker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox

from ._dock import scroll_form, text_row
from ._layers import layer_pixel_size_um, notify, start_worker, widget_alive

__all__ = ["DiffusionWidget", "tracks_msd"]

_TIME_S = {"second": 1.0, "s": 1.0, "millisecond": 1e-3, "ms": 1e-3, "minute": 60.0, "min": 60.0}


class DiffusionWidget(Container):
    """MSD plot and diffusion coefficient of a Tracks layer."""

    def __init__(self, napari_viewer):
        from ._plot import MSDPlot

        self.viewer = napari_viewer
        self.tracks = ComboBox(label="tracks", choices=self._choices, nullable=True)
        self.pixel_size_um = FloatSpinBox(label="pixel size (um)", value=1.0, min=1e-5, max=1e4, step=0.001)
        self.pixel_size_um.native.setDecimals(5)
        self.frame_interval_s = FloatSpinBox(label="frame interval (s)", value=1.0, min=1e-6, max=1e5)
        self.frame_interval_s.native.setDecimals(6)
        self.max_lag = SpinBox(label="lags shown (frames)", value=10, min=2, max=1000)
        self.fit_lags = SpinBox(label="lags fitted (frames)", value=4, min=2, max=100)
        self.run_btn = PushButton(text="Compute MSD")
        self.result = Label(value="")
        self.form = Container(
            widgets=[
                self.tracks,
                self.pixel_size_um,
                self.frame_interval_s,
                self.max_lag,
                self.fit_lags,
                self.run_btn,
                text_row(self.result),
            ]
        )
        super().__init__(widgets=[])
        self.plot = MSDPlot()
        scroll_form(self, self.form, footer=self.plot)
        self.worker = None
        self.last: dict | None = None
        self.tracks.changed.connect(self._layer_changed)
        self.run_btn.changed.connect(self.compute)
        for ev in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, ev).connect(self._refresh)
        self._layer_changed()

    def _choices(self, _=None):
        from napari.layers import Tracks

        return [(lyr.name, lyr) for lyr in self.viewer.layers if isinstance(lyr, Tracks)]

    def _refresh(self, event=None):
        try:
            self.tracks.reset_choices()
        except RuntimeError:
            pass

    def _layer_changed(self, *_):
        layer = self.tracks.value
        if layer is None:
            return
        px = layer_pixel_size_um(layer)
        if px:
            self.pixel_size_um.value = px
        units = getattr(layer, "units", None)
        if units is not None and len(units) >= 3:
            factor = _TIME_S.get(str(units[0]))
            if factor is not None:
                self.frame_interval_s.value = float(layer.scale[0]) * factor

    def compute(self, *_):
        """Ensemble MSD and D in a worker; returns the worker (or None)."""
        layer = self.tracks.value
        if layer is None:
            notify("Select a Tracks layer (run Apply with 'link tracks' on a stack).", "error")
            return None
        data = np.asarray(layer.data, dtype=float)
        if data.ndim != 2 or data.shape[1] != 4 or len(data) < 2:
            notify(f"'{layer.name}' needs 2D tracks (track id, t, y, x) with at least 2 positions.", "error")
            return None
        table = pd.DataFrame(data, columns=["track_id", "frame", "y", "x"])
        table[["track_id", "frame"]] = table[["track_id", "frame"]].round().astype(np.int64)
        worker = start_worker(
            tracks_msd,
            table,
            float(self.pixel_size_um.value),
            float(self.frame_interval_s.value),
            int(self.max_lag.value),
            int(self.fit_lags.value),
            error="MSD failed",
        )
        worker.returned.connect(self._show)
        worker.finished.connect(lambda: setattr(self, "worker", None))
        self.worker = worker
        worker.start()
        return worker

    def _show(self, out: dict) -> None:
        if not widget_alive(self):
            return
        self.last = out
        msd = out["msd"]
        ens = out["ensemble"]
        d, off = ens.get("diffusion_um2_s"), ens.get("offset_um2", 0.0)
        fit = (float(d), float(off or 0.0)) if d is not None and np.isfinite(d) else None
        self.plot.set_data(msd["lag_s"], msd["msd_um2"], msd["sem_um2"], fit)
        sem = ens.get("sem_um2_s")
        d_txt = f"D = {d:.4g} um^2/s" if fit else "D: not enough displacements"
        if fit and sem is not None and np.isfinite(sem):
            d_txt += f" +- {sem:.2g}"
        self.result.value = f"{d_txt} from {ens.get('n_tracks', 0)} tracks (first {self.fit_lags.value} lags)"


def tracks_msd(
    table: pd.DataFrame, pixel_size_um: float, frame_interval_s: float, max_lag: int, fit_lags: int
):
    """Worker: ensemble MSD up to ``max_lag`` and the diffusion fit over ``fit_lags`` lags."""
    from ..analysis.tracking import diffusion_coefficients, ensemble_msd

    fit = diffusion_coefficients(table, pixel_size_um, frame_interval_s, fit_lags=fit_lags)
    msd = ensemble_msd(table, pixel_size_um, frame_interval_s, max_lag=max_lag)
    return {"msd": msd, "ensemble": fit["ensemble"]}
