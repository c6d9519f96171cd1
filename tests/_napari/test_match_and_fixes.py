"""Issue 15 point 5 and the issue 11/12 leftovers, through widgets opened as napari opens them.

- Simulate: Match to layer shows every calibration estimate (value, +-, unit, where it came from), the
  user edits one and the simulation and its preview follow; the preview shows the sim-vs-real distance per
  component and the coverage verdict; small numbers are shown in scientific notation.
- Apply: a coverage warning offers its fix (re-match on this layer, through the session, opening
  Simulate); Cancel keeps the finished chunks; the tile size follows the memory estimate unless set.
"""

import time

import numpy as np
import pytest
import torch

PLUGIN = "napari-deeptrack"
TINY_UNET = {"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4}


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def shown(widget) -> bool:
    """Shown in its dock (the test viewer's window itself is not on screen)."""
    return not widget.native.isHidden()


def spot_frames(n_frames=1, shape=(64, 48), n=8, sign=1.0, background=20.0, peak=3000.0, seed=0):
    """Poisson frames of isolated Gaussian spots (sign -1: dark particles on a bright background)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n_frames):
        img = np.full(shape, background)
        for y, x in rng.uniform(8, (h - 8, w - 8), (n, 2)):
            img += (
                sign * peak / (2 * np.pi * 1.6**2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.6**2))
            )
        out.append(rng.poisson(np.clip(img, 0, None)))
    return np.asarray(out, np.float32)


class BlobDetector(torch.nn.Module):
    """Fixed Gaussian blur + steep sigmoid logits (bright spots); ``delay_s`` per forward pass."""

    def __init__(self, delay_s=0.0):
        super().__init__()
        self.delay_s = delay_s
        self.conv = torch.nn.Conv2d(1, 1, 7, padding=3)
        r = torch.arange(7.0) - 3
        k = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5**2))
        with torch.no_grad():
            self.conv.weight.copy_((k / k.sum())[None, None])
            self.conv.bias.fill_(-0.3)

    def forward(self, x):
        if self.delay_s:
            time.sleep(self.delay_s)
        return 8.0 * self.conv(x)


def detector_bundle(delay_s=0.0):
    from napari_deeptrack.io.bundle import Bundle
    from napari_deeptrack.tasks import get_preset

    task = get_preset("particles-2d")
    task.model = {"type": "custom"}
    task.input_normalization = {"mode": "percentile", "low": 1.0, "high": 99.8}
    return Bundle(model=BlobDetector(delay_s).eval(), task=task, config={"history": {}}, path=None)


# ---------------------------------------------------------------------------- Simulate: estimates
def test_match_shows_estimates_edits_resimulate_and_distance_per_component(
    make_napari_viewer, qtbot, messages
):
    from napari_deeptrack.analysis.realism import THRESHOLDS

    viewer = make_napari_viewer()
    real = viewer.add_image(spot_frames()[0], scale=(0.08, 0.08), units=("um", "um"))
    w = open_widget(viewer, "Simulate")
    w.auto_preview.value = False
    w.layer.value = real
    assert not w.estimates.native.isVisible()
    w.match_btn.native.click()
    qtbot.waitUntil(lambda: w._match_worker is None and w.calibration is not None, timeout=120_000)
    rows = {r["parameter"]: r for r in w.estimates.rows()}
    assert {"pixel_size_um", "polarity", "background", "spot_sigma_px", "spots_per_frame"} <= set(rows)
    assert rows["pixel_size_um"]["value"] == "0.08" and rows["pixel_size_um"]["from"] == "the layer's scale"
    assert rows["polarity"]["value"] == "bright"
    bg = rows["background"]
    assert bg["unit"] == "grey" and bg["\u00b1"] and "median" in bg["from"]
    assert 15 < float(bg["value"]) < 25  # the frames' background is 20
    assert all(r["from"] for r in rows.values())  # every estimate says where it came from
    assert w.estimates.native.isVisibleTo(w.native)
    # edit an estimate as a user: the form, the session's simulation and the preview follow
    cams = [t for t in w.session.simulation.transforms if type(t).__name__ == "Camera"]
    k = 1.0 / float(cams[0].gain) if cams else 1.0  # photons per grey value of the simulation
    w.auto_preview.value = True
    w.last_result = None
    w.estimates.edit("background", "60")
    assert {r["parameter"]: r for r in w.estimates.rows()}["background"]["value"] == "60"
    qtbot.waitUntil(lambda: w._apply_worker is None, timeout=60_000)  # applied off the main thread
    assert w.background.value == pytest.approx(60 * k, rel=1e-6)
    assert {r["parameter"]: r for r in w.estimates.rows()}["background"]["from"] == "set by you"
    assert shown(w.reset_estimates_btn)
    sim_bg = [t for t in w.session.simulation.transforms if type(t).__name__ == "Background"]
    assert float(sim_bg[0].level) == pytest.approx(60 * k, rel=1e-6)
    qtbot.waitUntil(lambda: w.last_result is not None and w._worker is None, timeout=120_000)
    cmp = w.last_result["comparison"]
    assert set(cmp["components"]) == set(THRESHOLDS)
    assert cmp["verdict"] in w.stats_label.value and "ring profile" in w.stats_label.value
    # a value that is not a number is refused and changes nothing
    w.estimates.edit("spot_sigma_px", "wide")
    assert any("Estimate not changed" in m for m, _ in messages)
    assert "spot_sigma_px" not in w.edited_estimates
    w.reset_estimates_btn.native.click()
    qtbot.waitUntil(lambda: w._apply_worker is None, timeout=60_000)
    assert w.edited_estimates == {} and w.background.value == pytest.approx(
        w.calibration.get("background") * k
    )


def test_small_gain_reads_in_scientific_notation(make_napari_viewer):
    from napari_deeptrack import sim

    viewer = make_napari_viewer()
    w = open_widget(viewer, "Simulate")
    w.auto_preview.value = False
    pipe = w.build_pipeline((32, 32))
    w.set_pipeline(pipe.with_(transforms=[*pipe.transforms, sim.Camera(gain=2.3e-5, offset=0.0)]))
    assert w.gain.value == pytest.approx(2.3e-5)
    assert w.gain.native.lineEdit().text() == "2.3e-05"  # was 0.000023 (6 decimals) or 0.00
    w.gain.native.lineEdit().setText("4.5e-7")  # typed by the user
    w.gain.native.interpretText()
    assert w.gain.value == pytest.approx(4.5e-7)


# ---------------------------------------------------------------------------- Apply: the fix
def test_apply_polarity_warning_offers_rematch_in_simulate(make_napari_viewer, qtbot, messages):
    viewer = make_napari_viewer()
    dark = viewer.add_image(
        spot_frames(shape=(64, 64), sign=-1.0, background=400.0, peak=4000.0)[0], name="dark beads"
    )
    apply = open_widget(viewer, "Apply")
    apply.set_bundle(detector_bundle())
    apply.layer.value = dark
    apply.run_btn.native.click()
    qtbot.waitUntil(lambda: apply.worker is None, timeout=120_000)
    assert any("polarity" in warning for warning in apply.last_warnings)
    assert shown(apply.fix_btn) and "polarity" in apply.fix_btn.text and "dark beads" in apply.fix_btn.text
    docks_before = set(viewer.window.dock_widgets)
    apply.fix_btn.native.click()  # no Simulate widget yet: it opens and takes the request
    opened = set(viewer.window.dock_widgets) - docks_before
    assert any("Simulate" in name for name in opened)
    sim = next(viewer.window.dock_widgets[n] for n in opened if "Simulate" in n)
    sim = getattr(sim, "_magic_widget", sim)  # napari may hand back the Qt wrapper of the dock
    qtbot.waitUntil(lambda: apply.session.pending_match is None, timeout=5_000)  # taken on opening
    qtbot.waitUntil(lambda: getattr(sim, "calibration", None) is not None and sim._match_worker is None,
                    timeout=120_000)  # fmt: skip
    assert sim.layer.value is dark
    assert sim.calibration.get("polarity") == "dark"
    assert sim.modality.value == "brightfield"  # dark particles: bright-field simulation
    selected = {i.row() for i in sim.estimates.native.selectionModel().selectedRows()}
    assert sim.estimates.names.index("polarity") in selected  # the estimate the warning was about
    assert "Re-match" not in apply.warnings_label.value and "retrain" in apply.warnings_label.value
    # the fix fixes it: the re-matched simulation has dark particles too (its live preview)
    qtbot.waitUntil(
        lambda: sim.last_result is not None and sim._worker is None and sim._apply_worker is None,
        timeout=120_000,
    )
    assert sim.last_result["comparison"]["components"]["polarity"] == 0.0
    assert sim.last_result["comparison"]["sim"]["polarity"] == "dark"


# ---------------------------------------------------------------------------- Apply: Cancel and tiles
def test_cancel_keeps_the_finished_chunks(make_napari_viewer, qtbot, messages):
    viewer = make_napari_viewer()
    stack = spot_frames(n_frames=30, shape=(64, 64))
    src = viewer.add_image(stack, scale=(1, 0.1, 0.1), units=("s", "um", "um"))
    w = open_widget(viewer, "Apply")
    w.set_bundle(detector_bundle(delay_s=0.1))  # 30 chunks of one frame: about 3 s
    w.layer.value = src
    w.batch_size.value = 1
    w.link.value = True
    w.run_btn.native.click()
    qtbot.waitUntil(lambda: w.progress.value >= 2, timeout=120_000)
    w.cancel_btn.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    done, asked = w.results["cancelled"]
    assert 2 <= done < asked == 30
    layer = viewer.layers["DeepTrack detections"]
    frames = layer.features["frame"].to_numpy()
    assert len(frames) >= 2 * 6 and frames.max() < done  # detections of the finished frames only
    np.testing.assert_allclose(layer.scale[-2:], (0.1, 0.1))
    assert "track_id" in layer.features  # linked over the finished frames, as a full run
    assert f"Cancelled after {done} of 30 frames" in w.status_label.value
    assert any("Apply cancelled" in m for m, _ in messages)
    assert w.session.result is not None and "cancelled" in w.session.result.summary


def test_tile_size_follows_the_memory_estimate_unless_set(make_napari_viewer, qtbot):
    from napari_deeptrack._napari._apply_widget import auto_tile_size
    from napari_deeptrack.io.bundle import Bundle
    from napari_deeptrack.nn.registry import build_model
    from napari_deeptrack.sim.budget import estimate_apply
    from napari_deeptrack.tasks import get_preset

    task = get_preset("particles-2d")
    task.model = dict(TINY_UNET)
    bundle = Bundle(model=build_model(TINY_UNET), task=task, config={"model": TINY_UNET}, path=None)
    whole, note = auto_tile_size(bundle, (1000, 1000), 8, budget=8 * 2**30)
    assert whole >= 1000 and "no tiling" in note
    # a budget that holds the chunk's 8 frames but not the network on 8 whole frames: tiles
    budget = 8 * 1000 * 1000 * 24 + estimate_apply(TINY_UNET, (1, 1000, 1000), 8, 8).bytes // 4
    tile, note = auto_tile_size(bundle, (1000, 1000), 8, budget=budget)
    assert tile < 1000 and f"tiles of {tile} px" in note
    # in the widget: "auto" by default (the note says what was chosen), the user's value otherwise
    viewer = make_napari_viewer()
    src = viewer.add_image(spot_frames(n_frames=2, shape=(96, 96)))
    w = open_widget(viewer, "Apply")
    w.set_bundle(detector_bundle())
    w.layer.value = src
    assert w.tile_size.value == 0 and "auto" in w.tile_size.native.currentText()
    w.run_btn.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert "tile size auto" in w.tile_label.value and w.results["info"]["tile_size"] >= 96
    w.tile_size.value = 64
    w.tile_label.value = ""
    w.run_btn.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert w.tile_label.value == "" and w.results["info"]["tile_size"] == 64


# ---------------------------------------------------------------------------- the helper process
def test_helper_process_runs_jobs_elsewhere_and_falls_back_here(monkeypatch):
    import os

    from napari_deeptrack._napari import _compute

    assert _compute.in_helper_process(os.getpid) != os.getpid()  # ran in the helper process
    assert _compute.in_helper_process(lambda: os.getpid()) == os.getpid()  # not picklable: here
    with pytest.raises(ValueError, match="invalid literal"):  # the job's own error, unchanged
        _compute.in_helper_process(int, "x")
    monkeypatch.setenv(_compute.ENV_NO_PROCESS, "1")
    assert _compute.in_helper_process(os.getpid) == os.getpid()
