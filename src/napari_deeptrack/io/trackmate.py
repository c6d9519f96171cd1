"""TrackMate XML: write linked detections so Fiji's TrackMate opens them, and read TrackMate files back.

The layout follows the files TrackMate (v3 to v7) saves: a ``TrackMate`` root with a ``Model``
(``spatialunits``, ``timeunits``), ``FeatureDeclarations`` (spot, edge and track features with
their dimension), ``AllSpots`` grouped by ``SpotsInFrame``, ``AllTracks`` (one ``Track`` per track
with its ``Edge`` links), ``FilteredTracks``, and ``Settings/ImageData`` (image size, pixel size,
frame interval). Positions are in physical units (``POSITION_X = x_px * pixel_size_um``, TrackMate's
pixel centres are at integer coordinates like ours), times in seconds. Every other numeric column of
the table (``z_um``, ``radius_um``, ``signal``...) becomes a declared spot feature whose ``name``
keeps the column name, so :func:`read_trackmate` restores the table. A track of one spot has no
edge, so TrackMate shows it as a lone spot (the reader gives it a track id of its own).

:func:`check_trackmate_structure` checks a file against the rules TrackMate's reader relies on
(declared features, unique spot IDs, edges between existing spots forward in time, counts).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["check_trackmate_structure", "read_trackmate", "write_trackmate"]

TRACKMATE_VERSION = "7.11.1"
#: spatial units TrackMate writes -> micrometres
SPATIAL_UNITS = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "m": 1e6,
}
#: time units -> seconds
TIME_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}

_SPOT_FEATURES = [  # feature, name, shortname, dimension, isint
    ("QUALITY", "Quality", "Quality", "QUALITY", False),
    ("POSITION_X", "X", "X", "POSITION", False),
    ("POSITION_Y", "Y", "Y", "POSITION", False),
    ("POSITION_Z", "Z", "Z", "POSITION", False),
    ("POSITION_T", "T", "T", "TIME", False),
    ("FRAME", "Frame", "Frame", "NONE", True),
    ("RADIUS", "Radius", "R", "LENGTH", False),
    ("VISIBILITY", "Visibility", "Visibility", "NONE", True),
]
_EDGE_FEATURES = [
    ("SPOT_SOURCE_ID", "Source spot ID", "Source ID", "NONE", True),
    ("SPOT_TARGET_ID", "Target spot ID", "Target ID", "NONE", True),
    ("LINK_COST", "Edge cost", "Cost", "COST", False),
    ("EDGE_TIME", "Edge time", "Edge T", "TIME", False),
    ("EDGE_X_LOCATION", "Edge X", "Edge X", "POSITION", False),
    ("EDGE_Y_LOCATION", "Edge Y", "Edge Y", "POSITION", False),
    ("EDGE_Z_LOCATION", "Edge Z", "Edge Z", "POSITION", False),
    ("SPEED", "Speed", "Speed", "VELOCITY", False),
    ("DISPLACEMENT", "Displacement", "Disp.", "LENGTH", False),
]
_TRACK_FEATURES = [
    ("TRACK_INDEX", "Track index", "Index", "NONE", True),
    ("TRACK_ID", "Track ID", "ID", "NONE", True),
    ("NUMBER_SPOTS", "Number of spots in track", "N spots", "NONE", True),
    ("NUMBER_GAPS", "Number of gaps", "N gaps", "NONE", True),
    ("LONGEST_GAP", "Longest gap", "Lgst gap", "NONE", True),
    ("NUMBER_SPLITS", "Number of split events", "N splits", "NONE", True),
    ("NUMBER_MERGES", "Number of merge events", "N merges", "NONE", True),
    ("NUMBER_COMPLEX", "Number of complex points", "N complex", "NONE", True),
    ("TRACK_DURATION", "Track duration", "Duration", "TIME", False),
    ("TRACK_START", "Track start", "Track start", "TIME", False),
    ("TRACK_STOP", "Track stop", "Track stop", "TIME", False),
    ("TRACK_DISPLACEMENT", "Track displacement", "Track disp.", "LENGTH", False),
    ("TRACK_X_LOCATION", "Track mean X", "Track X", "POSITION", False),
    ("TRACK_Y_LOCATION", "Track mean Y", "Track Y", "POSITION", False),
    ("TRACK_Z_LOCATION", "Track mean Z", "Track Z", "POSITION", False),
    ("TRACK_MEAN_SPEED", "Track mean speed", "Mean sp.", "VELOCITY", False),
    ("TRACK_MAX_SPEED", "Track max speed", "Max speed", "VELOCITY", False),
    ("TRACK_MIN_SPEED", "Track min speed", "Min speed", "VELOCITY", False),
    ("TRACK_MEDIAN_SPEED", "Track median speed", "Med. speed", "VELOCITY", False),
    ("TRACK_STD_SPEED", "Track std speed", "Std speed", "VELOCITY", False),
]
#: TrackMate's feature dimensions (fiji.plugin.trackmate.Dimension)
DIMENSIONS = (
    "NONE",
    "QUALITY",
    "COST",
    "INTENSITY",
    "INTENSITY_SQUARED",
    "POSITION",
    "VELOCITY",
    "LENGTH",
    "AREA",
    "VOLUME",
    "TIME",
    "ANGLE",
    "RATE",
    "ANGLE_RATE",
    "STRING",
)


def _is_java_double(text: str) -> bool:
    if text in ("NaN", "Infinity", "-Infinity"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")


_POSITION_COLUMNS = ("frame", "y", "x", "z_um", "track_id", "probability")


def _fmt(v: float) -> str:
    return (
        repr(float(v))
        if np.isfinite(v)
        else ("NaN" if np.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
    )


def _feature_key(col: str) -> str:
    key = "".join(ch if ch.isalnum() else "_" for ch in col.upper())
    return key if key[0].isalpha() else f"F_{key}"


def _declare(parent: ET.Element, tag: str, features) -> None:
    el = ET.SubElement(parent, tag)
    for feat, name, short, dim, isint in features:
        ET.SubElement(
            el, "Feature", feature=feat, name=name, shortname=short, dimension=dim, isint=str(isint).lower()
        )


def write_trackmate(
    tracks: pd.DataFrame,
    path: str | Path,
    pixel_size_um: float,
    frame_interval_s: float = 1.0,
    radius_px: float = 3.0,
    image_shape: tuple[int, int] | None = None,
    image_name: str = "",
) -> Path:
    """Write linked detections as a TrackMate XML file (atomically).

    Parameters
    ----------
    tracks : DataFrame
        ``frame, y, x`` in pixels and ``track_id`` (from ``link_tracks``); optional ``z_um``,
        ``probability`` (written as QUALITY) and any other numeric columns (written as spot features).
    path : str or Path
        The ``.xml`` file.
    pixel_size_um : float
        Pixel size (TrackMate stores positions in micrometres).
    frame_interval_s : float
        Time between frames in seconds.
    radius_px : float
        Spot radius shown by TrackMate.
    image_shape : (H, W), optional
        Image size for ``Settings/ImageData`` (default: from the positions).
    image_name : str
        File name of the image the tracks belong to (TrackMate opens it when it lies beside the XML).

    Returns
    -------
    Path
    """
    from .atomic import atomic_path

    if not pixel_size_um or not float(pixel_size_um) > 0:
        raise ValueError(
            f"pixel_size_um must be > 0 (TrackMate stores physical positions), got {pixel_size_um}"
        )
    if not float(frame_interval_s) > 0:
        raise ValueError(f"frame_interval_s must be > 0, got {frame_interval_s}")
    missing = [c for c in ("frame", "y", "x", "track_id") if c not in tracks.columns]
    if missing:
        raise ValueError(
            f"tracks lack column(s) {missing} (link the detections first); have {list(tracks.columns)}"
        )
    px, dt = float(pixel_size_um), float(frame_interval_s)
    df = tracks.reset_index(drop=True)
    n = len(df)
    frame = df["frame"].to_numpy(np.int64)
    ids = np.arange(n, dtype=np.int64)
    x_um = df["x"].to_numpy(float) * px
    y_um = df["y"].to_numpy(float) * px
    z_um = df["z_um"].to_numpy(float) if "z_um" in df else np.zeros(n)
    t_s = frame * dt
    quality = df["probability"].to_numpy(float) if "probability" in df else np.ones(n)
    extra = [
        c
        for c in df.columns
        if c not in _POSITION_COLUMNS
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]
    extra_keys = {}
    taken = {f[0] for f in _SPOT_FEATURES}
    for c in extra:
        key = _feature_key(c)
        while key in taken:
            key = f"DT_{key}"
        taken.add(key)
        extra_keys[c] = key

    root = ET.Element("TrackMate", version=TRACKMATE_VERSION)
    log = ET.SubElement(root, "Log")
    log.text = f"Written by napari-deeptrack: {n} spots, {df['track_id'].nunique()} tracks.\n"
    model = ET.SubElement(root, "Model", spatialunits="µm", timeunits="s")
    decl = ET.SubElement(model, "FeatureDeclarations")
    spot_feats = list(_SPOT_FEATURES)
    for c, key in extra_keys.items():
        dim = "LENGTH" if c.endswith("_um") else "NONE"
        isint = pd.api.types.is_integer_dtype(df[c])
        spot_feats.append((key, c, c, dim, isint))
    _declare(decl, "SpotFeatures", spot_feats)
    _declare(decl, "EdgeFeatures", _EDGE_FEATURES)
    _declare(decl, "TrackFeatures", _TRACK_FEATURES)

    all_spots = ET.SubElement(model, "AllSpots", nspots=str(n))
    extra_vals = {c: df[c].to_numpy() for c in extra}
    order = np.argsort(frame, kind="stable")
    for f in np.unique(frame):
        sif = ET.SubElement(all_spots, "SpotsInFrame", frame=str(int(f)))
        for i in order[frame[order] == f]:
            attrs = {
                "ID": str(int(ids[i])),
                "name": f"ID{int(ids[i])}",
                "QUALITY": _fmt(quality[i]),
                "POSITION_X": _fmt(x_um[i]),
                "POSITION_Y": _fmt(y_um[i]),
                "POSITION_Z": _fmt(z_um[i]),
                "POSITION_T": _fmt(t_s[i]),
                "FRAME": str(int(frame[i])),
                "RADIUS": _fmt(radius_px * px),
                "VISIBILITY": "1",
            }
            for c, key in extra_keys.items():
                v = extra_vals[c][i]
                attrs[key] = str(int(v)) if pd.api.types.is_integer_dtype(df[c]) else _fmt(float(v))
            ET.SubElement(sif, "Spot", attrs)

    all_tracks = ET.SubElement(model, "AllTracks")
    filtered = ET.SubElement(model, "FilteredTracks")
    tid = df["track_id"].to_numpy(np.int64)
    for index, t in enumerate(np.unique(tid)):
        idx = np.nonzero(tid == t)[0]
        idx = idx[np.argsort(frame[idx], kind="stable")]
        if len(idx) < 2:
            continue  # TrackMate tracks are made of edges; a lone spot stays a spot
        if np.any(np.diff(frame[idx]) == 0):
            raise ValueError(
                f"track {int(t)} has two spots in one frame; TrackMate tracks need one per frame"
            )
        a, b = idx[:-1], idx[1:]
        disp = np.sqrt((x_um[b] - x_um[a]) ** 2 + (y_um[b] - y_um[a]) ** 2 + (z_um[b] - z_um[a]) ** 2)
        speed = disp / ((frame[b] - frame[a]) * dt)
        gaps = np.diff(frame[idx]) - 1
        total = np.sqrt(
            (x_um[idx[-1]] - x_um[idx[0]]) ** 2
            + (y_um[idx[-1]] - y_um[idx[0]]) ** 2
            + (z_um[idx[-1]] - z_um[idx[0]]) ** 2
        )
        track_attrs = {
            "name": f"Track_{int(t)}",
            "TRACK_INDEX": str(index),
            "TRACK_ID": str(int(t)),
            "NUMBER_SPOTS": str(len(idx)),
            "NUMBER_GAPS": str(int((gaps > 0).sum())),
            "LONGEST_GAP": str(int(gaps.max(initial=0))),
            "NUMBER_SPLITS": "0",
            "NUMBER_MERGES": "0",
            "NUMBER_COMPLEX": "0",
            "TRACK_DURATION": _fmt(t_s[idx[-1]] - t_s[idx[0]]),
            "TRACK_START": _fmt(t_s[idx[0]]),
            "TRACK_STOP": _fmt(t_s[idx[-1]]),
            "TRACK_DISPLACEMENT": _fmt(total),
            "TRACK_X_LOCATION": _fmt(x_um[idx].mean()),
            "TRACK_Y_LOCATION": _fmt(y_um[idx].mean()),
            "TRACK_Z_LOCATION": _fmt(z_um[idx].mean()),
            "TRACK_MEAN_SPEED": _fmt(speed.mean()),
            "TRACK_MAX_SPEED": _fmt(speed.max()),
            "TRACK_MIN_SPEED": _fmt(speed.min()),
            "TRACK_MEDIAN_SPEED": _fmt(np.median(speed)),
            "TRACK_STD_SPEED": _fmt(speed.std()),
        }
        tr = ET.SubElement(all_tracks, "Track", track_attrs)
        for k in range(len(a)):
            i, j = a[k], b[k]
            ET.SubElement(
                tr,
                "Edge",
                SPOT_SOURCE_ID=str(int(ids[i])),
                SPOT_TARGET_ID=str(int(ids[j])),
                LINK_COST=_fmt(disp[k] ** 2),
                EDGE_TIME=_fmt(0.5 * (t_s[i] + t_s[j])),
                EDGE_X_LOCATION=_fmt(0.5 * (x_um[i] + x_um[j])),
                EDGE_Y_LOCATION=_fmt(0.5 * (y_um[i] + y_um[j])),
                EDGE_Z_LOCATION=_fmt(0.5 * (z_um[i] + z_um[j])),
                SPEED=_fmt(speed[k]),
                DISPLACEMENT=_fmt(disp[k]),
            )
        ET.SubElement(filtered, "TrackID", TRACK_ID=str(int(t)))

    if image_shape is None:
        h = int(np.ceil(df["y"].max() + 1)) if n else 1
        w = int(np.ceil(df["x"].max() + 1)) if n else 1
    else:
        h, w = (int(v) for v in image_shape)
    nframes = int(frame.max() + 1) if n else 1
    settings = ET.SubElement(root, "Settings")
    ET.SubElement(
        settings,
        "ImageData",
        filename=image_name,
        folder="",
        width=str(w),
        height=str(h),
        nslices="1",
        nframes=str(nframes),
        pixelwidth=_fmt(px),
        pixelheight=_fmt(px),
        voxeldepth="1.0",
        timeinterval=_fmt(dt),
    )
    ET.SubElement(
        settings,
        "BasicSettings",
        xstart="0",
        xend=str(w - 1),
        ystart="0",
        yend=str(h - 1),
        zstart="0",
        zend="0",
        tstart="0",
        tend=str(nframes - 1),
    )
    ET.SubElement(settings, "DetectorSettings", DETECTOR_NAME="MANUAL_DETECTOR", RADIUS=_fmt(radius_px * px))
    ET.SubElement(settings, "InitialSpotFilter", feature="QUALITY", value="0.0", isabove="true")
    ET.SubElement(settings, "SpotFilterCollection")
    ET.SubElement(settings, "TrackerSettings", TRACKER_NAME="MANUAL_TRACKER")
    ET.SubElement(settings, "TrackFilterCollection")
    ET.SubElement(root, "GUIState", state="ConfigureViews")
    ET.indent(root, space="  ")
    path = Path(path)
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)
    return path


def _parse(path: Path) -> ET.Element:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path} is not valid XML ({exc})") from None
    if root.tag != "TrackMate":
        raise ValueError(f"{path} is not a TrackMate file (root element <{root.tag}>, expected <TrackMate>)")
    if root.find("Model") is None:
        raise ValueError(f"{path}: the TrackMate file has no <Model>")
    return root


def read_trackmate(path: str | Path, pixel_size_um: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a TrackMate XML file into our table layout.

    Parameters
    ----------
    path : str or Path
        TrackMate ``.xml``.
    pixel_size_um : float, optional
        Only for files whose positions are in pixels (``spatialunits="pixel"``): the pixel size to
        attach. Files in physical units use their own ``ImageData`` pixel size.

    Returns
    -------
    tracks : DataFrame
        ``frame, y, x`` (pixels), ``z_um``, other spot features (by their declared names),
        ``probability`` (QUALITY) and ``track_id`` (TrackMate's TRACK_ID; spots outside any track
        get ids of their own after the largest), sorted by track and frame.
    meta : dict
        ``pixel_size_um``, ``frame_interval_s``, ``spatial_units``, ``time_units``, ``image_shape``.

    Raises
    ------
    ValueError
        Not a TrackMate file; positions without spatial units (and no ``pixel_size_um`` given);
        edges to missing spots; tracks that split or merge (not supported).
    """
    path = Path(path)
    root = _parse(path)
    model = root.find("Model")
    sunit = model.get("spatialunits")
    tunit = model.get("timeunits") or "frame"
    img = root.find("Settings/ImageData")
    pw = float(img.get("pixelwidth")) if img is not None and img.get("pixelwidth") else None
    if sunit is None or sunit.strip().lower() in ("", "pixel", "pixels"):
        if pixel_size_um is None:
            raise ValueError(
                f"{path}: the TrackMate model has no spatial units (spatialunits={sunit!r}), so positions "
                "cannot be put in micrometres; calibrate the image in Fiji (Image > Properties) before "
                "tracking, or pass the pixel size (pixel_size_um=...)"
            )
        factor, px_units = None, 1.0
        px = float(pixel_size_um)
    else:
        if sunit not in SPATIAL_UNITS:
            raise ValueError(f"{path}: unknown spatial unit {sunit!r}; known: {sorted(SPATIAL_UNITS)}")
        factor = SPATIAL_UNITS[sunit]
        if pw is None or not pw > 0:
            raise ValueError(
                f"{path}: Settings/ImageData has no pixelwidth, so positions cannot be put in pixels"
            )
        px_units = pw
        px = pw * factor
    ti = float(img.get("timeinterval")) if img is not None and img.get("timeinterval") else None
    dt = ti * TIME_UNITS[tunit] if (ti is not None and tunit in TIME_UNITS) else None

    decl = {
        f.get("feature"): f.get("name") for f in model.iterfind("FeatureDeclarations/SpotFeatures/Feature")
    }
    isint = {
        f.get("feature"): f.get("isint") == "true"
        for f in model.iterfind("FeatureDeclarations/SpotFeatures/Feature")
    }
    standard = {f[0] for f in _SPOT_FEATURES} | {"ID", "name"}
    rows: dict[str, list] = {"_id": [], "frame": [], "y": [], "x": [], "z_um": [], "probability": []}
    extra_keys = [k for k in decl if k not in standard]
    for k in extra_keys:
        rows[k] = []
    for spot in model.iterfind("AllSpots/SpotsInFrame/Spot"):
        rows["_id"].append(int(spot.get("ID")))
        rows["frame"].append(int(float(spot.get("FRAME"))))
        rows["x"].append(float(spot.get("POSITION_X")) / px_units)
        rows["y"].append(float(spot.get("POSITION_Y")) / px_units)
        z = float(spot.get("POSITION_Z", "0"))
        rows["z_um"].append(z * factor if factor is not None else z * px)
        rows["probability"].append(float(spot.get("QUALITY", "nan")))
        for k in extra_keys:
            v = spot.get(k)
            rows[k].append(np.nan if v is None else float(v))
    df = pd.DataFrame(rows)
    for k in extra_keys:
        if isint.get(k) and df[k].notna().all():
            df[k] = df[k].astype(np.int64)
    df = df.rename(columns={k: decl[k] for k in extra_keys if decl[k] and decl[k] not in df.columns})
    if not model.findall("AllSpots/SpotsInFrame/Spot[@QUALITY]"):
        df = df.drop(columns="probability")

    track_of: dict[int, int] = {}
    known = set(df["_id"])
    for tr in model.iterfind("AllTracks/Track"):
        t = int(tr.get("TRACK_ID"))
        sources, targets = [], []
        for e in tr.iterfind("Edge"):
            s, g = int(e.get("SPOT_SOURCE_ID")), int(e.get("SPOT_TARGET_ID"))
            if s not in known or g not in known:
                raise ValueError(
                    f"{path}: track {t} has an edge to a spot that is not in AllSpots ({s} -> {g})"
                )
            sources.append(s)
            targets.append(g)
            track_of[s] = track_of[g] = t
        if len(set(sources)) != len(sources) or len(set(targets)) != len(targets):
            raise ValueError(f"{path}: track {t} splits or merges; napari-deeptrack reads linear tracks only")
    filt = {int(e.get("TRACK_ID")) for e in model.iterfind("FilteredTracks/TrackID")}
    tid = np.array([track_of.get(i, -1) for i in df["_id"]], dtype=np.int64)
    if filt:
        tid = np.where(np.isin(tid, list(filt)) | (tid < 0), tid, -2)
        df, tid = df[tid != -2], tid[tid != -2]
    lone = tid < 0
    start = int(tid.max(initial=-1)) + 1
    tid[lone] = np.arange(start, start + int(lone.sum()))
    df = df.assign(track_id=tid).drop(columns="_id")
    df = df.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
    lead = [c for c in ("frame", "y", "x", "z_um") if c in df]
    tail = [c for c in ("probability", "track_id") if c in df]
    df = df[lead + [c for c in df.columns if c not in lead and c not in tail] + tail]
    shape = None
    if img is not None and img.get("height") and img.get("width"):
        shape = (int(img.get("height")), int(img.get("width")))
    meta = {
        "pixel_size_um": px,
        "frame_interval_s": dt,
        "spatial_units": sunit,
        "time_units": tunit,
        "image_shape": shape,
    }
    return df, meta


