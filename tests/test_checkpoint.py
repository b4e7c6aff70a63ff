"""Checkpoints: atomic save/load, RNG capture, config/architecture checks, and an exact resume
after SIGKILL (a pretraining subprocess killed after a mid-epoch checkpoint, then resumed, ends
with the same weights as an uninterrupted run of the same seed)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from etp.errors import ConfigError, ModelError
from etp.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def _tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train_steps(model, opt, sched, n: int, gen: torch.Generator) -> None:
    for _ in range(n):
        x = torch.randn(8, 4, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_rng_roundtrip() -> None:
    gen = torch.Generator().manual_seed(5)
    state = ckpt.capture_rng({"aug": gen})
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    ckpt.restore_rng(state, {"aug": gen})
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert first == again


def test_save_load_continues_identically(tmp_path: Path) -> None:
    model, opt, sched = _tiny()
    gen = torch.Generator().manual_seed(1)
    _train_steps(model, opt, sched, 3, gen)
    path = tmp_path / "ck" / "last.pt"
    pos = ckpt.TrainPosition(epoch=1, batch=2, step=3, best_val_loss=0.5)
    ckpt.save_checkpoint(
        path, model=model, optimizer=opt, scheduler=sched, position=pos,
        config={"train": {"lr": 0.01}}, arch={"method": "etp"}, generators={"aug": gen},
    )
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    _train_steps(model, opt, sched, 2, gen)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = _tiny()
    gen2 = torch.Generator().manual_seed(99)
    payload = ckpt.load_checkpoint(path)
    ckpt.load_model_state(path, model2, payload["model"])
    opt2.load_state_dict(payload["optimizer"])
    sched2.load_state_dict(payload["scheduler"])
    ckpt.restore_rng(payload["rng"], {"aug": gen2})
    assert ckpt.position_of(payload) == pos
    _train_steps(model2, opt2, sched2, 2, gen2)
    for a, b in zip(expected, model2.parameters()):
        assert torch.equal(a, b)


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="garbage.pt: not a readable etp checkpoint"):
        ckpt.load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ModelError, match="not an etp training checkpoint"):
        ckpt.load_checkpoint(other)


def test_resume_config_must_match() -> None:
    saved = {"train": {"lr": 0.002, "progress": True, "num_workers": 0}, "data": {"cache": "a"}}
    same_but_display = {"train": {"lr": 0.002, "progress": False, "num_workers": 4}, "data": {"cache": "a"}}
    ckpt.check_resume_config(Path("x.pt"), saved, same_but_display)  # display/workers may change
    changed = {"train": {"lr": 0.001, "progress": True, "num_workers": 0}, "data": {"cache": "a"}}
    with pytest.raises(ConfigError, match=r"x\.pt.*different config \(train\.lr: 0\.002 -> 0\.001\)"):
        ckpt.check_resume_config(Path("x.pt"), saved, changed)


def test_a_checkpoint_older_than_a_setting_resumes_at_its_default() -> None:
    """A setting added after the checkpoint was written counts as its default; another value is
    still a difference, and without defaults any missing key is one."""
    saved = {"train": {"lr": 0.002}}
    defaults = {"train": {"lr": 0.002, "ema_decay": 0.0}}
    ckpt.check_resume_config(Path("x.pt"), saved, {"train": {"lr": 0.002, "ema_decay": 0.0}}, defaults)
    with pytest.raises(ConfigError, match=r"train\.ema_decay: '<missing>' -> 0\.9"):
        ckpt.check_resume_config(
            Path("x.pt"), saved, {"train": {"lr": 0.002, "ema_decay": 0.9}}, defaults
        )
    with pytest.raises(ConfigError, match="ema_decay"):
        ckpt.check_resume_config(Path("x.pt"), saved, {"train": {"lr": 0.002, "ema_decay": 0.0}})


def test_wrong_architecture_is_a_clear_error() -> None:
    model, _, _ = _tiny()
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))
    with pytest.raises(ModelError, match="does not match the model architecture: shape mismatch 0.weight"):
        ckpt.load_model_state(Path("c.pt"), model, other.state_dict())
    state = dict(model.state_dict())
    state.pop("1.running_mean")
    with pytest.raises(ModelError, match=r"missing 1 tensor\(s\) e\.g\. 1\.running_mean"):
        ckpt.load_model_state(Path("c.pt"), model, state)
    with pytest.raises(ModelError, match="different architecture.*text_dim: 384 -> 768"):
        ckpt.check_arch(Path("c.pt"), {"text_dim": 384}, {"text_dim": 768})


# ----------------------------------------------------------------------------------------------
# SIGKILL + resume in subprocesses
# ----------------------------------------------------------------------------------------------


def _cmd(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "etp.cli", "pretrain",
        f"data.cache={cache}", f"train.out_dir={out}",
        "data.max_records=48", "train.batch_size=8", "train.epochs=2", "train.precision=fp32",
        "train.num_workers=0", "train.progress=false", "train.seed=3",
        "train.checkpoint_every_steps=2", "train.log_every_steps=1", "train.scheduler=cosine",
        "train.warmup_epochs=0.5", *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # same kernels in every run: bitwise-reproducible fp32
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted_run(ptbxl_sample_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # a private copy: the runs write text embeddings beside it
    shutil.copytree(ptbxl_sample_cache, cache)
    full = tmp_path / "full"
    subprocess.run(_cmd(cache, full), check=True, env=_env(), timeout=300,
                   capture_output=True)
    steps = json.loads((full / "checkpoints" / "last.json").read_text())["step"]
    assert steps == 12  # 48 records / batch 8 x 2 epochs

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(cache, killed), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "last.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if marker.is_file() and json.loads(marker.read_text())["step"] >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before a checkpoint was written")
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint within the time limit")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()
    at_kill = json.loads(marker.read_text())
    assert at_kill["step"] < steps

    resumed = subprocess.run(_cmd(cache, killed, "--resume"), env=_env(),
                             timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    a, b = _weights(full / "model"), _weights(killed / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    # the log holds each step exactly once
    log_steps = [int(line.split(",")[0]) for line in
                 (killed / "train_log.csv").read_text().splitlines()[1:]]
    assert log_steps == list(range(1, steps + 1))
