"""Exports to other tools' formats.

``napari-deeptrack export-bioimageio BUNDLE OUT.zip``: a bioimage.io model package (TorchScript +
ONNX weights, rdf.yaml with axes, pixel size and processing, test tensors, cover, README, citation)
that deepImageJ, ilastik, QuPath, bioimageio.core and other napari plugins run.

``napari-deeptrack export-tracks RESULTS.csv OUT --format trackmate|ctc|trackpy``: a results table
with ``track_id`` (from ``apply --link``) as TrackMate XML, a Cell Tracking Challenge folder
(``man_track.txt`` + label TIFFs) or a trackpy-layout CSV.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]

TRACK_FORMATS = ("trackmate", "ctc", "trackpy")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-bioimageio",
        help="write a model bundle as a bioimage.io model package (.zip)",
        description=(
            "Write a trained bundle as a bioimage.io model package: TorchScript (and ONNX) weights, rdf.yaml "
            "with axes, pixel size and pre/post-processing, test tensors from the bundle's own prediction, "
            "cover image, documentation and citation."
        ),
    )
    p.add_argument("bundle", help="model bundle (folder or .zip) from `napari-deeptrack train`")
    p.add_argument("out", metavar="OUT.zip", help="package to write")
    p.add_argument(
        "--test-image", default=None, help="image (TIFF) for the test tensors (default: simulated)"
    )
    p.add_argument("--author", action="append", default=None, help="author name (repeat for several)")
    p.add_argument("--license", default="MIT", help="SPDX licence of the weights (default MIT)")
    p.add_argument("--no-onnx", action="store_true", help="TorchScript weights only")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated test image")

    t = subparsers.add_parser(
        "export-tracks",
        help="write linked detections as TrackMate XML, Cell Tracking Challenge or trackpy layout",
        description=(
            "Convert a results CSV with track_id (from `apply --link`) to TrackMate XML (opens in Fiji), "
            "a Cell Tracking Challenge folder (man_track.txt + mask TIFFs) or trackpy's DataFrame layout."
        ),
    )
    t.add_argument("results", help="results CSV with frame, y, x, track_id")
    t.add_argument("out", help="output file (.xml, .csv) or folder (ctc)")
    t.add_argument("--format", choices=TRACK_FORMATS, required=True, help="output format")
    t.add_argument("--pixel-size-um", type=float, required=True, metavar="P", help="pixel size in um")
    t.add_argument("--frame-interval-s", type=float, default=1.0, metavar="DT", help="time between frames")
    t.add_argument(
        "--image-shape",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="ctc: frame size in pixels (default: from the positions)",
    )
    t.add_argument("--radius-px", type=float, default=3.0, help="spot radius (TrackMate, ctc disks)")
    t.set_defaults(_run=run)
    return p


def _export_bioimageio(args) -> int:
    from ..io.bioimageio import export_bioimageio
    from ..io.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    test_image = None
    if args.test_image:
        from ..io.images import read_images

        images, _ = read_images(args.test_image)
        test_image = images[:1]
    out = export_bioimageio(
        bundle,
        args.out,
        test_image=test_image,
        seed=args.seed,
        onnx=not args.no_onnx,
        authors=args.author,
        license=args.license,
    )
    import zipfile

    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    print(json.dumps({"package": str(out), "files": names, "task": bundle.task.name}))
    return 0


def _export_tracks(args) -> int:
    from ..io.tables import read_results_csv

    for name in ("pixel_size_um", "frame_interval_s", "radius_px"):
        v = getattr(args, name)
        if not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    df = read_results_csv(args.results)
    if "track_id" not in df.columns:
        raise ValueError(f"{args.results} has no track_id column; link the detections (apply --link) first")
    out = write_tracks(
        df,
        args.out,
        args.format,
        args.pixel_size_um,
        args.frame_interval_s,
        image_shape=args.image_shape,
        radius_px=args.radius_px,
    )
    print(
        json.dumps(
            {
                "format": args.format,
                "out": str(out),
                "tracks": int(df["track_id"].nunique()),
                "spots": int(len(df)),
            }
        )
    )
    return 0


def track_output_path(results_csv, fmt: str):
    """Where ``apply --format FMT`` writes the tracks, next to the results CSV."""
    from pathlib import Path

    out = Path(results_csv)
    return {
        "trackmate": out.with_suffix(".xml"),
        "ctc": out.with_name(out.stem + "_ctc"),
        "trackpy": out.with_name(out.stem + "_trackpy.csv"),
    }[fmt]


def write_tracks(
    df,
    out,
    fmt: str,
    pixel_size_um: float,
    frame_interval_s: float = 1.0,
    image_shape=None,
    radius_px: float = 3.0,
):
    """Write a tracks table in one of :data:`TRACK_FORMATS` (shared by ``apply --format``)."""
    if fmt == "trackmate":
        from ..io.trackmate import write_trackmate

        return write_trackmate(df, out, pixel_size_um, frame_interval_s, radius_px=radius_px)
    if fmt == "ctc":
        from ..io.ctc import write_ctc

        return write_ctc(df, out, image_shape=image_shape, radius_px=radius_px, pixel_size_um=pixel_size_um)
    if fmt == "trackpy":
        from ..io.trackpy_layout import write_trackpy_csv

        return write_trackpy_csv(df, out, pixel_size_um, frame_interval_s)
    raise ValueError(f"format must be one of {TRACK_FORMATS}, got {fmt!r}")


def run(args) -> int:
    if args.command == "export-tracks":
        return _export_tracks(args)
    return _export_bioimageio(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
