"""apply / evaluate / simulate: predict() post-processing, tiling, CSV layout and the command line."""

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeptrack.analysis.metrics import detection_metrics
from napari_deeptrack.analysis.predict import predict, run_model
from napari_deeptrack.cli import main
from napari_deeptrack.io.images import read_images
from napari_deeptrack.io.tables import read_results_csv, scene_to_table, write_results_csv
from napari_deeptrack.io.tiff import read_tiff, write_tiff
from napari_deeptrack.sim import DensityMap, DiskMask, Fluorescence, Particles, Pipeline, PointParticle
from napari_deeptrack.sim.scene import Scene
from napari_deeptrack.tasks.base import Task

torch.set_num_threads(1)


def _task(kind, target, postprocess, shape=(64, 64)):
    pipe = Pipeline(
        image_shape=shape,
        particles=[Particles(PointParticle(), count=3)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"t": target},
    )
    return Task(
        name=f"test-{kind}",
        kind=kind,
        description="test",
        pipeline=pipe,
        target="t",
        model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 0, "base_channels": 2,
               "norm": "none", "convs_per_block": 1},
        input_normalization={"mode": "none"},
        postprocess=postprocess,
    )  # fmt: skip


def _pass_through_unet(task, gain, bias):
    """A depth-0 U-Net whose output is ``gain * relu(x) + bias`` (hand-set weights)."""
    from napari_deeptrack.nn import build_model

    model = build_model(task.model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            conv.bias.zero_()
            k = conv.weight.shape[-1] // 2
            conv.weight[0, 0, k, k] = 1.0
        convs[-1].weight[0, 0, 0, 0] = gain
        convs[-1].bias[0] = bias
    return model.eval()


def _disk_scene(frames, shape, seed, spacing=20):
    rng = np.random.default_rng(seed)
    gy, gx = np.meshgrid(np.arange(shape[0] // spacing) * spacing + spacing / 2,
                         np.arange(shape[1] // spacing) * spacing + spacing / 2, indexing="ij")  # fmt: skip
    base = np.stack([gy.ravel(), gx.ravel()], 1)
    sc = Scene.empty(frames, len(base), shape)
    sc.present[:] = True
    sc.position[..., :2] = torch.tensor(
        base[None] + rng.uniform(-3, 3, (frames, len(base), 2)), dtype=torch.float32
    )
    return sc


class _Logits(torch.nn.Module):
    def forward(self, x):
        return 8.0 * (x - 0.5)


def test_predict_detection_is_independent_of_tiling():
    task = _task(
        "detection", DiskMask(radius_px=3, antialias=True), {"activation": "sigmoid", "threshold": 0.5}
    )
    bundle = types.SimpleNamespace(model=_Logits(), task=task)
    scene = _disk_scene(2, (150, 210), seed=0)
    images = DiskMask(radius_px=3, antialias=True)(scene)[:, 0].numpy()
    whole = predict(bundle, images, tile_size=1024)
    tiled = predict(bundle, images, tile_size=64, tile_overlap=16)
    assert np.allclose(whole.maps, tiled.maps, atol=1e-6)
    pd.testing.assert_frame_equal(whole.detections, tiled.detections)
    truth = scene_to_table(scene)
    m = detection_metrics(tiled.detections, truth, 1.0)
    assert m["f1"] == 1.0 and m["rmse_xy"] < 0.05
    assert np.array_equal(tiled.counts, [len(truth) / 2] * 2)
    # linking a static scene gives one track per particle; odd sizes are padded and cropped back
    static = images[[0, 0, 0], :-3, :-5]
    linked = predict(bundle, static, link=True, search_range_px=2.0)
    assert linked.maps.shape == (3, 1, 147, 205)
    n0 = int((linked.detections.frame == 0).sum())
    assert linked.detections.track_id.nunique() == n0
    assert (linked.detections.groupby("track_id").size() == 3).all()


def test_predict_min_signal_drops_faint_detections():
    pp = {"activation": "sigmoid", "threshold": 0.5}
    task = _task("detection", DiskMask(radius_px=3, antialias=True), pp)
    bundle = types.SimpleNamespace(model=_pass_through_unet(task, 8.0, -4.0), task=task)
    scene = _disk_scene(1, (80, 100), seed=1)
    images = DiskMask(radius_px=3, antialias=True)(scene)[:, 0].numpy()
    images[:, :, :40] *= 0.6  # the particles in the two left columns are fainter (still p > 0.5)
    truth = scene_to_table(scene)
    bright = truth[truth.x > 40]
    assert len(predict(bundle, images).detections) == len(truth)
    res = predict(bundle, images, min_signal=20.0)  # signal: <= 28.3 x amplitude (disk of radius 3)
    assert "signal" in res.detections.columns and len(res.detections) == len(bright)
    assert detection_metrics(res.detections, bright, 1.0)["f1"] == 1.0
    # summed over the pixels within 3 px of the centre pixel: most of each disk's pi 3^2 (the
    # particle is up to half a pixel off that pixel), never more
    assert np.all((res.detections.signal > 0.8 * np.pi * 9) & (res.detections.signal < np.pi * 9 + 0.1))
    task.postprocess = {**pp, "min_signal": 20.0}  # the same from the task's postprocess
    pd.testing.assert_frame_equal(predict(bundle, images).detections, res.detections)


def test_run_model_rejects_nothing_and_pads_to_multiple():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x[:, :1]

    x = torch.rand(3, 1, 37, 50)
    out = run_model(Spy(), x, fully_convolutional=True, multiple=8, batch_size=2)
    assert out.shape == (3, 1, 37, 50) and torch.equal(out, x)
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in seen) and len(seen) == 2


def test_predict_counting_and_single_particle_shape_check():
    task = _task("counting", DensityMap(sigma_px=2.0), {"activation": "none"})
    scene = _disk_scene(3, (64, 64), seed=1)
    scene.present[1, 5:] = False
    dens = DensityMap(sigma_px=2.0)(scene)[:, 0].numpy()
    res = predict(types.SimpleNamespace(model=_pass_through_unet(task, 1.0, 0.0), task=task), dens)
    assert np.allclose(res.counts, scene.present.sum(1).numpy(), atol=1e-3)
    assert len(res.detections) == int(scene.present.sum())
    loc = _task("localization", DiskMask(radius_px=3), {"activation": "none"}, shape=(32, 32))
    with pytest.raises(ValueError, match="32x32 crops"):
        predict(types.SimpleNamespace(model=_Logits(), task=loc), np.zeros((2, 40, 40)))


def test_cli_apply_then_evaluate(tmp_path, capsys):
    from napari_deeptrack.io.bundle import save_bundle

    task = _task(
        "detection", DiskMask(radius_px=3, antialias=True), {"activation": "sigmoid", "threshold": 0.5}
    )
    bundle_path = save_bundle(tmp_path / "bundle", _pass_through_unet(task, 8.0, -4.0), task)
    scene = _disk_scene(3, (80, 100), seed=2)
    images = DiskMask(radius_px=3, antialias=True)(scene)[:, 0].numpy()
    write_tiff(tmp_path / "stack.tif", images.astype(np.float32), pixel_size_um=0.1)
    write_results_csv(scene_to_table(scene), tmp_path / "truth.csv")
    out = tmp_path / "res" / "results.csv"
    rc = main(["apply", str(bundle_path), str(tmp_path / "stack.tif"), "--out", str(out), "--link",
               "--search-range-px", "2", "--frame-interval-s", "0.1"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["detections"] == int(scene.present.sum()) and summary["frames"] == 3
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["frame", "y", "x"] and header[-2:] == ["probability", "track_id"]
    res = read_results_csv(out)
    assert res.frame.max() == 2 and res.track_id.nunique() == summary["tracks"]
    assert main(["evaluate", str(out), str(tmp_path / "truth.csv"), "--tolerance", "1", "--per-frame"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["f1"] == 1.0 and metrics["fp"] == 0 and metrics["rmse_xy"] < 0.05
    assert len(metrics["per_frame"]) == 3
    # bad input: clear errors, exit status 2
    assert main(["evaluate", str(out), str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["apply", str(bundle_path), str(tmp_path / "stack.tif"), "--out", str(out), "--threshold", "2"])
        == 2
    )
    assert "--threshold" in capsys.readouterr().err
    assert main(["apply", str(bundle_path), str(tmp_path / "stack.tif"), "--out", str(out),
                 "--labels-out", str(tmp_path / "l.tif")]) == 2  # fmt: skip
    assert "no instance labels" in capsys.readouterr().err


def test_cli_simulate_is_reproducible_and_writes_truth(tmp_path, capsys):
    args = ["simulate", "particles-2d", "--frames", "3", "--seed", "5", "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "a.tif"), "--truth", str(tmp_path / "a.csv")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.tif")]) == 0
    a, meta = read_tiff(tmp_path / "a.tif")
    b, _ = read_tiff(tmp_path / "b.tif")
    assert a.shape == (3, 64, 64) and np.array_equal(a, b)
    assert meta["pixel_size_um"] == pytest.approx(0.1)
    ta = read_results_csv(tmp_path / "a.csv")
    tb = read_results_csv(tmp_path / "b_truth.csv")
    pd.testing.assert_frame_equal(ta, tb)
    assert list(ta.columns[:4]) == ["frame", "y", "x", "z_um"] and set(ta.frame) <= {0, 1, 2}
    assert ((ta.y >= -0.5) & (ta.y < 63.5)).all()
    # a Movie configuration gives tracks
    from napari_deeptrack.sim import to_json
    from napari_deeptrack.sim.movie import Movie
    from napari_deeptrack.tasks import get_preset

    movie = Movie(get_preset("particles-2d").pipeline, n_frames=2, frame_interval_s=0.05, diffusion_um2_s=0.1)
    (tmp_path / "movie.json").write_text(to_json(movie))
    assert (
        main(["simulate", str(tmp_path / "movie.json"), "--frames", "4", "--out", str(tmp_path / "m.tif")])
        == 0
    )
    tm = read_results_csv(tmp_path / "m_truth.csv")
    assert "track_id" in tm.columns and tm.frame.max() <= 3
    assert read_tiff(tmp_path / "m.tif")[0].shape == (4, 64, 64)
    assert main(["simulate", "no-such-preset", "--out", str(tmp_path / "x.tif")]) == 2


def test_read_images_folder_png_rgb_and_tiff(tmp_path):
    from skimage.io import imsave

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (12, 16), dtype=np.uint8) for _ in range(3)]
    for i, name in zip([0, 1, 2], ["f2.png", "f10.png", "f1.png"], strict=True):
        rgba = np.stack([frames[i], frames[i], frames[i], np.full_like(frames[i], 255)], -1)
        imsave(folder / name, rgba, check_contrast=False)
    stack, meta = read_images(folder)
    assert stack.shape == (3, 12, 16) and stack.dtype == np.float32
    # natural order: f1, f2, f10
    assert np.array_equal(stack[0], frames[2]) and np.array_equal(stack[1], frames[0])
    assert any("alpha" in n for n in meta["notes"]) and any("identical" in n for n in meta["notes"])
    colour = np.stack([frames[0], frames[1], frames[2]], -1)
    imsave(tmp_path / "c.png", colour, check_contrast=False)
    g, meta = read_images(tmp_path / "c.png", channel="g")
    assert np.array_equal(g[0], frames[1]) and "channel G" in meta["notes"][0]
    lum, meta = read_images(tmp_path / "c.png")
    assert "luminance" in meta["notes"][0]
    write_tiff(tmp_path / "s.tif", np.zeros((4, 8, 8), np.float32), pixel_size_um=0.25)
    s, meta = read_images(tmp_path / "s.tif")
    assert s.shape == (4, 8, 8) and meta["pixel_size_um"] == pytest.approx(0.25)
    with pytest.raises(FileNotFoundError):
        read_images(tmp_path / "nothing.tif")
    with pytest.raises(ValueError, match="channel"):
        read_images(tmp_path / "c.png", channel="q")


def test_predict_characterization_aggregates_along_the_track():
    from napari_deeptrack.sim import RegressionVector

    target = RegressionVector(fields=["radius_um", "n_real"], offset=[0.5, 1.5], scale=[0.1, 0.1])
    task = _task("characterization", target, {"activation": "none"}, shape=(32, 32))

    class MeanMax(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], 1)

    images = np.random.default_rng(0).uniform(0, 1, (6, 32, 32)).astype(np.float32)
    res = predict(types.SimpleNamespace(model=MeanMax(), task=task), images, link=True, search_range_px=1.0)
    det = res.detections
    assert np.allclose(det.radius_um, 0.5 + 0.1 * images.mean((1, 2)), atol=1e-6)
    assert np.allclose(det.y, 15.5) and det.track_id.nunique() == 1
    tp = res.track_properties
    assert len(tp) == 1 and tp.n.iloc[0] == 6
    assert tp.radius_um.iloc[0] == pytest.approx(det.radius_um.mean())
    assert tp.n_real_sem.iloc[0] == pytest.approx(det.n_real.std(ddof=1) / np.sqrt(6))


def test_predict_segmentation_gives_labels_and_cli_writes_them(tmp_path, capsys):
    from skimage.draw import disk

    from napari_deeptrack.io.bundle import save_bundle

    task = _task("segmentation", DiskMask(radius_px=3), {"activation": "sigmoid", "threshold": 0.5,
                                                          "min_distance_px": 5})  # fmt: skip
    fg = np.zeros((2, 48, 64), np.float32)
    for f, centres in enumerate([[(20, 18), (22, 33)], [(30, 40)]]):
        for c in centres:
            rr, cc = disk(c, 8.5, shape=fg.shape[1:])
            fg[f, rr, cc] = 1.0
    model = _pass_through_unet(task, 8.0, -4.0)
    res = predict(types.SimpleNamespace(model=model, task=task), fg)
    assert res.labels.shape == fg.shape
    assert [len(np.unique(res.labels[f][res.labels[f] > 0])) for f in range(2)] == [2, 1]
    assert np.array_equal(res.counts, [2, 1]) and len(res.detections) == 3
    bundle_path = save_bundle(tmp_path / "seg", model, task)
    write_tiff(tmp_path / "fg.tif", fg)
    rc = main(["apply", str(bundle_path), str(tmp_path / "fg.tif"), "--out", str(tmp_path / "r.csv"),
               "--labels-out", str(tmp_path / "labels.tif")])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    lab, _ = read_tiff(tmp_path / "labels.tif")
    assert lab.shape == fg.shape and len(np.unique(lab)) == 4