def check_trackmate_structure(path: str | Path) -> list[str]:
    """Problems that would stop TrackMate's reader or make it show wrong data (empty list: none).

    Checks: root ``TrackMate`` with ``version``; ``Model`` with spatial and time units; every spot /
    edge / track attribute declared with feature, name, shortname, dimension and isint; unique spot
    IDs, ``nspots`` equal to the number of spots, each spot in the ``SpotsInFrame`` of its FRAME with
    ID, name, POSITION_X/Y/Z/T, FRAME, RADIUS, QUALITY and VISIBILITY; edges between existing spots
    going forward in time, each spot in at most one track; FilteredTracks naming existing tracks;
    ``Settings/ImageData`` with sizes, pixel size and frame interval.
    """
    problems: list[str] = []
    root = _parse(Path(path))
    if not root.get("version"):
        problems.append("TrackMate root has no version")
    model = root.find("Model")
    for attr in ("spatialunits", "timeunits"):
        if not model.get(attr):
            problems.append(f"Model has no {attr}")
    declared: dict[str, set] = {}
    for group in ("SpotFeatures", "EdgeFeatures", "TrackFeatures"):
        feats = model.findall(f"FeatureDeclarations/{group}/Feature")
        if model.find(f"FeatureDeclarations/{group}") is None:
            problems.append(f"FeatureDeclarations/{group} missing")
        for f in feats:
            miss = [a for a in ("feature", "name", "shortname", "dimension", "isint") if f.get(a) is None]
            if miss:
                problems.append(f"{group} feature {f.get('feature')} lacks {miss}")
            elif f.get("dimension") not in DIMENSIONS:
                problems.append(
                    f"{group} feature {f.get('feature')} has unknown dimension {f.get('dimension')}"
                )
        declared[group] = {f.get("feature") for f in feats}
    all_spots = model.find("AllSpots")
    spots = model.findall("AllSpots/SpotsInFrame/Spot")
    if all_spots is None:
        problems.append("Model has no AllSpots")
    elif all_spots.get("nspots") != str(len(spots)):
        problems.append(f"AllSpots nspots={all_spots.get('nspots')} but {len(spots)} spots")
    frame_of: dict[int, int] = {}
    for sif in model.iterfind("AllSpots/SpotsInFrame"):
        for s in sif.iterfind("Spot"):
            need = (
                "ID",
                "name",
                "POSITION_X",
                "POSITION_Y",
                "POSITION_Z",
                "POSITION_T",
                "FRAME",
                "RADIUS",
                "QUALITY",
                "VISIBILITY",
            )
            miss = [a for a in need if s.get(a) is None]
            if miss:
                problems.append(f"spot {s.get('ID')} lacks {miss}")
                continue
            undeclared = set(s.keys()) - declared["SpotFeatures"] - {"ID", "name"}
            if undeclared:
                problems.append(f"spot {s.get('ID')} has undeclared features {sorted(undeclared)}")
            bad = [k for k, v in s.items() if k not in ("ID", "name") and not _is_java_double(v)]
            if bad:  # TrackMate reads every other spot attribute with Double.valueOf
                problems.append(f"spot {s.get('ID')} has non-numeric features {bad}")
            sid = int(s.get("ID"))
            if sid in frame_of:
                problems.append(f"spot ID {sid} is not unique")
            frame_of[sid] = int(s.get("FRAME"))
            if s.get("FRAME") != sif.get("frame"):
                problems.append(f"spot {sid} FRAME={s.get('FRAME')} in SpotsInFrame frame={sif.get('frame')}")
    in_track: dict[int, str] = {}
    track_ids = set()
    for tr in model.iterfind("AllTracks/Track"):
        t = tr.get("TRACK_ID")
        track_ids.add(t)
        undeclared = set(tr.keys()) - declared["TrackFeatures"] - {"name"}
        if undeclared:
            problems.append(f"track {t} has undeclared features {sorted(undeclared)}")
        for e in tr.iterfind("Edge"):
            undeclared = set(e.keys()) - declared["EdgeFeatures"]
            if undeclared:
                problems.append(f"edge in track {t} has undeclared features {sorted(undeclared)}")
            s, g = int(e.get("SPOT_SOURCE_ID", -1)), int(e.get("SPOT_TARGET_ID", -1))
            if s not in frame_of or g not in frame_of:
                problems.append(f"edge {s}->{g} in track {t} names a missing spot")
                continue
            if frame_of[g] <= frame_of[s]:
                problems.append(f"edge {s}->{g} in track {t} does not go forward in time")
            for sp in (s, g):
                if in_track.setdefault(sp, t) != t:
                    problems.append(f"spot {sp} is in tracks {in_track[sp]} and {t}")
    for e in model.iterfind("FilteredTracks/TrackID"):
        if e.get("TRACK_ID") not in track_ids:
            problems.append(f"FilteredTracks names track {e.get('TRACK_ID')} that does not exist")
    img = root.find("Settings/ImageData")
    if img is None:
        problems.append("Settings/ImageData missing")
    else:
        for a in (
            "width",
            "height",
            "nslices",
            "nframes",
            "pixelwidth",
            "pixelheight",
            "voxeldepth",
            "timeinterval",
        ):
            if img.get(a) is None:
                problems.append(f"ImageData lacks {a}")
    return problems
