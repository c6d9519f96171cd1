"""Case-study presets (issue 7): each simulates a batch of the right shapes and its model runs on it;
helpers of the examples are checked on small known inputs (the examples' quick modes run in
``test_examples_quick.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deeptrack.nn import build_model
from napari_deeptrack.sim import Counts, from_json, to_json
from napari_deeptrack.sim.targets import in_frame
from napari_deeptrack.tasks import get_preset, list_presets

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BBBC039 = ROOT.parent / "shared" / "data" / "bbbc039_dev"

# preset -> (batch image shape without B, target shape without B)
SHAPES = {
    "digits-classify": ((1, 8, 8), ()),
    "cells-count": ((1, 128, 128), (1, 128, 128)),
    "nuclei-segment": ((1, 128, 128), (1, 128, 128)),
    "restore": ((1, 64, 64), (1, 64, 64)),
    "holography-characterize": ((2, 48, 48), (2,)),
    "holography-3d": ((1, 64, 64), (16, 64, 64)),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _examples_path():
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_preset_simulates_and_model_runs(name):
    assert name in list_presets()
    task = get_preset(name)
    batch = task.pipeline(2, seed=3)
    img_shape, tgt_shape = SHAPES[name]
    assert tuple(batch.image.shape) == (2, *img_shape)
    assert torch.isfinite(batch.image).all()
    target = batch.targets[task.target]
    assert tuple(target.shape) == (2, *tgt_shape)
    model = build_model(task.model).eval()
    with torch.no_grad():
        out = model(batch.image)
    if task.kind == "classification":
        assert tuple(out.shape) == (2, 10)
    elif task.kind == "segmentation":  # class logits per pixel, integer class targets
        assert tuple(out.shape) == (2, 3, *tgt_shape[1:])
    else:
        assert tuple(out.shape) == tuple(target.shape)
    # same seed, same batch; the task survives a JSON round trip unchanged
    again = task.pipeline(2, seed=3)
    assert torch.equal(again.image, batch.image)
    assert json.loads(to_json(from_json(to_json(task)))) == json.loads(to_json(task))


# ---------------------------------------------------------------------------- digits
def test_digit_splits_are_disjoint_stratified_and_render_the_real_digits():
    from sklearn.datasets import load_digits

    from napari_deeptrack.sim.digits import _split_indices
    from napari_deeptrack.tasks.presets_digits import digits_pipeline

    idx = _split_indices(0.25, 0.1, 0)
    tr, va, te = (set(idx[k].tolist()) for k in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 1797
    labels = load_digits().target
    counts = np.bincount(labels[idx["test"]], minlength=10)
    assert counts.min() >= 40  # about 25 % of ~180 per class
    # without augmentation the pipeline renders the digit's own pixels and its own label
    b = digits_pipeline("test", augment=False)(32, seed=1)
    sel = b.scene.attributes["sample_index"][:, 0].numpy()
    assert set(sel.tolist()) <= te
    np.testing.assert_allclose(b.image[:, 0].numpy(), load_digits().images[sel] / 16.0, atol=1e-6)
    np.testing.assert_array_equal(b.targets["digit"].numpy(), labels[sel])
    # augmentation changes the pixels but keeps the label
    a = digits_pipeline("test", augment=True)(32, seed=1)
    picked = a.scene.attributes["sample_index"][:, 0].numpy()
    np.testing.assert_array_equal(a.targets["digit"].numpy(), labels[picked])
    assert not torch.allclose(a.image, b.image)


# ---------------------------------------------------------------------------- cells
def test_cells_density_integral_is_the_count_of_centred_nuclei():
    task = get_preset("cells-count")
    b = task.pipeline(6, seed=5)
    scale = task.pipeline.targets["density"].scale
    assert scale == task.postprocess["density_scale"]
    integral = b.targets["density"].sum(dim=(1, 2, 3)) / scale
    torch.testing.assert_close(integral, Counts()(b.scene), atol=1e-3, rtol=0)
    # nuclei centred outside the frame but partly visible exist, and add nothing
    outside = b.scene.present & ~in_frame(b.scene.position[..., :2], b.scene.image_shape)
    assert bool(outside.any())
    assert float(Counts()(b.scene).max()) > 0


def test_simulated_nuclei_match_the_measured_real_size():
    """Rendered nuclei (thresholded halfway between background and nucleus) have the real images'
    equivalent radius, 13-16 px for whole nuclei (median 14.4 px in bbbc039_dev)."""
    from scipy import ndimage

    from napari_deeptrack.sim import Particles
    from napari_deeptrack.tasks.presets_cells import cells_pipeline

    p = cells_pipeline((96, 96))
    pop = p.particles[0]
    p = p.with_(particles=[Particles(pop.scatterer, count=1, intensity=1.0e6, margin_px=40.0)], transforms=[])
    img = p(24, seed=0).image[:, 0].numpy()
    radii = []
    for im in img:
        lab, n = ndimage.label(im > 0.5 * im.max())
        if n:
            radii.append(np.sqrt(np.bincount(lab.ravel())[1:].max() / np.pi))
    assert 12.5 < np.median(radii) < 16.5


def test_nuclei_classes_follow_the_cell_outline():
    """Interior + boundary pixels of an isolated nucleus cover the outline's exact area
    (pi R^2 (1 + sum a_m^2 / 2)) to within the half-pixel rasterisation, and the boundary is a ring."""
    from napari_deeptrack.sim import Particles

    task = get_preset("nuclei-segment")
    p = task.pipeline.with_(image_shape=(96, 96))
    p = p.with_(particles=[Particles(p.particles[0].scatterer, count=1, margin_px=40.0)], transforms=[])
    b = p(6, seed=1)
    cls = b.targets["classes"][:, 0]
    cell = p.particles[0].scatterer
    idx = torch.zeros(6, dtype=torch.long)
    area_px = cell.area_um2(b.scene, torch.arange(6), idx) / 0.65**2
    measured = (cls > 0).sum(dim=(1, 2)).float()
    torch.testing.assert_close(measured, area_px, rtol=0.06, atol=0)
    assert ((cls == 2).sum(dim=(1, 2)) > 0).all() and ((cls == 1).sum(dim=(1, 2)) > 0).all()
    # the bright pixels of the noise-free image lie inside the labelled nucleus
    img = b.image[:, 0]
    bright = img > 0.7 * img.amax(dim=(1, 2), keepdim=True)
    assert float((cls[bright] > 0).float().mean()) > 0.98


def test_crop_counts_count_each_centroid_in_exactly_one_tile():
    _examples_path()
    from _bbbc039 import crop_counts, tile_slices

    lab = np.zeros((20, 30), dtype=np.int32)
    lab[1:4, 1:4] = 1  # centroid (2, 2): tile (0, 0)
    lab[8:12, 9:11] = 2  # centroid (9.5, 9.5): tile (0, 0) holds [-0.5, 9.5) -> tile (1, 1)
    lab[5:7, 18:25] = 3  # centroid (5.5, 21): tile (0, 2)
    tiles = tile_slices(lab.shape, 10)
    assert len(tiles) == 6
    c = crop_counts(lab, tiles)
    np.testing.assert_array_equal(c, [1, 0, 1, 0, 1, 0])  # tiles in row-major order
    assert c.sum() == 3


def test_affine_baseline_is_the_least_squares_fit():
    _examples_path()
    from cells_count import affine_baseline

    s = np.array([1.0, 2.0, 3.0, 4.0])
    pred, coef = affine_baseline(s, 2 * s + 1)
    np.testing.assert_allclose(coef, [2.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(pred, 2 * s + 1, atol=1e-9)


# ---------------------------------------------------------------------------- restore
def test_restore_target_is_noise_free_and_sharper_than_the_input():
    task = get_preset("restore")
    p = task.pipeline.with_(image_shape=(48, 48))
    a, b = p(3, seed=7), p(3, seed=7)
    clean = a.targets["clean"]
    assert torch.equal(clean, b.targets["clean"])
    # (edited by the restore helper: the target is now in the units of the percentile-normalised
    # input, i.e. the noise-free photons divided by the input's p99.8 - p1, see NormalizeWithTarget)
    # the target does not depend on the noise: re-rendering the scene gives it back up to that factor
    photons = task.pipeline.targets["clean"](a.scene)
    ratio = photons.sum(dim=(-2, -1)) / clean.sum(dim=(-2, -1))
    torch.testing.assert_close(photons, clean * ratio[..., None, None], rtol=1e-4, atol=1e-3)
    # a single in-focus point: the target PSF (NA 1.4) is narrower than the input PSF (NA 0.8)
    from napari_deeptrack.sim import Particles, PointParticle

    one = p.with_(
        particles=[Particles(PointParticle(), count=1, y_px=23.5, x_px=23.5, intensity=1000.0)], transforms=[]
    )
    sb = one(1, seed=0)
    yy, xx = np.mgrid[:48, :48]

    def second_moment(im):
        im = im / im.sum()
        return float(((yy - 23.5) ** 2 * im + (xx - 23.5) ** 2 * im).sum())

    assert second_moment(sb.targets["clean"][0, 0].numpy()) < 0.6 * second_moment(sb.image[0, 0].numpy())


# ---------------------------------------------------------------------------- holography
def test_characterize_target_scales_back_to_the_scene_values():
    task = get_preset("holography-characterize")
    b = task.pipeline(4, seed=2)
    tgt = task.pipeline.targets["properties"]
    phys = tgt.unscale(b.targets["properties"])
    torch.testing.assert_close(phys[:, 0], b.scene.radius_um[:, 0])
    torch.testing.assert_close(phys[:, 1], b.scene.refractive_index[:, 0].real)
    assert ((b.targets["properties"] >= 0) & (b.targets["properties"] <= 1)).all()
    # a larger sphere scatters more: the field departs further from the unit illumination
    from napari_deeptrack.tasks.presets_holography import characterize_pipeline

    small = characterize_pipeline(radius_um=0.2, refractive_index=1.59, z_um=0.0).with_(transforms=[])
    large = characterize_pipeline(radius_um=0.5, refractive_index=1.59, z_um=0.0).with_(transforms=[])
    dev = [float((pp(1, seed=0).image[:, 0] - 1).abs().sum()) for pp in (small, large)]
    assert dev[1] > 2 * dev[0]


def test_bundle_of_a_case_preset_loads_in_a_fresh_interpreter(tmp_path):
    """Presets use their own serialisable classes (DigitSample, CentredDensityMap...): a saved bundle
    must load where no preset module was imported before."""
    from napari_deeptrack.io.bundle import save_bundle

    task = get_preset("digits-classify")
    save_bundle(tmp_path / "b", build_model(task.model), task, {})
    code = "from napari_deeptrack.io.bundle import load_bundle; print(load_bundle(r'%s').task.name)" % (
        tmp_path / "b"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("digits-classify")
