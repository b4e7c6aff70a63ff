"""CPC: the InfoNCE over future latent steps (known values, negatives at the predicted step),
the context network's causality, gradient flow, the shipped config, and a short `etp pretrain`
run with an exact mid-run resume."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from etp import objectives
from etp.config import ModelConfig, PretrainConfig, TrainConfig, load_config
from etp.data.cache import load_prepared
from etp.errors import ConfigError, TrainingError
from etp.losses.infonce import info_nce
from etp.models.etp import ETPModel
from etp.objectives.base import Batch, RunContext
from etp.objectives.cpc import CPCHead
from resume_check import assert_resume_is_exact

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"


# -- the loss on tiny tensors -----------------------------------------------------------------


def test_info_nce_known_value_by_hand() -> None:
    # two ECGs, one step, 1-d latents: logits pred_b * z_n
    pred = torch.tensor([[[1.0]], [[2.0]]])
    latents = torch.tensor([[[1.0]], [[-1.0]]])
    loss = info_nce(pred, latents, torch.tensor([0]))
    row0 = math.log(1 + math.exp(-2.0))  # logits [1, -1], positive 0
    row1 = math.log(1 + math.exp(4.0))  # logits [2, -2], positive 1
    assert float(loss) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_info_nce_uniform_predictions_give_log_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 5, 8, generator=gen)
    loss = info_nce(torch.zeros(6, 3, 8), latents, torch.tensor([1, 3, 4]))
    assert float(loss) == pytest.approx(math.log(6), rel=1e-6)


def test_info_nce_perfect_predictions_give_zero() -> None:
    latents = torch.eye(4).view(4, 1, 4).repeat(1, 3, 1)  # ECG b's latent: e_b at every step
    pred = 50.0 * latents[:, :2]
    loss = info_nce(pred, latents, torch.tensor([1, 2]))
    assert 0 <= float(loss) < 1e-12
    assert float(info_nce(-pred, latents, torch.tensor([1, 2]))) > 49  # the wrong way round


def test_info_nce_negatives_are_the_other_ecgs_at_the_predicted_step() -> None:
    gen = torch.Generator().manual_seed(1)
    pred, latents = torch.randn(5, 2, 6, generator=gen), torch.randn(5, 4, 6, generator=gen)
    steps = torch.tensor([1, 3])
    before = info_nce(pred, latents, steps)
    other = latents.clone()
    other[:, [0, 2]] = torch.randn(5, 2, 6, generator=gen)  # steps nobody predicts
    assert torch.equal(info_nce(pred, other, steps), before)
    moved = latents.clone()
    moved[2, 3] += 1.0  # a negative of the others' predictions of step 3
    assert not torch.equal(info_nce(pred, moved, steps), before)
    # per step: the mean of the one-step losses, or their weighted mean
    one = [info_nce(pred[:, s : s + 1], latents, steps[s : s + 1]) for s in range(2)]
    assert float(before) == pytest.approx(float((one[0] + one[1]) / 2), rel=1e-6)
    weighted = info_nce(pred, latents, steps, weights=torch.tensor([3.0, 1.0]))
    assert float(weighted) == pytest.approx(float(0.75 * one[0] + 0.25 * one[1]), rel=1e-6)


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(TrainingError, match="batch of 1"):
        info_nce(torch.zeros(1, 1, 3), torch.zeros(1, 2, 3), torch.tensor([0]))
    with pytest.raises(TrainingError, match=r"steps must lie in \[0, 2\)"):
        info_nce(torch.zeros(2, 1, 3), torch.zeros(2, 2, 3), torch.tensor([2]))
    with pytest.raises(TrainingError, match="disagree"):
        info_nce(torch.zeros(2, 1, 3), torch.zeros(2, 2, 4), torch.tensor([0]))


def _worker():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("infonce_ddp_worker", HERE / "infonce_ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_info_nce_under_two_processes_matches_one_process_on_the_global_batch(
    tmp_path: Path,
) -> None:
    """Global negatives + DDP's mean all-reduce == one process on the global batch, for an even
    and an uneven split (2 gloo processes, tests/infonce_ddp_worker.py)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    procs = []
    for r in range(2):
        env = {k: v for k, v in os.environ.items() if k not in drop}
        src = str(HERE.parent / "src")
        env.update(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p))
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "infonce_ddp_worker.py"), str(tmp_path)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-3000:]}"
    w = _worker()
    model = w.make_model()
    ref = w.loss_of(model, w.global_x())
    ref.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters()}
    for r in range(2):
        result = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        for split in w.SPLITS:
            loss, grads = result[split]
            assert loss == pytest.approx(float(ref), abs=1e-6), (r, split)
            for n, g in grads.items():
                torch.testing.assert_close(g, ref_grads[n], atol=1e-6, rtol=1e-5)


