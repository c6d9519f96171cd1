"""Angular-spectrum propagation, refocusing and focus metrics."""

from __future__ import annotations

import math

import pytest
import torch

from napari_deeptrack.sim import Scene
from napari_deeptrack.sim.mie import MieSphere
from napari_deeptrack.sim.optics.coherent import Holography
from napari_deeptrack.sim.optics.propagation import (
    find_focus,
    focus_metric,
    propagate,
    refocus,
    transfer_function,
)

LAM, DX, NM = 0.633, 0.1, 1.33


def _bandlimited_field(shape=(64, 64), seed=0, fraction=0.8):
    """Random field whose spectrum lies inside the propagating disc (|f| < fraction * n / lambda)."""
    g = torch.Generator().manual_seed(seed)
    spec = torch.randn(*shape, generator=g, dtype=torch.complex64)
    fy = torch.fft.fftfreq(shape[0], DX)[:, None]
    fx = torch.fft.fftfreq(shape[1], DX)[None, :]
    spec = spec * ((fy**2 + fx**2) < (fraction * NM / LAM) ** 2)
    return torch.fft.ifft2(spec)


def test_parseval_energy_conserved_for_propagating_waves():
    field = _bandlimited_field()
    e0 = (field.abs() ** 2).sum()
    for z in (0.5, -3.0, 25.0):
        out = propagate(field, z, LAM, DX, NM)
        assert (out.abs() ** 2).sum().item() == pytest.approx(e0.item(), rel=1e-5)
        assert not torch.allclose(out, field, atol=1e-3)  # it did change


def test_propagation_composes():
    field = _bandlimited_field(seed=1, fraction=1.2)  # includes evanescent components
    for z1, z2 in [(1.5, 2.5), (4.0, -1.0), (-2.0, -3.0)]:
        two = propagate(
            propagate(field, z1, LAM, DX, NM, evanescent="drop"), z2, LAM, DX, NM, evanescent="drop"
        )
        one = propagate(field, z1 + z2, LAM, DX, NM, evanescent="drop")
        assert torch.allclose(two, one, atol=1e-5 * field.abs().max().item())
    # default "decay": exact for forward steps, evanescent waves damped
    two = propagate(propagate(field, 1.0, LAM, DX, NM), 2.0, LAM, DX, NM)
    assert torch.allclose(two, propagate(field, 3.0, LAM, DX, NM), atol=1e-5 * field.abs().max().item())
    assert (propagate(field, 1.0, LAM, DX, NM).abs() ** 2).sum() < (field.abs() ** 2).sum() * 0.999


def test_evanescent_wave_decays_at_the_right_rate():
    f_ev = 1.5 * NM / LAM  # cycles/um, beyond n / lambda
    h = transfer_function((1, 200), 0.2, LAM, 0.05, NM)
    freqs = torch.fft.fftfreq(200, 0.05)
    i = int(torch.argmin((freqs - f_ev).abs()))
    kappa = 2 * math.pi * math.sqrt(freqs[i].item() ** 2 - (NM / LAM) ** 2)
    assert h[0, i].abs().item() == pytest.approx(math.exp(-kappa * 0.2), rel=1e-4)
    assert transfer_function((1, 200), -0.2, LAM, 0.05, NM)[0, i].abs().item() == 0.0  # never amplified


def test_batched_per_item_z_matches_single_calls():
    fields = torch.stack([_bandlimited_field(seed=s) for s in range(3)])[:, None]  # [3, 1, H, W]
    z = torch.tensor([0.0, 2.0, -5.0])
    out = propagate(fields, z, LAM, DX, NM)
    for i in range(3):
        assert torch.allclose(out[i, 0], propagate(fields[i, 0], z[i].item(), LAM, DX, NM), atol=1e-5)
    stack = propagate(fields[0, 0], z, LAM, DX, NM)  # single field, [Z] depths -> stack
    assert stack.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="z_um"):
        propagate(fields[:, 0], torch.zeros(3, 2), LAM, DX, NM)
    with pytest.raises(ValueError, match="wavelength_um"):
        propagate(fields, 1.0, -LAM, DX, NM)


def _hologram(z_um, output, radius=0.3, index=1.45, shape=128):
    optics = Holography(
        NA=1.1, wavelength_um=LAM, pixel_size_um=DX, refractive_index_medium=NM, output=output
    )
    scene = Scene.empty(1, 1, (shape, shape))
    scene.present[:] = True
    scene.position[0, 0] = torch.tensor([60.3, 66.7, z_um])
    scene.radius_um[:] = radius
    scene.refractive_index[:] = index
    img = optics.render(scene, [MieSphere(radius, index)], None)[0]
    return torch.complex(img[0], img[1]) if output == "complex" else img[0]


@pytest.mark.parametrize("z_true", [-7.0, 4.0, 11.5])
def test_refocusing_finds_the_particle_depth(z_true):
    step = 0.5
    # off-axis holography (complex field): scan both sides of focus
    z_scan = torch.arange(-15.0, 15.0 + 1e-6, step)
    z_found = find_focus(_hologram(z_true, "complex"), z_scan, LAM, DX, NM, metric="concentration")
    assert abs(z_found - z_true) <= step
    # in-line hologram (intensity): the twin image focuses at -z, so scan the known side only
    side = z_scan[z_scan * z_true > 0.5]
    z_found = find_focus(_hologram(z_true, "intensity"), side, LAM, DX, NM, metric="concentration")
    assert abs(z_found - z_true) <= step


def test_refocused_particle_is_compact():
    holo = _hologram(8.0, "complex")
    u_focus = refocus(holo, 8.0, LAM, DX, NM) - 1
    u_off = refocus(holo, 2.0, LAM, DX, NM) - 1
    peak = torch.unravel_index(torch.argmax(u_focus.abs()), u_focus.shape)
    assert abs(int(peak[0]) - 60) <= 1 and abs(int(peak[1]) - 67) <= 1  # refocuses onto its (y, x)
    assert u_focus.abs().max() > 3 * u_off.abs().max()
    assert focus_metric(u_focus + 1) > focus_metric(u_off + 1)
    with pytest.raises(ValueError, match="metric"):
        focus_metric(u_focus, "sharpness")
