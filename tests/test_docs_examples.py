"""Every example in docs/python_api.md runs, and every command line it shows is valid.

How the Python blocks run (the page's "Running these examples" paragraph says the same):

- the page is split into sections at its ``## `` headings; the ```python blocks of a section run in
  order in one fresh namespace (every section starts with its own imports);
- all sections share one temporary working folder, in page order, so files written by earlier
  sections (``movie.tif``, ``movie_truth.csv``, ``particles.zip``) are there for later ones; the test
  of a section first runs the sections before it if they have not run yet, so ``-k`` selections work;
- blocks tagged ```python no-test are shown but not run; each must be covered by a fast block.

After each section, a few checks on its namespace make sure the examples did what the text says
(so a snippet that silently produces nothing fails). The command-line blocks are checked by parsing
every ``napari-deeptrack ...`` line with the real argument parser: the command exists, ``--help``
exits 0, and every option shown is accepted.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeptrack.cli import build_parser, main
from napari_deeptrack.tasks import get_preset, list_presets

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


def _sections() -> list[tuple[str, list[tuple[int, str, str]]]]:
    """[(section title, [(line number, info string, code), ...]), ...] in page order."""
    text = DOC.read_text(encoding="utf-8")
    heads = [(m.start(), m.group(1).strip()) for m in re.finditer(r"^## (.+)$", text, re.M)]
    out: list[tuple[str, list[tuple[int, str, str]]]] = [("(top)", [])] + [(t, []) for _, t in heads]
    starts = [0] + [s for s, _ in heads]
    for m in FENCE.finditer(text):
        k = max(i for i, s in enumerate(starts) if s <= m.start())
        out[k][1].append((text.count("\n", 0, m.start()) + 2, m.group(1).strip(), m.group(2)))
    return out


SECTIONS = _sections()
PY_SECTIONS = [title for title, blocks in SECTIONS if any(i.startswith("python") for _, i, _ in blocks)]


def _python_blocks(title: str) -> list[tuple[int, str]]:
    blocks = dict(SECTIONS)[title]
    return [
        (line, code)
        for line, info, code in blocks
        if info.split() and info.split()[0] == "python" and "no-test" not in info.split()[1:]
    ]


def _cli_lines() -> list[str]:
    lines = []
    for _, blocks in SECTIONS:
        for _, info, code in blocks:
            if info.split()[:1] in (["bash"], ["sh"], ["console"], ["shell"]):
                for raw in code.splitlines():
                    line = raw.strip().removeprefix("$ ").split(" #")[0].split(">")[0].strip()
                    if line.startswith("napari-deeptrack"):
                        lines.append(line)
    return lines


@pytest.fixture(scope="module")
def doc_run(tmp_path_factory):
    """Shared working folder and the namespaces of the sections run so far."""
    return {"cwd": tmp_path_factory.mktemp("docs"), "namespaces": {}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_section(title: str, state: dict, monkeypatch) -> dict:
    if title in state["namespaces"]:
        return state["namespaces"][title]
    for earlier in PY_SECTIONS[: PY_SECTIONS.index(title)]:  # files of earlier sections
        _run_section(earlier, state, monkeypatch)
    monkeypatch.chdir(state["cwd"])
    ns: dict = {"__name__": f"docs_python_api_{PY_SECTIONS.index(title)}"}
    for line, code in _python_blocks(title):
        compiled = compile(code, f"{DOC.name}:{line}", "exec")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            exec(compiled, ns)  # noqa: S102 - the documentation's own examples
    state["namespaces"][title] = ns
    return ns


# ---------------------------------------------------------------------------- checks per section
def _check_simulate(ns: dict, cwd: Path) -> None:
    assert tuple(ns["batch"].image.shape) == (8, 1, 64, 64)
    counts = ns["batch"].scene.counts()
    assert ((counts >= 3) & (counts <= 10)).all()
    # the density target integrates to the particle count
    dens = ns["batch"].targets["density"].sum(dim=(1, 2, 3))
    assert torch.allclose(dens, counts.float(), atol=0.05)
    assert len(ns["truth"]) == int(counts.sum())
    assert (cwd / "pipeline.json").exists() and (cwd / "movie.tif").exists()
    truth = pd.read_csv(cwd / "movie_truth.csv")
    assert {"frame", "y", "x", "track_id"} <= set(truth.columns) and truth["frame"].nunique() == 20
    assert abs(ns["z_found"] - 6.0) <= 0.5 and abs(ns["peak"][0] - 48) <= 1 and abs(ns["peak"][1] - 48) <= 1


def _check_train(ns: dict, cwd: Path) -> None:
    h = ns["result"].history
    assert h["reason"] == "completed" and len(h["val_loss"]) == 3
    assert h["val_loss"][-1] < h["val_loss"][0]  # it learns something even in 45 steps
    assert any(ev["type"] == "end" for ev in ns["log"])
    assert not ns["worker"].is_alive() and ns["stop"].stopped
    assert ns["brighter"].pipeline.image_shape == (48, 48)
    assert (cwd / "particles.zip").exists() and (cwd / "particles_copy" / "config.json").exists()
    assert ns["targets"].shape == (10, 1, 64, 64) and float(ns["targets"].max()) > 0
    assert ns["tuned"].history["reason"] == "completed"


def _check_apply(ns: dict, cwd: Path) -> None:
    det = ns["detections"]
    assert ns["result"].maps.shape == (20, 1, 64, 64)
    assert {"frame", "y", "x", "probability"} <= set(det.columns) and len(det) > 0
    assert np.isfinite(ns["fit"]["ensemble"]["diffusion_um2_s"])
    assert "track_id" in ns["tracks"].columns
    assert (cwd / "detections.csv").exists()


def _check_evaluate(ns: dict, cwd: Path) -> None:
    assert 0.0 <= ns["m"]["f1"] <= 1.0
    # the tracking scores of the linked tracks: ISBI 2012 measures and the CTC / MOT measures
    assert all(0.0 <= ns["isbi"][k] <= 1.0 for k in ("alpha", "beta", "jaccard_tracks", "jaccard_points"))
    assert ns["isbi"]["n_true_tracks"] == ns["truth"]["track_id"].nunique()
    assert {"DET", "TRA", "LNK", "MOTA", "IDF1", "HOTA", "CHOTA"} <= set(ns["ctc"])
    # the bound at 1000 photons; radial symmetry and the MLE come within 30 % of it (and not below)
    bound = ns["bound"]["crlb_x_px"]
    assert 0.01 < bound < 0.1
    radial = ns["rmse_per_axis"](ns["radial_center"](ns["crops"].image[:, 0].numpy()))
    mle = ns["rmse_per_axis"](ns["fit"][["y", "x"]].to_numpy())
    assert 0.8 * bound < radial < 1.3 * bound and 0.8 * bound < mle < 1.3 * bound
    assert ns["refined"].shape == (int((ns["located"].frame == 0).sum()), 2)


def _check_presets(ns: dict, cwd: Path) -> None:
    for name in list_presets():
        assert (cwd / f"{name}.zip").exists(), f"no example trains preset {name!r}"
    assert tuple(ns["generated"].image.shape) == (2, 1, 64, 64)  # the GAN inside a pipeline
    assert ns["generated"].targets["labels"].amax() > 0


CHECKS = {
    "1. Simulate": _check_simulate,
    "2. Train": _check_train,
    "3. Apply": _check_apply,
    "4. Evaluate": _check_evaluate,
    "5. One example per preset": _check_presets,
}


def test_page_layout():
    """The sections the tests check exist, and no block is silently skipped."""
    titles = [t for t, _ in SECTIONS]
    for title in CHECKS:
        assert title in titles, f"docs/python_api.md lost its section {title!r}"
    for _title, blocks in SECTIONS:
        for line, info, _ in blocks:
            assert info.split()[:1] != ["py"], f"line {line}: use ```python, not ```py"


@pytest.mark.slow
@pytest.mark.parametrize("title", PY_SECTIONS)
def test_python_examples_run(title, doc_run, monkeypatch):
    ns = _run_section(title, doc_run, monkeypatch)
    if title in CHECKS:
        CHECKS[title](ns, doc_run["cwd"])


def test_every_preset_has_an_example():
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## 5. One example per preset", 1)[1].split("\n## ", 1)[0]
    for name in list_presets():
        assert f"### `{name}`" in section, f"docs/python_api.md has no example for preset {name!r}"
        # a self-supervised preset trains from crops of real objects, not from its simulation
        selfsupervised = get_preset(name).loss.get("type") == "lodestar"
        trains = 'train_selfsupervised(task' if selfsupervised else f'quick_train("{name}")'
        assert trains in section, f"the example of preset {name!r} does not train it"


def test_cli_commands_shown_are_valid():
    lines = _cli_lines()
    assert len(lines) >= 10
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for line in lines:
        argv = shlex.split(line)[1:]
        assert argv and argv[0] in sub, f"unknown command in docs: {line}"
        options = {o for a in sub[argv[0]]._actions for o in a.option_strings}
        for tok in argv[1:]:
            if tok.startswith("--"):
                assert tok.split("=")[0] in options, f"{line}: option {tok} does not exist"
        with contextlib.redirect_stderr(io.StringIO()):
            sub[argv[0]].parse_args(argv[1:])  # SystemExit (exit 2) on a wrong command line
    for command in sorted({shlex.split(line)[1] for line in lines}):
        with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0 and "usage: napari-deeptrack" in out.getvalue()


INPUTS = {
    "simulate": ["source"],
    "info": ["bundle"],
    "apply": ["bundle", "image"],
    "evaluate": ["results", "truth"],
}


@pytest.mark.slow
def test_cli_commands_shown_run(doc_run, monkeypatch):
    """The shell block's commands that need no long training run as shown (after sections 1-2 made
    movie.json, movie.tif and particles.zip): presets, simulate, info, apply, evaluate."""
    _run_section("2. Train", doc_run, monkeypatch)
    monkeypatch.chdir(doc_run["cwd"])
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    ran = []
    for line in _cli_lines():
        argv = shlex.split(line)[1:]
        if argv[0] not in ("presets", *INPUTS):
            continue  # train and demo take minutes
        args = sub[argv[0]].parse_args(argv[1:])
        paths = [Path(getattr(args, dest)) for dest in INPUTS.get(argv[0], [])]
        if any(p.suffix and not p.exists() for p in paths):
            continue  # your own data (nuclei.tif...)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rc = main(argv)
        assert rc == 0, line
        ran.append(argv[0])
    assert {"presets", "simulate", "info", "apply", "evaluate"} <= set(ran)
    metrics = json.loads(Path("metrics.json").read_text())
    assert metrics["f1"] > 0.5  # the bundle of section 2 finds the movie's particles
    assert "track_id" in pd.read_csv("results.csv").columns
