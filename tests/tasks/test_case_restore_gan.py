"""Case studies 7 (mask-to-image pix2pix, generator inside a simulation) and 8 (restoration).

The restore example runs end to end in a reduced setting and must beat the raw input; the pix2pix
pieces (preset, semantic masks, paired crops, a training step, GeneratorOptics) are checked on small
known inputs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deeptrack.nn import build_model
from napari_deeptrack.sim import (
    GeneratorOptics,
    NormalizeWithTarget,
    from_json,
    normalize_images,
    semantic_mask,
    to_json,
)
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.tasks.presets_cells import cells_pipeline
from napari_deeptrack.train.data import RealPairCrops

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _example(name: str):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------- restore
def test_restore_input_and_target_share_one_scale():
    task = get_preset("restore")
    p = task.pipeline.with_(image_shape=(40, 40))
    assert isinstance(p.transforms[-1], NormalizeWithTarget)
    raw = p.with_(transforms=p.transforms[:-1])(4, seed=3)  # same scenes, before the normalisation
    out = p(4, seed=3)
    x = raw.image.reshape(4, -1).double()
    lo, hi = torch.quantile(x, 0.01, dim=1), torch.quantile(x, 0.998, dim=1)
    # input: exactly the task's input normalisation (so normalising again changes nothing)
    torch.testing.assert_close(out.image, normalize_images(raw.image, **task.input_normalization))
    torch.testing.assert_close(normalize_images(out.image, **task.input_normalization), out.image)
    # target: the noise-free photons divided by the same per-image factor p99.8 - p1
    expected = raw.targets["clean"] / (hi - lo).float()[:, None, None, None]
    torch.testing.assert_close(out.targets["clean"], expected, rtol=1e-4, atol=1e-5)
    assert out.targets["clean"].amin() >= 0
    with pytest.raises(ValueError, match="high"):
        NormalizeWithTarget("clean", low=50.0, high=10.0)


@pytest.mark.slow
def test_restore_example_beats_the_raw_input(tmp_path):
    restore = _example("restore")
    res = tmp_path / "restore.jsonl"
    argv = ["--quick", "--ensemble", "2", "--epochs", "4", "--steps", "25", "--n-test", "16"]
    assert restore.main([*argv, "--threads", "1", "--results", str(res)]) == 0
    rec = {r["record"]: r for r in map(json.loads, res.read_text().splitlines())}
    test = rec["test"]
    pred, raw = test["prediction_vs_truth"], test["raw_input_vs_truth"]
    # a broken pipeline (wrong scaling, untrained net) is no closer to the truth than the input
    assert pred["ssim"] > raw["ssim"] + 0.1
    assert pred["psnr_db"] > raw["psnr_db"] + 3.0
    assert pred["nrmse"] < raw["nrmse"]
    assert test["fraction_images_prediction_better_than_input"]["ssim"] >= 0.8
    assert test["fraction_images_prediction_better_than_input"]["psnr_db"] >= 0.8
    assert pred["ssim"] > test["gaussian_smoothed_input_vs_truth"]["ssim"]
    # the ensemble disagrees more where it is wrong
    assert test["mean_abs_error_top10pct_uncertainty"] > 2 * test["mean_abs_error_bottom10pct_uncertainty"]


# ---------------------------------------------------------------------------- mask-to-image
def test_semantic_mask_marks_boundaries_between_touching_nuclei():
    lab = torch.zeros(1, 1, 8, 10, dtype=torch.int64)
    lab[..., 2:6, 1:5] = 1
    lab[..., 2:6, 5:9] = 2  # touches nucleus 1 along a column
    m = semantic_mask(lab)[0, 0]
    assert m[0, 0] == -1 and m[3, 2] == 1 and m[3, 6] == 1  # background, interiors
    assert (m[3:5, 4] == 0).all() and (m[3:5, 5] == 0).all()  # the shared border
    assert (m[2, 1:9] == 0).all()  # outer ring
    assert set(m.unique().tolist()) == {-1.0, 0.0, 1.0}


def test_mask_to_image_preset_and_paired_crops():
    task = get_preset("mask-to-image")
    assert task.model["type"] == "Pix2Pix" and task.loss["type"] == "pix2pix"
    assert task.loss["l1_weight"] == 0.8  # the paper's regularisation weight
    b = task.pipeline(3, seed=1)
    assert b.image.shape == (3, 1, 64, 64) and b.targets["image"].shape == (3, 1, 64, 64)
    y = b.targets["image"]
    assert y.min() >= -1 and y.max() <= 1
    # the input is the semantic mask of the same nuclei plus noise of std <= 0.1
    from napari_deeptrack.sim import InstanceLabels

    mask = semantic_mask(InstanceLabels(pixel_size_um=task.pixel_size_um)(b.scene))
    assert (mask == 1).any() and (mask == 0).any() and (mask == -1).any()
    resid = b.image - mask
    assert 0 < resid.std() < 0.1 and resid.abs().max() < 0.5
    # crops: mask and image cropped and flipped together (identical arrays stay identical)
    g = torch.Generator().manual_seed(0)
    arr = torch.rand(2, 1, 40, 50, generator=g)
    crops = RealPairCrops(arr, arr.clone(), crop_px=16, batch_size=5, steps=3, noise_std=0.0)
    batches = list(crops)
    assert len(batches) == 3
    for m, im in batches:
        assert m.shape == (5, 1, 16, 16)
        torch.testing.assert_close(m, im)
    noisy = next(iter(RealPairCrops(arr, arr.clone(), crop_px=16, batch_size=5, steps=1)))
    assert 0 < (noisy[0] - noisy[1]).std() < 0.1


def _tiny_task():
    task = get_preset("mask-to-image")
    task.model = {**task.model, "base_channels": 4, "depth": 2, "disc_base_channels": 4, "max_channels": 16}
    return task.edited({"pipeline.image_shape": [32, 32]})


def test_pix2pix_training_steps_update_generator_and_discriminator():
    from napari_deeptrack.train import train_task

    task = _tiny_task()
    torch.manual_seed(0)
    model = build_model(task.model)
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    res = train_task(task, epochs=1, steps_per_epoch=2, batch_size=2, device="cpu", model=model)
    assert res.history["steps"] == 2 and np.isfinite(res.history["val_loss"][0])
    assert any(not torch.equal(a, b) for a, b in zip(g0, res.model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, res.model.discriminator.parameters()))


def test_generator_optics_renders_a_simulated_scene(tmp_path):
    from napari_deeptrack.io.bundle import save_bundle

    task = _tiny_task()
    task.postprocess = {**task.postprocess, "output_low": 100.0, "output_high": 1100.0}
    torch.manual_seed(1)
    save_bundle(tmp_path / "gen", build_model(task.model), task)
    pipe = cells_pipeline((48, 48)).with_(optics=GeneratorOptics(str(tmp_path / "gen")), transforms=[])
    a, b = pipe(3, seed=4), pipe(3, seed=4)
    assert a.image.shape == (3, 1, 48, 48) and torch.isfinite(a.image).all()
    assert a.image.min() >= 100.0 and a.image.max() <= 1100.0  # tanh output mapped to grey values
    torch.testing.assert_close(a.image, b.image)  # same seed, same images
    assert not torch.equal(a.image, pipe(3, seed=5).image)
    # different masks give different images (the generator sees the scene)
    signed = pipe.with_(optics=GeneratorOptics(str(tmp_path / "gen"), noise_std=0.0, output="signed"))(
        2, seed=4
    )
    assert signed.image.abs().max() <= 1 and not torch.equal(signed.image[0], signed.image[1])
    # serialisable like any other optics
    again = from_json(to_json(pipe))
    torch.testing.assert_close(again(3, seed=4).image, a.image)
    with pytest.raises(ValueError, match="output"):
        GeneratorOptics(str(tmp_path / "gen"), output="photons")
    with pytest.raises(ValueError, match="bundle_path"):
        GeneratorOptics("")
