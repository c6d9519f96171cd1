"""Screenshots of the plugin at work, made the way a user works, saved to docs/images/.

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshots.py [--steps 40]

A 1400 x 900 napari window; the sample data set *Fluorescent particles movie + ground truth* opened
from File > Open Sample; every widget opened from Plugins > DeepTrack (``add_plugin_dock_widget``,
so each gets napari's proxy of the viewer, as for a user) and driven through its buttons:

1. Simulate: Match to layer (the estimates table), Preview, "compare side by side" with the
   sim-vs-real distance per component.
2. Train: the particles-2d preset on the matched simulation (a few epochs).
3. Apply: the model just trained on the movie (detections coloured by probability, tracks, counts).
4. Review: a corrected copy (here: the ground truth) scored against the model and trackpy.
5. Diffusion (MSD): the ensemble MSD of the tracks and the diffusion coefficient.
6. Apply on a dark copy of the movie: the coverage warning offers its fix ("Re-match polarity",
   apply_fix.png); the fix matches the dark layer in Simulate as bright field (simulate_rematch.png).

``--only simulate.png,apply_fix.png,simulate_rematch.png`` saves only those (the other steps
still run, unsaved).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
PLUGIN = "napari-deeptrack"


def wait(app, cond, timeout=900.0):
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("worker did not finish")
    settle(app)


def settle(app, n=30):
    for _ in range(n):
        app.processEvents()
        time.sleep(0.01)


ONLY: set[str] = set()


def shot(viewer, app, name):
    if ONLY and name not in ONLY:
        return
    settle(app)
    OUT.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print("saved", OUT / name)


def open_widget(viewer, name):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    dock.show()
    dock.raise_()
    return dock, widget


def main() -> None:
    import napari
    import numpy as np
    import torch
    from qtpy.QtWidgets import QApplication

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--only", default="", help="comma-separated image names to save (default: all)")
    args = p.parse_args()
    ONLY.update(n.strip() for n in args.only.split(",") if n.strip())
    torch.manual_seed(0)
    torch.set_num_threads(1)
    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    image, truth = viewer.open_sample(PLUGIN, "particle_movie")
    truth.visible = False
    settle(app)

    # 1. Simulate
    sim_dock, sim = open_widget(viewer, "Simulate")
    sim.auto_preview.value = False
    sim.layer.value = image
    sim.match_btn.native.click()
    wait(app, lambda: sim._match_worker is None)
    sim.preview_btn.native.click()
    wait(app, lambda: sim.last_result is not None and sim._worker is None)
    sim.compare.value = True
    viewer.reset_view()
    sim.scroll_area.verticalScrollBar().setValue(0)
    shot(viewer, app, "simulate.png")
    sim.compare.value = False  # restores the grid and the camera
    viewer.layers["DeepTrack simulation"].visible = False

    # 2. Train on the matched simulation
    _, train = open_widget(viewer, "Train")
    train.preset.value = "particles-2d"
    assert train.use_simulation.value, "the matched simulation should be ticked"
    train.epochs.value, train.steps.value, train.batch_size.value = args.epochs, args.steps, 8
    train.validation_size.value = 32
    train.device.value = "cpu"
    train.train_btn.native.click()
    wait(app, lambda: train.worker is None)
    shot(viewer, app, "train.png")

    # 3. Apply the model just trained
    _, apply = open_widget(viewer, "Apply")
    apply.layer.value = image
    apply.run_btn.native.click()
    wait(app, lambda: apply.worker is None)
    apply.threshold.value = 0.6
    viewer.dims.set_current_step(0, 5)
    viewer.reset_view()
    shot(viewer, app, "apply.png")

    # 4. Review: the ground truth stands in for the user's corrections
    _, review = open_widget(viewer, "Review")
    review.copy_btn.native.click()
    settle(app)
    review.reference.value.data = np.asarray(truth.data)
    review.eval_btn.native.click()
    shot(viewer, app, "review.png")

    # 5. Diffusion of the tracks
    _, msd = open_widget(viewer, "Diffusion (MSD)")
    choices = [c for c in msd.tracks.choices if getattr(c, "name", "") == "DeepTrack tracks"]
    if choices:
        msd.tracks.value = choices[0]
        msd.frame_interval_s.value = 0.05  # the sample movie's frame interval (its time axis has no unit)
        msd.run_btn.native.click()
        wait(app, lambda: msd.worker is None)
    shot(viewer, app, "diffusion.png")

    # 6. A dark copy of the movie: the coverage warning and its fix
    for layer in list(viewer.layers):
        layer.visible = False
    data = np.asarray(image.data, dtype=np.float32)
    dark = viewer.add_image(float(data.max()) - data, name="dark copy", scale=image.scale, units=image.units)
    apply_dock, _ = open_widget(viewer, "Apply")
    apply.layer.value = dark
    apply.run_btn.native.click()
    wait(app, lambda: apply.worker is None)
    apply.scroll_area.ensureWidgetVisible(apply.fix_btn.native)
    viewer.reset_view()
    shot(viewer, app, "apply_fix.png")
    apply.fix_btn.native.click()
    wait(app, lambda: sim._match_worker is None and sim.calibration.family == "brightfield")
    sim_dock.show()
    sim_dock.raise_()
    sim.preview_btn.native.click()
    wait(app, lambda: sim._worker is None and sim._apply_worker is None)
    for layer in viewer.layers:  # the dark copy and its simulation, side by side
        layer.visible = layer.name in ("dark copy", "DeepTrack simulation")
    sim.compare.value = True
    viewer.reset_view()
    sim.scroll_area.verticalScrollBar().setValue(0)
    shot(viewer, app, "simulate_rematch.png")
    sim.compare.value = False
    viewer.close()


if __name__ == "__main__":
    main()
