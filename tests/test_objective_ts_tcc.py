"""TS-TCC: the weak/strong augmentations' properties, temporal contrasting across views (the
context sees one view's past, predicts the other view's future), the loss composition, gradient
flow, the shipped config, and a short `etp pretrain` run with an exact mid-run resume (the
transformer's dropout, the random time step and the views are all replayed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from etp import objectives
from etp.config import ModelConfig, PretrainConfig, TrainConfig, load_config
from etp.data.cache import load_prepared
from etp.errors import ConfigError
from etp.losses.infonce import info_nce
from etp.losses.simclr import NTXentLoss
from etp.models.etp import ETPModel
from etp.objectives.base import Batch, RunContext
from etp.objectives.ts_tcc import TemporalContrast, TSTCCOptions, jitter, permute_segments, scale
from resume_check import assert_resume_is_exact

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def ecgs(ptbxl_sample_cache: Path) -> torch.Tensor:
    """Eight real records (B, 12, 1000) from the sample cache."""
    return torch.from_numpy(np.array(load_prepared(ptbxl_sample_cache).signals[:8])).float()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- augmentations ----------------------------------------------------------------------------


def test_jitter_keeps_shape_adds_noise_relative_to_each_ecg_and_is_seeded(ecgs) -> None:
    before = ecgs.clone()
    out = jitter(ecgs, _gen(0), 0.1)
    assert out.shape == ecgs.shape and out.dtype == ecgs.dtype
    assert torch.equal(ecgs, before)  # the input is not modified
    noise_std = (out - ecgs).flatten(1).std(dim=1)
    ratio = noise_std / ecgs.flatten(1).std(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.1), atol=0.005, rtol=0)
    assert torch.equal(jitter(ecgs, _gen(0), 0.1), out)
    assert not torch.equal(jitter(ecgs, _gen(1), 0.1), out)
    assert torch.equal(jitter(ecgs, _gen(0), 0.0), ecgs)


def test_scale_multiplies_each_lead_by_one_factor_drawn_around_two(ecgs) -> None:
    out = scale(ecgs, _gen(0), 1.5)
    assert out.shape == ecgs.shape
    nonzero = ecgs.abs() > 1e-3
    ratio = torch.where(nonzero, out / ecgs, torch.nan)
    per_lead = ratio.nanmean(dim=2, keepdim=True)
    assert torch.allclose(torch.where(nonzero, ratio, per_lead), per_lead.expand_as(ratio), atol=1e-4)
    assert per_lead.flatten().unique().numel() == 8 * 12  # a factor per ECG and lead
    factors = scale(torch.ones(4000, 12, 1), _gen(1), 1.5)
    assert float(factors.mean()) == pytest.approx(2.0, abs=0.03)
    assert float(factors.std()) == pytest.approx(1.5, abs=0.03)
    assert torch.equal(scale(ecgs, _gen(0), 1.5), out)


def _runs(index: torch.Tensor) -> list[torch.Tensor]:
    """Split a sequence of time indices into its maximal runs of consecutive indices."""
    breaks = (torch.nonzero(index.diff() != 1).flatten() + 1).tolist()
    return list(torch.tensor_split(index, breaks))


def test_permutation_reorders_contiguous_segments_of_all_leads_alike() -> None:
    length, max_segments = 200, 5
    t = torch.arange(length, dtype=torch.float64)
    x = (t + 1000 * torch.arange(12, dtype=torch.float64)[:, None]).expand(300, 12, length)
    out = permute_segments(x, _gen(0), max_segments)
    counts = []
    for b in range(out.shape[0]):
        index = out[b, 0].long()
        assert torch.equal(index.sort().values, torch.arange(length))  # nothing lost or repeated
        assert torch.equal(out[b], index.double() + 1000 * torch.arange(12.0)[:, None])
        counts.append(len(_runs(index)))
    # segments that happen to stay in order merge into one run, so runs <= segments drawn
    assert min(counts) == 1 and max(counts) == max_segments
    assert len(set(counts)) == max_segments  # every count 1..M occurs
    assert torch.equal(permute_segments(x, _gen(0), max_segments), out)
    assert not torch.equal(permute_segments(x, _gen(1), max_segments), out)
    assert torch.equal(permute_segments(x, _gen(0), 1), x)


# -- temporal and contextual contrasting ------------------------------------------------------


def _tc(timesteps: int = 3) -> TemporalContrast:
    torch.manual_seed(0)
    opts = TSTCCOptions(timesteps=timesteps, hidden_dim=8, depth=2, heads=2, mlp_dim=8)
    return TemporalContrast(latent_dim=16, o=opts).eval()


def test_temporal_contrast_uses_own_past_to_predict_the_other_views_future() -> None:
    tc = _tc(timesteps=3)
    gen = _gen(0)
    own, other = torch.randn(5, 10, 16, generator=gen), torch.randn(5, 10, 16, generator=gen)
    t = 4
    loss, c = tc(own, other, t)
    changed = own.clone()
    changed[:, t + 1 :] = torch.randn(5, 10 - t - 1, 16, generator=gen)
    assert torch.equal(tc(changed, other, t)[1], c)  # the context ignores its own view's future
    changed = other.clone()
    changed[:, : t + 1] = torch.randn(5, t + 1, 16, generator=gen)
    changed[:, t + 4 :] = torch.randn(5, 10 - t - 4, 16, generator=gen)
    assert torch.equal(tc(own, changed, t)[0], loss)  # only steps t+1..t+3 are predicted
    pred = torch.stack([w(c) for w in tc.predictors], dim=1)
    assert torch.equal(loss, info_nce(pred, other, torch.arange(t + 1, t + 4)))


def _objective(options: dict | None = None):  # type: ignore[no-untyped-def]
    cls = objectives.get("ts-tcc")
    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), text_dim=None, method="ts-tcc")
    ctx = RunContext(device=torch.device("cpu"), train=TrainConfig(), fs=100.0, bf16=False)
    obj = cls(model, cls.parse_options(options or {}), ctx)
    obj.setup()
    return obj


def test_loss_is_lambda1_times_both_temporal_terms_plus_lambda2_times_contextual(ecgs) -> None:
    obj = _objective({"lambda_temporal": 1.5}).eval()  # eval: no dropout, repeatable
    inputs = obj.inputs(Batch(x=ecgs[:6], rows=torch.arange(6), generator=_gen(3)))
    with torch.no_grad():
        loss, logs = obj(inputs)
        views, where = inputs
        z = F.normalize(obj.model.encoder.feature_map(views), dim=1).transpose(1, 2)
        z_weak, z_strong = z.chunk(2)
        t1, t2 = (int(u * (32 - 13)) for u in where)
        tc_ws, c_weak = obj.temporal(z_weak, z_strong, t1)
        tc_sw, c_strong = obj.temporal(z_strong, z_weak, t2)
        proj = obj.temporal.projection
        cc = NTXentLoss(0.2)(proj(c_weak), proj(c_strong))
    assert logs == pytest.approx(
        {"tc_weak_strong": float(tc_ws), "tc_strong_weak": float(tc_sw), "cc": float(cc)}
    )
    assert float(loss) == pytest.approx(1.5 * float(tc_ws + tc_sw) + 0.7 * float(cc), rel=1e-6)
    assert tc_ws != tc_sw  # two directions, each its own context and targets


def test_gradient_reaches_encoder_transformer_predictors_and_projection(ecgs) -> None:
    obj = _objective()
    loss, _ = obj(obj.inputs(Batch(x=ecgs[:4], rows=torch.arange(4), generator=_gen(0))))
    loss.backward()
    trained = {n: p for n, p in obj.named_parameters() if p.requires_grad}
    for part in ("model.encoder.", "temporal.context.token", "temporal.context.embed.",
                 "temporal.context.blocks.", "temporal.predictors.12.", "temporal.projection."):
        assert any(n.startswith(part) for n in trained), part
    for n, p in trained.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert not any(n.startswith(("model.ecg_head", "model.logit_scale")) for n in trained)


def test_options_and_shipped_config() -> None:
    cls = objectives.get("ts-tcc")
    with pytest.raises(ConfigError, match=r"objective\.hidden_dim=10 must be a multiple of"):
        cls.parse_options({"hidden_dim": 10})
    with pytest.raises(ConfigError, match=r"objective\.temperature must be > 0"):
        cls.parse_options({"temperature": 0})
    with pytest.raises(ConfigError, match=r"objective\.max_segments must be >= 1"):
        cls.parse_options({"max_segments": 0})
    cfg = load_config(PretrainConfig, CONFIGS / "ts-tcc-ptbxl.yaml")
    assert cfg.train.method == "ts-tcc" and cfg.data.exclude_folds == [10]
    assert cfg.data.train_folds == [1, 2, 3, 4, 5, 6, 7, 8] and cfg.data.val_folds == [9]
    o = cls.parse_options(cfg.objective)
    assert (o.depth, o.heads, o.dropout, o.temperature) == (4, 4, 0.1, 0.2)
    assert (o.lambda_temporal, o.lambda_contextual) == (1.0, 0.7)
    assert not cls.augments(o)  # its own views, not train.augment


# -- a short run through `etp pretrain` -------------------------------------------------------


def _args(cache: Path, out: Path) -> list[str]:
    return [
        "pretrain", f"data.cache={cache}", f"train.out_dir={out}", "train.method=ts-tcc",
        "objective.timesteps=4", "objective.hidden_dim=16", "objective.depth=2",
        "objective.heads=2", "objective.mlp_dim=16", "data.train_folds=[1,2,3,4,5,6,7,8]",
        "data.val_folds=[9]", "data.exclude_folds=[10]", "data.max_records=12",
        "train.batch_size=4", "train.epochs=2", "train.precision=fp32",
        "train.checkpoint_every_steps=2", "train.progress=false",
    ]


def test_ts_tcc_trains_and_resumes_exactly_mid_run(
    ptbxl_sample_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, _ = assert_resume_is_exact(
        lambda out: _args(ptbxl_sample_cache, out), tmp_path, monkeypatch, crash_step=4
    )  # mid-epoch 2
    parts = {k.split(".")[1] for k in full["objective"]}
    assert parts == {"context", "predictors", "projection"}
    # the loss's three terms are logged beside it
    rows = list(csv.DictReader((tmp_path / "full" / "train_log.csv").open()))
    assert rows and all(float(r[k]) > 0 for r in rows for k in ("tc_weak_strong", "tc_strong_weak", "cc"))
