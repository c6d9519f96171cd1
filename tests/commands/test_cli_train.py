"""Command line: presets, train (tiny settings), info, --set, --init, --match hook."""

import json
import subprocess
import sys

import pytest

from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import load_bundle, read_bundle_config

TINY = [
    "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--device", "cpu", "--quiet",
    "--set", "training.validation_size=8",
    "--set", 'model={"type": "CNN", "out_features": 4, "channels": [4, 8], "dense": [8], "pool_to": 2}',
]  # fmt: skip


def test_presets_lists_and_prints_editable_task(capsys, tmp_path):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "particles-2d" in out and "particle-localize" in out and "detection" in out
    assert main(["presets", "particle-localize"]) == 0
    text = capsys.readouterr().out
    assert json.loads(text)["type"] == "Task"
    assert main(["presets", "no-such-preset"]) == 2
    assert "available presets" in capsys.readouterr().err


def test_train_info_and_finetune(tmp_path, capsys):
    out = tmp_path / "loc"
    rc = main(["train", "particle-localize", "--out", str(out), "--seed", "3", "--set", "training.lr=3e-3",
               "--set", "pipeline.image_shape=[28,28]", *TINY])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "saved" in capsys.readouterr().out
    cfg = read_bundle_config(out)
    assert cfg["seed"] == 3 and cfg["training"]["lr"] == 3e-3 and cfg["training"]["epochs"] == 1
    assert cfg["input_shape_trained"] == [28, 28] and cfg["model"]["channels"] == [4, 8]
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "particle-localize (localization)" in text and "CNN" in text and "rmse_px" in text
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "particle-localize"
    # a task JSON file and a bundle both work as the task; --init starts from the bundle's weights
    main(["presets", "particle-localize"])
    (tmp_path / "task.json").write_text(capsys.readouterr().out)
    zipped = tmp_path / "tuned.zip"
    rc = main(["train", str(tmp_path / "task.json"), "--out", str(zipped), "--init", str(out), *TINY])
    assert rc == 0, capsys.readouterr().err
    assert load_bundle(zipped).config["training"]["init"] == str(out)
    assert main(["train", str(out), "--out", str(tmp_path / "again"), *TINY]) == 0


def test_train_reports_bad_settings(tmp_path, capsys):
    rc = main(["train", "particle-localize", "--out", str(tmp_path / "x"), "--set", "training.lrr=1", *TINY])
    assert rc == 2
    assert "unknown setting(s) ['lrr']" in capsys.readouterr().err
    rc = main(["train", "particle-localize", "--out", str(tmp_path / "x"), "--set", "novalue", *TINY])
    assert rc == 2 and "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_match_hook(tmp_path, capsys):
    import numpy as np

    img = tmp_path / "real.npy"
    np.save(img, np.random.default_rng(0).poisson(20.0, (40, 40)).astype(np.float32))
    rc = main(["train", "particle-localize", "--out", str(tmp_path / "m"), *TINY,
               "--match", str(img), "--pixel-size-um", "0.08"])  # fmt: skip
    assert rc == 0
    assert "calibration (point-emitters)" in capsys.readouterr().err
    cfg = read_bundle_config(tmp_path / "m")
    assert cfg["pixel_size_um"] == 0.08


def test_console_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "napari_deeptrack.cli", "presets"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "particles-2d" in out.stdout


@pytest.mark.parametrize("argv", [["train", "--help"], ["info", "--help"]])
def test_help_documents_options(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    if argv[0] == "train":
        for opt in ("--epochs", "--steps-per-epoch", "--batch-size", "--device", "--seed", "--init", "--set",
                    "--match", "training.lr=3e-4"):  # fmt: skip
            assert opt in text


def test_info_flags_overfitting():
    from napari_deeptrack.commands.info import overfitting_note

    h = {
        "epoch": [0, 1, 2, 3],
        "train_loss": [1.0, 0.8, 0.6, 0.4],
        "val_loss": [0.9, 0.7, 0.8, 0.9],
        "best_epoch": 1,
    }
    assert "overfitting" in overfitting_note(h)
    h["val_loss"] = [0.9, 0.7, 0.69, 0.68]
    h["best_epoch"] = 3
    assert overfitting_note(h) is None


def test_train_time_budget(tmp_path, capsys):
    out = str(tmp_path / "m")
    rc = main(["train", "particle-localize", "--out", out, "--max-minutes", "0.00001", *TINY[2:]])  # 10 ep.
    assert rc == 0
    assert "time_limit" in capsys.readouterr().out  # cut short, the first epoch still validated and saved
    assert load_bundle(tmp_path / "m").task.name == "particle-localize"
    bad = ["train", "particle-localize", "--out", str(tmp_path / "n"), "--max-minutes", "-1", *TINY]
    assert main(bad) != 0
