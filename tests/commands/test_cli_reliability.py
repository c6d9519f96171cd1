"""The command-line cases of issue 14 as regression tests: every failure is one clear line and exit code
2 (a bug: one line, a logged traceback, exit 3), nothing is written before validation passes, nothing a
user owns is destroyed, outputs are atomic, and memory is estimated before allocating."""

import json
import os
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import load_bundle, save_bundle
from napari_deeptrack.io.tiff import write_tiff
from napari_deeptrack.nn import build_model
from napari_deeptrack.sim import Fluorescence, Particles, Pipeline, PointParticle, to_json
from napari_deeptrack.sim.targets import DiskMask
from napari_deeptrack.tasks.base import Task

torch.set_num_threads(1)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _clean(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) <= 3


@pytest.fixture(scope="module")
def detection_bundle(tmp_path_factory):
    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[Particles(PointParticle(), count=2)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"mask": DiskMask(radius_px=2)},
    )
    task = Task(
        name="t-detect", kind="detection", description="test", pipeline=pipe, target="mask",
        model={"type": "UNet", "depth": 1, "base_channels": 2, "norm": "none", "convs_per_block": 1},
        input_normalization={"mode": "none"}, postprocess={"threshold": 0.5},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("b") / "det.zip"
    save_bundle(path, build_model(task.model), task)
    return path


@pytest.fixture
def stack(tmp_path):
    path = tmp_path / "stack.tif"
    write_tiff(path, np.random.default_rng(0).poisson(10, (3, 32, 32)).astype(np.float32))
    return path


# ---------------------------------------------------------------------------- data loss
def test_train_out_refuses_a_user_folder_before_training(capsys, tmp_path):
    user = tmp_path / "analysis"
    (user / "sub").mkdir(parents=True)
    (user / "config.json").write_text('{"mine": true}')
    (user / "notes.txt").write_text("precious")
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "particle-localize", "--out", user, "--quiet")
    assert code == 2 and _clean(err) and "holding other files" in err
    assert time.perf_counter() - t0 < 20  # refused before any simulation or training
    assert (user / "notes.txt").read_text() == "precious" and (user / "sub").is_dir()
    assert (user / "config.json").read_text() == '{"mine": true}'


def test_train_out_refuses_a_foreign_zip(capsys, tmp_path):
    foreign = tmp_path / "photos.zip"
    import zipfile

    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("config.json", '{"camera": 1}')
    before = foreign.read_bytes()
    code, _, err = run_cli(capsys, "train", "particle-localize", "--out", foreign, "--quiet")
    assert code == 2 and "not a napari-deeptrack bundle zip" in err
    assert foreign.read_bytes() == before


def test_folder_bundle_replaced_without_a_window_and_recovered_after_a_crash(tmp_path, detection_bundle):
    b = load_bundle(detection_bundle)
    folder = tmp_path / "model"
    save_bundle(folder, b.model, b.task, notes="first")
    save_bundle(folder, b.model, b.task, notes="second")
    assert json.loads((folder / "config.json").read_text())["notes"] == "second"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp / old folders left
    # a crash between the two renames of the fallback path leaves .model.old-*: the next load recovers
    os.rename(folder, tmp_path / ".model.old-deadbeef")
    assert load_bundle(folder).config["notes"] == "second"


def test_apply_validates_every_output_before_writing(capsys, tmp_path, detection_bundle, stack):
    out = tmp_path / "res.csv"
    code, _, err = run_cli(
        capsys, "apply", detection_bundle, stack, "--out", out, "--labels-out", tmp_path / "no" / "x.png"
    )
    assert code == 2 and "--labels-out" in err and not out.exists()
    code, _, err = run_cli(
        capsys, "apply", detection_bundle, stack, "--out", out, "--labels-out", tmp_path / "l.tif"
    )
    assert code == 2 and "no instance labels" in err and not out.exists()
    code, _, err = run_cli(capsys, "apply", detection_bundle, stack, "--out", out, "--device", "bogus")
    assert code == 2 and "device" in err and not out.exists()


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "keep.tif"
    write_tiff(path, np.ones((4, 4), np.float32))
    before = path.read_bytes()

    def failing(file, data, **kw):
        with open(file, "wb") as fh:
            fh.write(b"II*\0partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", failing)
    with pytest.raises(OSError):
        write_tiff(path, np.zeros((4, 4), np.float32))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