# -- the context network ----------------------------------------------------------------------


def test_contexts_see_only_the_past_and_every_step_is_predicted() -> None:
    torch.manual_seed(0)
    head = CPCHead(latent_dim=8, context_dim=5, steps=3)
    z = torch.randn(4, 7, 8)
    later = z.clone()
    later[:, 4:] = torch.randn(4, 3, 8)
    assert torch.equal(head.contexts(z)[:, :4], head.contexts(later)[:, :4])
    assert not torch.equal(head.contexts(z)[:, 4:], head.contexts(later)[:, 4:])
    # the loss is the equal-weight mean over k of InfoNCE over every context with t + k < T
    with torch.no_grad():
        c = head.contexts(z)
        per_k = [
            info_nce(w(c[:, : 7 - k]), z, torch.arange(k, 7))
            for k, w in enumerate(head.predictors, 1)
        ]
        assert float(head(z)) == pytest.approx(float(sum(per_k) / 3), rel=1e-6)
    with pytest.raises(TrainingError, match=r"3 time steps, too few .* objective.steps=3"):
        head(z[:, :3])


def _objective(name: str, options: dict | None = None):  # type: ignore[no-untyped-def]
    cls = objectives.get(name)
    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), text_dim=None, method=name)
    ctx = RunContext(device=torch.device("cpu"), train=TrainConfig(), fs=100.0, bf16=False)
    obj = cls(model, cls.parse_options(options or {}), ctx)
    obj.setup()
    return obj


def test_gradient_reaches_the_encoder_gru_and_every_predictor(ptbxl_sample_cache: Path) -> None:
    obj = _objective("cpc")
    x = torch.from_numpy(load_prepared(ptbxl_sample_cache).signals[:4].copy()).float()
    loss, _ = obj(obj.inputs(Batch(x=x, rows=torch.arange(4), generator=torch.Generator())))
    loss.backward()
    trained = {n: p for n, p in obj.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.encoder.") for n in trained)
    assert any(n.startswith("head.gru.") for n in trained)
    assert sum(n.startswith("head.predictors.") and n.endswith("weight") for n in trained) == 12
    for n, p in trained.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    # the ECG projection head and the CLIP scale are not part of this loss (and not trained)
    assert not any(n.startswith(("model.ecg_head", "model.logit_scale")) for n in trained)


def test_options_and_shipped_config() -> None:
    cpc = objectives.get("cpc")
    assert not (cpc.text_head or cpc.needs_reports or cpc.augments(cpc.parse_options({})))
    with pytest.raises(ConfigError, match=r"objective\.steps must be >= 1, got 0"):
        cpc.parse_options({"steps": 0})
    cfg = load_config(PretrainConfig, CONFIGS / "cpc-ptbxl.yaml")
    assert cfg.train.method == "cpc" and cfg.data.exclude_folds == [10]
    assert cfg.data.train_folds == [1, 2, 3, 4, 5, 6, 7, 8] and cfg.data.val_folds == [9]
    opts = cpc.parse_options(cfg.objective)
    assert (opts.steps, opts.context_dim) == (12, 256)


# -- a short run through `etp pretrain` -------------------------------------------------------


def _args(cache: Path, out: Path) -> list[str]:
    return [
        "pretrain", f"data.cache={cache}", f"train.out_dir={out}", "train.method=cpc",
        "objective.steps=4", "objective.context_dim=16", "data.train_folds=[1,2,3,4,5,6,7,8]",
        "data.val_folds=[9]", "data.exclude_folds=[10]", "data.max_records=12",
        "train.batch_size=4", "train.epochs=2", "train.precision=fp32",
        "train.checkpoint_every_steps=2", "train.progress=false",
    ]


def test_cpc_trains_and_resumes_exactly_mid_run(
    ptbxl_sample_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, _ = assert_resume_is_exact(
        lambda out: _args(ptbxl_sample_cache, out), tmp_path, monkeypatch, crash_step=4
    )  # mid-epoch 2
    assert {k.split(".")[1] for k in full["objective"]} == {"gru", "predictors"}
    assert len({k for k in full["objective"] if k.startswith("head.predictors.")}) == 8
