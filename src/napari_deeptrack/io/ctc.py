"""Cell Tracking Challenge (CTC) format: a folder of 16-bit label TIFFs plus a track table.

Results (``kind="res"``): ``mask000.tif, mask001.tif, ...`` and ``res_track.txt``; ground truth
(``kind="gt"``): ``TRA/man_track000.tif, ...`` and ``TRA/man_track.txt``. Every line of the track
table is ``L B E P``: the label, its first and last frame (0-based) and its parent label (0: none).
A label must be present in every frame from B to E, so a track with a gap is written as two labels,
the second with the first as its parent (the CTC convention); :func:`read_ctc` joins such one-child
links back into one track (two children are a division and stay separate tracks).

Particles are drawn as disks of ``radius_px`` around their positions (the centre pixel always keeps
its own label, also where disks overlap). Reading takes each label's centroid in each frame. The
TIFFs carry the pixel size, so units survive the round trip.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["read_ctc", "write_ctc"]

_MAX_LABEL = 65535


def _segments(frames: np.ndarray) -> list[np.ndarray]:
    """Split the (sorted) frame indices of one track into gap-free runs (positions in the array)."""
    breaks = np.nonzero(np.diff(frames) != 1)[0] + 1
    return np.split(np.arange(len(frames)), breaks)


def write_ctc(
    tracks: pd.DataFrame,
    folder: str | Path,
    image_shape: tuple[int, int] | None = None,
    radius_px: float = 3.0,
    n_frames: int | None = None,
    pixel_size_um: float | None = None,
    kind: str = "res",
) -> Path:
    """Write linked detections as a CTC folder.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, y, x`` (pixels) and ``track_id``.
    folder : str or Path
        Output folder (created; existing CTC files in it are replaced).
    image_shape : (H, W), optional
        Frame size; default: large enough for all positions.
    radius_px : float
        Disk radius of every particle.
    n_frames : int, optional
        Number of frames (default: last frame + 1); frames without particles get empty masks.
    pixel_size_um : float, optional
        Recorded in the TIFFs.
    kind : {'res', 'gt'}
        Results layout (``mask###.tif`` + ``res_track.txt``) or ground truth (``TRA/man_track...``).

    Returns
    -------
    Path
        The folder holding the track table.
    """
    from .atomic import atomic_write_text
    from .tiff import write_tiff

    if kind not in ("res", "gt"):
        raise ValueError(f"kind must be 'res' or 'gt', got {kind!r}")
    missing = [c for c in ("frame", "y", "x", "track_id") if c not in tracks.columns]
    if missing:
        raise ValueError(f"tracks lack column(s) {missing} (link the detections first)")
    if not radius_px >= 0:
        raise ValueError(f"radius_px must be >= 0, got {radius_px}")
    df = tracks.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
    if df.duplicated(["track_id", "frame"]).any():
        raise ValueError("a track has two positions in one frame; CTC labels need one object per frame")
    if image_shape is None:
        image_shape = (
            int(np.ceil(df["y"].max() + radius_px + 1)) if len(df) else 1,
            int(np.ceil(df["x"].max() + radius_px + 1)) if len(df) else 1,
        )
    h, w = (int(v) for v in image_shape)
    t_n = int(n_frames) if n_frames is not None else (int(df["frame"].max()) + 1 if len(df) else 1)
    # labels: one per gap-free segment, parents link the segments of a track
    label = np.zeros(len(df), dtype=np.int64)
    lines = []
    next_label = 1
    for _, idx in df.groupby("track_id", sort=True).indices.items():
        frames = df["frame"].to_numpy()[idx]
        parent = 0
        for seg in _segments(frames):
            label[idx[seg]] = next_label
            lines.append((next_label, int(frames[seg[0]]), int(frames[seg[-1]]), parent))
            parent = next_label
            next_label += 1
    if next_label - 1 > _MAX_LABEL:
        raise ValueError(f"{next_label - 1} track segments exceed the 16-bit labels of the CTC format")
    folder = Path(folder)
    out_dir = folder / "TRA" if kind == "gt" else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "man_track" if kind == "gt" else "mask"
    digits = max(3, len(str(t_n - 1)))
    r = float(radius_px)
    k = int(np.ceil(r))
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    f_all = df["frame"].to_numpy(np.int64)
    yy, xx = df["y"].to_numpy(float), df["x"].to_numpy(float)
    for f in range(t_n):
        img = np.zeros((h, w), dtype=np.uint16)
        sel = np.nonzero(f_all == f)[0]
        if len(sel):
            cy, cx = np.rint(yy[sel]).astype(np.int64), np.rint(xx[sel]).astype(np.int64)
            # all disk pixels at once; nearer particles win where disks overlap (later writes)
            py = (cy[:, None, None] + dy[None]).ravel()
            px = (cx[:, None, None] + dx[None]).ravel()
            d2 = (py - np.repeat(yy[sel], dy.size)) ** 2 + (px - np.repeat(xx[sel], dx.size)) ** 2
            lab = np.repeat(label[sel], dy.size)
            ok = (d2 <= r * r) & (py >= 0) & (py < h) & (px >= 0) & (px < w)
            order = np.argsort(-d2[ok], kind="stable")
            img[py[ok][order], px[ok][order]] = lab[ok][order]
            inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
            img[cy[inside], cx[inside]] = label[sel][inside]
        write_tiff(out_dir / f"{stem}{f:0{digits}d}.tif", img, pixel_size_um=pixel_size_um)
    table = "".join(f"{a} {b} {c} {d}\n" for a, b, c, d in lines)
    atomic_write_text(out_dir / ("man_track.txt" if kind == "gt" else "res_track.txt"), table)
    return out_dir


def _find_layout(folder: Path) -> tuple[Path, str, Path]:
    for sub, table, stem in (
        (".", "res_track.txt", "mask"),
        ("TRA", "man_track.txt", "man_track"),
        (".", "man_track.txt", "man_track"),
    ):
        d = folder / sub
        if (d / table).is_file():
            return d, stem, d / table
    raise ValueError(
        f"{folder} is not a CTC folder: no res_track.txt, TRA/man_track.txt or man_track.txt in it"
    )


def read_ctc(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a CTC results or ground-truth folder into our table layout.

    Returns
    -------
    tracks : DataFrame
        ``frame, y, x`` (centroid of each label in each frame, pixels), ``area`` (pixels), ``label``
        (the CTC label) and ``track_id`` (gap links joined), sorted by track and frame.
    meta : dict
        ``pixel_size_um`` (from the TIFFs, or None), ``n_frames``, ``image_shape``, ``table`` (the
        ``L B E P`` rows).

    Raises
    ------
    ValueError
        Not a CTC folder; a frame missing from the numbered masks; a label in the table absent from a
        frame it should be in (or present in a mask but not in the table); a bad table line.
    """
    from scipy import ndimage

    from .tiff import read_tiff

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no CTC folder at {folder}")
    d, stem, table_path = _find_layout(folder)
    rows = []
    for n, line in enumerate(table_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
            raise ValueError(f"{table_path}:{n}: expected 'L B E P' (four integers), got {line!r}")
        rows.append([int(p) for p in parts])
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    pat = re.compile(rf"^{stem}(\d+)\.tiff?$")
    files = {int(m.group(1)): p for p in d.iterdir() if (m := pat.match(p.name))}
    if not files:
        raise ValueError(f"{d} has no {stem}###.tif masks")
    last = max(max(files), int(table[:, 2].max(initial=0)))
    missing = [f for f in range(last + 1) if f not in files]
    if missing:
        raise ValueError(
            f"{d}: frame(s) {missing[:10]} are missing ({stem}{missing[0]:03d}.tif not found); a CTC folder "
            f"needs one mask per frame from 0 to {last}"
        )
    span = {int(a): (int(b), int(c)) for a, b, c, _ in table}
    recs = []
    pixel_size = None
    shape = None
    for f in range(last + 1):
        img, meta = read_tiff(files[f])
        if img.ndim != 2:
            raise ValueError(f"{files[f]} is not a 2D label image (shape {img.shape})")
        pixel_size = pixel_size or meta.get("pixel_size_um")
        shape = img.shape
        ids = np.unique(img[img > 0]).astype(np.int64)
        expected = {lab for lab, (b, e) in span.items() if b <= f <= e}
        if set(ids) != expected:
            extra, absent = sorted(set(ids) - expected), sorted(expected - set(ids))
            raise ValueError(
                f"{files[f]}: labels {extra} are in the mask but not in {table_path.name} for frame {f}; "
                f"labels {absent} are in the table but not in the mask"
            )
        if len(ids):
            com = np.asarray(ndimage.center_of_mass(np.ones(img.shape), img, ids)).reshape(-1, 2)
            area = ndimage.sum_labels(np.ones(img.shape), img, ids)
            for lab, (cy, cx), a in zip(ids, com, area):
                recs.append((f, cy, cx, a, lab))
    df = pd.DataFrame(recs, columns=["frame", "y", "x", "area", "label"])
    df["frame"] = df["frame"].astype(np.int64)
    df["label"] = df["label"].astype(np.int64)
    # join gap links (a parent with exactly one child) into one track
    children: dict[int, list[int]] = {}
    for lab, _, _, par in table:
        if par:
            children.setdefault(int(par), []).append(int(lab))
    root_of = {}
    for lab, _, _, par in table:
        lab, par = int(lab), int(par)
        root = lab
        while par and len(children.get(par, [])) == 1:
            root = par
            par = next((int(p) for lb, _, _, p in table if int(lb) == par), 0)
        root_of[lab] = root
    roots = sorted(set(root_of.values()))  # in label order (our writer numbers tracks in id order)
    tid = {r: i for i, r in enumerate(roots)}
    df["track_id"] = df["label"].map(lambda lab: tid[root_of[int(lab)]]).astype(np.int64)
    df = df.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
    meta = {"pixel_size_um": pixel_size, "n_frames": last + 1, "image_shape": shape, "table": table}
    return df, meta
