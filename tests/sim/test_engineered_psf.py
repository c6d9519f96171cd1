"""Double-helix and tetrapod pupil phase masks, rendered through the fluorescence optics."""

from __future__ import annotations

import math

import pytest
import torch

from napari_deeptrack.sim import Particles, Pipeline, from_json, to_json
from napari_deeptrack.sim.optics.engineered import DoubleHelix, Tetrapod
from napari_deeptrack.sim.optics.fluorescence import Fluorescence
from napari_deeptrack.sim.params import Uniform
from napari_deeptrack.sim.scatterers import PointParticle

ZS = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]


def _psfs(mask, zs=ZS, shape=65):
    """One emitter per image at the centre, one image per depth."""
    optics = Fluorescence(
        NA=1.4,
        wavelength_um=0.6,
        pixel_size_um=0.1,
        refractive_index_medium=1.518,
        phase_mask=mask,
        patch_size_px=shape,
    )
    images = []
    for z in zs:
        pipe = Pipeline(
            image_shape=(shape, shape),
            particles=[
                Particles(PointParticle(), count=1, y_px=shape // 2, x_px=shape // 2, z_um=z, intensity=1.0)
            ],
            optics=optics,
        )
        images.append(pipe(1, seed=0).image[0, 0])
    return torch.stack(images).double()


def _moments(img):
    """Principal-axis angle (deg, 0-180, from +x towards +y) and major/minor second-moment lengths."""
    h, w = img.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=img.dtype), torch.arange(w, dtype=img.dtype), indexing="ij")
    p = img / img.sum()
    cy, cx = (p * yy).sum(), (p * xx).sum()
    cyy, cxx = (p * (yy - cy) ** 2).sum(), (p * (xx - cx) ** 2).sum()
    cxy = (p * (yy - cy) * (xx - cx)).sum()
    angle = math.degrees(0.5 * math.atan2(2 * cxy.item(), (cxx - cyy).item())) % 180
    tr, det = (cxx + cyy).item(), (cxx * cyy - cxy**2).item()
    disc = math.sqrt(max(tr**2 / 4 - det, 0))
    return angle, math.sqrt(tr / 2 + disc), math.sqrt(max(tr / 2 - disc, 1e-12))


def test_double_helix_lobes_rotate_with_depth():
    psfs = _psfs(DoubleHelix(n_zones=6))
    assert torch.allclose(
        psfs.sum((-2, -1)), torch.ones(len(ZS), dtype=psfs.dtype), atol=1e-3
    )  # photons kept
    angles = [_moments(p)[0] for p in psfs]
    turn = torch.tensor(angles).diff()
    turn = (turn + 90) % 180 - 90  # unwrap
    assert (turn > 5).all() or (turn < -5).all(), angles  # monotonic rotation with z
    assert abs(turn.sum().item()) > 60  # the lobe pair turns by tens of degrees per micrometre
    elong = [_moments(p)[1] / _moments(p)[2] for p in psfs]
    assert min(elong) > 1.4  # two separated lobes at every depth, not a round spot
    # open aperture for comparison: round in focus
    open_focus = _psfs(None, [0.0])[0]
    a, major, minor = _moments(open_focus)
    assert major / minor < 1.1


def test_tetrapod_lobes_flip_orientation_and_separate_with_depth():
    zs = [-2.0, -1.0, 1.0, 2.0]
    psfs = _psfs(Tetrapod(amplitude_rad=12.0, order=6), zs)
    m = [_moments(p) for p in psfs]
    above, below = m[3][0], m[0][0]
    assert abs(((above - below) % 180) - 90) < 15  # perpendicular orientations above / below focus
    assert abs(((m[2][0] - m[1][0]) % 180) - 90) < 15
    assert m[3][1] > m[2][1] and m[0][1] > m[1][1]  # lobes separate further with |z|
    # the depth stays encoded in the shape at +-2 um, where the open-aperture PSF is a round blur
    assert m[3][1] / m[3][2] > 1.5 and m[0][1] / m[0][2] > 1.5
    _, major, minor = _moments(_psfs(None, [2.0])[0])
    assert major / minor < 1.05


def test_masks_serialise_sample_and_validate():
    tp = Tetrapod(amplitude_rad=Uniform(6.0, 10.0))
    assert from_json(to_json(tp)) == tp
    assert from_json(to_json(DoubleHelix(5, 0.3))) == DoubleHelix(5, 0.3)
    rho = torch.linspace(0, 1, 11)[:, None].expand(11, 8)
    theta = torch.linspace(-math.pi, math.pi, 8)[None, :].expand(11, 8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    p1, p2 = tp.phase(rho, theta, g1, (3,)), tp.phase(rho, theta, g2, (3,))
    assert p1.shape == (3, 11, 8) and torch.equal(p1, p2)
    assert not torch.allclose(p1[0], p1[1])  # per-image amplitudes
    dh = DoubleHelix(4).phase(rho, theta, None, (1,))
    assert torch.allclose(dh[-1], 7 * theta[-1])  # outer zone: charge 2L - 1
    with pytest.raises(ValueError, match="n_zones"):
        DoubleHelix(1)
    with pytest.raises(ValueError, match="order"):
        Tetrapod(order=3)
    with pytest.raises(ValueError, match="amplitude_rad"):
        Tetrapod(amplitude_rad=-1.0)
