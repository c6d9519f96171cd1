"""Command line of the interop exports: export-tracks (TrackMate / CTC / trackpy), evaluate --tracks
(ISBI 2012 and CTC measures), export-bioimageio; bad input ends with a one-line error (exit 2)."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeptrack.cli import main
from napari_deeptrack.io.ctc import read_ctc
from napari_deeptrack.io.trackmate import check_trackmate_structure, read_trackmate
from napari_deeptrack.io.trackpy_layout import read_trackpy_csv


def _tracks_csv(path, shift=0.0):
    rows = [
        {"frame": f, "y": 10.0 + 20 * t + shift, "x": 10.0 + f, "probability": 0.9, "track_id": t}
        for t in range(2)
        for f in range(5)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("fmt, out", [("trackmate", "t.xml"), ("ctc", "ctc"), ("trackpy", "tp.csv")])
def test_export_tracks(tmp_path, capsys, fmt, out):
    csv = _tracks_csv(tmp_path / "res.csv")
    args = ["export-tracks", str(csv), str(tmp_path / out), "--format", fmt, "--pixel-size-um", "0.2"]
    assert main([*args, "--frame-interval-s", "0.1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tracks"] == 2 and summary["spots"] == 10
    if fmt == "trackmate":
        assert check_trackmate_structure(tmp_path / out) == []
        df, meta = read_trackmate(tmp_path / out)
        assert meta["pixel_size_um"] == pytest.approx(0.2) and meta["frame_interval_s"] == pytest.approx(0.1)
    elif fmt == "ctc":
        df, meta = read_ctc(tmp_path / out)
        assert meta["pixel_size_um"] == pytest.approx(0.2)
    else:
        df, units = read_trackpy_csv(tmp_path / out)
        assert units["pixel_size_um"] == 0.2
    assert sorted(df.groupby("track_id").size()) == [5, 5]


def test_export_tracks_needs_links(tmp_path, capsys):
    pd.DataFrame({"frame": [0], "y": [1.0], "x": [2.0]}).to_csv(tmp_path / "r.csv", index=False)
    rc = main(
        [
            "export-tracks",
            str(tmp_path / "r.csv"),
            str(tmp_path / "t.xml"),
            "--format",
            "trackmate",
            "--pixel-size-um",
            "0.1",
        ]
    )
    assert rc == 2 and "track_id" in capsys.readouterr().err and not (tmp_path / "t.xml").exists()


def test_evaluate_reports_tracking_measures(tmp_path, capsys):
    truth = _tracks_csv(tmp_path / "truth.csv")
    pred = _tracks_csv(tmp_path / "pred.csv", shift=1.0)
    assert main(["evaluate", str(pred), str(truth), "--tracks"]) == 0
    out = json.loads(capsys.readouterr().out)
    isbi = out["tracking"]["isbi"]
    # 1 px everywhere, 5 px gate: alpha = 1 - 1/5
    assert isbi["alpha"] == pytest.approx(0.8) and isbi["rmse_px"] == pytest.approx(1.0)
    assert out["tracking"]["ctc"]["TRA"] is not None and 0 < out["tracking"]["ctc"]["TRA"] <= 1


def test_export_bioimageio_command(tmp_path, capsys, one_torch_thread):
    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.tasks import get_preset

    torch.manual_seed(0)
    model = build_model({"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 2})
    save_bundle(tmp_path / "b", model.eval(), get_preset("particles-2d"))
    assert (
        main(
            [
                "export-bioimageio",
                str(tmp_path / "b"),
                str(tmp_path / "m.zip"),
                "--no-onnx",
                "--author",
                "A. Person",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert "rdf.yaml" in summary["files"] and "weights.onnx" not in summary["files"]
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        assert b"A. Person" in zf.read("rdf.yaml")
    assert main(["export-bioimageio", str(tmp_path / "b"), str(tmp_path / "m.txt")]) == 2
    assert ".zip" in capsys.readouterr().err


def _pass_through_bundle(tmp_path, kind="detection"):
    """A detection bundle whose depth-0 U-Net maps an image x to sigmoid(8 relu(x) - 4) (hand-set)."""
    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.sim import DiskMask, Fluorescence, Particles, Pipeline, PointParticle
    from napari_deeptrack.tasks.base import Task

    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[Particles(PointParticle(), count=2)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"t": DiskMask(radius_px=3)},
    )
    task = Task(name="pass", kind=kind, description="test", pipeline=pipe, target="t",
                model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 0, "base_channels": 2,
                       "norm": "none", "convs_per_block": 1},
                input_normalization={"mode": "none"}, postprocess={"activation": "sigmoid", "threshold": 0.5},
                pixel_size_um=0.1)  # fmt: skip
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
    return save_bundle(tmp_path / "bundle", model.eval(), task)


def test_apply_runs_a_bioimageio_package_and_writes_trackmate(tmp_path, capsys, one_torch_thread):
    from napari_deeptrack.io.bioimageio import export_bioimageio, load_model
    from napari_deeptrack.io.tables import read_results_csv
    from napari_deeptrack.io.tiff import write_tiff

    bundle_path = _pass_through_bundle(tmp_path)
    yy, xx = np.mgrid[:40, :48]
    frames = []
    for f in range(3):
        img = np.zeros((40, 48), np.float32)
        for cy, cx in ((10 + f, 10), (28, 30 + f)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1.0
        frames.append(img)
    write_tiff(tmp_path / "stack.tif", np.stack(frames), pixel_size_um=0.1)
    pkg = export_bioimageio(load_model(bundle_path), tmp_path / "pkg.zip", test_image=frames[0][:32, :32])
    outs = {}
    for name, model in (("bundle", bundle_path), ("package", pkg)):
        out = tmp_path / name / "res.csv"
        args = ["apply", str(model), str(tmp_path / "stack.tif"), "--out", str(out), "--link"]
        assert main([*args, "--frame-interval-s", "0.5", "--format", "trackmate"]) == 0, (
            capsys.readouterr().err
        )
        summary = json.loads(capsys.readouterr().out)
        assert summary["trackmate"] == str(out.with_suffix(".xml")) and summary["tracks"] == 2
        assert check_trackmate_structure(out.with_suffix(".xml")) == []
        outs[name] = read_results_csv(out)
    pd.testing.assert_frame_equal(outs["package"], outs["bundle"], atol=1e-5)
    tm, meta = read_trackmate(tmp_path / "package" / "res.xml")
    assert meta["frame_interval_s"] == 0.5 and meta["pixel_size_um"] == pytest.approx(0.1) and len(tm) == 6
    rc = main(
        ["apply", str(pkg), str(tmp_path / "stack.tif"), "--out", str(tmp_path / "x.csv"), "--format", "ctc"]
    )
    assert rc == 2 and "--link" in capsys.readouterr().err


def test_apply_labels_as_ome_tiff(tmp_path, capsys, one_torch_thread):
    from napari_deeptrack.io.ome import read_ome_tiff
    from napari_deeptrack.io.tiff import write_tiff

    bundle_path = _pass_through_bundle(tmp_path, kind="segmentation")
    yy, xx = np.mgrid[:40, :48]
    img = np.zeros((2, 40, 48), np.float32)
    img[:, (yy - 12) ** 2 + (xx - 12) ** 2 <= 16] = 1.0
    img[:, (yy - 28) ** 2 + (xx - 30) ** 2 <= 16] = 1.0
    write_tiff(tmp_path / "stack.tif", img, pixel_size_um=0.1)
    args = ["apply", str(bundle_path), str(tmp_path / "stack.tif"), "--out", str(tmp_path / "r.csv")]
    assert main([*args, "--labels-out", str(tmp_path / "lab.ome.tif"), "--frame-interval-s", "2"]) == 0
    labels, meta = read_ome_tiff(json.loads(capsys.readouterr().out)["labels"])
    assert labels.shape == (2, 40, 48) and len(np.unique(labels[0])) == 3
    assert meta["axes"] == "TYX" and meta["pixel_size_um"] == pytest.approx(0.1)
    assert meta["frame_interval_s"] == pytest.approx(2.0)
