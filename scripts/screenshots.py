"""Screenshots of the four dock widgets at work, saved to docs/images/ (run under a display or Xvfb).

    xvfb-run -a python scripts/screenshots.py [--steps 40]

1. Simulate: the simulated particle movie is the "real" layer; Match to layer + preview side by side.
2. Train: the particles-2d preset trained for a few epochs (loss curves, progress, ETA).
3. Apply: the just-trained model on the movie (detections coloured by probability, tracks, counts).
4. Review: a corrected copy of the detections scored against the model and trackpy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def wait(app, cond, timeout=600.0):
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("worker did not finish")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def dock(viewer, widget, name, first=False):
    widget.native.setMaximumWidth(470)
    viewer.window.add_dock_widget(widget, name=name, area="right", tabify=not first)


def shot(viewer, app, name, reset=True):
    if reset:
        viewer.reset_view()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.01)
    OUT.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print("saved", OUT / name)


def main() -> None:
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_deeptrack._napari._apply_widget import ApplyWidget
    from napari_deeptrack._napari._review_widget import ReviewWidget
    from napari_deeptrack._napari._sample_data import particle_movie
    from napari_deeptrack._napari._simulate_widget import SimulateWidget
    from napari_deeptrack._napari._train_widget import TrainWidget

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    torch.manual_seed(0)
    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    (img, ik, _), (pts, pk, _) = particle_movie(n_frames=10, shape=(96, 96))
    image = viewer.add_image(img, **ik)

    sim = SimulateWidget(viewer)
    dock(viewer, sim, "Simulate", first=True)
    sim.auto_preview.value = False
    sim.layer.value = image
    sim.match_to_layer()
    sim.preview()
    wait(app, lambda: sim.last_result is not None and sim._worker is None)
    shot(viewer, app, "simulate.png")

    sim_layer = viewer.layers["DeepTrack simulation"]
    viewer.layers.remove(sim_layer)
    sim._apply_layout()
    from napari_deeptrack._napari._simulate_widget import _grid

    _grid(viewer).enabled = False
    viewer.add_points(pts, **pk).visible = False
    train = TrainWidget(viewer)
    dock(viewer, train, "Train")
    train.preset.value = "particles-2d"
    train.epochs.value, train.steps.value, train.batch_size.value = args.epochs, args.steps, 8
    train.validation_size.value = 32
    train.device.value = "cpu"
    train.start_training()
    wait(app, lambda: train.worker is None)
    shot(viewer, app, "train.png")

    apply = ApplyWidget(viewer)
    dock(viewer, apply, "Apply")
    apply.layer.value = image
    apply.source.value = "model from the Train widget"
    apply.run()
    wait(app, lambda: apply.worker is None)
    viewer.dims.set_current_step(0, 3)
    shot(viewer, app, "apply.png")

    review = ReviewWidget(viewer)
    dock(viewer, review, "Review")
    review.image.value = image
    review.prediction.value = viewer.layers["DeepTrack detections"]
    review.copy_for_correction()
    # stand-in for a user's corrections: the simulation's ground truth
    corrected = review.reference.value
    corrected.data = np.asarray(pts)
    review.evaluate()
    shot(viewer, app, "review.png")
    viewer.close()


if __name__ == "__main__":
    main()
