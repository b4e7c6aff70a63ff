"""etp.train.distributed: single-process behaviour, bad torchrun environments, and a real
2-process gloo DDP run whose losses and gradients must equal one process on the global batch."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from etp.errors import ConfigError, TrainingError
from etp.losses.clip import ClipLoss
from etp.losses.simclr import NTXentLoss
from etp.train import distributed as d

HERE = Path(__file__).resolve().parent
TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _load_worker():
    spec = importlib.util.spec_from_file_location("etp_ddp_worker", HERE / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------- single process


def test_single_process_is_a_no_op(no_torchrun_env):
    info = d.init_distributed("cpu")
    assert info == d.DistInfo(
        rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False
    )
    assert info.is_main and d.is_main() and d.rank() == 0 and d.world_size() == 1
    assert not d.is_distributed()
    d.barrier()
    d.cleanup()  # nothing to destroy


def test_auto_device_single_process(no_torchrun_env):
    info = d.init_distributed()
    assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_world_size_one_under_torchrun_is_single_process(no_torchrun_env):
    no_torchrun_env.setenv("RANK", "0")
    no_torchrun_env.setenv("WORLD_SIZE", "1")
    no_torchrun_env.setenv("LOCAL_RANK", "0")
    info = d.init_distributed("cpu")
    assert not info.is_distributed and info.world_size == 1


def test_gather_and_mean_are_identity_without_group():
    x = torch.randn(3, 4, requires_grad=True)
    assert d.gather_with_grad(x) is x
    assert torch.equal(d.all_reduce_mean(x), x.detach())
    assert d.gathered_sizes(3, x.device) == (3,)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1' must be >= 0"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be < WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set; launch with torchrun"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is not set"),
    ],
)
def test_bad_torchrun_environment(no_torchrun_env, env, match):
    for key, value in env.items():
        no_torchrun_env.setenv(key, value)
    with pytest.raises(ConfigError, match=match):
        d.init_distributed("cpu")


def test_bad_device_preference(no_torchrun_env):
    with pytest.raises(ConfigError, match="'tpu' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"):
        d.init_distributed("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda' requested but CUDA is not available"):
            d.init_distributed("cuda")


# ---------------------------------------------------------------------------- 2-process DDP


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(out_dir: Path, timeout_s: float = 90.0) -> None:
    """Launch tests/ddp_worker.py twice with the environment torchrun would give it."""
    port = _free_port()
    src = str(HERE.parent / "src")
    procs = []
    for r in range(2):
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        env.update(
            RANK=str(r),
            WORLD_SIZE="2",
            LOCAL_RANK=str(r),
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "ddp_worker.py"), str(out_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout_s
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed (exit {p.returncode}):\n{out[-4000:]}"


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    _run_two_processes(out_dir)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    after = [torch.load(out_dir / f"after{r}.pt", weights_only=False) for r in range(2)]
    return ranks, after


def _reference(kind: str):
    """Loss and gradients of ONE process on the whole global batch."""
    w = _load_worker()
    batch = w.global_batch()
    if kind == "clip":
        model = w.make_clip()
        e, u, s = model(batch["x"], batch["t"])
        loss = ClipLoss()(e, u, s)
    else:
        model = w.make_simclr()
        z1, z2 = model(batch["x"], batch["x2"])
        loss = NTXentLoss(0.07)(z1, z2)
    loss.backward()
    return loss.item(), w.grads(model)


def test_ddp_process_info(ddp_results):
    ranks, after = ddp_results
    for r, res in enumerate(ranks):
        assert res["info"] == (r, 2, r, "cpu", True)
        assert res["helpers"] == (r, 2, r == 0, True)
        assert res["mean"] == pytest.approx(0.5)
        assert after[r] == (0, 1, False)  # cleanup() left no group behind


@pytest.mark.parametrize("kind", ["clip", "simclr"])
@pytest.mark.parametrize("split", ["even", "uneven"])
def test_ddp_matches_single_process(ddp_results, kind, split):
    """Global negatives + DDP mean all-reduce == one process on the global batch (1e-5)."""
    ranks, _ = ddp_results
    ref_loss, ref_grads = _reference(kind)
    for r, res in enumerate(ranks):
        loss, grads = res[f"{kind}_{split}"]
        assert loss == pytest.approx(ref_loss, abs=1e-5), f"rank {r} loss"
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(
                g,
                ref_grads[name],
                atol=1e-5,
                rtol=1e-5,
                msg=lambda m, n=name, r=r: f"rank {r} grad {n}: {m}",
            )


def test_gather_with_grad_values_and_gradient(ddp_results):
    ranks, _ = ddp_results
    # rank 0 holds 1 row of 0s, rank 1 holds 2 rows of 1s; upstream grad of row i is (i + 1)
    expected = torch.tensor([[0.0] * 3, [1.0] * 3, [1.0] * 3])
    for r, res in enumerate(ranks):
        gathered, grad = res["gather"]
        assert torch.equal(gathered, expected)
        # summed over the 2 processes: each sees the same upstream grad, so 2 * (i + 1)
        rows = [0] if r == 0 else [1, 2]
        assert torch.equal(grad, torch.tensor([[2.0 * (i + 1)] * 3 for i in rows]))


def test_open_clip_default_gives_one_over_world_feature_gradients(ddp_results):
    """Why gather_with_grad sums gradients: a no-grad gather with the own slot replaced (and the
    full global loss on every rank) yields the right loss but, after DDP averaging, feature-side
    gradients of 1/world_size the single-process ones while the logit scale's stays exact."""
    ranks, _ = ddp_results
    ref_loss, ref_grads = _reference("clip")
    for res in ranks:
        loss, grads = res["naive_clip"]
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        torch.testing.assert_close(grads["log_scale"], ref_grads["log_scale"], atol=1e-5, rtol=1e-5)
        for name in ("ecg.weight", "ecg.bias", "text.weight", "text.bias"):
            torch.testing.assert_close(grads[name], ref_grads[name] / 2, atol=1e-5, rtol=1e-5)


def test_ddp_global_batch_of_one_raises_on_every_rank(ddp_results):
    ranks, _ = ddp_results
    for res in ranks:
        clip_msg, simclr_msg = res["batch_of_one"]
        assert "ClipLoss: contrastive loss is undefined for a batch of 1" in clip_msg
        assert "NTXentLoss: contrastive loss is undefined for a batch of 1" in simclr_msg


def test_single_process_batch_of_one_is_training_error():
    with pytest.raises(TrainingError, match="undefined for a batch of 1"):
        ClipLoss()(torch.randn(1, 4), torch.randn(1, 4), 10.0)
