"""Annotate a few: fine-tune a starter on annotated frames, held-back scoring, threshold, suggestions."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import load_bundle
from napari_deeptrack.io.starters import resolve_bundle
from napari_deeptrack.io.tiff import write_tiff
from napari_deeptrack.train.few_shot import annotate_few, split_frames, suggest_regions


def _movie(n=4, shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    frames, rows = [], []
    for f in range(n):
        img = np.full(shape, 10.0)
        for _ in range(5):
            cy, cx = rng.uniform(6, shape[0] - 6), rng.uniform(6, shape[1] - 6)
            img += 300.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2**2))
            rows.append((f, cy, cx))
        frames.append(rng.poisson(img))
    return np.asarray(frames, np.float32), pd.DataFrame(rows, columns=["frame", "y", "x"])


def test_split_keeps_heldout_frames_apart_and_refuses_bad_annotations():
    t = pd.DataFrame({"frame": [0, 1, 2, 3, 4], "y": 1.0, "x": 1.0})
    train, held = split_frames(t, 5, holdout=3)
    assert held and not set(train) & set(held) and sorted(train + held) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="empty"):
        split_frames(t.iloc[:0], 5)
    with pytest.raises(ValueError, match="two frames"):
        split_frames(t.iloc[:1], 5)
    with pytest.raises(ValueError, match="outside"):
        split_frames(t, 3)


def test_annotate_few_scores_before_and_after_on_heldout_frames(tmp_path, one_torch_thread):
    frames, pts = _movie()
    init = resolve_bundle("particles-2d")
    res = annotate_few(init, frames, pts, tmp_path / "ft.zip", steps=6, batch_size=4)
    assert set(res["heldout_frames"]).isdisjoint(res["train_frames"])
    assert res["n_heldout_objects"] == 5 * len(res["heldout_frames"])
    for key in ("before", "after", "after_tuned"):
        assert 0.0 <= res[key]["f1"] <= 1.0 and res[key]["n_truth"] == res["n_heldout_objects"]
    assert res["before"]["f1"] > 0.5  # the starter already finds bright spots
    b = load_bundle(tmp_path / "ft.zip")
    assert b.task.postprocess["threshold"] == res["threshold"] and "held-back" in b.config["notes"]
    bad = pts.assign(y=pts.y + 100)
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        annotate_few(resolve_bundle("particles-2d"), frames, bad, steps=2)


def test_suggestions_point_at_what_the_model_is_unsure_about():
    frames, _ = _movie(n=1, shape=(128, 128))
    img = frames[0].copy()
    img[70:120, 10:60] = 10.0 + 150.0 * (np.add.outer(np.arange(50), np.arange(50)) % 7 < 2)  # odd texture
    s = suggest_regions(load_bundle(resolve_bundle("particles-2d")), img, n=4, tile_px=64)
    assert list(s.columns) == ["frame", "y0", "x0", "y1", "x1", "disagreement"]
    assert (s.y0.iloc[0], s.x0.iloc[0]) == (64, 0)  # the tile holding the unfamiliar texture comes first
    assert s.disagreement.is_monotonic_decreasing


def test_cli_train_with_annotations(tmp_path, capsys, one_torch_thread):
    frames, pts = _movie()
    img = write_tiff(tmp_path / "m.tif", frames.astype(np.uint16))
    pts.to_csv(tmp_path / "p.csv", index=False)
    rc = main(["train", "particles-2d", str(img), "--annotations", str(tmp_path / "p.csv"), "--out",
               str(tmp_path / "ft.zip"), "--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "4",
               "--suggest", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert "F1" in captured.err and len(out["suggest_next"]) == 2 and out["after_tuned"]["f1"] >= 0


def test_annotate_few_refuses_a_fluorescence_starter_on_bright_field_frames():
    frames, pts = _movie()
    dark = 400.0 - frames  # dark spots on a bright background
    with pytest.raises(ValueError, match="bright-field"):
        annotate_few(resolve_bundle("particles-2d"), dark, pts, steps=2)


def test_mixed_batches_real_fraction_and_nuclei_match_distance():
    from napari_deeptrack.tasks import get_preset
    from napari_deeptrack.train.few_shot import match_distance_px
    from napari_deeptrack.train.finetune import mixed_batches

    task = get_preset("particles-2d")
    m = mixed_batches(task, np.zeros((1, 64, 64), np.float32), np.zeros((1, 1, 64, 64), np.float32), 2, 8,
                      real_fraction=0.75)  # fmt: skip
    assert sum(m.is_real(i) for i in range(8)) == 6 and m.is_real(0)
    with pytest.raises(ValueError, match="real_fraction"):
        mixed_batches(task, np.zeros((1, 8, 8), np.float32), np.zeros((1, 1, 8, 8)), 2, 8, real_fraction=0)
    assert match_distance_px(get_preset("cells-count")) == 5.0  # half the density sigma (10 px)
    assert match_distance_px(task) == 2.0  # the task's own
