"""Model bundles: round trip, what config.json records, refusal of pickles / foreign / corrupt files,
atomic saves."""

import json
import pickle
import zipfile

import pytest
import torch

from napari_deeptrack.io import bundle as bundle_mod
from napari_deeptrack.io.bundle import SCHEMA_VERSION, load_bundle, read_bundle_config, save_bundle
from napari_deeptrack.nn import build_model
from napari_deeptrack.sim.serialize import to_dict
from napari_deeptrack.tasks import get_preset


@pytest.fixture
def task():
    return get_preset("particles-2d")


def make_model(seed=0):
    torch.manual_seed(seed)
    m = build_model({"type": "UNet", "depth": 2, "base_channels": 4})
    # non-trivial batch-norm statistics, so that buffers are checked too
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 1, 24, 24))
    return m.eval()


@pytest.mark.parametrize("name", ["model", "model.zip"])
def test_round_trip_bit_identical_and_records_everything(tmp_path, task, name):
    m = make_model()
    history = {"epoch": [0, 1], "train_loss": [0.5, 0.3], "val_loss": [0.4, 0.35], "best_epoch": 1}
    path = save_bundle(tmp_path / name, m, task, history, seed=11, metrics={"val_loss": 0.35})
    b = load_bundle(path)
    assert not b.model.training
    x = torch.randn(3, 1, 37, 45)
    with torch.no_grad():
        assert torch.equal(b.model(x), m(x))
    sa, sb = m.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert to_dict(b.task) == to_dict(task)
    cfg = b.config
    assert cfg["schema_version"] == SCHEMA_VERSION and cfg["format"] == "napari-deeptrack-bundle"
    assert cfg["model"]["type"] == "UNet" and cfg["n_parameters"] == sum(p.numel() for p in m.parameters())
    assert cfg["input_normalization"] == task.input_normalization
    assert cfg["pixel_size_um"] == task.pixel_size_um and cfg["units"]["pixel_size"] == "um"
    assert cfg["postprocess"]["threshold"] == 0.5
    assert cfg["history"] == history and cfg["seed"] == 11 and cfg["metrics"] == {"val_loss": 0.35}
    assert {"napari_deeptrack", "torch", "python"} <= set(cfg["versions"]) and cfg["created"][:2] == "20"
    assert len(cfg["weights"]["sha256"]) == 64
    # the one prediction path applies the task's normalisation and the sigmoid
    from napari_deeptrack.analysis.predict import predict

    p = predict(b, torch.rand(2, 1, 20, 20) * 100).maps
    assert p.shape == (2, 1, 20, 20) and 0 <= p.min() and p.max() <= 1


def _weights_path(tmp_path, task):
    path = save_bundle(tmp_path / "b", make_model(), task)
    return path, path / "weights.safetensors"


def test_pickle_renamed_to_safetensors_is_refused(tmp_path, task, monkeypatch):
    path, w = _weights_path(tmp_path, task)
    torch.save(make_model().state_dict(), w)
    unpickled = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(1))
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(1))
    with pytest.raises(ValueError, match="pickle"):
        load_bundle(path)
    w.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="pickle"):
        load_bundle(path)
    assert not unpickled


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda p: (p / "weights.safetensors").write_bytes(
                (p / "weights.safetensors").read_bytes()[:-100]
            ),
            "checksum|corrupt",
        ),
        (lambda p: (p / "weights.safetensors").write_bytes(b"hello world, not tensors"), "not a safetensors"),
        (lambda p: (p / "weights.safetensors").unlink(), "weights.safetensors is missing"),
        (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "config.json").write_text(json.dumps({"format": "other"})), "not a napari-deeptrack"),
        (lambda p: _edit_config(p, schema_version=SCHEMA_VERSION + 1), "newer napari-deeptrack"),
        (lambda p: _edit_config(p, model={"type": "UNet", "depth": 3, "base_channels": 4}), "do not fit"),
    ],
)
def test_corrupt_or_foreign_bundles_are_refused(tmp_path, task, damage, match):
    path, _ = _weights_path(tmp_path, task)
    damage(path)
    with pytest.raises(ValueError, match=match):
        load_bundle(path)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_foreign_paths_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a model bundle"):
        load_bundle(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_bundle(tmp_path / "empty")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.md", "x")
    with pytest.raises(ValueError, match="no config.json"):
        load_bundle(tmp_path / "other.zip")
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path / "missing")


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(tmp_path, task):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match="holding other files"):
        save_bundle(tmp_path / "data", make_model(), task)
    assert (tmp_path / "data" / "image.tif").exists()


@pytest.mark.parametrize("name", ["b", "b.zip"])
def test_crash_during_save_never_leaves_half_written_bundle(tmp_path, task, monkeypatch, name):
    old = make_model(0)
    path = save_bundle(tmp_path / name, old, task)

    def boom(*a, **k):
        raise OSError("disk full")

    # crash after the weights are written but before the config (folder) / while zipping (zip)
    real_write = bundle_mod._write_file
    monkeypatch.setattr(
        bundle_mod, "_write_file", lambda p, d: boom() if p.name == "config.json" else real_write(p, d)
    )
    monkeypatch.setattr(
        zipfile.ZipFile,
        "writestr",
        lambda self, n, d, *a, **k: boom() if n == "weights.safetensors" else None,
    )
    with pytest.raises(OSError, match="disk full"):
        save_bundle(path, make_model(1), task)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(tmp_path / ("fresh" + path.suffix), make_model(1), task)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary leftovers
    b = load_bundle(path)
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in b.model.state_dict().items())
    # and a later save replaces it completely
    save_bundle(path, make_model(2), task)
    assert torch.equal(
        load_bundle(path).model.state_dict()["head.weight"], make_model(2).state_dict()["head.weight"]
    )


def test_user_defined_model_needs_the_module_to_load(tmp_path, task):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1))
    path = save_bundle(tmp_path / "custom", net, task)
    assert read_bundle_config(path)["model"]["type"] == "custom"
    with pytest.raises(ValueError, match="user-defined model"):
        load_bundle(path)
    b = load_bundle(path, model=torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1)))
    assert torch.equal(b.model[0].weight, net[0].weight)
