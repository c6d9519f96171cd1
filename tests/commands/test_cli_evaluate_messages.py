"""evaluate: a table missing a column is refused naming the file; help describes the tracking metrics."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from napari_deeptrack.cli import build_parser, main


def _csv(path, track_id=True):
    df = pd.DataFrame({"frame": [0, 1, 2], "y": [5.0, 6.0, 7.0], "x": [5.0, 5.5, 6.0]})
    if track_id:
        df["track_id"] = 0
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("which", ["results", "truth"])
def test_missing_track_id_names_the_file(tmp_path, capsys, which):
    pred = _csv(tmp_path / "pred.csv", track_id=which != "results")
    truth = _csv(tmp_path / "truth.csv", track_id=which != "truth")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(pred), str(truth), "--tracks", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    bad = pred if which == "results" else truth
    assert f"{which} file {bad} lacks column(s) ['track_id']" in err
    assert "--tracks" in err and "Traceback" not in err
    assert not out.exists()


def test_tracks_ok_and_bad_gate(tmp_path, capsys):
    pred, truth = _csv(tmp_path / "pred.csv"), _csv(tmp_path / "truth.csv")
    assert main(["evaluate", str(pred), str(truth), "--tracks", "--gate-px", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["tracking"]["isbi"]["alpha"] == pytest.approx(1.0)
    assert main(["evaluate", str(pred), str(truth), "--tracks", "--gate-px", "nan"]) == 2
    assert "--gate-px" in capsys.readouterr().err


def test_help_describes_tracking_metrics_and_gate_metavar():
    import napari_deeptrack.commands.evaluate as evaluate

    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None) and "evaluate" in a.choices)
    text = sub.choices["evaluate"].format_help()
    for word in ("ISBI", "HOTA", "MOTA", "--gate-px PX"):
        assert word in text
    assert "ISBI" in evaluate.__doc__ and "HOTA" in evaluate.__doc__
    assert "tracking" in sub._choices_actions[[a.dest for a in sub._choices_actions].index("evaluate")].help
