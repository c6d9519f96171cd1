"""Track formats: TrackMate XML, Cell Tracking Challenge folders and trackpy's layout — round trips
(equal contents and units), structure / validator checks, trackpy's own MSD functions, bad input."""

import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from napari_deeptrack.analysis.tracking import ensemble_msd, msd_per_track
from napari_deeptrack.io.ctc import read_ctc, write_ctc
from napari_deeptrack.io.trackmate import check_trackmate_structure, read_trackmate, write_trackmate
from napari_deeptrack.io.trackpy_layout import from_trackpy, read_trackpy_csv, to_trackpy, write_trackpy_csv


def _tracks(seed=0, n_tracks=4, n_frames=12, gap=True):
    """Random-walk tracks of different lengths (one with a gap), with extra numeric features."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_tracks):
        start = t % 3
        pos = 8.0 + 10.0 * t + rng.uniform(-1, 1, size=2)  # apart: CTC disks do not overlap
        for f in range(start, n_frames):
            pos = pos + rng.normal(0, 0.8, size=2)
            if gap and t == 1 and f in (6, 7):
                continue  # the particle blinks off for two frames
            rows.append(
                {
                    "frame": f,
                    "y": pos[0],
                    "x": pos[1],
                    "z_um": rng.normal(0, 0.2),
                    "radius_um": 0.05 + 0.01 * t,
                    "class_id": t % 2,
                    "probability": rng.uniform(0.5, 1),
                    "track_id": t,
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- TrackMate
def test_trackmate_round_trip_equal_contents_and_units(tmp_path):
    df = _tracks()
    path = write_trackmate(
        df, tmp_path / "t.xml", pixel_size_um=0.13, frame_interval_s=0.05, image_shape=(48, 50)
    )
    assert check_trackmate_structure(path) == []
    back, meta = read_trackmate(path)
    assert meta["pixel_size_um"] == pytest.approx(0.13) and meta["frame_interval_s"] == pytest.approx(0.05)
    assert meta["spatial_units"] == "µm" and meta["time_units"] == "s" and meta["image_shape"] == (48, 50)
    a = df.sort_values(["track_id", "frame"]).reset_index(drop=True)
    assert list(back.columns) == [
        "frame",
        "y",
        "x",
        "z_um",
        "radius_um",
        "class_id",
        "probability",
        "track_id",
    ]
    pd.testing.assert_frame_equal(back[a.columns], a, check_exact=False, rtol=1e-12, atol=1e-12)
    assert back["class_id"].dtype == np.int64


def test_trackmate_physical_units_and_track_features(tmp_path):
    df = pd.DataFrame(
        {"frame": [0, 1, 3], "y": [10.0, 10.0, 10.0], "x": [5.0, 8.0, 12.0], "track_id": [7, 7, 7]}
    )
    path = write_trackmate(df, tmp_path / "t.xml", pixel_size_um=0.5, frame_interval_s=2.0)
    root = ET.parse(path).getroot()
    spots = root.findall("Model/AllSpots/SpotsInFrame/Spot")
    assert [float(s.get("POSITION_X")) for s in spots] == [2.5, 4.0, 6.0]  # um
    assert [float(s.get("POSITION_T")) for s in spots] == [0.0, 2.0, 6.0]  # s
    tr = root.find("Model/AllTracks/Track")
    assert tr.get("TRACK_ID") == "7" and tr.get("NUMBER_SPOTS") == "3"
    assert tr.get("NUMBER_GAPS") == "1" and tr.get("LONGEST_GAP") == "1"
    assert float(tr.get("TRACK_DISPLACEMENT")) == pytest.approx(3.5)
    edges = tr.findall("Edge")
    # 1.5 um in 2 s, then 2 um in 4 s (gap)
    assert [float(e.get("SPEED")) for e in edges] == pytest.approx([0.75, 0.5])
    assert float(tr.get("TRACK_MEAN_SPEED")) == pytest.approx(0.625)
    assert root.find("Model/FilteredTracks/TrackID").get("TRACK_ID") == "7"


def test_trackmate_lone_spot_keeps_a_track_of_its_own(tmp_path):
    df = pd.DataFrame({"frame": [0, 1, 2], "y": [1.0, 2.0, 9.0], "x": [1.0, 2.0, 9.0], "track_id": [0, 0, 1]})
    back, _ = read_trackmate(write_trackmate(df, tmp_path / "t.xml", 0.1), pixel_size_um=None)
    assert back.groupby("track_id").size().sort_values().tolist() == [1, 2]


def test_trackmate_without_spatial_units_is_refused(tmp_path):
    path = write_trackmate(_tracks(), tmp_path / "t.xml", pixel_size_um=0.1)
    root = ET.parse(path).getroot()
    root.find("Model").set("spatialunits", "pixel")
    ET.ElementTree(root).write(tmp_path / "px.xml")
    with pytest.raises(ValueError, match="no spatial units"):
        read_trackmate(tmp_path / "px.xml")
    del root.find("Model").attrib["spatialunits"]
    ET.ElementTree(root).write(tmp_path / "none.xml")
    with pytest.raises(ValueError, match="no spatial units"):
        read_trackmate(tmp_path / "none.xml")
    # with the pixel size given, pixel positions are accepted
    back, meta = read_trackmate(tmp_path / "px.xml", pixel_size_um=0.2)
    assert meta["pixel_size_um"] == 0.2 and len(back) == len(_tracks())


def test_trackmate_structure_check_finds_problems(tmp_path):
    path = write_trackmate(_tracks(), tmp_path / "t.xml", pixel_size_um=0.1)
    root = ET.parse(path).getroot()
    root.find("Model/AllSpots").set("nspots", "3")
    edge = root.find("Model/AllTracks/Track/Edge")
    edge.set("SPOT_TARGET_ID", "99999")
    root.find("Model/AllSpots/SpotsInFrame/Spot").set("MY_FEATURE", "1")
    root.find("Model/AllSpots/SpotsInFrame/Spot").set("QUALITY", "nan")  # Java's Double.valueOf refuses it
    root.find("Model/FeatureDeclarations/SpotFeatures/Feature").set("dimension", "PIXELS")
    ET.ElementTree(root).write(tmp_path / "bad.xml")
    problems = "\n".join(check_trackmate_structure(tmp_path / "bad.xml"))
    assert "nspots=3" in problems and "missing spot" in problems and "undeclared" in problems
    assert "non-numeric features ['QUALITY']" in problems and "unknown dimension PIXELS" in problems
    (tmp_path / "x.xml").write_text("<Other/>")
    with pytest.raises(ValueError, match="not a TrackMate file"):
        read_trackmate(tmp_path / "x.xml")


def test_trackmate_refuses_unlinked_and_unitless_writes(tmp_path):
    with pytest.raises(ValueError, match="track_id"):
        write_trackmate(_tracks().drop(columns="track_id"), tmp_path / "t.xml", 0.1)
    with pytest.raises(ValueError, match="pixel_size_um"):
        write_trackmate(_tracks(), tmp_path / "t.xml", None)
    assert not (tmp_path / "t.xml").exists()


# ---------------------------------------------------------------------------- CTC
def test_ctc_round_trip_and_official_validator(tmp_path):
    from ctc_metrics import validate_sequence

    df = _tracks(n_frames=10)
    df[["y", "x"]] = df[["y", "x"]].round()  # integer centres: a disk's centroid is exactly its centre
    out = write_ctc(df, tmp_path / "res", image_shape=(56, 58), radius_px=2.0, pixel_size_um=0.2)
    table = np.loadtxt(out / "res_track.txt", dtype=int, ndmin=2)
    # the gap of track 1 (frames 6, 7) becomes a second label whose parent is the first
    assert len(table) == 5
    child = table[table[:, 3] != 0]
    assert len(child) == 1 and child[0, 1] - table[table[:, 0] == child[0, 3]][0, 2] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert validate_sequence(str(out), threads=1)["Valid"] == 1
    back, meta = read_ctc(out)
    assert meta["pixel_size_um"] == pytest.approx(0.2) and meta["image_shape"] == (56, 58)
    a = df.sort_values(["track_id", "frame"]).reset_index(drop=True)
    np.testing.assert_array_equal(back["track_id"], a["track_id"])
    np.testing.assert_array_equal(back["frame"], a["frame"])
    np.testing.assert_allclose(back[["y", "x"]], a[["y", "x"]], atol=1e-9)


def test_ctc_subpixel_positions_within_a_tenth_of_a_pixel(tmp_path):
    df = _tracks(seed=2, n_tracks=3, n_frames=5, gap=False)
    back, _ = read_ctc(write_ctc(df, tmp_path / "gt", radius_px=4.0, kind="gt"))
    a = df.sort_values(["track_id", "frame"]).reset_index(drop=True)
    assert np.abs(back[["y", "x"]].to_numpy() - a[["y", "x"]].to_numpy()).max() < 0.15


def test_ctc_missing_frame_and_bad_table_are_refused(tmp_path):
    out = write_ctc(_tracks(n_frames=6), tmp_path / "res", radius_px=2.0)
    (out / "mask003.tif").unlink()
    with pytest.raises(ValueError, match=r"frame\(s\) \[3\] are missing"):
        read_ctc(out)
    out = write_ctc(_tracks(n_frames=6), tmp_path / "res2", radius_px=2.0)
    (out / "res_track.txt").write_text("1 0 5\n")
    with pytest.raises(ValueError, match="L B E P"):
        read_ctc(out)
    with pytest.raises(ValueError, match="not a CTC folder"):
        read_ctc(tmp_path)


# ---------------------------------------------------------------------------- trackpy
def test_trackpy_layout_runs_trackpy_emsd_and_imsd_unchanged(tmp_path):
    import trackpy

    trackpy.quiet()
    df = _tracks(gap=False, n_tracks=5, n_frames=20)
    df = df[df["frame"] >= 2].reset_index(drop=True)  # equal lengths: trackpy's emsd weights tracks equally
    px, dt = 0.1, 0.05
    tp = to_trackpy(df)
    em = trackpy.emsd(tp, mpp=px, fps=1 / dt, max_lagtime=5)
    ours = ensemble_msd(df, px, dt, max_lag=5)
    np.testing.assert_allclose(em.to_numpy()[:5], ours["msd_um2"].to_numpy(), rtol=1e-10)
    im = trackpy.imsd(tp, mpp=px, fps=1 / dt, max_lagtime=3)
    per = msd_per_track(df, px, dt, max_lag=3)
    for t in df["track_id"].unique():
        np.testing.assert_allclose(im[t].to_numpy()[:3], per[per["track_id"] == t]["msd_um2"], rtol=1e-10)
    # round trip through the CSV, units in the header
    path = write_trackpy_csv(df, tmp_path / "tp.csv", pixel_size_um=px, frame_interval_s=dt)
    back, units = read_trackpy_csv(path)
    assert units == {"positions": "px", "pixel_size_um": px, "frame_interval_s": dt}
    a = df.sort_values(["track_id", "frame"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back[a.columns], a, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(from_trackpy(tp)[a.columns], a)


def test_trackpy_layout_needs_tracks():
    with pytest.raises(ValueError, match="track_id"):
        to_trackpy(pd.DataFrame({"frame": [0], "y": [1.0], "x": [1.0]}))
