"""Issue 15 replayed on the real recordings in ``../shared/data``: every row of its table runs from a real
image to a trained model without error, calibration knows its preset, and the sim-vs-real distance
ranks the matched simulation above the un-matched preset and flags a polarity mismatch.

Small, fast settings: crops of the real images, tiny trainings (a few optimiser steps).
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from napari_deeptrack.analysis.calibrate import compare_statistics
from napari_deeptrack.analysis.match import apply_calibration, calibrate, preset_family
from napari_deeptrack.analysis.realism import sim_real_distance
from napari_deeptrack.cli import main
from napari_deeptrack.io.bundle import read_bundle_config
from napari_deeptrack.io.images import read_images
from napari_deeptrack.io.tiff import write_tiff
from napari_deeptrack.tasks import get_preset, load_task

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BULK = DATA / "bulk_water_dev" / "frames" / "bulk_water_000.png"
RINGS = DATA / "brightfield_rings" / "frames" / "bf_0000.png"
BBBC = DATA / "bbbc039_dev" / "images" / "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.tif"
HOLO = DATA / "hologram_catch" / "test_image_crop.png"
TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--device", "cpu", "--quiet",
        "--set", "training.validation_size=4", "--seed", "0"]  # fmt: skip


def _need(path: Path) -> Path:
    assert path.exists(), f"real data not found at {path}: ../shared/data must sit beside the checkout"
    return path


def _bulk_crop(frames=1):
    img, _ = read_images(_need(BULK.parent), channel="g")
    return img[:frames, 100:228, 100:228]


def _rings_crop():
    img, _ = read_images(_need(RINGS))
    return img[:1, 0:160, 220:420]  # three of the five particles


# ---------------------------------------------------------------------------- table rows (CLI)
def test_row1_png_match_reads_png_and_fixes_polarity(tmp_path, capsys):
    """``train particles-2d --match frame.png``: the PNG is read (RGBA -> green channel), the dark
    particles are detected as dark and the matched simulation draws dark spots."""
    out = tmp_path / "p2d"
    rc = main(["train", "particles-2d", "--out", str(out), "--match", str(_need(BULK)),
               "--match-channel", "g", "--pixel-size-um", "0.351", "--set", "pipeline.image_shape=[32,32]",
               *TINY])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "channel G" in err and "calibration (point-emitters)" in err and "polarity = dark" in err
    assert "brightfield-particles" in err  # the note pointing at the physical bright-field preset
    task = load_task(str(out))
    assert "InvertContrast" in [type(t).__name__ for t in task.pipeline.transforms]
    assert read_bundle_config(out)["pixel_size_um"] == pytest.approx(0.351)
    sim = task.pipeline.with_(image_shape=(128, 128))(2, seed=0).image[:, 0].numpy()
    d = sim_real_distance(sim, _bulk_crop())
    assert d["sim"]["polarity"] == "dark" and d["components"]["polarity"] == 0.0


def test_row2_polarity_mismatch_is_flagged():
    """The un-matched fluorescence preset (bright spots) against bulk water (dark particles): both the
    old compare_statistics and the per-component distance say it does not cover the data."""
    real = _bulk_crop()
    sim = get_preset("particles-2d").pipeline.with_(image_shape=(128, 128))(2, seed=0).image[:, 0].numpy()
    d = sim_real_distance(sim, real)
    assert d["components"]["polarity"] == 1.0 and d["verdict"] == "not covered"
    assert any("re-match polarity" in r for r in d["reasons"])
    old = compare_statistics(sim, real)
    assert not old["polarity_match"] and old["distance"] > 1.0


@pytest.mark.parametrize("preset", ["particle-localize", "brightfield-localize"])
def test_row3_single_particle_crop_trains_with_finite_loss(tmp_path, capsys, preset):
    """51x51 bright-field crop around one particle: --match must not make the loss NaN (one particle per
    crop stays one particle: a count of 0 would make the offset target undefined)."""
    img, _ = read_images(_need(RINGS))
    ys, xs = np.unravel_index(np.argmax(img[0]), img[0].shape)
    y0, x0 = int(np.clip(ys - 25, 0, 449)), int(np.clip(xs - 25, 0, 449))
    crop = tmp_path / "crop.tif"
    write_tiff(crop, img[:3, y0 : y0 + 51, x0 : x0 + 51])
    out = tmp_path / preset
    rc = main(["train", preset, "--out", str(out), "--match", str(crop), *TINY])
    err = capsys.readouterr().err
    assert rc == 0, err
    cfg = read_bundle_config(out)
    assert all(np.isfinite(cfg["history"]["val_loss"])), cfg["history"]
    task = load_task(str(out))
    assert task.pipeline.particles[0].count == 1


def test_row5_cells_match_measures_nuclei_not_psf(tmp_path, capsys):
    """cells-count --match on a whole BBBC039 image: nucleus size goes to the nuclei, the NA stays the
    objective's (no PSF blow-up), and a tiny training runs within the memory budget."""
    out = tmp_path / "cells"
    rc = main(["train", "cells-count", "--out", str(out), "--match", str(_need(BBBC)),
               "--set", "pipeline.image_shape=[64,64]", *TINY])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "calibration (cells)" in err and "object_radius_px" in err
    task = load_task(str(out))
    assert task.pipeline.optics.NA == pytest.approx(get_preset("cells-count").pipeline.optics.NA)
    r = task.pipeline.particles[0].scatterer.radius_px
    assert 10.0 < r.mean < 20.0  # BBBC039 nuclei: about 14 px equivalent radius


