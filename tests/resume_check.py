"""One check shared by the objectives' tests: a pretraining killed right after a mid-run
checkpoint and resumed with ``--resume`` ends bit-identical to an uninterrupted run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from etp.cli import main
from etp.train import checkpoint as ckpt
from etp.train import loop


class Crash(Exception):
    """Stands in for a SIGKILL right after a checkpoint was written."""


def last_checkpoint(run: Path) -> dict:
    return ckpt.load_checkpoint(run / "checkpoints" / "last.pt")


def assert_resume_is_exact(
    args: Callable[[Path], list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_step: int
) -> tuple[dict, dict]:
    """Run ``etp pretrain`` with ``args(out)`` into ``tmp_path/full``, then into ``tmp_path/cut``
    stopped right after the checkpoint of step ``crash_step`` and resumed; assert that the
    objective's own parts (last checkpoint) and the saved model are bit-identical. Returns the
    two last checkpoints (full, cut)."""
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    assert main(args(full_dir)) == 0
    original = loop._Run._save_checkpoint

    def crash_after(self, pos):  # type: ignore[no-untyped-def]
        original(self, pos)
        if pos.step == crash_step:
            raise Crash

    monkeypatch.setattr(loop._Run, "_save_checkpoint", crash_after)
    with pytest.raises(Crash):
        main(args(cut_dir))
    monkeypatch.setattr(loop._Run, "_save_checkpoint", original)
    saved = ckpt.position_of(last_checkpoint(cut_dir))
    assert saved.step == crash_step and saved.batch > 0  # the cut fell mid-epoch
    assert main(args(cut_dir) + ["--resume"]) == 0

    full, cut = last_checkpoint(full_dir), last_checkpoint(cut_dir)
    assert set(full["objective"]) == set(cut["objective"])
    for k, v in full["objective"].items():
        assert torch.equal(v, cut["objective"][k]), k
    a = load_file(str(full_dir / "model" / "model.safetensors"))
    b = load_file(str(cut_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return full, cut
