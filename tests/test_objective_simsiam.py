"""SimSiam (etp.objectives.simsiam): the symmetric negative cosine loss, the stop-gradient on the
target branch, and a short `etp pretrain` run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from etp import objectives
from etp.cli import main
from etp.config import ModelConfig, PretrainConfig, TrainConfig, load_config
from etp.data.cache import load_prepared
from etp.errors import ConfigError
from etp.models.etp import ETPModel
from etp.objectives.base import Batch, RunContext
from etp.objectives.simsiam import negative_cosine, simsiam_loss
from etp.train import checkpoint as ckpt
from etp.train import loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: small MLPs: the tests check the mechanics, not the paper's widths
SMALL = {"projector_dim": 64, "predictor_hidden": 16}


def _simsiam() -> torch.nn.Module:
    cls = objectives.get("simsiam")
    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), text_dim=None, method="simsiam")
    ctx = RunContext(device=torch.device("cpu"), train=TrainConfig(), fs=100.0, bf16=False)
    obj = cls(model, cls.parse_options(SMALL), ctx)
    obj.setup()
    return obj


# -- the loss --------------------------------------------------------------------------------


def test_identical_predictions_and_targets_give_minus_one() -> None:
    gen = torch.Generator().manual_seed(0)
    z1, z2 = (F.normalize(torch.randn(6, 16, generator=gen), dim=-1) for _ in range(2))
    assert float(simsiam_loss(z2, z1, z1, z2)) == pytest.approx(-1.0, abs=1e-6)
    # the cosine ignores the vectors' lengths
    assert float(simsiam_loss(3 * z2, 0.5 * z1, z1, z2)) == pytest.approx(-1.0, abs=1e-6)
    # opposite vectors: +1; orthogonal: 0 (hand-built)
    assert float(simsiam_loss(-z2, -z1, z1, z2)) == pytest.approx(1.0, abs=1e-6)
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert float(simsiam_loss(e1, e1, e1, e2)) == pytest.approx(-0.5, abs=1e-6)  # (0 + -1) / 2


def test_loss_is_symmetric_in_the_two_views() -> None:
    gen = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(5, 8, generator=gen) for _ in range(4))
    assert torch.allclose(simsiam_loss(p1, p2, z1, z2), simsiam_loss(p2, p1, z2, z1), atol=1e-7)
    want = -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())
    assert torch.allclose(simsiam_loss(p1, p2, z1, z2), want, atol=1e-6)


def test_no_gradient_flows_through_the_target_branch_of_the_loss() -> None:
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    negative_cosine(p, z).backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0


def _grads(obj: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    obj.zero_grad(set_to_none=True)
    return out


def test_the_objective_stops_the_gradient_on_the_projection_branch(
    ptbxl_sample_cache: Path,
) -> None:
    obj = _simsiam()
    x = torch.from_numpy(load_prepared(ptbxl_sample_cache).get_batch(list(range(4))))
    gen = torch.Generator().manual_seed(0)
    inputs = obj.inputs(Batch(x=x, rows=torch.arange(4), generator=gen))
    loss, _ = obj(inputs)
    loss.backward()
    got = _grads(obj)
    assert not any(n.startswith(("model.ecg_head", "model.logit_scale")) for n in got)  # frozen

    def by_hand(stop: bool) -> dict[str, torch.Tensor]:
        z1, z2 = (obj.projector(obj.model.features(v)) for v in inputs)
        p1, p2 = obj.predictor(z1), obj.predictor(z2)
        t1, t2 = (z1.detach(), z2.detach()) if stop else (z1, z2)
        cos = F.cosine_similarity(p1, t2).mean() + F.cosine_similarity(p2, t1).mean()
        (-0.5 * cos).backward()
        return _grads(obj)

    stopped, through = by_hand(True), by_hand(False)
    assert set(got) == set(stopped)
    for name in got:
        assert torch.allclose(got[name], stopped[name], rtol=1e-4, atol=1e-7), name
    # without the stop-gradient the encoder's gradient would differ: the test can tell
    name = "model.encoder.conv1.weight"
    assert not torch.allclose(got[name], through[name], rtol=1e-3, atol=1e-7)


def test_options_are_checked() -> None:
    simsiam = objectives.get("simsiam")
    opts = simsiam.parse_options({})
    assert (opts.projector_dim, opts.predictor_hidden) == (2048, 512)
    with pytest.raises(ConfigError, match=r"objective\.predictor_hidden must be a positive"):
        simsiam.parse_options({"predictor_hidden": -1})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): objective\.tau_base"):
        simsiam.parse_options({"tau_base": 0.99})


def test_shipped_config_has_the_paper_settings_and_runs_the_checks() -> None:
    cfg = load_config(PretrainConfig, Path(__file__).parents[1] / "configs" / "simsiam-ptbxl.yaml")
    t = cfg.train
    assert (t.method, t.epochs, t.batch_size) == ("simsiam", 50, 128)
    assert (t.lr, t.weight_decay, t.scheduler) == (pytest.approx(2e-3), pytest.approx(1e-5), "none")
    assert cfg.data.train_folds == [1, 2, 3, 4, 5, 6, 7, 8] and cfg.data.val_folds == [9]
    assert cfg.data.exclude_folds == [10]
    assert cfg.objective == {"projector_dim": 2048, "predictor_hidden": 512}
    cls, options = loop.validate_config(cfg)
    assert cls.name == "simsiam" and cls.augments(options)


# -- a short run through `etp pretrain` ------------------------------------------------------


def test_simsiam_trains_through_pretrain(ptbxl_sample_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    small = [f"objective.{k}={v}" for k, v in SMALL.items()]
    args = [
        "pretrain", f"data.cache={ptbxl_sample_cache}", f"train.out_dir={out}",
        "train.method=simsiam", "data.train_folds=[1,2,3,4,5,6,7,8]", "data.val_folds=[9]",
        "data.exclude_folds=[10]", "data.max_records=8", "train.batch_size=4", "train.epochs=1",
        "train.precision=fp32", "train.progress=false", "train.log_every_steps=1", *small,
    ]
    assert main(args) == 0
    state = ckpt.load_checkpoint(out / "checkpoints" / "last.pt")
    assert {k.split(".")[0] for k in state["objective"]} == {"projector", "predictor"}
    log = (out / "train_log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in log]
    assert len(losses) == 2 and all(-1.0 <= v <= 1.0 for v in losses)
    # the encoder trained; the unused ECG head is saved as the seeded initialisation
    loop.seed_everything(0)
    init = ETPModel(ModelConfig(), text_dim=None, method="simsiam").state_dict()
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert not torch.equal(saved["encoder.conv1.weight"], init["encoder.conv1.weight"])
    assert all(torch.equal(saved[k], init[k]) for k in init if k.startswith("ecg_head."))
