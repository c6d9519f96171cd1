"""Bright-field calibration separates in-focus particles (detection targets) from faint out-of-focus ones
(simulated as distractors), so a detector trained on the matched simulation ignores faint blobs (issue 15,
bulk water: the un-split calibration made every dark blob a target and over-counted trackpy by 78 %)."""

from pathlib import Path

import numpy as np
import pytest

from napari_deeptrack.analysis.match import apply_calibration, calibrate
from napari_deeptrack.analysis.match_families import FAINT_FRACTION, centre_contrast, index_for_contrast
from napari_deeptrack.io.images import read_images
from napari_deeptrack.sim.params import support
from napari_deeptrack.tasks import get_preset

BULK = Path(__file__).resolve().parents[3] / "shared" / "data" / "bulk_water_dev" / "frames"


def test_index_for_contrast_inverts_centre_contrast():
    pipe = get_preset("brightfield-particles").pipeline
    n = index_for_contrast(pipe, 0.4, -0.5, 0.1, 1.62)
    assert n is not None and 1.33 < n < 1.62
    assert abs(centre_contrast(pipe, 0.4, -0.5, n)) == pytest.approx(0.1, rel=0.1)
    # a contrast no sphere up to n_max reaches
    assert index_for_contrast(pipe, 0.4, -0.5, 5.0, 1.62) is None


@pytest.fixture(scope="module")
def bulk_calibration():
    assert BULK.exists(), f"real data not found at {BULK}"
    img, _ = read_images(BULK, channel="g")
    pipe = get_preset("brightfield-particles").pipeline
    return pipe, calibrate(pipe, img[:2, :200, :200], 0.351)


def test_bulk_water_particles_split_into_in_focus_and_faint(bulk_calibration):
    _, cal = bulk_calibration
    strong, faint, cut = cal.get("particles_per_frame"), cal.get("faint_per_frame"), cal.get("faint_contrast")
    # bulk water: many faint out-of-focus spheres beside the in-focus ones (a third to a half of all blobs)
    assert strong > 0 and 0.2 < faint / (strong + faint) < 0.7
    profile0 = abs(float(cal.get("ring_profile").split(",")[0]))
    assert cut == pytest.approx(FAINT_FRACTION * profile0, rel=0.25)


def test_matched_simulation_has_faint_distractors_outside_the_target_depth(bulk_calibration):
    pipe, cal = bulk_calibration
    new = apply_calibration(pipe, cal)
    target, faint = new.particles[0], new.particles[1]
    z_range = new.targets["mask"].z_range_um
    z_lo, z_hi = support(faint.z_um)
    assert z_hi < z_range[0] or z_lo > z_range[1]  # faint spheres are never targets
    assert support(faint.count)[1] >= 1
    n_faint_hi = support(faint.scatterer.refractive_index)[1]
    n_target_lo = support(target.scatterer.refractive_index)[0]
    assert n_faint_hi < support(target.scatterer.refractive_index)[1]
    r = float(np.mean(support(target.scatterer.radius_um)))
    cut = cal.get("faint_contrast")
    # the brightest faint sphere is at the cut, the faintest target sphere too (at the middle of its range)
    assert abs(centre_contrast(new, r, 0.5 * (z_lo + z_hi), n_faint_hi)) == pytest.approx(cut, rel=0.2)
    assert abs(centre_contrast(new, r, float(np.mean(z_range)), n_target_lo)) == pytest.approx(cut, rel=0.2)
    # dark particles: the faint ones are dark too
    assert centre_contrast(new, r, 0.5 * (z_lo + z_hi), n_faint_hi) < 0


def test_rings_have_no_faint_population():
    """trackpy's bright-field rings: five strong particles, nothing faint; distractors keep the preset's
    out-of-focus logic (no faint look-alikes)."""
    rings = BULK.parents[1] / "brightfield_rings" / "frames" / "bf_0000.png"
    img, _ = read_images(rings)
    cal = calibrate(get_preset("brightfield-particles").pipeline, img[:1, 0:160, 220:420])
    assert cal.get("faint_per_frame") == 0
