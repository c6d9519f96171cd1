"""Command line: ``napari-deeptrack <command> ...`` (headless; the napari widgets use the same code).

Each command lives in its own module under ``napari_deeptrack.commands`` with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``. The dispatcher below finds them, so adding a
command never means editing this file beyond the list of names.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import describe_error, report_bug

COMMANDS = ["simulate", "presets", "train", "info", "apply", "evaluate", "demo", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-deeptrack",
        description="Deep learning for quantitative microscopy, trained on physically simulated images.",
    )
    parser.add_argument("--version", action="version", version=f"napari-deeptrack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"napari_deeptrack.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"napari_deeptrack.commands.{name}":
                continue  # command not built yet
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the single error boundary of the command line.

    Expected failures (bad input, unreadable files, memory budget, diverged training, a full disk)
    print one line naming the problem and return 2; anything else is a bug: one line saying so and
    where the full traceback was logged, return 3. Ctrl-C returns 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        print(
            f"napari-deeptrack {args.command}: error: input nested too deeply (a configuration or file "
            "with thousands of nested levels); simplify it",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # noqa: BLE001 - the boundary: every failure becomes one line
        message, expected = describe_error(exc)
        if not expected:
            argv_text = " ".join(sys.argv[:1] + list(argv if argv is not None else sys.argv[1:]))
            message = report_bug(exc, context=f"command: {argv_text}")
            print(f"napari-deeptrack {args.command}: {message}", file=sys.stderr)
            return 3
        print(f"napari-deeptrack {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
