"""The temporary build directory of ``etp prepare`` and the processes that fill it.

* **ownership**: the building process holds an exclusive :func:`fcntl.flock` on an owner file
  inside the temporary directory (:func:`claim_temp`); the operating system drops the lock when
  the process dies, however it dies, so :func:`remove_stale_temps` can tell a dead run's
  leftover from a live build without trusting process ids (which the system reuses).
* **workers end with their parent** (:func:`die_with_parent`, a worker initializer): a SIGKILL of
  ``etp prepare`` would otherwise leave its pool workers blocked forever on a queue.
* **disk space up front** (:func:`reserve`): ``signals.npy`` is written through a memory map, and
  a memory-mapped write into a full file system kills the process with SIGBUS; allocating the
  file's blocks first turns that into an ordinary "no space left on device" error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from etp.io import ensure_space

log = logging.getLogger(__name__)

OWNER_FILE = ".etp-prepare-owner"


@contextlib.contextmanager
def claim_temp(tmp: Path) -> Iterator[None]:
    """Mark ``tmp`` as the live build of this process: an exclusive flock on its owner file,
    held until the build ends; the OS drops it when the process dies, however it dies."""
    fd = os.open(tmp / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def remove_stale_temps(out: Path) -> None:
    """Delete temporary dirs of earlier prepare runs on ``out`` whose process is dead (their
    owner file is no longer locked)."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            fd = os.open(tmp / OWNER_FILE, os.O_RDWR)
        except OSError:
            continue  # not ours, or still being set up
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live prepare is building it
        finally:
            os.close(fd)
        log.info("removing leftover of an interrupted prepare: %s", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the prepare process dies (SIGKILL included),
    instead of blocking forever on a queue nobody feeds."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(1)

    def watch() -> None:  # other systems (and a belt to the braces): poll the parent
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def reserve(path: Path, nbytes: int) -> None:
    """Allocate ``nbytes`` of ``path`` on disk now, so a memory-mapped write into it can never
    hit a full disk (which kills the process with SIGBUS); a full disk is an OSError here."""
    ensure_space(path, nbytes)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate on this fs
            raise
    finally:
        os.close(fd)
