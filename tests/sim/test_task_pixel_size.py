"""The task's pixel size is the optics' sample-plane pixel (issue 16, bug 2).

In the Simulate widget, magnification 100 and a 6.5 um camera pixel give 0.065 um pixels; a task trained
on that simulation (the Train widget's "use the Simulate widget's simulation") must record 0.065 um in
its bundle, not the preset's 0.1 um, or Apply's coverage check and z conversion use the wrong value.
"""

import dataclasses
import json

import pytest

from napari_deeptrack.io.bundle import load_bundle, save_bundle
from napari_deeptrack.nn import build_model
from napari_deeptrack.sim import (
    Background,
    Brightfield,
    FlipRotate,
    Fluorescence,
    IntUniform,
    Particles,
    Pipeline,
    PointParticle,
    Poisson,
    ReadNoise,
    Task,
)
from napari_deeptrack.tasks import get_preset


def simulate_widget_pipeline(shape=(128, 128)) -> Pipeline:
    """What the Simulate widget builds with magnification 100 and camera pixel 6.5 um."""
    return Pipeline(
        image_shape=shape,
        particles=[Particles(PointParticle(), count=IntUniform(0, 40), intensity=500.0)],
        optics=Fluorescence(NA=1.3, wavelength_um=0.6, camera_pixel_um=6.5, magnification=100.0),
        transforms=[Background(20.0), Poisson(), ReadNoise(1.0)],
    )


def test_task_trained_on_the_simulate_widget_simulation_records_the_optics_pixel(tmp_path):
    preset = get_preset("particles-2d")
    assert preset.pixel_size_um == pytest.approx(0.1)
    task = preset.with_simulation(simulate_widget_pipeline(preset.pipeline.image_shape))
    assert task.pixel_size_um == pytest.approx(0.065)
    # the task's targets and non-noise transforms stay, the simulation's noise model replaces the preset's
    assert task.target == "mask" and set(task.pipeline.targets) == set(preset.pipeline.targets)
    assert [type(t).__name__ for t in task.pipeline.transforms] == ["Background", "Poisson", "ReadNoise"]
    model = build_model({"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4})
    path = save_bundle(tmp_path / "b", model, task)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["pixel_size_um"] == pytest.approx(0.065)
    assert load_bundle(path).pixel_size_um == pytest.approx(0.065)
    assert preset.pixel_size_um == pytest.approx(0.1)  # the preset itself is untouched


def test_a_pixel_size_that_disagrees_with_the_optics_is_refused():
    preset = get_preset("particles-2d")
    with pytest.raises(ValueError, match=r"pixel_size_um 0\.1 um disagrees with the optics' .* 0\.065 um"):
        dataclasses.replace(
            preset, pipeline=simulate_widget_pipeline().with_(targets=preset.pipeline.targets)
        )
    with pytest.raises(ValueError, match="disagrees"):
        Task(
            **{**{f.name: getattr(preset, f.name) for f in dataclasses.fields(preset)}, "pixel_size_um": 0.2}
        )


def test_pixel_size_is_taken_from_the_optics_when_left_out():
    preset = get_preset("particles-2d")
    fields = {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset)}
    fields["pixel_size_um"] = None
    assert Task(**fields).pixel_size_um == pytest.approx(0.1)
    # editing the optics by --set moves the pixel size with it; an explicit pixel size is checked
    edited = preset.edited({"pipeline.optics.pixel_size_um": 0.05})
    assert edited.pixel_size_um == pytest.approx(0.05)
    with pytest.raises(ValueError, match="disagrees"):
        preset.edited({"pipeline.optics.pixel_size_um": 0.05, "pixel_size_um": 0.1})
    coherent = preset.with_pipeline(
        preset.pipeline.with_(
            optics=Brightfield(NA=0.7, wavelength_um=0.6, camera_pixel_um=1.0, magnification=15)
        )
    )
    assert coherent.pixel_size_um == pytest.approx(1 / 15)


def test_optics_contract():
    fluo = Fluorescence(NA=1.3, wavelength_um=0.6, camera_pixel_um=6.5, magnification=100.0)
    assert fluo.sample_pixel_um == pytest.approx(0.065) and not fluo.is_coherent
    bf = Brightfield(NA=0.7, wavelength_um=0.6, pixel_size_um=0.1)
    assert bf.sample_pixel_um == pytest.approx(0.1) and bf.is_coherent
    assert [t.is_noise for t in (Background(1.0), Poisson(), ReadNoise(1.0), FlipRotate())] == [
        True, True, True, False,
    ]  # fmt: skip
