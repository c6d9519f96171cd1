"""The CATCH hologram (real data): a Lorenz-Mie fit with our simulator recovers the published fit's radius and
index when it models what the camera records, the intensity ``|E|^2`` (issue 15). Fitting the real part of
the complex field (Holography's default output) instead gave a radius 6 % low."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize

from napari_deeptrack.io.images import read_images
from napari_deeptrack.sim import Holography, MieSphere, Scene

HOLO = Path(__file__).resolve().parents[3] / "shared" / "data" / "hologram_catch"
LAM, PX, N_MED = 0.447, 0.048, 1.34
HALF = 60  # a 121x121 crop around the centre: fast, and the inner fringes carry the size


def _crop_and_reference():
    assert HOLO.exists(), f"real data not found at {HOLO}"
    img = read_images(HOLO / "test_image_crop.png")[0][0].astype(np.float64)
    ref = json.loads((HOLO / "reference_values.json").read_text())
    lm = ref["test_image_large.png"]["lm_refined_particle0"]
    # centre of the 307x307 crop found by the benchmark's point-symmetry search (152.36, 153.04)
    cy, cx = 152, 153
    data = img[cy - HALF : cy + HALF + 1, cx - HALF : cx + HALF + 1] / np.median(img)
    return data, (152.36 - cy + HALF, 153.04 - cx + HALF), lm


def _fit(output: str):
    torch.set_num_threads(1)
    data, (cy, cx), lm = _crop_and_reference()
    opt = Holography(NA=1.2, wavelength_um=LAM, pixel_size_um=PX, refractive_index_medium=N_MED,
                     output=output)  # fmt: skip
    z = lm["z_p"] * PX

    def model(a, n):
        scene = Scene.empty(1, 1, data.shape)
        scene.present[:] = True
        scene.position[0, 0] = torch.tensor([cy, cx, z])
        scene.radius_um[:] = a
        scene.refractive_index[:] = n
        return opt.render(scene, [MieSphere(float(a), float(n))], None)[0, 0].double().numpy()

    fit = optimize.least_squares(lambda p: (model(*p) - data).ravel(), [1.0, 1.59],
                                 bounds=([0.5, 1.4], [1.6, 1.8]), diff_step=1e-3, max_nfev=30)  # fmt: skip
    return fit.x, lm


def test_intensity_fit_recovers_the_catch_lorenz_mie_fit():
    (a, n), lm = _fit("intensity")
    assert a == pytest.approx(lm["a_p"], rel=0.03)
    assert n == pytest.approx(lm["n_p"], rel=0.02)


def test_fitting_the_complex_field_real_part_is_biased():
    """The trap the benchmark fell in: channel 0 of the default output is Re(E), not the hologram."""
    (a, n), lm = _fit("complex")
    assert abs(a / lm["a_p"] - 1) > 0.03