def test_match_set_overrides_an_estimate_and_rejects_unknown_names(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["train", "cells-count", "--out", str(out), "--match", str(_need(BBBC)),
            "--set", "pipeline.image_shape=[64,64]", *TINY]  # fmt: skip
    assert main([*args, "--match-set", "object_radius_px=9"]) == 0
    err = capsys.readouterr().err
    assert "object_radius_px = 9 px" in err and "set by the user" in err
    assert load_task(str(out)).pipeline.particles[0].scatterer.radius_px.mean == pytest.approx(9.0)
    assert main([*args, "--match-set", "spot_sigma_px=2"]) == 2
    assert "valid names" in capsys.readouterr().err


# ---------------------------------------------------------------------------- calibration by family
def test_families_of_the_presets():
    fam = {p: preset_family(get_preset(p).pipeline) for p in
           ("particles-2d", "cells-count", "brightfield-particles", "holography-3d")}  # fmt: skip
    assert fam == {"particles-2d": "point-emitters", "cells-count": "cells",
                   "brightfield-particles": "brightfield", "holography-3d": "hologram"}  # fmt: skip


def test_brightfield_rings_polarity_and_profile():
    """trackpy's bright-field sample: bright centres with a dark ring -> a bright-centre defocus range."""
    cal = calibrate(get_preset("brightfield-particles").pipeline, _rings_crop())
    assert cal.get("polarity") == "bright"
    prof = np.array([float(v) for v in cal.get("ring_profile").split(",")])
    assert prof[0] > 0.3 and prof.min() < -0.1  # bright centre, dark ring
    assert cal.get("particles_per_frame") == pytest.approx(3, abs=1)
    assert "pixel size whose simulated profiles fit best" in cal["pixel_size_um"].source
    every = {e.name: e for e in cal.estimates}
    assert all(e.source for e in every.values()) and every["sphere_radius_um"].uncertainty is not None


def test_hologram_fringes_give_the_height():
    """CATCH hologram: fringe radii give z (the Lorenz-Mie fit says 159.34 px x 0.048 um = 7.65 um)."""
    img, _ = read_images(_need(HOLO))
    pipe = get_preset("holography-3d").pipeline
    optics = dataclasses.replace(pipe.optics, wavelength_um=0.447, refractive_index_medium=1.34,
                                 pixel_size_um=0.048, camera_pixel_um=None, magnification=None)
    pipe = pipe.with_(optics=optics)
    cal = calibrate(pipe, img, 0.048)
    assert cal.get("normalisation") == pytest.approx(100, rel=0.1)
    assert cal.get("z_um") == pytest.approx(159.34 * 0.048, rel=0.15)


def test_estimates_are_clamped_to_physical_ranges():
    from napari_deeptrack.analysis.match import Estimate

    e = Estimate("NA", 0.01, "", None, "test", 0.2, 1.3)
    assert e.value == 0.2 and "clamped" in e.source
    with pytest.raises(ValueError, match="finite"):
        Estimate("x", float("nan"))


# ---------------------------------------------------------------------------- distance ranks matched first
@pytest.mark.parametrize(
    "name, preset, px",
    [("bulk_water", "particles-2d", 0.351), ("rings", "brightfield-particles", None),
     ("bbbc039", "cells-count", None)],  # fmt: skip
)
def test_matched_simulation_is_closer_than_the_preset(name, preset, px):
    real = {"bulk_water": _bulk_crop, "rings": _rings_crop,
            "bbbc039": lambda: read_images(_need(BBBC))[0][:, :256, :256]}[name]()  # fmt: skip
    task = get_preset(preset)
    shape = real.shape[-2:]
    cal = calibrate(task.pipeline, real, px)
    matched = apply_calibration(task.pipeline, cal, match_shape=True)
    before = sim_real_distance(task.pipeline.with_(image_shape=shape)(2, seed=1).image[:, 0].numpy(), real)
    after = sim_real_distance(matched(2, seed=1).image[:, 0].numpy(), real)
    assert after["distance"] < before["distance"], (before["components"], after["components"])
    assert after["components"]["polarity"] == 0.0
