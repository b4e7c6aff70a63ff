"""Faults never lose finished work or end in a traceback (issue 20, second part).

Finished runs are not overwritten, a run directory holds one run, unwritable outputs and full
file systems (a file size limit, RLIMIT_FSIZE, in a subprocess: no mount privileges needed)
are one line naming the path and the cause with exit 2, temporary files are removed and earlier
results stay byte-identical, and the workers of a killed ``etp prepare`` end with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hardening_helpers import make_manifest, prepare, pretrain, snapshot

from etp.cli import main
from etp.train.rundir import claim_run_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_LIMITED = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), "
    "resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
    "from etp.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def _limited(limit: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """``etp ARGV`` in a subprocess that may write no file larger than ``limit`` bytes."""
    return subprocess.run([sys.executable, "-c", _LIMITED, str(limit), *argv],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A manifest of 12 real records, its cache, and one finished tiny run on it."""
    root = tmp_path_factory.mktemp("faults")
    manifest = make_manifest(root / "data", n=12)
    cache = root / "cache"
    assert prepare(manifest, cache) == 0
    run = root / "run"
    assert pretrain(cache, run) == 0
    return {"root": root, "manifest": manifest, "cache": cache, "run": run}


# ---- finished work is not overwritten --------------------------------------------------------


def test_finished_run_is_kept_unless_overwrite(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(work["run"], run)
    shutil.rmtree(run / "checkpoints")  # a finished model but no checkpoint
    before = snapshot(run)
    capsys.readouterr()
    assert pretrain(work["cache"], run) == 2
    assert "holds the finished results of an earlier run" in capsys.readouterr().err
    assert pretrain(work["cache"], run, "--resume") == 2
    assert "--resume was given but there is no checkpoint" in capsys.readouterr().err
    assert snapshot(run) == before
    assert pretrain(work["cache"], run, "--overwrite") == 0


def test_second_run_into_a_busy_directory_is_refused(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with claim_run_dir(run, checkpoint=run / "checkpoints" / "last.pt"):  # the first run
        before = snapshot(run)
        assert pretrain(work["cache"], run) == 2
        err = capsys.readouterr().err
        assert f"train.out_dir {run} is in use by another etp run (pid {os.getpid()})" in err
        assert snapshot(run) == before


# ---- unwritable outputs ------------------------------------------------------------------------


def test_unwritable_outputs_are_one_line_for_every_command(
    work: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = work["run"] / "model"
    ecg = str(work["root"] / "data" / "ecgs" / "00016_lr")
    commands = {
        "prepare": ["prepare", "--dataset", "manifest", "--root", str(work["manifest"]),
                    "--out", "/proc/etp-test/cache", "--no-progress"],
        "pretrain": ["pretrain", f"data.cache={work['cache']}", "train.out_dir=/proc/etp-test/run",
                     "train.method=simclr"],
        "embed": ["embed", "--model", str(model), "--out", "/proc/etp-test/emb.npy", ecg],
        "evaluate": ["evaluate", "--model", str(model), "--cache", str(work["cache"]),
                     "--out", "/proc/etp-test/eval"],
    }  # fmt: skip
    capsys.readouterr()
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"etp {name}: error: ") and "/proc/etp-test" in err, err
        assert "Traceback" not in err


def test_missing_parent_of_an_embed_output_is_created_or_named(
    work: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc = main(["embed", "--model", str(work["run"] / "model"), "--out", str(blocker / "e.npy"),
               str(work["root"] / "data" / "ecgs" / "00016_lr")])  # fmt: skip
    assert rc == 2 and blocker.read_text() == "not a directory"


# ---- full file systems ---------------------------------------------------------------------


def test_prepare_on_a_full_file_system(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cache"
    shutil.copytree(work["cache"], out)
    before = snapshot(out)
    argv = ["prepare", "--dataset", "manifest", "--root", str(work["manifest"]), "--out", str(out),
            "--no-progress", "--force"]  # fmt: skip
    res = _limited(200_000, *argv)  # signals.npy needs 576 kB
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot write {out}" in err and "file too large" in err
    assert snapshot(out) == before and not _temps(tmp_path)


def test_pretrain_on_a_full_file_system(work: dict[str, Path], tmp_path: Path) -> None:
    before = snapshot(work["cache"])
    run = tmp_path / "run"
    res = _limited(1_000_000, "pretrain", f"data.cache={work['cache']}", f"train.out_dir={run}",
                   "train.method=simclr", "train.epochs=1", "train.batch_size=4",
                   "train.progress=false", "train.precision=fp32")  # fmt: skip
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    assert err.startswith("etp pretrain: error: cannot write ") and "file too large" in err
    assert "last.pt" in err or "model" in err
    assert not _temps(run) and not (run / "model").exists()
    assert snapshot(work["cache"]) == before


# ---- killed parents ---------------------------------------------------------------------------

_SLOW_WORKERS = """
import sys, time
import etp.data.prepare as P
from etp.data.signal import PreprocessConfig
orig = P.preprocess
def slow(*a, **k):
    print("STARTED", flush=True)
    time.sleep(0.5)
    return orig(*a, **k)
P.preprocess = slow
P.prepare_dataset(P.PrepareConfig(dataset="manifest", root=sys.argv[1], out=sys.argv[2],
                                  workers=2, force=True))
"""


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_workers_end_with_a_killed_prepare(work: dict[str, Path], tmp_path: Path) -> None:
    assert prepare(work["manifest"], tmp_path / "cache") == 0
    before = snapshot(tmp_path / "cache")
    argv = [sys.executable, "-c", _SLOW_WORKERS, str(work["manifest"]), str(tmp_path / "cache")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "STARTED"
        workers = _children(proc.pid)
        assert workers
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "workers outlived the killed prepare"
    # the next run, even one that reuses the cache, removes the killed rebuild's temporary dir
    assert list(tmp_path.glob(".cache.*.tmp"))
    assert snapshot(tmp_path / "cache") == before
    assert prepare(work["manifest"], tmp_path / "cache") == 0
    assert not list(tmp_path.glob(".cache.*.tmp"))
    assert snapshot(tmp_path / "cache") == before


def test_nan_samples_in_a_cache_are_named_as_such(
    work: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    cache = tmp_path / "cache"
    shutil.copytree(work["cache"], cache)
    sig = np.load(cache / "signals.npy", mmap_mode="r+")
    sig[:, 3, 100:200] = np.nan
    sig.flush()
    del sig
    capsys.readouterr()
    assert pretrain(cache, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"the cache {cache} holds NaN/inf samples" in err and "etp prepare --force" in err
    assert "checkpoint is kept" not in err and "lower train.lr" not in err


_TMPFS = """
set -e
mount -t tmpfs -o size={size} tmpfs {mnt}
cp -r {cache} {mnt}/cache
(cd {mnt}/cache && sha256sum * > {mnt}/before.txt)
set +e
{python} -m etp.cli prepare --dataset manifest --root {manifest} --out {mnt}/cache --force \
    --no-progress 2> {mnt}/err.txt
echo "RC $?"
set -e
(cd {mnt}/cache && sha256sum * | diff - {mnt}/before.txt && echo SAME)
echo "LEFT $(ls -A {mnt} | grep -c '\\.tmp$' || true)"
echo "ERR $(cat {mnt}/err.txt)"
"""


def _can_mount_tmpfs(where: Path) -> bool:
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {where}"],
                           capture_output=True, timeout=30)  # fmt: skip
    return probe.returncode == 0


def test_prepare_on_a_full_tmpfs(work: dict[str, Path], tmp_path: Path) -> None:
    """A real full file system (a small tmpfs in the test's own mount namespace): skipped where
    user namespaces are not allowed (the RLIMIT_FSIZE test above covers the same path)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("unshare") or not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    script = _TMPFS.format(size="1m", mnt=mnt, cache=work["cache"], manifest=work["manifest"],
                           python=sys.executable)  # fmt: skip
    res = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    out = res.stdout
    assert "RC 2" in out and "SAME" in out and "LEFT 0" in out, out + res.stderr
    err = out.split("ERR ", 1)[1].strip()
    assert err.startswith(f"etp prepare: error: cannot write {mnt}/cache/signals.npy: no space "
                          "left on device"), err  # fmt: skip
    assert len(err.splitlines()) == 1
