"""The render memory estimate (sim/budget.py) against the peak memory a render really takes.

Each case renders in its own child process with a hard address-space cap (``RLIMIT_AS``: the process's
size + 3 GB, so a wrong case fails there instead of hurting the machine). The child resets its peak RSS
(``/proc/self/clear_refs``), renders one batch and reports ``VmHWM - VmRSS before``: the peak increment of
a fresh process's first render (the preview's situation, grids and library warm-up included). The test
asserts ``estimate >= measured`` (the estimate refuses what would not fit) and ``estimate < 10 x measured``
(it does not refuse what would).

Run by hand to print the table of docs/reliability.md::

    python tests/sim/test_budget_measured.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

CAP_BYTES = 3 * 2**30

CASES = {
    # coherent: Mie spheres on the pupil points, thin spheres (one padded FFT per particle), core-shell
    "brightfield Mie x200, 256x256, NA 0.5, batch 2": dict(
        optics="Brightfield", scatterer="MieSphere", count=200, shape=(256, 256), NA=0.5, batch=2
    ),
    "brightfield Sphere x10, 256x384, NA 0.5, batch 1": dict(
        optics="Brightfield", scatterer="Sphere", count=10, shape=(256, 384), NA=0.5, batch=1
    ),
    "holography CoreShell x100, 192x192, NA 0.8, batch 1": dict(
        optics="Holography", scatterer="CoreShellSphere", count=100, shape=(192, 192), NA=0.8, batch=1
    ),
    # fluorescence: PSF patches grow with NA and the z range
    "fluorescence point x100, 256x256, NA 1.3, z +-2 um, batch 2": dict(
        optics="Fluorescence", scatterer="PointParticle", count=100, shape=(256, 256), NA=1.3, batch=2, z=2.0
    ),
    # a training-style pipeline: a mask target, geometric augmentations (warped copies), shot noise
    "fluorescence point x50, 256x256, NA 0.8, mask + flips + affine + Poisson, batch 16": dict(
        optics="Fluorescence",
        scatterer="PointParticle",
        count=50,
        shape=(256, 256),
        NA=0.8,
        batch=16,
        augment=True,
    ),
}


def build(case: dict):
    """The pipeline of a case (pixel 0.1 um, wavelength 0.6 um, radius 0.5 um)."""
    from napari_deeptrack import sim

    optics = getattr(sim, case["optics"])(
        NA=case["NA"], wavelength_um=case.get("wavelength_um", 0.6), pixel_size_um=case.get("pixel_um", 0.1)
    )
    kind = case["scatterer"]
    if kind == "MieSphere":
        scatterer = sim.MieSphere(radius_um=0.5, refractive_index=1.59)
    elif kind == "CoreShellSphere":
        scatterer = sim.CoreShellSphere(core_radius_um=0.3, shell_radius_um=0.5)
    elif kind == "Sphere":
        scatterer = sim.Sphere(radius_um=0.5, refractive_index=1.59)
    else:
        scatterer = sim.PointParticle()
    z = float(case.get("z", 0.0))
    particles = sim.Particles(scatterer, count=case["count"], z_um=sim.Uniform(-z, z) if z else 0.0)
    pipeline = sim.Pipeline(image_shape=tuple(case["shape"]), particles=[particles], optics=optics)
    if case.get("augment"):
        pipeline = pipeline.with_(
            targets={"mask": sim.DiskMask()}, transforms=[sim.FlipRotate(), sim.Affine(), sim.Poisson()]
        )
    return pipeline


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _child(case: dict) -> None:
    """In the child process: estimate, cap, reset the peak, render, print the numbers as JSON."""
    import torch

    torch.set_num_threads(1)
    from napari_deeptrack.sim.budget import estimate_render

    pipeline = build(case)
    estimate = estimate_render(pipeline, case["batch"]).bytes
    before = _status("VmRSS")
    resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + CAP_BYTES, resource.RLIM_INFINITY))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        batch = pipeline.image_scene(pipeline.sample_scene(case["batch"], generator), generator)
        del batch
    print(json.dumps({"estimate": estimate, "measured": _status("VmHWM") - before}))


def measure(case: dict) -> dict:
    """``{"estimate": bytes, "measured": bytes}`` for one case, rendered in a capped child process."""
    out = subprocess.run(
        [sys.executable, __file__, json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and lines, f"child failed:\n{out.stderr[-2000:]}"
    return json.loads(lines[-1])


def _can_measure() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status("VmHWM")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_measure(), reason="needs Linux /proc peak-RSS accounting (VmHWM, clear_refs)")
@pytest.mark.parametrize("name", list(CASES))
def test_render_estimate_bounds_measured_peak(name):
    r = measure(CASES[name])
    est, got = r["estimate"], r["measured"]
    assert got > 0
    assert est >= got, f"{name}: estimate {est / 2**20:.0f} MB < measured peak {got / 2**20:.0f} MB"
    assert est < 10 * got, f"{name}: estimate {est / 2**20:.0f} MB > 10 x measured {got / 2**20:.0f} MB"


def test_targets_that_render_or_have_many_channels_count():
    """A ``CleanImage`` target renders the scene again; a z-binned volume has ``n_bins`` channels."""
    from napari_deeptrack import sim
    from napari_deeptrack.sim.budget import estimate_render

    case = CASES["brightfield Mie x200, 256x256, NA 0.5, batch 2"]
    plain = build(case)
    sharp = sim.Brightfield(NA=0.9, wavelength_um=0.6, pixel_size_um=0.1)  # a larger render than the image's
    clean = plain.with_(targets={"clean": sim.CleanImage(sharp, plain.scatterers)})
    volume = plain.with_(targets={"volume": sim.ZBinnedVolume(n_bins=64)})
    e0 = estimate_render(plain, 2).bytes
    sharp_render = estimate_render(plain.with_(optics=sharp), 2).detail["optics_bytes"]
    assert sharp_render > estimate_render(plain, 2).detail["optics_bytes"]
    # the target renders after the image, in the memory the image's render freed: the larger one counts
    assert estimate_render(clean, 2).detail["optics_bytes"] == sharp_render
    assert estimate_render(volume, 2).bytes >= e0 + 63 * 2 * 256 * 256 * 4


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _child(json.loads(sys.argv[1]))
    else:
        for name, case in CASES.items():
            r = measure(case)
            e, m = r["estimate"] / 2**20, r["measured"] / 2**20
            print(f"| {name} | {e:,.0f} MB | {m:,.0f} MB | {e / m:.2f} |", flush=True)
