"""The npe2 manifest is valid and every command it names can be imported."""

from importlib.resources import files

import npe2


def test_manifest_validates():
    path = files("napari_deeptrack") / "napari.yaml"
    manifest = npe2.PluginManifest.from_file(str(path))
    assert manifest.name == "napari-deeptrack"
    assert manifest.contributions.commands


def test_manifest_commands_resolve():
    import importlib

    path = files("napari_deeptrack") / "napari.yaml"
    manifest = npe2.PluginManifest.from_file(str(path))
    for cmd in manifest.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), cmd.id
