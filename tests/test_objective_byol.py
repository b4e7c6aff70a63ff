"""BYOL (etp.objectives.byol): the target's EMA schedule and update, the loss (2 - 2 cos, both view
orders), no gradient into the target, and a short `etp pretrain` run with an exact mid-run
resume of the target network."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from etp import objectives
from etp.config import ModelConfig, PretrainConfig, TrainConfig, load_config
from etp.data.cache import load_prepared
from etp.errors import ConfigError
from etp.models.etp import ETPModel, load_model_dir
from etp.objectives.base import Batch, RunContext
from etp.objectives.byol import byol_loss, regression_loss, target_tau
from etp.train import loop
from resume_check import assert_resume_is_exact

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: small MLPs: the tests check the mechanics, not the paper's widths
SMALL = {"projector_hidden": 64, "projector_dim": 32, "predictor_hidden": 48}


def _byol(**options: float) -> torch.nn.Module:
    cls = objectives.get("byol")
    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), text_dim=None, method="byol")
    ctx = RunContext(device=torch.device("cpu"), train=TrainConfig(), fs=100.0, bf16=False)
    obj = cls(model, cls.parse_options({**SMALL, **options}), ctx)
    obj.setup()
    return obj


def _batch(cache: Path, n: int = 4) -> Batch:
    x = torch.from_numpy(load_prepared(cache).get_batch(list(range(n))))
    return Batch(x=x, rows=torch.arange(n), generator=torch.Generator().manual_seed(0))


# -- the EMA schedule and update -------------------------------------------------------------


def test_target_decay_follows_the_cosine_schedule() -> None:
    assert target_tau(0, 1000, 0.996) == pytest.approx(0.996, abs=1e-15)
    assert target_tau(1000, 1000, 0.996) == 1.0
    assert target_tau(500, 1000, 0.996) == pytest.approx(0.998, abs=1e-12)
    k = 250
    want = 1 - (1 - 0.996) * (math.cos(math.pi * k / 1000) + 1) / 2
    assert target_tau(k, 1000, 0.996) == pytest.approx(want, abs=1e-15)
    taus = [target_tau(k, 50, 0.99) for k in range(51)]
    assert all(a < b for a, b in zip(taus, taus[1:]))  # rises monotonically to 1


def test_after_step_moves_the_target_by_the_scheduled_decay() -> None:
    obj = _byol(tau_base=0.9)
    online = dict(obj.model.encoder.named_parameters()) | {
        f"p.{k}": v for k, v in obj.projector.named_parameters()
    }
    target = dict(obj.target_encoder.named_parameters()) | {
        f"p.{k}": v for k, v in obj.target_projector.named_parameters()
    }
    assert all(torch.equal(online[k], target[k]) for k in online)  # starts as a copy
    with torch.no_grad():  # stands in for an optimiser step
        for p in online.values():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in target.items()}
    obj.after_step(1, 10)  # the first update: tau = tau_base
    for k in online:
        want = 0.9 * before[k] + 0.1 * online[k]
        assert torch.allclose(target[k], want, atol=1e-6), k
    assert obj.tau(1, 10) == pytest.approx(0.9)
    before = {k: v.clone() for k, v in target.items()}
    obj.after_step(10, 10)  # the last update: k = K - 1, tau close to 1
    tau = target_tau(9, 10, 0.9)
    assert 0.99 < tau < 1.0
    for k in online:
        want = tau * before[k] + (1 - tau) * online[k]
        assert torch.allclose(target[k], want, atol=1e-6), k


# -- the loss --------------------------------------------------------------------------------


def test_regression_loss_is_two_minus_two_cosine_on_hand_built_vectors() -> None:
    q = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 2.0], [0.6, 0.8], [1.0, 0.0], [-5.0, 0.0]])
    # cos = 0, 1, 1/sqrt(2), -1
    want = torch.tensor([2.0, 0.0, 2.0 - math.sqrt(2.0), 4.0])
    assert torch.allclose(regression_loss(q, z), want, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(q, z, dim=-1)
    assert torch.allclose(regression_loss(q, z), 2 - 2 * cos, atol=1e-6)


def test_byol_loss_sums_both_view_orders_and_is_symmetric() -> None:
    q1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q2 = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    z1 = torch.tensor([[3.0, 3.0], [1.0, 0.0]])
    z2 = torch.tensor([[0.0, 4.0], [0.0, 1.0]])
    # q1.z2: cos 0, 1 -> 2, 0; q2.z1: cos 1, 0 -> 0, 2; per sample 2 + 0, 0 + 2; mean 2
    assert float(byol_loss(q1, q2, z1, z2)) == pytest.approx(2.0, abs=1e-6)
    gen = torch.Generator().manual_seed(1)
    a, b, c, d = (torch.randn(5, 8, generator=gen) for _ in range(4))
    assert torch.allclose(byol_loss(a, b, c, d), byol_loss(b, a, d, c), atol=1e-6)
    assert 0.0 <= float(byol_loss(a, b, c, d)) <= 8.0


def test_no_gradient_reaches_the_target(ptbxl_sample_cache: Path) -> None:
    z = torch.randn(3, 4, requires_grad=True)
    q = torch.randn(3, 4, requires_grad=True)
    regression_loss(q, z).sum().backward()
    assert z.grad is None and q.grad is not None

    obj = _byol()
    loss, _ = obj(obj.inputs(_batch(ptbxl_sample_cache)))
    loss.backward()
    target = list(obj.target_encoder.parameters()) + list(obj.target_projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in target)
    trained = {id(p) for p in obj.parameters() if p.requires_grad}  # what the loop optimises
    assert not trained & {id(p) for p in target}
    for part in (obj.model.encoder, obj.projector, obj.predictor):
        assert all(p.grad is not None for p in part.parameters())
    # the model's ECG head and temperature are not part of BYOL's loss: frozen, never updated
    assert all(not p.requires_grad for p in obj.model.ecg_head.parameters())
    assert not obj.model.logit_scale.requires_grad


def test_options_and_batch_size_are_checked() -> None:
    byol = objectives.get("byol")
    opts = byol.parse_options({})
    assert (opts.projector_hidden, opts.projector_dim, opts.predictor_hidden) == (4096, 256, 4096)
    assert opts.tau_base == 0.996
    with pytest.raises(ConfigError, match=r"objective\.tau_base must be in \[0, 1\]"):
        byol.parse_options({"tau_base": 1.5})
    with pytest.raises(ConfigError, match=r"objective\.projector_dim must be a positive integer"):
        byol.parse_options({"projector_dim": 0})
    with pytest.raises(ConfigError, match="train.batch_size=1: byol's projector"):
        byol.check_batch_size(1)


def test_one_sample_per_process_is_refused_in_training_only(ptbxl_sample_cache: Path) -> None:
    obj = _byol()
    one = _batch(ptbxl_sample_cache, n=1)
    with pytest.raises(ConfigError, match="1 sample per process and batch; BatchNorm"):
        obj.inputs(one)
    obj.eval()  # validation: BatchNorm uses its running statistics
    with torch.no_grad():
        loss, _ = obj(obj.inputs(one))
    assert torch.isfinite(loss)


def test_shipped_config_has_the_paper_settings_and_runs_the_checks() -> None:
    cfg = load_config(PretrainConfig, Path(__file__).parents[1] / "configs" / "byol-ptbxl.yaml")
    t = cfg.train
    assert (t.method, t.epochs, t.batch_size) == ("byol", 50, 128)
    assert (t.lr, t.weight_decay, t.scheduler) == (pytest.approx(2e-3), pytest.approx(1e-5), "none")
    assert cfg.data.train_folds == [1, 2, 3, 4, 5, 6, 7, 8] and cfg.data.val_folds == [9]
    assert cfg.data.exclude_folds == [10]
    assert cfg.objective == {
        "projector_hidden": 4096, "projector_dim": 256, "predictor_hidden": 4096, "tau_base": 0.996,
    }
    cls, options = loop.validate_config(cfg)
    assert cls.name == "byol" and cls.augments(options)


# -- a short run through `etp pretrain`, cut and resumed --------------------------------------


def _args(cache: Path, out: Path) -> list[str]:
    small = [f"objective.{k}={v}" for k, v in SMALL.items()]
    return [
        "pretrain", f"data.cache={cache}", f"train.out_dir={out}", "train.method=byol",
        "data.train_folds=[1,2,3,4,5,6,7,8]", "data.val_folds=[9]", "data.exclude_folds=[10]",
        "data.max_records=8", "train.batch_size=4", "train.epochs=2", "train.precision=fp32",
        "train.checkpoint_every_steps=1", "train.progress=false", *small,
    ]


def test_byol_trains_through_pretrain_and_resumes_the_target_exactly(
    ptbxl_sample_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, _ = assert_resume_is_exact(
        lambda out: _args(ptbxl_sample_cache, out), tmp_path, monkeypatch, crash_step=3
    )  # mid-epoch 2 (2 steps per epoch)
    own = full["objective"]
    prefixes = {k.split(".")[0] for k in own}
    assert prefixes == {"projector", "predictor", "target_encoder", "target_projector"}
    # the target is the moving average, not the online network itself
    online = full["model"]
    assert not torch.equal(own["target_encoder.conv1.weight"], online["encoder.conv1.weight"])

    loaded = load_model_dir(tmp_path / "full" / "model")
    assert loaded.method == "byol" and not loaded.has_text
    log = (tmp_path / "full" / "train_log.csv").read_text().splitlines()
    losses = [float(r.split(",")[2]) for r in log[1:]]
    assert losses and all(0.0 <= v <= 8.0 for v in losses)
    val = (tmp_path / "full" / "val_log.csv").read_text().splitlines()[1:]
    assert len(val) == 2 and all(0.0 <= float(r.split(",")[2]) <= 8.0 for r in val)
