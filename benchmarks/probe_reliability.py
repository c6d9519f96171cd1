"""Reliability probe (issue 14): try the command line, the Python API and the loaders the way a careless
or unlucky user would (and a hostile file would), and count what happens.

Three probe classes:

- ``cli``: command lines run in a forked child (the package already imported, so each case costs
  milliseconds to start), with a wall-clock limit (a case still running after ``--timeout`` s is a
  **hang**), its standard error read (``Traceback`` is a **raw traceback**; "this is a bug" a logged
  **bug**), its peak memory measured (``wait4`` rusage, minus the parent's resident size at the fork),
  and every fixture file hashed before and after (a changed user file, or a file written by a failed
  command, is a **data loss**).
- ``api``: wrong Python calls (wrong types, sizes, paths); a call must return or raise a documented
  error type (:mod:`napari_deeptrack.errors`, ``ValueError``, ``TypeError``, ``FileNotFoundError``)
  with a message naming the problem.
- ``fuzz``: 400 mutated inputs each for the config loader, the image reader and the bundle loader
  (seeded, deterministic); only :class:`~napari_deeptrack.errors.DeepTrackError` may escape.

Prints one JSON line per class and a total: cases, clean, tracebacks, bugs, hangs, data losses, the
largest memory any refused case allocated. ``--verbose`` prints every case that is not clean.

Usage::

    python benchmarks/probe_reliability.py              # all classes (about 2-4 minutes on 2 cores)
    python benchmarks/probe_reliability.py --only cli --verbose
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from napari_deeptrack.cli import build_parser  # noqa: E402
from napari_deeptrack.cli import main as cli_main  # noqa: E402
from napari_deeptrack.errors import DeepTrackError  # noqa: E402


def _preload() -> None:
    """Import what the commands import lazily, once, so that every forked case starts in milliseconds."""
    import importlib

    build_parser()
    for mod in ("napari_deeptrack.analysis.predict", "napari_deeptrack.analysis.metrics",
                "napari_deeptrack.io.bundle", "napari_deeptrack.io.images", "napari_deeptrack.io.tables",
                "napari_deeptrack.tasks", "napari_deeptrack.train", "pandas", "scipy.optimize",
                "skimage.io", "trackpy", "psutil"):  # fmt: skip
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


GB = 1024**3


# ------------------------------------------------------------------------------------------ fixtures
def make_fixtures(root: Path) -> dict[str, Path]:
    """Files a user might hand the tools: good, broken, hostile; and user files that must survive."""
    from napari_deeptrack.io.bundle import save_bundle
    from napari_deeptrack.io.tiff import write_tiff
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.sim import Fluorescence, Particles, Pipeline, PointParticle, to_json
    from napari_deeptrack.sim.targets import DiskMask
    from napari_deeptrack.tasks import get_preset
    from napari_deeptrack.tasks.base import Task

    f: dict[str, Path] = {}
    d = root / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    f["stack"] = d / "stack.tif"
    write_tiff(f["stack"], rng.poisson(10, (4, 48, 48)).astype(np.float32), pixel_size_um=0.1)
    f["png"] = d / "frame.png"
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(f["png"])
    f["rgb"] = d / "rgb.png"
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(f["rgb"])
    f["trunc"] = d / "trunc.tif"
    tifffile.imwrite(f["trunc"], np.ones((8, 48, 48), np.float32), imagej=True)
    f["trunc"].write_bytes(f["trunc"].read_bytes()[: f["trunc"].stat().st_size // 2])
    f["trunc2"] = d / "trunc2.tif"
    tifffile.imwrite(f["trunc2"], np.ones((8, 48, 48), np.float32))
    f["trunc2"].write_bytes(f["trunc2"].read_bytes()[:3000])
    f["complex"] = d / "complex.tif"
    tifffile.imwrite(f["complex"], np.ones((2, 16, 16), np.complex64))
    f["nan"] = d / "nan.tif"
    arr = np.ones((3, 48, 48), np.float32)
    arr[1, :10, :10] = np.nan
    write_tiff(f["nan"], arr)
    f["allnan"] = d / "allnan.tif"
    write_tiff(f["allnan"], np.full((2, 16, 16), np.nan, np.float32))
    f["huge"] = d / "huge.tif"
    raw = bytearray(_tiny_tiff())
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tif:
        for tag in ("ImageWidth", "ImageLength"):
            t = tif.pages[0].tags[tag]
            n = 4 if t.dtype == 4 else 2
            raw[t.valueoffset : t.valueoffset + n] = (300000 if n == 4 else 65000).to_bytes(n, "little")
    f["huge"].write_bytes(bytes(raw))
    f["badpng"] = d / "bad.png"
    f["badpng"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 100, dtype=np.uint8)))
    f["notimg"] = d / "notes.tif"
    f["notimg"].write_text("this is text")
    f["empty"] = d / "empty.tif"
    f["empty"].write_bytes(b"")
    f["emptydir"] = d / "emptydir"
    f["emptydir"].mkdir()
    f["mixed"] = d / "mixed"
    f["mixed"].mkdir()
    write_tiff(f["mixed"] / "a.tif", np.ones((16, 16), np.float32))
    write_tiff(f["mixed"] / "b.tif", np.ones((20, 20), np.float32))
    f["tiny"] = d / "tiny.tif"
    write_tiff(f["tiny"], np.ones((1, 2, 2), np.float32))
    f["5d"] = d / "5d.tif"
    tifffile.imwrite(f["5d"], np.ones((2, 2, 2, 16, 16), np.float32))
    # configs
    pipe = Pipeline((32, 32), [Particles(PointParticle(), count=2)], Fluorescence(NA=1.2, pixel_size_um=0.1))
    good = json.loads(to_json(pipe))
    f["cfg"] = d / "pipe.json"
    f["cfg"].write_text(json.dumps(good))
    variants = {
        "cfg_deep": "[" * 100000 + "]" * 100000,
        "cfg_broken": '{"type": "Pipeline", "image_shape": [',
        "cfg_empty": "",
        "cfg_list": "[1, 2, 3]",
        "cfg_notype": json.dumps({k: v for k, v in good.items() if k != "type"}),
        "cfg_ostype": json.dumps({**good, "optics": {"type": "os.system", "command": "echo hi"}}),
        "cfg_strnum": json.dumps({**good, "image_shape": ["abc", 32]}),
        "cfg_neg": json.dumps({**good, "image_shape": [-5, 32]}),
        "cfg_huge": json.dumps({**good, "image_shape": [300000, 300000]}),
        "cfg_count": json.dumps(_with(good, ("particles", 0, "count"), 10**9)),
        "cfg_derived": json.dumps(
            _with(good, ("particles", 0, "intensity"), {"type": "Derived", "expr": "9**9**9"})
        ),
        "cfg_derived0": json.dumps(
            _with(good, ("particles", 0, "intensity"), {"type": "Derived", "expr": "1/0"})
        ),
        "cfg_derivedsyn": json.dumps(
            _with(good, ("particles", 0, "intensity"), {"type": "Derived", "expr": "1 +"})
        ),
        "cfg_derivedimp": json.dumps(
            _with(
                good,
                ("particles", 0, "intensity"),
                {"type": "Derived", "expr": "__import__('os').system('x')"},
            )
        ),
        "cfg_uniform": json.dumps(
            _with(good, ("particles", 0, "intensity"), {"type": "Uniform", "low": "a"})
        ),
        "cfg_complex": json.dumps(_with(good, ("particles", 0, "intensity"), {"type": "complex"})),
        "cfg_na": json.dumps(_with(good, ("optics", "NA"), 0)),
        "cfg_nullopt": json.dumps({**good, "optics": None}),
        "cfg_nan": json.dumps(good).replace('"NA": 1.2', '"NA": NaN'),
        "cfg_binary": None,
    }
    for k, text in variants.items():
        f[k] = d / f"{k}.json"
        if text is None:
            f[k].write_bytes(bytes(rng.integers(0, 255, 300, dtype=np.uint8)))
        else:
            f[k].write_text(text)
    task = get_preset("particles-2d")
    task_cfg = json.loads(to_json(task))
    f["task_depth"] = d / "task_depth.json"
    model_items = task_cfg["model"]["items"]  # a serialised dict: {"type": "dict", "items": {...}}
    f["task_depth"].write_text(json.dumps(_with(task_cfg, ("model", "items"), {**model_items, "depth": 100})))
    f["task_wide"] = d / "task_wide.json"
    wide = {**model_items, "base_channels": 10**6, "max_channels": 10**7}
    f["task_wide"].write_text(json.dumps(_with(task_cfg, ("model", "items"), wide)))
    # bundles
    det = Task(
        name="probe-detect",
        kind="detection",
        description="probe",
        pipeline=pipe.with_(targets={"mask": DiskMask(2)}),
        target="mask",
        model={"type": "UNet", "depth": 1, "base_channels": 2, "norm": "none", "convs_per_block": 1},
        input_normalization={"mode": "none"},
        postprocess={"threshold": 0.5},
    )
    f["bundle"] = d / "det.zip"
    save_bundle(f["bundle"], build_model(det.model), det)
    with zipfile.ZipFile(f["bundle"]) as zf:
        cfg, weights = json.loads(zf.read("config.json")), zf.read("weights.safetensors")
    f["bundle_dir"] = d / "det_bundle"
    save_bundle(f["bundle_dir"], build_model(det.model), det)

    def rezip(name, cfg_obj, w, method=zipfile.ZIP_DEFLATED):
        f[name] = d / f"{name}.zip"
        with zipfile.ZipFile(f[name], "w", compression=method) as zf:
            zf.writestr("config.json", cfg_obj if isinstance(cfg_obj, str) else json.dumps(cfg_obj))
            if w is not None:
                zf.writestr("weights.safetensors", w)

    rezip("b_pickle", {**cfg, "weights": {}}, b"\x80\x04\x95" + b"\0" * 100)
    rezip("b_bomb", {**cfg, "weights": {}}, b"\0" * (1100 * 1024**2 // 16))  # ~69 MB of zeros, a few kB
    rezip("b_noweights", cfg, None)
    rezip("b_badjson", "{not json", weights)
    rezip("b_deep", "[" * 50000 + "]" * 50000, weights)
    rezip("b_depth", {**cfg, "model": {**cfg["model"], "depth": 100}, "weights": {}}, weights)
    rezip(
        "b_wide",
        {**cfg, "model": {**cfg["model"], "base_channels": 10**6, "max_channels": 10**7}, "weights": {}},
        weights,
    )
    rezip("b_task", {**cfg, "task": {"type": "os.system"}}, weights)
    rezip("b_modeltype", {**cfg, "model": {"type": "Evil"}, "weights": {}}, weights)
    rezip("b_newer", {**cfg, "schema_version": 99}, weights)
    rezip("b_checksum", cfg, weights[:-4] + b"abcd")
    f["b_trunc"] = d / "b_trunc.zip"
    f["b_trunc"].write_bytes(f["bundle"].read_bytes()[:300])
    f["b_slip"] = d / "b_slip.zip"
    with zipfile.ZipFile(f["b_slip"], "w") as zf:
        zf.writestr("../../evil.txt", "x")
        zf.writestr("config.json", json.dumps(cfg))
    # tables
    f["csv"] = d / "res.csv"
    f["csv"].write_text("frame,y,x\n0,1.5,2.5\n1,3,4\n")
    f["csv_abc"] = d / "abc.csv"
    f["csv_abc"].write_text("frame,y,x\n0,abc,1\n")
    f["csv_nocol"] = d / "nocol.csv"
    f["csv_nocol"].write_text("a,b\n1,2\n")
    f["csv_empty"] = d / "empty.csv"
    f["csv_empty"].write_text("")
    f["csv_neg"] = d / "neg.csv"
    f["csv_neg"].write_text("frame,y,x\n-1.5,1,1\n")
    f["csv_bin"] = d / "bin.csv"
    f["csv_bin"].write_bytes(bytes(range(256)) * 4)
    # user data that must survive
    u = root / "user"
    (u / "analysis" / "sub").mkdir(parents=True)
    (u / "analysis" / "config.json").write_text('{"mine": 1}')
    (u / "analysis" / "notes.txt").write_text("precious")
    f["user_folder"] = u / "analysis"
    f["user_zip"] = u / "photos.zip"
    with zipfile.ZipFile(f["user_zip"], "w") as zf:
        zf.writestr("config.json", '{"camera": 1}')
        zf.writestr("img.jpg", b"jpeg")
    f["user_file"] = u / "thesis.docx"
    f["user_file"].write_bytes(b"PK\x03\x04 my thesis")
    f["ro_dir"] = root / "ro"
    f["ro_dir"].mkdir()
    return f


def _tiny_tiff() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones((4, 4), np.uint8))
    return buf.getvalue()


def _with(d, path, value):
    import copy

    d = copy.deepcopy(d)
    obj = d
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    return d


# ------------------------------------------------------------------------------------------ cases
def cli_cases(f: dict[str, Path], out: Path) -> list[tuple[str, list[str], bool]]:
    """(name, argv, should_succeed)."""
    o = str(out)
    b, s = str(f["bundle"]), str(f["stack"])
    cases: list[tuple[str, list[str], bool]] = []

    def add(name, argv, ok=False):
        cases.append((name, [str(a) for a in argv], ok))

    # --- presets / info
    add("presets list", ["presets"], True)
    add("presets one", ["presets", "particles-2d"], True)
    add("presets python", ["presets", "particles-2d", "--python"], True)
    add("presets unknown", ["presets", "nope"])
    add("presets empty name", ["presets", ""])
    add("info zip", ["info", b], True)
    add("info folder", ["info", f["bundle_dir"]], True)
    add("info json", ["info", b, "--json"], True)
    for k in [k for k in f if k.startswith("b_")] + ["stack", "csv", "emptydir", "user_zip", "user_folder"]:
        add(f"info {k}", ["info", f[k]])
    add("info missing", ["info", "/nonexistent/x.zip"])
    # --- simulate
    add("simulate ok", ["simulate", "particles-2d", "--frames", 2, "--out", f"{o}/sim.tif"], True)
    add("simulate cfg", ["simulate", f["cfg"], "--frames", 2, "--out", f"{o}/simc.tif"], True)
    add(
        "simulate truth",
        ["simulate", "particles-2d", "--frames", 2, "--out", f"{o}/s2.tif", "--truth", f"{o}/t.csv"],
        True,
    )
    for k in [k for k in f if k.startswith("cfg_")]:
        add(f"simulate {k}", ["simulate", f[k], "--frames", 2, "--out", f"{o}/x.tif"])
    for frames in (0, -5, 100_000_000):
        add(
            f"simulate frames {frames}",
            ["simulate", "particles-2d", "--frames", frames, "--out", f"{o}/x.tif"],
        )
    add("simulate batch 0", ["simulate", "particles-2d", "--batch-size", 0, "--out", f"{o}/x.tif"])
    add(
        "simulate batch huge",
        ["simulate", "particles-2d", "--frames", 4, "--batch-size", 10**9, "--out", f"{o}/x.tif"],
        True,
    )
    add("simulate device bogus", ["simulate", "particles-2d", "--device", "bogus", "--out", f"{o}/x.tif"])
    add("simulate device cuda:7", ["simulate", "particles-2d", "--device", "cuda:7", "--out", f"{o}/x.tif"])
    add("simulate out folder", ["simulate", "particles-2d", "--out", o])
    add("simulate out png", ["simulate", "particles-2d", "--out", f"{o}/x.png"])
    add(
        "simulate out missing dir",
        ["simulate", "particles-2d", "--frames", 1, "--out", f"{o}/new/dir/x.tif"],
        True,
    )
    add("simulate out /proc", ["simulate", "particles-2d", "--out", "/proc/x.tif"])
    add("simulate out in file", ["simulate", "particles-2d", "--out", f"{f['user_file']}/x.tif"])
    add("simulate truth=out", ["simulate", "particles-2d", "--out", f"{o}/y.tif", "--truth", f"{o}/y.tif"])
    add("simulate unknown preset", ["simulate", "nope", "--out", f"{o}/x.tif"])
    add("simulate missing cfg", ["simulate", "/nope/x.json", "--out", f"{o}/x.tif"])
    add("simulate folder source", ["simulate", f["emptydir"], "--out", f"{o}/x.tif"])
    add("simulate image as cfg", ["simulate", s, "--out", f"{o}/x.tif"])
    for preset in ("cells-count", "holography-3d", "brightfield-localize", "digits-classify", "restore"):
        add(f"simulate {preset}", ["simulate", preset, "--frames", 1, "--out", f"{o}/{preset}.tif"], True)
    # --- train (fast refusals; one short valid run)
    quick = [
        "--epochs",
        1,
        "--steps-per-epoch",
        2,
        "--batch-size",
        2,
        "--quiet",
        "--set",
        "training.validation_size=4",
    ]
    add(
        "train ok",
        [
            "train",
            "particle-localize",
            "--out",
            f"{o}/m.zip",
            *quick,
            "--set",
            "pipeline.image_shape=[16,16]",
        ],
        True,
    )
    add("train user folder", ["train", "particle-localize", "--out", f["user_folder"], *quick])
    add("train foreign zip", ["train", "particle-localize", "--out", f["user_zip"], *quick])
    add("train user file", ["train", "particle-localize", "--out", f["user_file"], *quick])
    add("train into file", ["train", "particle-localize", "--out", f"{f['user_file']}/m", *quick])
    for lr in ("inf", "nan", "0", "-1", "1e6"):
        add(f"train lr {lr}", ["train", "particle-localize", "--out", f"{o}/m2.zip", "--lr", lr, *quick])
    for k, v in (("epochs", 0), ("steps-per-epoch", 0), ("batch-size", 0), ("batch-size", -3)):
        add(f"train {k} {v}", ["train", "particle-localize", "--out", f"{o}/m2.zip", f"--{k}", v, "--quiet"])
    add(
        "train device bogus",
        ["train", "particle-localize", "--out", f"{o}/m2.zip", "--device", "bogus", *quick],
    )
    add(
        "train depth 100",
        ["train", "particles-2d", "--out", f"{o}/m2.zip", "--set", "model.depth=100", *quick],
    )
    add(
        "train base_channels 1e6",
        [
            "train",
            "particles-2d",
            "--out",
            f"{o}/m2.zip",
            "--set",
            "model.base_channels=1000000",
            "--set",
            "model.max_channels=10000000",
            *quick,
        ],
    )
    add("train task depth", ["train", f["task_depth"], "--out", f"{o}/m2.zip", *quick])
    add("train task wide", ["train", f["task_wide"], "--out", f"{o}/m2.zip", *quick])
    add("train set bad", ["train", "particles-2d", "--out", f"{o}/m2.zip", "--set", "nonsense", *quick])
    add(
        "train set unknown key",
        ["train", "particles-2d", "--out", f"{o}/m2.zip", "--set", "pipeline.nope=1", *quick],
    )
    add(
        "train set count huge",
        [
            "train",
            "particles-2d",
            "--out",
            f"{o}/m2.zip",
            "--set",
            "pipeline.particles.0.count=1000000",
            *quick,
        ],
    )
    add(
        "train set shape huge",
        [
            "train",
            "particles-2d",
            "--out",
            f"{o}/m2.zip",
            "--set",
            "pipeline.image_shape=[100000,100000]",
            *quick,
        ],
    )
    add(
        "train set derived",
        [
            "train",
            "particles-2d",
            "--out",
            f"{o}/m2.zip",
            "--set",
            'pipeline.particles.0.intensity={"type":"Derived","expr":"9**9**9"}',
            *quick,
        ],
    )
    add("train init bad", ["train", "particles-2d", "--out", f"{o}/m2.zip", "--init", f["b_pickle"], *quick])
    add("train unknown task", ["train", "nope", "--out", f"{o}/m2.zip", *quick])
    for k in ("cfg_deep", "cfg_broken", "cfg_binary", "cfg_ostype", "csv"):
        add(f"train task {k}", ["train", f[k], "--out", f"{o}/m2.zip", *quick])
    add(
        "train match missing",
        ["train", "particles-2d", "--out", f"{o}/m2.zip", "--match", "/nope.tif", *quick],
    )
    add(
        "train match badpng",
        ["train", "particles-2d", "--out", f"{o}/m2.zip", "--match", f["badpng"], *quick],
    )
    add("train match huge", ["train", "particles-2d", "--out", f"{o}/m2.zip", "--match", f["huge"], *quick])
    add("train max-minutes 0", ["train", "particles-2d", "--out", f"{o}/m2.zip", "--max-minutes", 0, *quick])
    # --- apply
    add("apply ok", ["apply", b, s, "--out", f"{o}/r.csv"], True)
    add("apply folder bundle", ["apply", f["bundle_dir"], s, "--out", f"{o}/r1.csv"], True)
    add("apply png", ["apply", b, f["png"], "--out", f"{o}/r2.csv"], True)
    add("apply rgb", ["apply", b, f["rgb"], "--out", f"{o}/r3.csv"], True)
    add("apply rgb channel", ["apply", b, f["rgb"], "--out", f"{o}/r4.csv", "--channel", "g"], True)
    add("apply rgb channel bad", ["apply", b, f["rgb"], "--out", f"{o}/x.csv", "--channel", "7"])
    add("apply nan", ["apply", b, f["nan"], "--out", f"{o}/r5.csv"], True)
    add("apply link", ["apply", b, s, "--out", f"{o}/r6.csv", "--link"], True)
    add("apply partial", ["apply", b, f["trunc"], "--out", f"{o}/r7.csv", "--allow-partial"], True)
    for k in (
        "trunc",
        "trunc2",
        "complex",
        "allnan",
        "huge",
        "badpng",
        "notimg",
        "empty",
        "emptydir",
        "mixed",
        "5d",
        "cfg",
    ):
        add(f"apply image {k}", ["apply", b, f[k], "--out", f"{o}/x.csv"])
    add("apply tiny", ["apply", b, f["tiny"], "--out", f"{o}/r8.csv"], True)
    for k in [k for k in f if k.startswith("b_")] + ["stack", "user_zip", "user_folder"]:
        add(f"apply bundle {k}", ["apply", f[k], s, "--out", f"{o}/x.csv"])
    add(
        "apply labels-out bad",
        ["apply", b, s, "--out", f"{o}/x.csv", "--labels-out", f"{o}/no/such/dir/../l.png"],
    )
    add("apply labels-out unsupported", ["apply", b, s, "--out", f"{o}/x.csv", "--labels-out", f"{o}/l.tif"])
    add("apply counts-out folder", ["apply", b, s, "--out", f"{o}/x.csv", "--counts-out", o])
    add("apply out folder", ["apply", b, s, "--out", o])
    add("apply out /proc", ["apply", b, s, "--out", "/proc/x.csv"])
    add("apply out in file", ["apply", b, s, "--out", f"{f['user_file']}/x.csv"])
    add("apply device bogus", ["apply", b, s, "--out", f"{o}/x.csv", "--device", "bogus"])
    add("apply device cuda:7", ["apply", b, s, "--out", f"{o}/x.csv", "--device", "cuda:7"])
    for flag, v in (("--threshold", 0), ("--threshold", 2), ("--threshold", "nan"), ("--batch-size", 0),
                    ("--batch-size", -1), ("--pixel-size-um", -1), ("--search-range-px", 0), ("--memory", -1),
                    ("--frame-interval-s", 0)):  # fmt: skip
        add(f"apply {flag} {v}", ["apply", b, s, "--out", f"{o}/x.csv", flag, v])
    add("apply missing image", ["apply", b, "/nope.tif", "--out", f"{o}/x.csv"])
    # --- evaluate
    add("evaluate ok", ["evaluate", f["csv"], f["csv"]], True)
    add("evaluate out", ["evaluate", f["csv"], f["csv"], "--out", f"{o}/m.json"], True)
    add("evaluate per-frame", ["evaluate", f["csv"], f["csv"], "--per-frame"], True)
    for k in ("csv_abc", "csv_nocol", "csv_empty", "csv_neg", "csv_bin", "stack", "emptydir"):
        add(f"evaluate {k}", ["evaluate", f[k], f["csv"]])
        add(f"evaluate truth {k}", ["evaluate", f["csv"], f[k]])
    for tol in (0, -1, "nan", "inf"):
        add(f"evaluate tol {tol}", ["evaluate", f["csv"], f["csv"], "--tolerance", tol])
    add("evaluate out folder", ["evaluate", f["csv"], f["csv"], "--out", o])
    add("evaluate out /proc", ["evaluate", f["csv"], f["csv"], "--out", "/proc/m.json"])
    add("evaluate missing", ["evaluate", "/nope.csv", f["csv"]])
    # --- argparse-level
    add("no command", [])
    add("unknown command", ["frobnicate"])
    add("simulate no out", ["simulate", "particles-2d"])
    add("simulate frames text", ["simulate", "particles-2d", "--frames", "ten", "--out", f"{o}/x.tif"])
    return cases


def api_cases(f: dict[str, Path]):
    """(name, callable) of wrong Python calls."""
    from napari_deeptrack.io.bundle import load_bundle, read_bundle_config, save_bundle
    from napari_deeptrack.io.images import read_images
    from napari_deeptrack.io.tables import read_results_csv, write_results_csv
    from napari_deeptrack.io.tiff import read_tiff, write_tiff
    from napari_deeptrack.nn import build_model
    from napari_deeptrack.sim import (
        Fluorescence,
        IntUniform,
        Particles,
        Pipeline,
        PointParticle,
        Uniform,
        from_json,
    )
    from napari_deeptrack.sim.params import Derived
    from napari_deeptrack.tasks import get_preset

    pipe = Pipeline((32, 32), [Particles(PointParticle(), count=2)], Fluorescence(NA=1.2, pixel_size_um=0.1))
    cases = [
        ("read_images None", lambda: read_images(None)),
        ("read_images int", lambda: read_images(5)),
        ("read_images dir", lambda: read_images(f["emptydir"])),
        ("read_images bad channel", lambda: read_images(f["rgb"], channel="purple")),
        ("read_images nonfinite bad", lambda: read_images(f["stack"], nonfinite="zero")),
        ("read_tiff png", lambda: read_tiff(f["png"])),
        ("read_tiff dir", lambda: read_tiff(f["emptydir"])),
        ("write_tiff complex", lambda: write_tiff(f["ro_dir"] / "c.tif", np.ones((2, 2), complex))),
        ("write_tiff object", lambda: write_tiff(f["ro_dir"] / "o.tif", np.array([[None]]))),
        ("read_results_csv tif", lambda: read_results_csv(f["stack"])),
        (
            "write_results_csv nocols",
            lambda: write_results_csv(__import__("pandas").DataFrame({"a": [1]}), f["ro_dir"] / "r.csv"),
        ),
        ("load_bundle None", lambda: load_bundle(None)),
        ("load_bundle csv", lambda: load_bundle(f["csv"])),
        ("load_bundle dir", lambda: load_bundle(f["emptydir"])),
        ("load_bundle device bogus", lambda: load_bundle(f["bundle"], device="bogus")),
        ("read_bundle_config tif", lambda: read_bundle_config(f["stack"])),
        (
            "save_bundle user folder",
            lambda: save_bundle(f["user_folder"], torch.nn.Linear(1, 1), get_preset("particles-2d")),
        ),
        (
            "save_bundle foreign zip",
            lambda: save_bundle(f["user_zip"], torch.nn.Linear(1, 1), get_preset("particles-2d")),
        ),
        ("build_model None", lambda: build_model(None)),
        ("build_model unknown", lambda: build_model({"type": "Evil"})),
        ("build_model bad kw", lambda: build_model({"type": "UNet", "nope": 1})),
        ("build_model depth str", lambda: build_model({"type": "UNet", "depth": "x"})),
        ("build_model depth -1", lambda: build_model({"type": "UNet", "depth": -1})),
        ("build_model channels 0", lambda: build_model({"type": "CNN", "channels": [0]})),
        ("build_model dropout 2", lambda: build_model({"type": "CNN", "dropout": 2})),
        ("Pipeline shape -1", lambda: Pipeline((-1, 5), [], Fluorescence(NA=1.2, pixel_size_um=0.1))),
        ("Pipeline shape 1D", lambda: Pipeline((5,), [], Fluorescence(NA=1.2, pixel_size_um=0.1))),
        ("Pipeline batch 0", lambda: pipe(0)),
        ("Pipeline batch -1", lambda: pipe(-1)),
        ("Pipeline batch huge", lambda: pipe(10**8)),
        ("Pipeline device bogus", lambda: pipe(1, device="bogus")),
        ("Fluorescence NA 0", lambda: Fluorescence(NA=0, pixel_size_um=0.1)),
        ("Fluorescence NA 5", lambda: Fluorescence(NA=5, pixel_size_um=0.1)),
        ("Fluorescence no pixel", lambda: Fluorescence(NA=1.2)),
        ("Fluorescence pixel -1", lambda: Fluorescence(NA=1.2, pixel_size_um=-1)),
        ("Particles count -1", lambda: Particles(PointParticle(), count=-1)),
        ("Particles count str", lambda: Particles(PointParticle(), count="5")),
        ("Uniform reversed", lambda: Uniform(2, 1)),
        ("Uniform str", lambda: Uniform("a", 1)),
        ("IntUniform reversed", lambda: IntUniform(5, 1)),
        ("Derived 9**9**9", lambda: Derived("9**9**9")),
        ("Derived syntax", lambda: Derived("1 +")),
        ("Derived import", lambda: Derived("__import__('os')")),
        ("Derived attr", lambda: Derived("x.__class__")),
        ("Derived lambda", lambda: Derived("(lambda: 1)()")),
        ("Derived long", lambda: Derived("1+" * 5000 + "1")),
        ("Derived nested", lambda: Derived("(" * 500 + "1" + ")" * 500)),
        ("Derived str", lambda: Derived("'a' * 10**9")),
        ("Derived int", lambda: Derived(5)),
        ("from_json deep", lambda: from_json("[" * 100000 + "]" * 100000)),
        ("from_json None", lambda: from_json(None)),
        ("from_json bytes", lambda: from_json(b"\xff\xfe")),
        ("from_json os.system", lambda: from_json('{"type": "os.system"}')),
        ("get_preset unknown", lambda: get_preset("nope")),
        ("get_preset None", lambda: get_preset(None)),
        ("task edited bad key", lambda: get_preset("particles-2d").edited({"pipeline.nope": 1})),
        (
            "task edited bad index",
            lambda: get_preset("particles-2d").edited({"pipeline.particles.9.count": 1}),
        ),
    ]
    try:
        from napari_deeptrack.analysis.predict import predict

        b = load_bundle(f["bundle"])
        cases += [
            ("predict None", lambda: predict(b, None)),
            ("predict 1D", lambda: predict(b, np.ones(5))),
            ("predict empty", lambda: predict(b, np.ones((0, 16, 16)))),
            ("predict complex", lambda: predict(b, np.ones((1, 16, 16), complex))),
            ("predict nan", lambda: predict(b, np.full((1, 16, 16), np.nan))),
            ("predict strings", lambda: predict(b, np.array([["a"]]))),
            ("predict threshold 5", lambda: predict(b, np.ones((1, 16, 16)), threshold=5)),
            ("predict batch 0", lambda: predict(b, np.ones((1, 16, 16)), batch_size=0)),
            ("predict device bogus", lambda: predict(b, np.ones((1, 16, 16)), device="bogus")),
        ]
    except Exception:  # noqa: BLE001 - the probe keeps going
        traceback.print_exc()
    try:
        from napari_deeptrack.train import train_task

        small = get_preset("particle-localize")
        cases += [
            ("train_task out user folder", lambda: train_task(small, f["user_folder"], epochs=1)),
            ("train_task lr inf", lambda: train_task(small, None, lr=float("inf"))),
            ("train_task epochs 0", lambda: train_task(small, None, epochs=0)),
            ("train_task device bogus", lambda: train_task(small, None, device="bogus")),
        ]
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    return cases


DOCUMENTED = (DeepTrackError, ValueError, TypeError, FileNotFoundError, MemoryError)


# ------------------------------------------------------------------------------------------ runner
def _tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[str(p.relative_to(root))] = h.hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_forked(fn, timeout: float, log_dir: Path) -> dict:
    """Run ``fn()`` (returns an exit code) in a forked child; capture stderr/stdout, time, memory."""
    err_path, out_path, mem_path = log_dir / "err.txt", log_dir / "out.txt", log_dir / "mem.txt"
    mem_path.unlink(missing_ok=True)
    base_kb = _rss_kb()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        start_kb = _rss_kb()
        try:
            fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd_err, 2)
            os.dup2(fd_out, 1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            code = fn()
            code = 0 if code is None else code
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - what a raw Python traceback would be
            traceback.print_exc()
            code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            # peak resident memory of this case beyond what the fork started with (kB -> MB)
            mem_path.write_text(str(max(0, _rss_kb("VmHWM") - start_kb) / 1024))
        finally:
            os._exit(int(code or 0) & 0xFF)
    status, usage, hang = None, None, False
    while True:
        wpid, st, ru = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            status, usage = st, ru
            break
        if time.perf_counter() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            hang = True
            break
        time.sleep(0.01)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    return {
        "code": code,
        "hang": hang,
        "seconds": time.perf_counter() - t0,
        "extra_mb": float(mem_path.read_text())
        if mem_path.exists()
        else max(0, usage.ru_maxrss - base_kb) / 1024,
        "err": err_path.read_text(errors="replace") if err_path.exists() else "",
        "out": out_path.read_text(errors="replace") if out_path.exists() else "",
    }


def probe_cli(f, root: Path, timeout: float, verbose: bool) -> dict:
    out_dir = root / "out"
    out_dir.mkdir(exist_ok=True)
    logs = root / "logs"
    os.environ["NAPARI_DEEPTRACK_LOG_DIR"] = str(root / "buglogs")
    counts = {"cases": 0, "clean": 0, "unclear": 0, "tracebacks": 0, "bugs": 0, "hangs": 0, "data_losses": 0}
    worst_refusal_mb, worst_refusal_case, slowest = 0.0, "", (0.0, "")
    for name, argv, should_succeed in cli_cases(f, out_dir):
        before_in = _tree_hash(root / "in")
        before_user = _tree_hash(root / "user")
        before_out = _tree_hash(out_dir)
        r = run_forked(lambda argv=argv: cli_main(argv), timeout, logs)
        counts["cases"] += 1
        problems = []
        lost = _tree_hash(root / "user") != before_user or _tree_hash(root / "in") != before_in
        if r["code"] != 0 and _tree_hash(out_dir) != before_out:
            lost = True
            problems.append("wrote output before failing")
        if r["hang"]:
            counts["hangs"] += 1
            problems.append(f"hang (> {timeout:.0f} s)")
        elif "Traceback" in r["err"]:
            counts["tracebacks"] += 1
            problems.append("raw traceback")
        elif "this is a bug" in r["err"]:
            counts["bugs"] += 1
            problems.append("bug")
        elif should_succeed and r["code"] != 0:
            counts["unclear"] += 1
            problems.append(f"failed (exit {r['code']})")
        elif not should_succeed and r["code"] == 0:
            counts["unclear"] += 1
            problems.append("accepted bad input (exit 0)")
        elif r["code"] not in (0, 2):
            counts["unclear"] += 1
            problems.append(f"exit {r['code']}")
        if lost:
            counts["data_losses"] += 1
            problems.append("data loss")
        if r["code"] != 0 and r["extra_mb"] > worst_refusal_mb:
            worst_refusal_mb, worst_refusal_case = r["extra_mb"], name
        slowest = max(slowest, (r["seconds"], name))
        if not problems:
            counts["clean"] += 1
        elif verbose:
            last = (r["err"].strip().splitlines() or [""])[-1][:200]
            print(f"  [cli] {name}: {', '.join(problems)} :: {last}", file=sys.stderr)
        # reset the outputs so each case starts from the same state
        for p in sorted(out_dir.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    return {
        "probe": "cli",
        **counts,
        "max_refusal_extra_mb": round(worst_refusal_mb, 1),
        "max_refusal_case": worst_refusal_case,
        "slowest_s": round(slowest[0], 1),
        "slowest_case": slowest[1],
    }


def probe_api(f, root: Path, timeout: float, verbose: bool) -> dict:
    logs = root / "logs"
    counts = {"cases": 0, "clean": 0, "undocumented": 0, "hangs": 0, "generic_messages": 0}
    worst = 0.0
    for name, fn in api_cases(f):
        result_path = logs / "api.json"

        def call(fn=fn, result_path=result_path):
            try:
                fn()
                res = {"raised": None}
            except BaseException as exc:  # noqa: BLE001 - classified below
                res = {
                    "raised": type(exc).__name__,
                    "documented": isinstance(exc, DOCUMENTED),
                    "msg": str(exc),
                }
            result_path.write_text(json.dumps(res))
            return 0

        r = run_forked(call, timeout, logs)
        counts["cases"] += 1
        res = json.loads(result_path.read_text()) if result_path.exists() and not r["hang"] else {}
        result_path.unlink(missing_ok=True)
        worst = max(worst, r["extra_mb"])
        problem = None
        if r["hang"]:
            counts["hangs"] += 1
            problem = "hang"
        elif not res:  # the child died before reporting (a crash of the probe or the interpreter)
            counts["undocumented"] += 1
            problem = f"no result (exit {r['code']}): {r['err'].strip()[-150:]}"
        elif res.get("raised") and not res.get("documented"):
            counts["undocumented"] += 1
            problem = f"{res['raised']}: {res.get('msg', '')[:150]}"
        elif res.get("raised") and len(res.get("msg", "")) < 12:
            counts["generic_messages"] += 1
            problem = f"generic message {res['raised']}: {res.get('msg')!r}"
        else:
            counts["clean"] += 1
        if problem and verbose:
            print(f"  [api] {name}: {problem}", file=sys.stderr)
    return {"probe": "api", **counts, "max_extra_mb": round(worst, 1)}


def probe_fuzz(f, root: Path, n: int, verbose: bool) -> dict:
    from napari_deeptrack.io.bundle import load_bundle
    from napari_deeptrack.io.images import read_images
    from napari_deeptrack.sim.serialize import from_json, to_json
    from napari_deeptrack.tasks import get_preset

    rng = np.random.default_rng(1234)
    fuzz_dir = root / "fuzz"
    fuzz_dir.mkdir(exist_ok=True)
    seeds = {
        "config": to_json(get_preset("particles-2d")).encode(),
        "image_tif": f["stack"].read_bytes(),
        "image_png": f["png"].read_bytes(),
        "bundle": f["bundle"].read_bytes(),
    }

    def mutate(raw: bytes) -> bytes:
        raw = bytearray(raw)
        for _ in range(int(rng.integers(1, 6))):
            k = int(rng.integers(0, 4))
            i = int(rng.integers(0, max(len(raw), 1)))
            if k == 0 and raw:
                raw[i] = int(rng.integers(0, 256))
            elif k == 1:
                raw = raw[:i]
            elif k == 2 and len(raw) >= i + 4:
                raw[i : i + 4] = [b"\xff\xff\xff\x7f", b"\0\0\0\0", b"\xe0\x93\x04\x00"][
                    int(rng.integers(0, 3))
                ]
            else:
                raw[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8))
        return bytes(raw)

    targets = {
        "config": lambda p: from_json(p.read_bytes()),
        "image": lambda p: read_images(p),
        "bundle": lambda p: load_bundle(p),
    }
    result = {"probe": "fuzz"}
    for target, fn in targets.items():
        bad: dict[str, int] = {}
        for i in range(n):
            if target == "image":
                key = "image_tif" if i % 2 == 0 else "image_png"
                path = fuzz_dir / f"x{'.tif' if key == 'image_tif' else '.png'}"
            else:
                key = target
                path = fuzz_dir / ("x.json" if target == "config" else "x.zip")
            path.write_bytes(mutate(seeds[key]))
            try:
                with contextlib.redirect_stderr(io.StringIO()), _quiet_warnings():
                    fn(path)
            except DeepTrackError:
                pass
            except BaseException as exc:  # noqa: BLE001 - counted
                name = type(exc).__name__
                bad[name] = bad.get(name, 0) + 1
                if verbose and bad[name] == 1:
                    print(f"  [fuzz {target}] {name}: {str(exc)[:150]}", file=sys.stderr)
        result[target] = {"examples": n, "undocumented": sum(bad.values()), "types": bad}
    return result


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["cli", "api", "fuzz"], action="append")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    ap.add_argument("--fuzz-examples", type=int, default=400)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    only = set(args.only or ["cli", "api", "fuzz"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _preload()
    with tempfile.TemporaryDirectory(prefix="probe-reliability-") as tmp:
        root = Path(tmp)
        f = make_fixtures(root)
        (root / "logs").mkdir()
        os.chmod(f["ro_dir"], 0o500)
        results = []
        t0 = time.perf_counter()
        if "cli" in only:
            results.append(probe_cli(f, root, args.timeout, args.verbose))
            print(json.dumps(results[-1]), flush=True)
        if "api" in only:
            results.append(probe_api(f, root, args.timeout, args.verbose))
            print(json.dumps(results[-1]), flush=True)
        if "fuzz" in only:
            results.append(probe_fuzz(f, root, args.fuzz_examples, args.verbose))
            print(json.dumps(results[-1]), flush=True)
        os.chmod(f["ro_dir"], 0o700)
        print(json.dumps({"probe": "total", "seconds": round(time.perf_counter() - t0, 1),
                          "torch": torch.__version__, "python": sys.version.split()[0]}))  # fmt: skip


if __name__ == "__main__":
    main()
