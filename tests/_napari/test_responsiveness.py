"""Responsiveness numbers for docs/user_guide.md (issue 11): Match to layer on a real 10 x 424 x 640
bright-field stack (helper process), and the threshold slider with 10,000 points (handler and repaint).

Each test prints one JSON line (``pytest -s``) and asserts the limit the guide promises.
"""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BULK = Path(__file__).resolve().parents[3] / "shared" / "data" / "bulk_water_dev" / "frames"


def baseline_gap(qtbot, seconds=1.0) -> float:
    """The largest event-loop gap with nothing to do (the machine's own scheduling noise)."""
    timer, ticks = _ticks()
    timer.start()
    qtbot.wait(int(seconds * 1000))
    timer.stop()
    return float(np.diff(ticks).max()) if len(ticks) > 2 else 0.0


def _ticks():
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    return timer, ticks


@pytest.mark.slow
@pytest.mark.skipif(not BULK.exists(), reason="shared bulk-water data not present")
def test_match_to_layer_on_a_real_stack_runs_off_the_main_thread(make_napari_viewer, qtbot):
    from skimage.io import imread

    frames = np.stack([imread(p)[..., 1] for p in sorted(BULK.glob("*.png"))]).astype(np.float32)
    assert frames.shape == (10, 424, 640)
    viewer = make_napari_viewer()
    layer = viewer.add_image(frames, scale=(1, 0.351, 0.351), units=("s", "um", "um"))
    _, w = viewer.window.add_plugin_dock_widget("napari-deeptrack", "Simulate")
    w.auto_preview.value = False
    w.layer.value = layer
    noise = baseline_gap(qtbot)
    timer, ticks = _ticks()
    cpu = []  # the main thread's CPU time at every tick: what our code spends on the event loop
    timer.timeout.connect(lambda: cpu.append(time.thread_time()))
    timer.start()
    t0, c0 = time.perf_counter(), time.thread_time()
    w.match_btn.native.click()
    click_s = time.thread_time() - c0
    qtbot.waitUntil(lambda: w._match_worker is None, timeout=400_000)
    match_s = time.perf_counter() - t0
    qtbot.wait(500)  # the form filled, the preview started
    timer.stop()
    gaps, cpu_gaps = np.diff(ticks), np.diff(cpu)
    noise = max(noise, baseline_gap(qtbot))
    print(
        json.dumps(
            {
                "what": "match_to_layer_10x424x640",
                "click_cpu_ms": round(click_s * 1000, 1),
                "idle_baseline_gap_ms": round(noise * 1000, 1),
                "match_s": round(match_s, 2),
                "max_gap_ms": round(float(gaps.max()) * 1000, 1),
                "gaps_over_100ms": int((gaps > 0.1).sum()),
                "max_main_thread_cpu_between_ticks_ms": round(float(cpu_gaps.max()) * 1000, 1),
            }
        )
    )
    assert w.modality.value == "brightfield" and w.particle.value != "point"  # dark particles
    assert w.calibration.family == "brightfield"  # measured as bright-field spheres (rings, radius)
    assert click_s < 0.1
    # was 11-12 s on the main thread, then 71-135 ms gaps in a worker thread (scipy.ndimage holding the
    # GIL). Now the calibration runs in a helper process and the main thread only fills the form: the
    # main thread never works 100 ms between two ticks. Wall-clock gaps add the machine's scheduling
    # noise (a shared 2-core machine: load 4-14 while measured), hence the looser bound on them.
    assert cpu_gaps.max() < 0.1, f"the main thread worked {cpu_gaps.max() * 1000:.0f} ms without a tick"
    assert gaps.max() < 0.25 + noise, f"the event loop stalled {gaps.max() * 1000:.0f} ms during Match"


def test_threshold_slider_with_10000_points_handler_and_repaint(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_deeptrack._napari._threshold import DetectionCache

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    n = 10_000
    table = pd.DataFrame(
        {
            "frame": rng.integers(0, 100, n),
            "y": rng.uniform(0, 512, n),
            "x": rng.uniform(0, 512, n),
            "probability": rng.uniform(0, 1, n),
        }
    )
    viewer.add_image(np.zeros((100, 512, 512), np.uint8))
    _, w = viewer.window.add_plugin_dock_widget("napari-deeptrack", "Apply")
    w.cache = DetectionCache(table, 100)
    w._points_layer = viewer.add_points(table[["frame", "y", "x"]].to_numpy(), features=table)
    app = QApplication.instance()
    app.processEvents()
    noise = baseline_gap(qtbot)
    handler, total = [], []
    for thr in (0.2, 0.5, 0.8, 0.3, 0.6):
        t0 = time.thread_time()  # CPU time of the main thread: what napari cannot use meanwhile
        w.threshold.value = thr
        t1 = time.thread_time()
        app.processEvents()  # the canvas update the change schedules
        t2 = time.thread_time()
        handler.append(t1 - t0)
        total.append(t2 - t0)
    print(
        json.dumps(
            {
                "what": "threshold_slider_10000_points",
                "handler_ms_max": round(max(handler) * 1000, 1),
                "handler_and_repaint_cpu_ms_max": round(max(total) * 1000, 1),
                "idle_baseline_gap_ms": round(noise * 1000, 1),
            }
        )
    )
    assert max(handler) < 0.05 and max(total) < 0.1
