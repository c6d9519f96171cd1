"""Report files (Markdown, HTML, JSON, PNG) are written atomically: a failed write keeps the old file."""

from __future__ import annotations

import os

import pytest

from napari_deeptrack import report
from napari_deeptrack.io import atomic

HISTORY = {"epoch": [0, 1], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "best_epoch": 1}


def _fail_fsync(monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_report_writes_are_complete_and_leave_no_temporaries(tmp_path):
    paths = report.write_report(tmp_path / "run", {"detection": {"f1": 0.9}}, history=HISTORY)
    assert paths["report"].read_text().startswith("# ")
    assert paths["metrics"].read_text().rstrip().endswith("}")
    assert paths["loss curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for suffix in (".md", ".html"):
        page = report.write_validation_report(
            tmp_path / f"val{suffix}", {"model": {"f1": 0.9}}, history=HISTORY
        )
        assert page.read_text().strip()
    assert _leftovers(tmp_path / "run") == [] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_failed_validation_report_write_keeps_the_old_page(tmp_path, monkeypatch, suffix):
    page = tmp_path / f"val{suffix}"
    page.write_text("old page")
    png = tmp_path / "val_loss.png"
    png.write_bytes(b"old png")
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        report.write_validation_report(page, {"model": {"f1": 0.9}}, history=HISTORY)
    assert page.read_text() == "old page"
    assert png.read_bytes() == b"old png"
    assert _leftovers(tmp_path) == []


def test_failed_metrics_and_report_write_keep_old_files(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"old": 1}')
    (tmp_path / "report.md").write_text("old report")
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError):
        report.write_metrics_json(metrics, {"f1": 0.5})
    with pytest.raises(OSError):
        report.write_report(tmp_path, {"f1": 0.5})
    assert metrics.read_text() == '{"old": 1}'
    assert (tmp_path / "report.md").read_text() == "old report"
    assert _leftovers(tmp_path) == []


def test_png_is_replaced_only_when_complete(tmp_path, monkeypatch):
    png = tmp_path / "loss.png"
    png.write_bytes(b"old png")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
    report.plot_loss_curve(HISTORY, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert len(replaced) == 1 and str(replaced[0][1]) == str(png)
