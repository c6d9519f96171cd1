"""The core never imports napari or Qt."""

import pathlib
import re
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


# ---------------------------------------------------------------------------- import direction
#: Layer of every top-level package / module of napari_deeptrack (docs/architecture.md): imports point
#: to a lower layer, or to a package of the same layer listed in SAME_LAYER. ``""`` is the package root
#: (``__version__``).
LAYERS = {
    "": 0, "errors": 0,  # shared base: version, error types
    "nn": 1, "sim": 1,  # bottom: torch models; physics simulation (incl. the Task record)
    "io": 2,  # file formats beside them: TIFF/OME, tables, bundles (a bundle = sim Task + nn model)
    "tasks": 3, "train": 3, "analysis": 3,  # presets, training, analysis of network outputs
    "report": 4, "demo": 4,  # run reports, the demo workflow
    "commands": 5, "_napari": 5,  # CLI commands, napari widgets
    "cli": 6,  # the dispatcher
}  # fmt: skip
#: allowed imports between packages of one layer (an acyclic set)
SAME_LAYER = {
    ("sim", "nn"),  # GeneratorOptics runs a trained generator network
    ("train", "analysis"),  # training scores models with the one prediction path
    ("train", "tasks"),
    ("demo", "report"),
    ("commands", "_napari"),  # `demo --view` opens the viewer
}


def _module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[tuple[int, str]]:
    """Every ``napari_deeptrack`` module imported by ``path``: top-level, lazy (inside functions) and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal (or f-string prefix) name."""
    import ast

    name = _module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if node.module:
                out.append((node.lineno, mod))
            else:  # from . import x / from .. import x: x may be a module or a name
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if called not in ("import_module", "__import__"):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                out.append((node.lineno, str(arg.values[0].value).rstrip(".")))
    if _import_calls(path):
        # a module that imports by name: every literal module path in it counts (e.g. a tuple of names
        # looped over with importlib.import_module(name))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(r"napari_deeptrack(\.\w+)+", node.value):
                    out.append((node.lineno, node.value))
    return [(line, m) for line, m in out if m == "napari_deeptrack" or m.startswith("napari_deeptrack.")]


def _import_calls(path: pathlib.Path) -> list[int]:
    """Lines calling ``import_module`` or ``__import__``."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if called in ("import_module", "__import__"):
                lines.append(node.lineno)
    return lines


def _layer_key(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__version__":
        return ""
    return parts[1]


def _package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        src = _layer_key(_module_name(path))
        for line, mod in _imported_modules(path):
            dst = _layer_key(mod)
            if dst != src:
                edges.setdefault((src, dst), []).append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return edges


def test_every_package_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    names = {n for n in names if n not in ("__init__", "__pycache__", "data")}
    assert names <= set(LAYERS), f"packages without a layer (add to LAYERS): {sorted(names - set(LAYERS))}"


def test_imports_point_down_only_lazy_and_importlib_ones_included():
    bad = []
    for (src, dst), where in sorted(_package_edges().items()):
        if dst not in LAYERS or src not in LAYERS:
            bad += [f"unknown layer: {w}" for w in where]
        elif LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src] and (src, dst) not in SAME_LAYER):
            bad += [f"{src} (layer {LAYERS[src]}) -> {dst} (layer {LAYERS[dst]}): {w}" for w in where]
    assert not bad, "imports pointing up or sideways:\n" + "\n".join(bad)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for src, dst in _package_edges():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack, node, nxt]
            if not state.get(nxt):
                cycle = visit(nxt, [*stack, node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            cycle = visit(node, [])
            assert cycle is None, f"import cycle between packages: {' -> '.join(cycle)}"


def test_the_import_checker_sees_lazy_and_importlib_imports(tmp_path):
    text = (
        "import importlib\n"
        "def f():\n"
        "    from ..tasks import get_preset\n"
        "    importlib.import_module('napari_deeptrack.train.data')\n"
        "    for mod in ('napari_deeptrack.sim', 'napari_deeptrack.io.bundle'):\n"
        "        importlib.import_module(mod)\n"
        "    return importlib.import_module(f'napari_deeptrack.analysis.{1}')\n"
    )
    path = tmp_path / "napari_deeptrack" / "sim" / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    found = sorted(m for _, m in _imported_modules(path, tmp_path / "napari_deeptrack"))
    assert found == [
        "napari_deeptrack.analysis",
        "napari_deeptrack.io.bundle",
        "napari_deeptrack.sim",
        "napari_deeptrack.tasks",
        "napari_deeptrack.train.data",
        "napari_deeptrack.train.data",  # the literal, and the call with it
    ]