# ---------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize(
    "argv, expect",
    [
        (["simulate", "particles-2d", "--frames", "100000000", "--out", "{tmp}/s.tif"], "--frames"),
        (["simulate", "particles-2d", "--frames", "0", "--out", "{tmp}/s.tif"], "--frames"),
        (["simulate", "particles-2d", "--out", "{tmp}/s.tif", "--device", "bogus"], "device"),
        (["simulate", "particles-2d", "--out", "{tmp}"], "folder"),
        (["simulate", "{tmp}/deep.json", "--out", "{tmp}/s.tif"], "nested"),
        (["simulate", "{tmp}/derived.json", "--out", "{tmp}/s.tif"], "Derived"),
        (["simulate", "{tmp}/broken.json", "--out", "{tmp}/s.tif"], "JSON"),
        (["train", "particles-2d", "--out", "{tmp}/m.zip", "--lr", "inf"], "lr"),
        (["train", "particles-2d", "--out", "{tmp}/m.zip", "--lr", "1e6"], "lr"),
        (["train", "particles-2d", "--out", "{tmp}/m.zip", "--set", "model.depth=100"], "depth"),
        (["train", "particles-2d", "--out", "{tmp}/m.zip", "--set", "model.base_channels=1000000",
          "--set", "model.max_channels=10000000"], "base_channels"),
        (["train", "particles-2d", "--out", "{tmp}/m.zip", "--device", "bogus"], "device"),
        (["evaluate", "{tmp}/bad.csv", "{tmp}/bad.csv"], "'y'"),
        (["evaluate", "{tmp}", "{tmp}/bad.csv"], "folder"),
        (["info", "{tmp}/bad.csv"], "bundle"),
        (["apply", "{tmp}/bad.csv", "{tmp}/bad.png", "--out", "{tmp}/r.csv"], "bundle"),
    ],
)  # fmt: skip
def test_bad_input_gives_one_clear_line(capsys, tmp_path, argv, expect):
    (tmp_path / "deep.json").write_text("[" * 5000 + "]" * 5000)
    pipe = Pipeline((16, 16), [Particles(PointParticle(), count=1)], Fluorescence(NA=1.2, pixel_size_um=0.1))
    cfg = json.loads(to_json(pipe))
    cfg["particles"][0]["intensity"] = {"type": "Derived", "expr": "9**9**9"}
    (tmp_path / "derived.json").write_text(json.dumps(cfg))
    (tmp_path / "broken.json").write_text('{"type": "Pipeline", ')
    (tmp_path / "bad.csv").write_text("frame,y,x\n0,abc,1\n")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    t0 = time.perf_counter()
    code, _, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert time.perf_counter() - t0 < 30  # no hang
    assert code == 2, err
    assert _clean(err) and expect in err, err
    assert not (tmp_path / "s.tif").exists() and not (tmp_path / "m.zip").exists()


def test_unreadable_images_are_clear_errors(capsys, tmp_path, detection_bundle):
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    trunc = tmp_path / "trunc.tif"
    tifffile.imwrite(trunc, np.ones((8, 32, 32), np.float32), imagej=True)
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    cplx = tmp_path / "c.tif"
    tifffile.imwrite(cplx, np.ones((2, 8, 8), np.complex64))
    for image, expect in ((bad_png, "cannot read"), (trunc, "truncated"), (cplx, "complex")):
        code, _, err = run_cli(capsys, "apply", detection_bundle, image, "--out", tmp_path / "r.csv")
        assert code == 2 and _clean(err) and expect in err, err
    code, out, err = run_cli(
        capsys, "apply", detection_bundle, trunc, "--out", tmp_path / "r.csv", "--allow-partial"
    )
    assert code == 0 and "PARTIAL FILE" in err and json.loads(out)["frames"] == 4


def test_nan_pixels_are_reported_by_frame_and_replaced(tmp_path):
    from napari_deeptrack.io.images import read_images

    data = np.ones((3, 20, 20), np.float32)
    data[1, :10, :10] = np.nan
    data[2, 0, 0] = np.inf
    write_tiff(tmp_path / "n.tif", data)
    stack, meta = read_images(tmp_path / "n.tif")
    assert meta["nonfinite"] == {1: 100, 2: 1} and np.isfinite(stack).all()
    assert any("frame 1: 100" in n for n in meta["notes"])
    with pytest.raises(ValueError, match="frame 1: 100"):
        read_images(tmp_path / "n.tif", nonfinite="error")


def test_an_unexpected_error_is_a_logged_bug(capsys, tmp_path, monkeypatch):
    from napari_deeptrack.commands import presets

    def boom(args):
        return {}["missing"]

    monkeypatch.setattr(presets, "run", boom)
    monkeypatch.setenv("NAPARI_DEEPTRACK_LOG_DIR", str(tmp_path))
    code, _, err = run_cli(capsys, "presets")
    assert code == 3 and "this is a bug" in err and "KeyError" in err and "Traceback" not in err
    logs = list(tmp_path.glob("error-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in err
