"""``napari-deeptrack presets [NAME] [--python]``: list task presets, or print one as JSON / Python.

The JSON printed for a preset is a complete task file: edit it and pass it to
``napari-deeptrack train task.json``.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "presets",
        help="list task presets (or print one as an editable JSON task file)",
        description="List task presets. With NAME, print that preset as a JSON task file "
        "(napari-deeptrack presets particles-2d > task.json; edit; napari-deeptrack train task.json ...).",
    )
    p.add_argument("name", nargs="?", help="preset to print")
    p.add_argument("--python", action="store_true", help="print the preset's pipeline as a Python script")
    return p


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<!\bcf)\.\s+(?=[A-Z])", text)
    return text if m is None else text[: m.start() + 1]


def run(args) -> int:
    from ..sim.serialize import to_json, to_python
    from ..tasks import get_preset, list_presets

    if args.name is None:
        names = list_presets()
        if not names:
            print("no presets available")
            return 1
        width = max(len(n) for n in names)
        for n in names:
            t = get_preset(n)
            print(f"{n:<{width}}  {t.kind:<16}  {_first_sentence(t.description)}")
        return 0
    task = get_preset(args.name)
    print(to_python(task.pipeline) if args.python else to_json(task))
    return 0
