"""Sample data contributions: simulated data with its ground truth, made by the package's own simulator.

- ``particle_movie``: fluorescent point particles diffusing (20 frames, 128 x 128 px, 0.1 um/px), with
  the ground-truth Points layer (features: track_id, z_um, visible).
- ``cells``: fluorescent nuclei-like cells with their instance labels.
- ``hologram``: an in-line hologram of Mie spheres at different heights, with 3D ground-truth points
  (z, y, x in um; features: z_um, radius_um, refractive_index).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["cells", "hologram", "particle_movie"]

PIXEL_SIZE_UM = 0.1


def _spatial(pixel_size_um: float, lead: int = 0) -> dict:
    return {
        "scale": (1.0,) * lead + (pixel_size_um, pixel_size_um),
        "units": ("pixel",) * lead + ("um", "um"),
    }


def particle_movie(n_frames: int = 20, shape: tuple[int, int] = (128, 128), seed: int = 0):
    """A fluorescent-particle movie and its ground-truth Points layer (frame, y, x)."""
    from .. import sim

    pipeline = sim.Pipeline(
        image_shape=shape,
        particles=[
            sim.Particles(sim.PointParticle(), count=12, intensity=sim.Uniform(800.0, 1500.0), margin_px=4.0)
        ],
        optics=sim.Fluorescence(NA=1.3, wavelength_um=0.6, pixel_size_um=PIXEL_SIZE_UM),
        transforms=[sim.Background(20.0), sim.Poisson()],
    )
    movie = sim.Movie(pipeline, n_frames=n_frames, frame_interval_s=0.05, diffusion_um2_s=0.2)
    batch = movie(1, seed=seed)
    images = batch.image[0, :, 0].numpy().astype(np.float32)
    truth = pd.DataFrame(sim.movie_truth_table(batch))
    truth = truth[truth["present"]].reset_index(drop=True)
    coords = truth[["frame", "y", "x"]].to_numpy(dtype=float)
    features = truth[["track_id", "z_um", "visible"]]
    image_kwargs = {
        "name": "particles (simulated)",
        "colormap": "gray",
        "metadata": {"pixel_size_um": PIXEL_SIZE_UM, "simulated": True},
        **_spatial(PIXEL_SIZE_UM, 1),
    }
    points_kwargs = {
        "name": "particles ground truth",
        "features": features,
        "size": 6,
        "face_color": "transparent",
        "border_color": "lime",
        **_spatial(PIXEL_SIZE_UM, 1),
    }
    return [(images, image_kwargs, "image"), (coords, points_kwargs, "points")]


def cells(shape: tuple[int, int] = (192, 192), seed: int = 0):
    """Simulated fluorescent cells (nuclei-like) and their instance labels."""
    from .. import sim

    px = 0.325
    pipeline = sim.Pipeline(
        image_shape=shape,
        particles=[
            sim.Particles(
                sim.CellBody(radius_um=sim.Uniform(4.0, 6.0)),
                count=sim.IntUniform(8, 12),
                intensity=sim.Uniform(4e4, 8e4),
                margin_px=8.0,
            )
        ],
        optics=sim.Fluorescence(NA=0.35, wavelength_um=0.46, pixel_size_um=px),
        transforms=[sim.Background(50.0), sim.Poisson()],
        targets={"labels": sim.InstanceLabels(pixel_size_um=px)},
        min_distance_px=30.0,
    )
    batch = pipeline(1, seed=seed)
    image = batch.image[0, 0].numpy().astype(np.float32)
    labels = batch.targets["labels"][0].numpy()
    labels = labels.reshape(labels.shape[-2:]).astype(np.int32)
    return [
        (
            image,
            {
                "name": "cells (simulated)",
                "colormap": "gray",
                **_spatial(px),
                "metadata": {"pixel_size_um": px, "simulated": True},
            },
            "image",
        ),
        (labels, {"name": "cells ground truth", "opacity": 0.4, **_spatial(px)}, "labels"),
    ]


def hologram(shape: tuple[int, int] = (128, 128), seed: int = 0):
    """An in-line hologram of Mie spheres at different heights, and 3D ground-truth points (z, y, x)."""
    from .. import sim

    px = 0.1
    pipeline = sim.Pipeline(
        image_shape=shape,
        particles=[
            sim.Particles(
                sim.MieSphere(radius_um=sim.Uniform(0.4, 0.8), refractive_index=sim.Uniform(1.45, 1.6)),
                count=3,
                z_um=sim.Uniform(5.0, 15.0),
                margin_px=20.0,
            )
        ],
        optics=sim.Holography(NA=0.8, wavelength_um=0.532, pixel_size_um=px, refractive_index_medium=1.33),
        min_distance_px=30.0,
    )
    batch = pipeline(1, seed=seed)
    image = batch.image[0, 0].numpy().astype(np.float32)
    scene = batch.scene
    keep = scene.present[0].numpy()
    pos = scene.position[0].numpy()[keep]
    coords = np.stack([pos[:, 2] / px, pos[:, 0], pos[:, 1]], axis=1)  # z in pixel units -> um via scale
    features = pd.DataFrame(
        {
            "z_um": pos[:, 2],
            "radius_um": scene.radius_um[0].numpy()[keep],
            "refractive_index": scene.refractive_index[0].real.numpy()[keep],
        }
    )
    return [
        (
            image,
            {
                "name": "hologram (simulated)",
                "colormap": "gray",
                **_spatial(px),
                "metadata": {"pixel_size_um": px, "wavelength_um": 0.532, "simulated": True},
            },
            "image",
        ),
        (
            coords,
            {
                "name": "hologram ground truth 3D",
                "features": features,
                "size": 8,
                "face_color": "red",
                "scale": (px, px, px),
                "units": ("um", "um", "um"),
            },
            "points",
        ),
    ]
