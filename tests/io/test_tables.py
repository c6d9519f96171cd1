"""Ground-truth CSVs: particles a detector cannot see are not counted."""

import json

import pandas as pd

from napari_deeptrack.cli import main
from napari_deeptrack.io.tables import read_truth_csv


def test_truth_rows_outside_the_field_or_switched_off_are_dropped(tmp_path):
    truth = pd.DataFrame(
        {
            "frame": [0, 0, 0, 1],
            "y": [5.0, 10.0, -3.0, 7.0],
            "x": [5.0, 10.0, 4.0, 7.0],
            "present": [True, True, False, True],
            "visible": [True, False, True, True],
        }
    )
    path = tmp_path / "truth.csv"
    truth.to_csv(path, index=False)
    kept = read_truth_csv(path)
    assert list(zip(kept.frame, kept.y, strict=True)) == [(0, 5.0), (1, 7.0)]


def test_evaluate_counts_only_visible_truth(tmp_path, capsys):
    truth = pd.DataFrame({"frame": [0, 0], "y": [5.0, 40.0], "x": [5.0, -6.0], "present": [True, False]})
    pred = pd.DataFrame({"frame": [0], "y": [5.2], "x": [4.9], "probability": [0.9]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    pred.to_csv(tmp_path / "pred.csv", index=False)
    args = ["evaluate", str(tmp_path / "pred.csv"), str(tmp_path / "truth.csv"), "--tolerance", "1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_truth"] == 1 and out["tp"] == 1 and out["fn"] == 0 and out["f1"] == 1.0
