"""The run-directory lock (etp.train.rundir): one run per directory, finished work kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etp.errors import ConfigError, WriteError
from etp.train.rundir import LOCK_FILE, RunDirBusy, claim_run_dir


def _finished(out: Path, checkpoint: bool = False) -> Path:
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"weights")
    (out / "summary.json").write_text("{}")
    ckpt = out / "checkpoints" / "last.pt"
    if checkpoint:
        ckpt.parent.mkdir()
        ckpt.write_bytes(b"ckpt")
    return ckpt


def test_a_second_claim_is_refused_while_the_first_holds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with claim_run_dir(out, checkpoint=out / "c.pt"):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirBusy, match=rf"in use by another etp run \(pid {os.getpid()}\)"):
            with claim_run_dir(out, checkpoint=out / "c.pt"):
                pass
    with claim_run_dir(out, checkpoint=out / "c.pt"):  # released on exit
        pass


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = (
        "import sys, time; from etp.train.rundir import claim_run_dir\n"
        "with claim_run_dir(sys.argv[1], checkpoint=sys.argv[1] + '/c.pt'):\n"
        "    print('LOCKED', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "LOCKED"
        with pytest.raises(RunDirBusy, match=f"pid {proc.pid}"):
            with claim_run_dir(out, checkpoint=out / "c.pt"):
                pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with claim_run_dir(out, checkpoint=out / "c.pt"):
        pass


def test_finished_results_are_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    ckpt = _finished(out)
    with pytest.raises(ConfigError, match=r"holds the finished results .*\(model, summary\.json\)"
                       r" and a new run would replace them; pass --overwrite"):  # fmt: skip
        with claim_run_dir(out, checkpoint=ckpt):
            pass
    with pytest.raises(ConfigError, match="--resume was given but there is no checkpoint"):
        with claim_run_dir(out, checkpoint=ckpt, resume=True):
            pass
    assert (out / "model" / "model.safetensors").read_bytes() == b"weights"


def test_resume_with_a_checkpoint_and_overwrite_are_allowed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    ckpt = _finished(out, checkpoint=True)
    (out / "model-best").mkdir()
    with claim_run_dir(out, checkpoint=ckpt, resume=True):
        assert ckpt.exists()  # continued, not cleared
    with claim_run_dir(out, checkpoint=ckpt, overwrite=True):
        # the earlier run's checkpoint and best model would mix with the new run's: gone;
        # its final model stays until the new run replaces it
        assert not ckpt.exists() and not (out / "model-best").exists()
        assert (out / "model" / "model.safetensors").read_bytes() == b"weights"


def test_non_main_ranks_neither_lock_nor_check(tmp_path: Path) -> None:
    out = tmp_path / "run"
    ckpt = _finished(out)
    with claim_run_dir(out, checkpoint=ckpt, overwrite=True):  # rank 0
        _finished(out / "again")
        with claim_run_dir(out / "again", checkpoint=ckpt, main=False):  # refused on rank 0
            pass


def test_unwritable_run_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match=r"cannot write the run directory /proc/etp-no/run: "):
        with claim_run_dir("/proc/etp-no/run", checkpoint="/proc/etp-no/run/c.pt"):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        with claim_run_dir(tmp_path / "file", checkpoint=tmp_path / "c.pt"):
            pass
