"""A run directory belongs to one run: an exclusive lock, and finished results kept unless asked.

``etp pretrain`` writes everything of a run into ``train.out_dir``. :func:`claim_run_dir`
guards it for the whole run:

* **one run at a time**: an exclusive :func:`fcntl.flock` on ``<out_dir>/.etp-run.lock`` (which
  holds the owner's pid); a second run into the same directory is refused with the pid of the
  first. The operating system releases the lock when the process ends, however it ends, so a
  killed run never leaves the directory locked.
* **finished results are not replaced**: a directory that holds a finished model
  (``model/``) or a run summary (``summary.json``) but no checkpoint is refused unless
  ``overwrite`` is given (with a checkpoint, the loop asks for ``--resume`` or ``--overwrite``).
  With ``overwrite`` the earlier run's checkpoints and ``model-best/`` are removed first
  (they would mix with the new run's); ``model/`` stays until the new run replaces it.
* **the directory must be writable**: it is created and the lock file written before any data
  is read, so an unwritable ``out_dir`` fails at once with one line
  (:class:`etp.errors.WriteError`), not after training.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from etp.errors import ConfigError
from etp.io import file_mode, write_error

LOCK_FILE = ".etp-run.lock"
#: entries of a run directory that mark a finished run
FINISHED = ("model", "summary.json")
#: entries of an earlier run that ``overwrite`` removes before the new run starts
STALE = ("checkpoints", "model-best")


class RunDirBusy(ConfigError):
    """Another live process holds the run directory's lock."""


def finished_results(out_dir: str | Path) -> list[str]:
    """The entries of ``out_dir`` that mark a finished run (empty when there are none)."""
    out = Path(out_dir)
    return [name for name in FINISHED if (out / name).exists()]


@contextlib.contextmanager
def claim_run_dir(
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    main: bool = True,
) -> Iterator[Path]:
    """Hold ``out_dir`` for one run (see the module docstring); yields it as a Path.

    Args:
        out_dir: the run directory (created if absent).
        checkpoint: the run's checkpoint file; with ``resume`` and this file present, finished
            results may be continued (the checkpoint says where the run stopped).
        resume: the run continues its checkpoint.
        overwrite: replace an earlier run's finished results.
        main: False on the non-zero ranks of a distributed run, which neither lock nor check
            (rank 0 does both for all of them).

    Raises:
        RunDirBusy: another process holds the lock.
        ConfigError: finished results are present and neither resume nor overwrite allows
            replacing them.
        WriteError: the directory or its lock file cannot be written.
    """
    out = Path(out_dir)
    if not main:
        yield out
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.out_dir {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as exc:
        raise write_error(exc, out, "cannot write the run directory") from None
    try:
        _lock(fd, out)
        _check_finished(out, Path(checkpoint), resume, overwrite)
        if overwrite and not (resume and Path(checkpoint).exists()):
            for name in STALE:
                stale = out / name
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.exists():
                    stale.unlink()
        yield out
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiter)


def _lock(fd: int, out: Path) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise write_error(exc, out / LOCK_FILE, "cannot lock") from None
        try:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        except OSError:
            owner = "unknown"
        raise RunDirBusy(
            f"train.out_dir {out} is in use by another etp run (pid {owner}); wait for it to "
            "finish or choose another train.out_dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        raise write_error(exc, out / LOCK_FILE) from None


def _check_finished(out: Path, checkpoint: Path, resume: bool, overwrite: bool) -> None:
    done = finished_results(out)
    if not done or overwrite or checkpoint.exists():
        return  # a checkpoint: continued with resume, else refused by the loop (--resume?)
    why = (
        f"--resume was given but there is no checkpoint ({checkpoint}) to continue"
        if resume
        else "a new run would replace them"
    )
    raise ConfigError(
        f"train.out_dir {out} holds the finished results of an earlier run "
        f"({', '.join(done)}) and {why}; pass --overwrite to replace them, or choose another "
        "train.out_dir"
    )


__all__ = ["FINISHED", "LOCK_FILE", "RunDirBusy", "claim_run_dir", "finished_results"]
