"""Every preset printed by ``napari-deeptrack presets NAME`` is a complete task file (issue 16, bug 1).

``presets NAME > t.json``, then, in a fresh interpreter that has never imported ``napari_deeptrack.tasks``
(as a user's shell would be), ``simulate t.json --frames 2`` and ``train t.json --epochs 1`` (tiny
settings). Decoding a task file must not depend on which modules happen to be imported: every class a
pipeline uses lives in ``sim/``. Training imports ``tasks`` (it may build presets), so it runs last.
Every preset is simulated (new presets included); the ten presets of the case studies are also trained.
"""

import contextlib
import io
import json
import subprocess
import sys
import textwrap

import pytest

from napari_deeptrack.cli import main
from napari_deeptrack.tasks import list_presets

TINY = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--device", "cpu", "--quiet",
        "--set", "training.validation_size=2"]  # fmt: skip


CASE_PRESETS = [
    "brightfield-localize", "cells-count", "digits-classify", "holography-3d", "holography-characterize",
    "mask-to-image", "nuclei-segment", "particle-localize", "particles-2d", "restore",
]  # fmt: skip


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    names = list_presets()
    assert set(CASE_PRESETS) <= set(names)
    for name in names:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["presets", name]) == 0
        assert json.loads(out.getvalue())["type"] == "Task"
        (folder / f"{name}.json").write_text(out.getvalue())
    return folder, names


def test_every_printed_preset_simulates_and_trains_in_a_fresh_interpreter(task_files):
    folder, names = task_files
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import tifffile
        import torch
        torch.set_num_threads(1)
        from napari_deeptrack.cli import main
        folder, names, tiny, trained = {str(folder)!r}, {names!r}, {TINY!r}, {CASE_PRESETS!r}
        for name in names:
            task = f"{{folder}}/{{name}}.json"
            rc = main(["simulate", task, "--frames", "2", "--out", f"{{folder}}/{{name}}.tif"])
            assert rc == 0, f"simulate {{name}} failed"
            stack = tifffile.imread(f"{{folder}}/{{name}}.tif")
            assert stack.shape[0] == 2 and np.isfinite(stack).all(), name
        # decoding the task files never needed the presets' package
        assert "napari_deeptrack.tasks" not in sys.modules, "decoding a task file imported tasks/"
        for name in trained:
            task = f"{{folder}}/{{name}}.json"
            rc = main(["train", task, "--out", f"{{folder}}/{{name}}_bundle", *tiny])
            assert rc == 0, f"train {{name}} failed"
        print("OK", len(names))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"OK {len(names)}"
    # the bundles decode back to the same task
    for name in CASE_PRESETS:
        bundle_task = json.loads((folder / f"{name}_bundle" / "config.json").read_text())["task"]
        printed = json.loads((folder / f"{name}.json").read_text())
        assert bundle_task["pipeline"] == printed["pipeline"], name
        assert main(["info", str(folder / f"{name}_bundle")]) == 0
