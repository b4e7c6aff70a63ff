"""Atomic writes leave either the old file or the new one, never a partial file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etp.io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_failure_keeps_old_content_and_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_dir(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_files_and_dirs_follow_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("1")
        with atomic_path(tmp_path / "g.bin") as tmp:
            tmp.write_bytes(b"1")
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "g.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


_FSIZE = """
import resource, sys
from pathlib import Path
from etp.io import atomic_path, atomic_write_bytes
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
target = Path(sys.argv[1])
for write in (lambda: atomic_write_bytes(target, b"x" * 5000), None):
    try:
        if write:
            write()  # refused before writing: the size is known
        else:
            with atomic_path(target) as tmp:  # size unknown: the write itself fails
                with open(tmp, "wb") as fh:
                    fh.write(b"y" * 5000)
    except OSError as exc:
        print(type(exc).__name__, exc.errno, exc)
"""


def test_a_full_file_system_is_one_line_and_leaves_the_old_file(tmp_path: Path) -> None:
    import errno
    import subprocess
    import sys

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    res = subprocess.run([sys.executable, "-c", _FSIZE, str(target)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2, res.stderr
    for line in lines:
        assert line.startswith(f"WriteError {errno.EFBIG} cannot write {target}: file too large")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_unwritable_locations_name_the_path() -> None:
    from etp.errors import WriteError

    with pytest.raises(WriteError, match="cannot create the directory /proc/etp-x: "):
        atomic_write_text(Path("/proc/etp-x/f.txt"), "x")
    with pytest.raises(WriteError, match="cannot write /proc/etp-f.txt: "):
        atomic_write_text(Path("/proc/etp-f.txt"), "x")
    with pytest.raises(WriteError, match="cannot write /proc/etp-d: "):
        with atomic_dir(Path("/proc/etp-d")):
            pass
