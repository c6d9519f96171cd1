"""Open the output of ``napari-deeptrack demo`` in napari (``demo --gui``).

Layers: the movie (with its pixel size), the ground-truth Points, the detections (Points with
``probability``, ``track_id`` and ``true_track_id`` features) and the linked Tracks; then the plugin's
dock widgets (Simulate, Train, Apply, Review) as listed in ``napari.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["add_demo_layers", "plugin_widget_names", "show_demo"]

PLUGIN = "napari-deeptrack"


def plugin_widget_names() -> list[str]:
    """Display names of the plugin's widgets, read from its ``napari.yaml``."""
    from importlib import resources

    import yaml

    text = resources.files("napari_deeptrack").joinpath("napari.yaml").read_text()
    manifest = yaml.safe_load(text)
    return [w["display_name"] for w in manifest.get("contributions", {}).get("widgets", [])]


def add_demo_layers(viewer, out_dir: str | Path) -> dict:
    """Add the demo's movie, ground truth, detections and tracks from ``out_dir`` to ``viewer``."""
    from ..io.tiff import read_tiff

    out = Path(out_dir)
    images, meta = read_tiff(out / "movie.tif")
    px = float(meta.get("pixel_size_um") or 1.0)
    scale = (1.0, px, px)
    units = ("pixel", "um", "um")
    layers = {}
    layers["movie"] = viewer.add_image(
        images,
        name="demo movie",
        colormap="gray",
        scale=scale,
        units=units,
        metadata={"pixel_size_um": px, "simulated": True},
    )
    truth = pd.read_csv(out / "truth.csv")
    truth = truth[truth["present"].astype(bool)]
    layers["truth"] = viewer.add_points(
        truth[["frame", "y", "x"]].to_numpy(float),
        name="ground truth",
        scale=scale,
        units=units,
        features=truth[["track_id", "z_um"]].reset_index(drop=True),
        size=7,
        face_color="transparent",
        border_color="lime",
    )
    det = pd.read_csv(out / "detections.csv")
    feats = [c for c in ("probability", "area", "track_id", "true_track_id") if c in det.columns]
    layers["detections"] = viewer.add_points(
        det[["frame", "y", "x"]].to_numpy(float),
        name="detections",
        scale=scale,
        units=units,
        features=det[feats].reset_index(drop=True),
        size=4,
        face_color="red",
        border_color="red",
    )
    if "track_id" in det.columns and len(det):
        data = det[["track_id", "frame", "y", "x"]].sort_values(["track_id", "frame"]).to_numpy(float)
        layers["tracks"] = viewer.add_tracks(
            data, name="tracks", scale=scale, units=units, tail_length=10, tail_width=2
        )
    return layers


def show_demo(out_dir: str | Path, viewer=None, widgets: bool = True, block: bool = False):
    """A napari viewer showing the demo's results and the plugin's widgets.

    Widgets that cannot be loaded (not installed yet, import error) are skipped with a message.
    """
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="napari-deeptrack demo")
    add_demo_layers(viewer, out_dir)
    if widgets:
        for name in plugin_widget_names():
            try:
                viewer.window.add_plugin_dock_widget(PLUGIN, name)
            except Exception as exc:  # one missing widget must not hide the others
                print(f"napari-deeptrack demo: widget {name!r} not available: {type(exc).__name__}: {exc}")
    viewer.dims.set_current_step(0, 0)
    if block:
        napari.run()
    return viewer
