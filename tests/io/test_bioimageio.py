"""bioimage.io packages: export validated by the official bioimageio.core test routine, the package's
output equal to our predict, import into predict, and clear errors for packages that fit no task."""

import io
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_deeptrack.analysis.predict import predict
from napari_deeptrack.io.bioimageio import DEEPTRACK_CITATION, export_bioimageio, load_bioimageio
from napari_deeptrack.io.bundle import load_bundle, save_bundle
from napari_deeptrack.nn import build_model
from napari_deeptrack.tasks import get_preset

core = pytest.importorskip("bioimageio.core")  # in the testing extra; absent only in a bare install


def _bundle(tmp_path, normalization=None):
    task = get_preset("particles-2d")
    if normalization is not None:
        task.input_normalization = normalization
    torch.manual_seed(0)
    model = build_model({"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 2, "base_channels": 4})
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.randn(4, 1, 32, 32))
    path = save_bundle(tmp_path / "bundle", model.eval(), task, metrics={"f1": 0.91, "rmse_px": 0.3})
    return load_bundle(path)


def _core_predict(pkg, x, weight_format):
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core import predict as core_predict

    descr = load_model_description(pkg, perform_io_checks=False)
    pp = create_prediction_pipeline(descr, weight_format=weight_format)
    sample = core_predict(model=pp, inputs={"raw": x})
    return np.asarray(sample.members["prediction"].data)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread_module):
    tmp = tmp_path_factory.mktemp("bioimageio")
    b = _bundle(tmp)
    return b, export_bioimageio(b, tmp / "particles.zip", authors=["Test Author"])


@pytest.fixture(scope="module")
def one_torch_thread_module():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_package_passes_the_official_test_model(exported):
    from bioimageio.core import test_model

    _, pkg = exported
    summary = test_model(pkg)
    assert summary.status == "passed", summary.format()


def test_package_content_axes_units_processing_citation(exported):
    b, pkg = exported
    with zipfile.ZipFile(pkg) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        x = np.load(io.BytesIO(zf.read("test_input.npy")))
        readme = zf.read("README.md").decode()
    assert {"weights_torchscript.pt", "weights.onnx", "cover.png", "README.md"} <= names
    assert str(rdf["format_version"]).startswith("0.5")
    axes = rdf["inputs"][0]["axes"]
    assert [a["type"] for a in axes] == ["batch", "channel", "space", "space"]
    assert all(a["unit"] == "micrometer" and a["scale"] == pytest.approx(0.1) for a in axes[2:])
    assert axes[2]["size"] == {"min": 4, "step": 4}  # U-Net of depth 2
    assert rdf["outputs"][0]["axes"][2]["size"] == {"tensor_id": "raw", "axis_id": "y"}
    assert rdf["outputs"][0]["postprocessing"] == [{"id": "sigmoid"}]
    assert rdf["config"]["napari_deeptrack"]["inside_weights"]["robust_normalization"] is True
    assert rdf["cite"][0]["doi"] == DEEPTRACK_CITATION["doi"]
    assert "f1: 0.91" in readme and "simulated" in readme
    assert x.shape == (1, 1, 64, 64) and x.dtype == np.float32


@pytest.mark.parametrize("weight_format", ["torchscript", "onnx"])
def test_core_output_equals_our_predict(exported, weight_format):
    """The acceptance check: bioimageio.core runs the package and gives our predict's output (1e-5),
    on the test tensor and on an image of another size."""
    b, pkg = exported
    with zipfile.ZipFile(pkg) as zf:
        x = np.load(io.BytesIO(zf.read("test_input.npy")))
    rng = np.random.default_rng(3)
    other = rng.poisson(20.0, size=(1, 1, 48, 80)).astype(np.float32)
    other[0, 0, 20:23, 30:33] += 400
    for img in (x, other):
        ours = predict(b, img).maps
        theirs = _core_predict(pkg, img, weight_format)
        assert theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def test_imported_package_runs_in_predict(exported):
    b, pkg = exported
    rng = np.random.default_rng(0)
    img = rng.poisson(10.0, size=(3, 40, 56)).astype(np.float32)
    img[:, 10:13, 20:23] += 300
    ours = predict(b, img, link=True)
    for weights in ("onnx", "torchscript"):
        imp = load_bioimageio(pkg, weights=weights)
        assert imp.task.kind == "detection" and imp.task.input_normalization == {"mode": "none"}
        assert imp.pixel_size_um == pytest.approx(0.1)
        res = predict(imp, img, link=True)
        np.testing.assert_allclose(res.maps, ours.maps, atol=1e-5)
        assert len(res.detections) == len(ours.detections)


