"""Atomic file writes: a crash or SIGKILL never leaves a half-written file that loads as valid.

Everything is first written to a temporary sibling and then moved into place with
:func:`os.replace`, which is atomic on POSIX file systems. The temporary is removed whatever
goes wrong, so a failed write leaves the previous file (or directory) as it was.

Files and directories get the permissions the user's umask gives a new file (``0666 & ~umask``,
``0777 & ~umask``), like any other tool, not the private ``0600``/``0700`` of
:mod:`tempfile`, so colleagues on a shared server can read models and results.

A write that fails for an operating-system reason (no space left, read-only file system,
permission denied, file size limit) raises :class:`etp.errors.WriteError`, one line naming the
path and the cause; where the size is known beforehand (:func:`atomic_write_bytes`,
:func:`ensure_space`) the check happens before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etp.errors import WriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits of a new file under the current umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permission bits of a new directory under the current umask."""
    return 0o777 & ~_umask()


def write_error(exc: OSError, path: Path | str, action: str = "cannot write") -> WriteError:
    """``exc`` as a one-line :class:`WriteError` naming ``path`` (not the temporary file)."""
    if isinstance(exc, WriteError):
        return exc
    cause = (exc.strerror or str(exc) or type(exc).__name__).lower()
    target = path
    hint = {
        errno.ENOSPC: "; free some space or choose another location",
        errno.EFBIG: " (the file size limit, `ulimit -f`, is reached); raise it or write less",
        errno.EROFS: "; choose a writable location",
        errno.EACCES: "; choose a location you may write to",
        errno.EPERM: "; choose a location you may write to",
    }.get(exc.errno or 0, "")
    return WriteError(exc.errno or 0, f"{action} {target}: {cause}{hint}", str(target))


def _mkdir(parent: Path) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(
            errno.ENOTDIR, f"cannot create the directory {parent}: a file is in the way",
            str(parent),
        ) from None
    except OSError as exc:
        raise write_error(exc, parent, "cannot create the directory") from None
    if not parent.is_dir():
        raise WriteError(errno.ENOTDIR, f"cannot write into {parent}: not a directory", str(parent))


def ensure_space(path: Path | str, nbytes: int) -> None:
    """Raise :class:`WriteError` if ``nbytes`` more bytes cannot be written at ``path``: less
    free space on its file system, or a file size limit (``RLIMIT_FSIZE``) below it."""
    path = Path(path)
    where = path if path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
        free = usage.free if usage.total > 0 else None  # /proc and the like report 0 of 0
    except OSError:
        free = None
    if free is not None and nbytes > free:
        raise WriteError(
            errno.ENOSPC,
            f"cannot write {path}: no space left on device ({_size(nbytes)} needed, "
            f"{_size(free)} free on the file system of {where}); free some space or choose "
            "another location",
            str(path),
        )
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return
    if limit != resource.RLIM_INFINITY and nbytes > limit:
        raise WriteError(
            errno.EFBIG,
            f"cannot write {path}: file too large ({_size(nbytes)}, the file size limit "
            f"`ulimit -f` is {_size(limit)}); raise it or write less",
            str(path),
        )


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} bytes"  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it to ``path``.

    An :class:`OSError` in the body or while finishing becomes a :class:`WriteError` naming
    ``path``; the temporary file is removed in every case.
    """
    path = Path(path)
    _mkdir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        os.close(fd)
    except OSError as exc:
        raise write_error(exc, path) from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        except OSError as exc:
            raise write_error(exc, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (free space checked first)."""
    path = Path(path)
    _mkdir(path.parent)
    ensure_space(path, len(data))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    An :class:`OSError` becomes a :class:`WriteError` naming ``path``; the temporary
    directory is removed in every case and an existing ``path`` stays as it was.
    """
    path = Path(path)
    _mkdir(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, dir_mode())
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        try:
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            raise write_error(exc, path) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
