"""Command line: self-supervised training from a --crop of the user's image, then apply and info."""

import json

import numpy as np

from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import read_bundle_config
from napari_deeptrack.io.tiff import write_tiff

SMALL = [
    "--epochs", "3", "--steps-per-epoch", "15", "--seed", "0", "--quiet",
    "--set", "model.channels=[8]", "--set", "model.pooled_channels=[16,16]",
    "--set", "training.batch_size=16",
]  # fmt: skip


def _frames(centres_per_frame, shape=(64, 64), seed=0):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for centres in centres_per_frame:
        img = np.full(shape, 20.0)
        for cy, cx in centres:
            img += 200.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
        out.append(rng.poisson(img))
    return np.asarray(out, dtype=np.uint16)


def test_train_from_a_crop_then_apply(tmp_path, capsys, one_torch_thread):
    truth = [[(20.0, 22.0), (45.5, 40.2)], [(21.0, 23.0), (44.5, 41.2), (10.3, 50.1)]]
    img = write_tiff(tmp_path / "movie.tif", _frames(truth))
    out = tmp_path / "ss.zip"
    rc = main(
        ["train", "particles-selfsupervised", str(img), "--crop", "0,8,10,32,34", "--out", str(out), *SMALL]
    )
    assert rc == 0, capsys.readouterr().err
    assert "consistency_px" in capsys.readouterr().out
    cfg = read_bundle_config(out)
    assert cfg["training"]["crops"] == [[0, 8, 10, 32, 34]] and cfg["postprocess"]["reference_mass"] > 0
    assert main(["info", str(out)]) == 0
    capsys.readouterr()
    csv = tmp_path / "det.csv"
    assert main(["apply", str(out), str(img), "--out", str(csv), "--threshold", "0.3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    import pandas as pd

    det = pd.read_csv(csv)
    assert summary["detections"] == len(det) and {"mass", "spread"} <= set(det.columns)
    for f, centres in enumerate(truth):
        d = det[det.frame == f][["y", "x"]].to_numpy()
        dist = np.linalg.norm(d[:, None] - np.asarray(centres)[None], axis=-1)
        assert len(d) >= len(centres) and (dist.min(0) < 1.5).all()


def test_bad_crops_and_missing_inputs_get_clear_errors(tmp_path, capsys):
    img = write_tiff(tmp_path / "one.tif", _frames([[(20.0, 22.0), (26.0, 30.0)]]))
    out = str(tmp_path / "b.zip")
    assert main(["train", "particles-selfsupervised", "--out", out, *SMALL]) == 2
    assert "--crop" in capsys.readouterr().err
    assert main(["train", "particles-selfsupervised", str(img), "--crop", "50,50,80,80", "--out", out]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["train", "particles-selfsupervised", str(img), "--crop", "40,0,64,20", "--out", out]) == 2
    assert "no object" in capsys.readouterr().err
    assert main(["train", "particles-selfsupervised", str(img), "--crop", "10,12,36,40", "--out", out]) == 2
    assert "2 objects" in capsys.readouterr().err
    assert main(["train", "particle-localize", str(img), "--crop", "10,12,36,40", "--out", out]) == 2
    assert "self-supervised" in capsys.readouterr().err