def test_percentile_normalisation_in_spec_terms(tmp_path, one_torch_thread):
    b = _bundle(tmp_path, {"mode": "percentile", "low": 1.0, "high": 99.8})
    pkg = export_bioimageio(b, tmp_path / "p.zip", onnx=False)
    with zipfile.ZipFile(pkg) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        x = np.load(io.BytesIO(zf.read("test_input.npy")))
    pre = rdf["inputs"][0]["preprocessing"]
    assert pre[1] == {
        "id": "scale_range",
        "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8, "eps": 1e-6},
    }
    assert "onnx" not in rdf["weights"]
    theirs = _core_predict(pkg, x, "torchscript")
    np.testing.assert_allclose(theirs, predict(b, x).maps, atol=1e-5)
    imp = load_bioimageio(pkg)
    assert imp.task.input_normalization == {"mode": "percentile", "low": 1.0, "high": 99.8}


def _rewrite_rdf(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "rdf.yaml":
                rdf = yaml.safe_load(data)
                edit(rdf)
                data = yaml.safe_dump(rdf).encode()
            zout.writestr(name, data)
    return dst


def test_incompatible_axes_are_refused_clearly(exported, tmp_path):
    _, pkg = exported

    def add_z(rdf):
        rdf["inputs"][0]["axes"].insert(2, {"type": "space", "id": "z", "size": 16})

    def time_output(rdf):
        rdf["outputs"][0]["axes"].insert(2, {"type": "time", "size": 5})

    with pytest.raises(ValueError, match=r"input axes \['batch', 'channel', 'z', 'y', 'x'\] do not fit"):
        load_bioimageio(_rewrite_rdf(pkg, tmp_path / "z.zip", add_z))
    with pytest.raises(ValueError, match="output axes .* do not fit"):
        load_bioimageio(_rewrite_rdf(pkg, tmp_path / "t.zip", time_output))


def test_bad_packages(exported, tmp_path):
    _, pkg = exported
    with pytest.raises(ValueError, match="sha256"):
        load_bioimageio(
            _rewrite_rdf(pkg, tmp_path / "h.zip", lambda r: r["weights"]["onnx"].update(sha256="0" * 64))
        )
    (tmp_path / "n.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a bioimage.io package"):
        load_bioimageio(tmp_path / "n.zip")
    with pytest.raises(ValueError, match=".zip"):
        export_bioimageio(exported[0], tmp_path / "model.bin")


def test_foreign_package_without_our_config_runs_as_image_to_image(exported, tmp_path):
    b, pkg = exported

    def strip(rdf):
        rdf.pop("config")
        rdf["outputs"][0]["postprocessing"] = []

    foreign = load_bioimageio(_rewrite_rdf(pkg, tmp_path / "f.zip", strip))
    assert foreign.task.kind == "image-to-image" and foreign.pixel_size_um == pytest.approx(0.1)
    img = np.random.default_rng(1).poisson(10.0, size=(2, 32, 36)).astype(np.float32)
    res = predict(foreign, img)
    # no sigmoid declared: the raw network output (the weights still hold the robust normalisation)
    ours = predict(b, img).maps
    np.testing.assert_allclose(1 / (1 + np.exp(-res.maps)), ours, atol=1e-5)
