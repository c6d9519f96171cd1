"""Starter models shipped with the package: present, small, loadable, resolved by preset name,
applied without training from the CLI, refused on the wrong modality."""

import json

import numpy as np
import pytest

from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import load_bundle, read_bundle_config
from napari_deeptrack.io.starters import STARTERS_DIR, check_starter_fits, list_starters, resolve_bundle
from napari_deeptrack.io.tiff import write_tiff

MAIN = ["brightfield-localize", "cells-count", "nuclei-segment", "particle-localize", "particles-2d"]


def test_every_main_preset_ships_a_small_loadable_starter_that_says_how_it_was_made():
    assert set(MAIN) <= set(list_starters())
    total = sum(p.stat().st_size for p in STARTERS_DIR.glob("*.zip"))
    assert total <= 10 * 2**20
    for name in MAIN:
        b = load_bundle(resolve_bundle(name))
        assert b.task.name == name
        cfg = read_bundle_config(resolve_bundle(name))
        assert "simulated images only" in cfg["notes"] and cfg["training"]["deterministic"] is True
        assert cfg["history"]["epoch"], "a starter records its training history"


def test_resolve_bundle_prefers_paths_and_lists_starters_when_unknown(tmp_path):
    assert resolve_bundle(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="particles-2d"):
        resolve_bundle("no-such-model")


def _image(dark: bool, seed=0):
    yy, xx = np.mgrid[:96, :96].astype(np.float64)
    img = np.full((96, 96), 20.0)
    truth = [(20.3, 30.1), (60.2, 70.4), (75.5, 20.6), (40.0, 55.0)]
    for cy, cx in truth:
        spot = 150.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.3**2))
        img = img - spot if dark else img + spot
    if dark:  # bright-field-like: dark particles on a bright background
        img = img + 180.0
    return np.random.default_rng(seed).poisson(img).astype(np.uint16), np.asarray(truth)


def test_apply_a_starter_by_preset_name_without_training(tmp_path, capsys):
    img, truth = _image(dark=False)
    path = write_tiff(tmp_path / "spots.tif", img[None])
    out = tmp_path / "det.csv"
    assert main(["apply", "particles-2d", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "particles-2d"
    import pandas as pd

    det = pd.read_csv(out)[["y", "x"]].to_numpy()
    d = np.linalg.norm(det[:, None] - truth[None], axis=-1)
    assert (d.min(0) < 2.0).all()  # every particle found by the simulation-only starter
    assert main(["info", "particles-2d"]) == 0
    assert "simulated images only" in capsys.readouterr().out


def test_a_fluorescence_starter_refuses_bright_field_images(tmp_path, capsys):
    img, _ = _image(dark=True)
    with pytest.raises(ValueError, match="bright background"):
        check_starter_fits(load_bundle(resolve_bundle("particles-2d")).task, img)
    check_starter_fits(load_bundle(resolve_bundle("particles-2d")).task, _image(dark=False)[0])
    path = write_tiff(tmp_path / "dark.tif", img[None])
    assert main(["apply", "particles-2d", str(path), "--out", str(tmp_path / "d.csv")]) == 2
    assert "fluorescence" in capsys.readouterr().err
