"""Bright-field calibration counts every particle (no cap per image) and separates in-focus particles from
faint out-of-focus ones (issue 15, bulk water: the calibration stopped at 5000 maxima, 625 per frame of
the ~820 there are, and did not say how many were faint)."""

from pathlib import Path

import pytest

from napari_deeptrack.analysis.match import apply_calibration, calibrate
from napari_deeptrack.analysis.match_families import FAINT_FRACTION
from napari_deeptrack.io.images import read_images
from napari_deeptrack.sim.params import support
from napari_deeptrack.tasks import get_preset

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BULK = DATA / "bulk_water_dev" / "frames"


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
    assert not cal["faint_contrast"].applied


def test_matched_density_counts_every_particle(bulk_calibration):
    pipe, cal = bulk_calibration
    new = apply_calibration(pipe, cal)
    lo, hi = support(new.particles[0].count)
    per_crop = (cal.get("particles_per_frame") + cal.get("faint_per_frame")) * 64 * 64 / (200 * 200)
    assert lo <= per_crop <= hi and (lo + hi) / 2 == pytest.approx(per_crop, rel=0.15)


def test_dense_frames_are_not_capped():
    """A frame with more particles than the old cap (5000 over all frames) is counted in full."""
    import numpy as np

    rng = np.random.default_rng(0)
    frame = np.full((1, 640, 640), 100.0) + rng.normal(0, 1, (1, 640, 640))
    yy, xx = np.mgrid[8:632:8, 8:632:8]  # 78 x 78 = 6084 dark spots, 8 px apart
    spot = np.exp(-((np.arange(-4, 5)[:, None]) ** 2 + np.arange(-4, 5)[None] ** 2) / 4.0)
    for y, x in zip(yy.ravel(), xx.ravel()):
        frame[0, y - 4 : y + 5, x - 4 : x + 5] -= 30 * spot
    cal = calibrate(get_preset("brightfield-particles").pipeline, frame, 0.351)
    total = cal.get("particles_per_frame") + cal.get("faint_per_frame")
    assert total == pytest.approx(6084, rel=0.05)


def test_rings_have_no_faint_particles():
    """trackpy's bright-field rings: three strong particles in the crop, nothing faint."""
    img, _ = read_images(DATA / "brightfield_rings" / "frames" / "bf_0000.png")
    cal = calibrate(get_preset("brightfield-particles").pipeline, img[:1, 0:160, 220:420])
    assert cal.get("faint_per_frame") == 0
