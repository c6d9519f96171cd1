"""The package's documented error types and the one error boundary every entry point uses.

Every failure the package expects (bad input, a file it cannot read, a simulation that would not fit in
memory, training that diverged) raises a subclass of :class:`DeepTrackError` with a message that names
the file, parameter or value and what to do. The classes also derive from the builtin class that older
code catches (``ValueError``, ``MemoryError``, ``FloatingPointError``), so ``except ValueError`` keeps
working.

==========================  =======================================  ==============================
class                       raised for                               also a
==========================  =======================================  ==============================
:class:`InputError`         a bad argument, config value or file     ``ValueError``
:class:`ConfigError`        a malformed JSON config / parameter      ``ValueError``
:class:`ImageReadError`     an image file that cannot be read        ``ValueError``
:class:`BundleError`        a model bundle that cannot be loaded     ``ValueError``
:class:`OutputPathError`    an output path that would lose data      ``ValueError``
:class:`DeviceError`        an unknown or unavailable ``--device``   ``ValueError``
:class:`MemoryBudgetError`  work that would exceed the memory budget ``MemoryError``, ``ValueError``
:class:`TimeBudgetError`    work whose time estimate is absurd       ``ValueError``
:class:`TrainingDiverged`   non-finite / exploding training loss     ``FloatingPointError``
==========================  =======================================  ==============================

:func:`describe_error` turns any exception into ``(message, expected)``: expected failures (the classes
above and the operating system's own: a missing file, no permission, a full disk...) get a one-line
message; anything else is a bug, and :func:`report_bug` logs its full traceback to a file and returns
a one-line summary naming that file.

This module imports nothing from the package (a leaf), so every layer can use it.
"""

from __future__ import annotations

import datetime
import errno
import os
import tempfile
import traceback

__all__ = [
    "BundleError",
    "ConfigError",
    "DeepTrackError",
    "DeviceError",
    "ImageReadError",
    "InputError",
    "MemoryBudgetError",
    "OutputPathError",
    "TimeBudgetError",
    "TrainingDiverged",
    "describe_error",
    "log_dir",
    "report_bug",
]


class DeepTrackError(Exception):
    """Base class of every error the package raises on purpose (never a bug).

    Parameters
    ----------
    message : str
        What went wrong, naming the file, parameter or value, and what to do.
    parameter : str, optional
        The parameter or option to change (e.g. ``"count"``, ``"--out"``), for programs that react.
    """

    def __init__(self, message: str = "", *, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter


class InputError(DeepTrackError, ValueError):
    """A bad argument, configuration value or input file (also a ``ValueError``)."""


class ConfigError(InputError):
    """A malformed configuration: wrong JSON, unknown type, missing or invalid field, too deep nesting."""


class ImageReadError(InputError):
    """An image file that cannot be read (truncated, corrupt, unsupported, too large, complex)."""


class BundleError(InputError):
    """A model bundle that cannot be loaded safely (missing/corrupt member, oversize, unknown format)."""


class OutputPathError(InputError):
    """An output path that cannot be written or whose writing would destroy user files."""


class DeviceError(InputError):
    """A ``device`` that does not exist or is not available (``cuda`` without a GPU...)."""


class MemoryBudgetError(DeepTrackError, MemoryError, ValueError):
    """Work refused before allocating because its memory estimate exceeds the budget.

    The message says how much it would need, the budget, and which parameters to lower.
    """

    def __init__(
        self,
        message: str = "",
        *,
        parameter: str | None = None,
        need_bytes: int | None = None,
        budget_bytes: int | None = None,
    ):
        super().__init__(message, parameter=parameter)
        self.need_bytes = need_bytes
        self.budget_bytes = budget_bytes


class TimeBudgetError(DeepTrackError, ValueError):
    """Work refused before it runs long because its time estimate exceeds the limit (24 h by default).

    ``seconds`` is the estimate and ``limit_seconds`` the limit; ``--force`` runs it anyway.
    """

    def __init__(
        self,
        message: str = "",
        *,
        parameter: str | None = None,
        seconds: float | None = None,
        limit_seconds: float | None = None,
    ):
        super().__init__(message, parameter=parameter)
        self.seconds = seconds
        self.limit_seconds = limit_seconds


class TrainingDiverged(DeepTrackError, FloatingPointError):
    """Training stopped because the loss became non-finite or exploded, even after lowering the rate."""


# ------------------------------------------------------------------------------------------ boundary
_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "not a folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
}


def _os_message(exc: OSError) -> str:
    what = _OS_ERRORS.get(exc.errno or -1) or (exc.strerror or str(exc) or type(exc).__name__)
    path = exc.filename
    if path is not None:
        return f"{path}: {what}"
    return what if exc.strerror or exc.errno in _OS_ERRORS else f"{type(exc).__name__}: {exc}"


def describe_error(exc: BaseException) -> tuple[str, bool]:
    """A one-line message for ``exc`` and whether the failure is expected (not a bug).

    Expected: every :class:`DeepTrackError`, ``ValueError`` (the package's historical input error),
    the operating system's errors (missing file, permission, full disk...), and ``MemoryError``.
    Anything else (``KeyError``, ``AttributeError``, ``TypeError``...) is a bug in the package.
    """
    if isinstance(exc, DeepTrackError):
        return _one_line(str(exc) or type(exc).__name__), True
    if isinstance(exc, MemoryError):
        return (
            "out of memory; use a smaller input, fewer frames, a smaller batch_size or image_shape "
            "(set NAPARI_DEEPTRACK_MEMORY_GB to change the budget)",
            True,
        )
    if isinstance(exc, OSError):
        return _one_line(_os_message(exc)), True
    if isinstance(exc, ValueError | UnicodeError):
        return _one_line(str(exc) or type(exc).__name__), True
    return _one_line(f"{type(exc).__name__}: {exc}"), False


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_dir() -> str:
    """Folder for bug reports: ``$NAPARI_DEEPTRACK_LOG_DIR``, else ``<tmp>/napari-deeptrack-logs``."""
    return os.environ.get("NAPARI_DEEPTRACK_LOG_DIR") or os.path.join(
        tempfile.gettempdir(), "napari-deeptrack-logs"
    )


def report_bug(exc: BaseException, context: str = "") -> str:
    """Log the full traceback of an unexpected ``exc``; return a one-line "this is a bug" message.

    The message names the exception, its first line and the log file (or says the log could not be
    written). ``context`` (e.g. the command line) is written at the top of the log.
    """
    summary = _one_line(f"{type(exc).__name__}: {exc}", 300)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        folder = log_dir()
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"error-{stamp}-", suffix=".log", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if context:
                fh.write(context + "\n\n")
            fh.write(text)
        where = f"full traceback in {path}"
    except OSError:  # pragma: no cover - the log folder is not writable
        where = "the traceback could not be logged"
    return f"this is a bug in napari-deeptrack ({summary}); {where}; please report it"
