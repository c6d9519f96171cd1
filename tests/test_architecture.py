"""The core never imports napari or Qt."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "src" / "napari_deeptrack"
FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def test_core_imports_no_gui_modules():
    code = (
        "import sys, importlib, pkgutil\n"
        "import napari_deeptrack\n"
        "for pkg in ['sim','nn','train','analysis','io','tasks']:\n"
        "    m = importlib.import_module('napari_deeptrack.'+pkg)\n"
        "    for info in pkgutil.walk_packages(m.__path__, prefix=m.__name__+'.'):\n"
        "        importlib.import_module(info.name)\n"
        "import napari_deeptrack.cli\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imported GUI modules: {out.stdout}"


def test_no_gui_import_statements_outside_napari_package():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if "_napari" in path.parts:
            continue
        for line in path.read_text().splitlines():
            s = line.strip()
            for mod in FORBIDDEN:
                if s.startswith((f"import {mod}", f"from {mod} ", f"from {mod}.")):
                    offenders.append(f"{path.relative_to(ROOT)}: {s}")
    assert not offenders, offenders
