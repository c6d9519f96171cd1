"""One prediction path: the Apply widget and ``napari-deeptrack apply`` give the same detections and
tracks on the same stack, threshold and search range (issue 16, bug 3)."""

import json

import numpy as np
import pandas as pd
import torch

from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import save_bundle
from napari_deeptrack.io.tables import read_results_csv
from napari_deeptrack.io.tiff import write_tiff
from napari_deeptrack.nn import build_model
from napari_deeptrack.sim import DiskMask, Fluorescence, Particles, Pipeline, PointParticle
from napari_deeptrack.tasks.base import Task

THRESHOLD = 0.5
SEARCH_RANGE_PX = 4.0


def _detector_bundle(path):
    """A saved detection bundle whose network is ``sigmoid(8 x - 4)`` of the (unnormalised) input."""
    pipe = Pipeline(
        image_shape=(48, 48),
        particles=[Particles(PointParticle(), count=3)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"t": DiskMask(radius_px=3)},
    )
    task = Task(name="parity", kind="detection", description="test", pipeline=pipe, target="t",
                model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 0, "base_channels": 2,
                       "norm": "none", "convs_per_block": 1},
                input_normalization={"mode": "none"},
                postprocess={"activation": "sigmoid", "threshold": THRESHOLD})  # fmt: skip
    model = build_model(task.model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            conv.bias.zero_()
            k = conv.weight.shape[-1] // 2
            conv.weight[0, 0, k, k] = 1.0
        convs[-1].weight[0, 0, 0, 0] = 8.0
        convs[-1].bias[0] = -4.0
    return save_bundle(path, model.eval(), task)


def _stack():
    """Eight 64x64 frames of disks drifting 1.5 px per frame. One bright particle dims below the
    threshold in frame 3 (its track must split: linking memory 0); a faint one (probability ~0.4) is
    below the threshold in every frame and passes close to a bright one (it must never be linked)."""
    yy, xx = np.mgrid[:64, :64]
    frames = []
    for t in range(8):
        img = np.zeros((64, 64), np.float32)
        parts = [(12 + 1.5 * t, 12, 1.2), (40, 10 + 1.5 * t, 0.0 if t == 3 else 1.0),
                 (50 - 1.5 * t, 50, 0.8), (50 - 1.5 * t, 41, 0.45)]  # fmt: skip
        for y, x, amp in parts:
            img += amp * ((yy - y) ** 2 + (xx - x) ** 2 <= 9)
        frames.append(img)
    return np.asarray(frames)


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    cols = ["frame", "y", "x", "probability", "area", "track_id"]
    return table[cols].sort_values(["frame", "y", "x"]).reset_index(drop=True)


def test_widget_and_cli_give_the_same_detections_and_tracks(make_napari_viewer, qtbot, tmp_path, capsys):
    bundle_path = _detector_bundle(tmp_path / "bundle")
    stack = _stack()
    write_tiff(tmp_path / "stack.tif", stack)
    out = tmp_path / "cli.csv"
    rc = main(["apply", str(bundle_path), str(tmp_path / "stack.tif"), "--out", str(out), "--link",
               "--threshold", str(THRESHOLD), "--search-range-px", str(SEARCH_RANGE_PX)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    cli = _sorted(read_results_csv(out))
    # the faint particle is never detected; the dimmed one is missing in frame 3 and its track splits
    assert len(cli) == 8 * 3 - 1 and summary["tracks"] == 4

    viewer = make_napari_viewer()
    src = viewer.add_image(stack, name="stack")
    _, w = viewer.window.add_plugin_dock_widget("napari-deeptrack", "Apply")
    w.bundle_path.value = str(bundle_path)  # loads the bundle as a user choosing the file would
    assert w.bundle is not None
    w.layer.value = src
    w.link.value = True
    w.search_range.value = SEARCH_RANGE_PX
    w.threshold.value = THRESHOLD
    w.batch_size.value = 3  # chunks of 3 frames: linking happens after merging them
    w.run_btn.clicked.emit()
    qtbot.waitUntil(lambda: w.worker is None and "DeepTrack tracks" in viewer.layers, timeout=60_000)

    points = viewer.layers["DeepTrack detections"]
    gui = points.features.copy()
    gui["y"], gui["x"] = points.data[:, 1], points.data[:, 2]
    gui = _sorted(gui)
    pd.testing.assert_frame_equal(gui, cli, check_dtype=False, atol=1e-6)
    tracks = viewer.layers["DeepTrack tracks"].data  # track_id, frame, y, x
    cli_tracks = cli[["track_id", "frame", "y", "x"]].sort_values(["track_id", "frame"]).to_numpy(float)
    np.testing.assert_allclose(tracks[np.lexsort((tracks[:, 1], tracks[:, 0]))], cli_tracks, atol=1e-6)

    # moving the slider up hides points and their links together
    w.threshold.value = 0.95  # above the dimmest particle's probability (0.92)
    shown = w.cache.shown_table(0.95)
    assert 0 < len(shown) < len(cli) and int(points.shown.sum()) == len(shown)
    assert len(viewer.layers["DeepTrack tracks"].data) == len(shown)
