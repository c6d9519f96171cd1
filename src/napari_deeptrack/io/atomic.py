"""Atomic writes and output-path checks: a failed or interrupted write never leaves a truncated file.

Every output of the package (CSV, TIFF, JSON, reports, bundles) is written to a temporary file in the
destination folder, flushed to disk, then renamed over the destination with ``os.replace`` (atomic on
POSIX and Windows): readers see the old file or the new one, never half of one.

:func:`check_output_file` validates an output path *before* any work starts (the folder exists or can
be created and is writable, the path is not a folder, the suffix is one the writer knows).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputPathError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "check_output_file", "fsync_dir"]


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename) to disk where the platform allows it."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary file keeps ``path``'s suffix (``suffix`` overrides it), so writers that choose a format
    by extension (tifffile, pandas) behave the same. On an exception the temporary file is removed and
    ``path`` is left untouched.

    Examples
    --------
    >>> with atomic_path("out.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + (suffix or path.suffix), dir=folder
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_output_file(
    path: str | Path, option: str = "--out", suffixes: tuple[str, ...] | None = None
) -> Path:
    """Validate an output file path before any work starts; return it as a ``Path``.

    Raises :class:`~napari_deeptrack.errors.OutputPathError` naming ``option`` when the path is a
    folder, has a suffix outside ``suffixes``, or its folder cannot be created or written.
    Nothing is created on disk.
    """
    path = Path(path)
    if not str(path) or path.name in ("", ".", ".."):
        raise OutputPathError(f"{option}: {str(path)!r} is not a file name", parameter=option)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file name inside it", parameter=option)
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputPathError(
            f"{option} {path}: expected a file ending in {' or '.join(suffixes)}", parameter=option
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{option} {path}: the file exists and is not writable", parameter=option)
    folder = path.parent if str(path.parent) else Path(".")
    probe = folder
    while not probe.exists():  # the folder would be created: the nearest existing parent decides
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputPathError(f"{option} {path}: {probe} is a file, not a folder", parameter=option)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: no permission to write in {probe}", parameter=option)
    if probe == folder:  # try it: some file systems (/proc, read-only mounts) refuse despite the bits
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise OutputPathError(
                f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})", parameter=option
            ) from None
    return path
