"""CLOCS (objective `clocs`, CMSC and CMLC): the patient-aware loss on tiny tensors, the views,
gradient flow, and short `etp pretrain` runs on the PTB-XL sample with an exact mid-run resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from etp import objectives
from etp.cli import main
from etp.errors import ConfigError, TrainingError
from etp.losses.clocs import PatientContrastiveLoss
from etp.objectives.clocs import lead_indices, lead_views, segment_views
from resume_check import assert_resume_is_exact

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _views(n: int = 6, d: int = 8, v: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(v)]


# -- the loss ---------------------------------------------------------------------------------


def test_hand_computed_value_with_a_shared_patient() -> None:
    # two records of ONE patient; cosines: s(A0,B0)=1, s(A0,B1)=0.6, s(A1,B0)=0.6, s(A1,B1)=1
    a = torch.tensor([[2.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0], [1.5, 2.0]], dtype=torch.float64)  # unnormalised on purpose
    t = 0.1
    e1, e06 = math.exp(1 / t), math.exp(0.6 / t)
    diag = -math.log(e1 / (e1 + e06))  # l_ii, both directions (the matrix is symmetric)
    off = -math.log(e06 / (e1 + e06))  # l_ij, i != j
    same = PatientContrastiveLoss(t)([a, b], torch.tensor([7, 7]))
    # P = all 4 ordered pairs; each contributes l^{A,B} + l^{B,A}
    assert same.item() == pytest.approx((2 * 2 * diag + 2 * 2 * off) / 4, rel=1e-6)
    # two patients: P = the diagonal only
    apart = PatientContrastiveLoss(t)([a, b], torch.tensor([7, 8]))
    assert apart.item() == pytest.approx(2 * diag, rel=1e-6)
    assert same.item() > apart.item()  # the shared patient adds the harder off-diagonal terms


def test_same_patient_records_are_positives() -> None:
    a, b = _views()
    loss = PatientContrastiveLoss(0.1)
    mixed = torch.tensor([0, 0, 1, 2, 2, 2])
    got = loss([a, b], mixed)
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    pos = mixed[:, None] == mixed[None, :]
    want = -(s.log_softmax(1)[pos].sum() + s.T.log_softmax(1)[pos].sum()) / pos.sum()
    torch.testing.assert_close(got, want)
    # the same batch with every record its own patient is a different (smaller-P) loss
    assert not torch.allclose(got, loss([a, b], torch.arange(6)))


def test_own_patient_per_record_is_the_plain_segment_contrastive_loss() -> None:
    a, b = _views()
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    target = torch.arange(6)
    plain = F.cross_entropy(s, target) + F.cross_entropy(s.T, target)
    loss = PatientContrastiveLoss(0.1)
    torch.testing.assert_close(loss([a, b], torch.arange(10, 16)), plain)
    torch.testing.assert_close(loss([a, b], None), plain)
    torch.testing.assert_close(loss([a, b], torch.full((6,), -1)), plain)  # unknown patients


def test_symmetric_in_views_and_invariant_to_batch_order() -> None:
    a, b, c = _views(v=3)
    pid = torch.tensor([3, 1, 3, -1, 1, 5])
    loss = PatientContrastiveLoss(0.1)
    torch.testing.assert_close(loss([a, b], pid), loss([b, a], pid))
    torch.testing.assert_close(loss([a, b, c], pid), loss([c, a, b], pid))
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    torch.testing.assert_close(loss([a, b, c], pid), loss([a[perm], b[perm], c[perm]], pid[perm]))
    # several views: the mean over view pairs of the two-view loss
    pairs = [loss([a, b], pid), loss([a, c], pid), loss([b, c], pid)]
    torch.testing.assert_close(loss([a, b, c], pid), sum(pairs) / 3)


def test_gradient_reaches_every_view_and_record() -> None:
    views = [v.clone().requires_grad_(True) for v in _views(v=3)]
    PatientContrastiveLoss(0.1)(views, torch.tensor([0, 0, 1, 2, 3, 3])).backward()
    for v in views:
        assert v.grad is not None and torch.isfinite(v.grad).all()
        assert (v.grad.abs().sum(1) > 0).all()


def test_loss_errors_are_clear() -> None:
    a, b = _views()
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        PatientContrastiveLoss(0.0)
    with pytest.raises(TrainingError, match="at least 2 views"):
        PatientContrastiveLoss()([a])
    with pytest.raises(TrainingError, match="view 1 .* differs"):
        PatientContrastiveLoss()([a, b[:3]])
    with pytest.raises(TrainingError, match="one code per record"):
        PatientContrastiveLoss()([a, b], torch.zeros(3))
    with pytest.raises(TrainingError, match="batch of 1"):
        PatientContrastiveLoss()([a[:1], b[:1]])


# -- the views --------------------------------------------------------------------------------


def test_cmsc_views_are_adjacent_non_overlapping_halves(ptbxl_sample_cache: Path) -> None:
    from etp.data.cache import load_prepared

    x = torch.from_numpy(np.array(load_prepared(ptbxl_sample_cache).signals[:3], dtype=np.float32))
    first, second = segment_views(x)
    half = x.shape[-1] // 2
    assert first.shape == second.shape == (3, 12, half)
    assert torch.equal(torch.cat([first, second], dim=-1), x[..., : 2 * half])
    odd = torch.arange(2 * 12 * 7, dtype=torch.float32).reshape(2, 12, 7)
    a, b = segment_views(odd)
    assert torch.equal(a, odd[..., :3]) and torch.equal(b, odd[..., 3:6])


def test_cmlc_views_keep_one_lead_each_in_its_own_channel() -> None:
    x = torch.randn(2, 12, 50)
    idx = lead_indices(["ii", "V2", "AVL", "aVR"])
    assert idx == [1, 7, 4, 3]
    views = lead_views(x, idx)
    for i, v in zip(idx, views, strict=True):
        assert torch.equal(v[:, i], x[:, i])
        others = [k for k in range(12) if k != i]
        assert not v[:, others].any()
    with pytest.raises(ConfigError, match="'V7' is not one of the 12 leads"):
        lead_indices(["II", "V7"])
    with pytest.raises(ConfigError, match="lead II is listed twice"):
        lead_indices(["II", "ii"])
    with pytest.raises(ConfigError, match="needs at least 2"):
        objectives.get("clocs").parse_options({"variant": "cmlc", "leads": ["II"]})


def test_options_are_the_papers_and_checked() -> None:
    opts = objectives.get("clocs").parse_options({})
    assert (opts.variant, opts.temperature, len(opts.leads)) == ("cmsc", 0.1, 12)
    with pytest.raises(ConfigError, match="objective.variant"):
        objectives.get("clocs").parse_options({"variant": "cmsmlc"})
    with pytest.raises(ConfigError, match=r"objective\.temperature must be > 0"):
        objectives.get("clocs").parse_options({"temperature": -1})


@pytest.mark.parametrize("variant", ["cmsc", "cmlc"])
def test_gradient_reaches_the_whole_encoder_and_head(variant: str) -> None:
    from etp.config import ModelConfig, TrainConfig
    from etp.models.etp import ETPModel
    from etp.objectives.base import Batch, RunContext

    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), text_dim=None, method="clocs")
    ctx = RunContext(device=torch.device("cpu"), train=TrainConfig(), fs=100.0, bf16=False)
    cls = objectives.get("clocs")
    obj = cls(model, cls.parse_options({"variant": variant}), ctx)
    obj.setup()
    g = torch.Generator().manual_seed(0)
    batch = Batch(x=torch.randn(4, 12, 200), rows=torch.arange(4), generator=g,
                  patients=torch.tensor([0, 0, 1, -1]))
    loss, _ = obj(obj.inputs(batch))
    loss.backward()
    trained = [(n, p) for n, p in obj.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith("model.") for n, _ in trained)
    missing = [n for n, p in trained if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert not model.logit_scale.requires_grad


# -- short runs through `etp pretrain` ----------------------------------------------------------


def _args(cache: Path, out: Path, variant: str) -> list[str]:
    return [
        "pretrain", f"data.cache={cache}", f"train.out_dir={out}", "train.method=clocs",
        f"objective.variant={variant}", "objective.leads=[II,V2,aVL,aVR]",
        "data.train_folds=[1,2,3,4,5,6,7,8]", "data.val_folds=[9]", "data.exclude_folds=[10]",
        "data.max_records=12", "train.batch_size=4", "train.epochs=2", "train.precision=fp32",
        "train.checkpoint_every_steps=2", "train.progress=false", "train.lr=1e-4",
        "train.weight_decay=0",
    ]


def test_cmlc_trains_through_pretrain_on_the_records_patients(
    ptbxl_sample_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from etp.data.cache import load_prepared
    from etp.models.etp import load_model_dir
    from etp.objectives.clocs import ClocsObjective

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = ClocsObjective.inputs

    def spy(self, batch):  # type: ignore[no-untyped-def]
        seen.append((batch.rows.clone(), batch.patients.clone()))
        return original(self, batch)

    monkeypatch.setattr(ClocsObjective, "inputs", spy)
    assert main(_args(ptbxl_sample_cache, tmp_path / "r", "cmlc")) == 0
    # the loss got each record's PTB-XL patient: equal codes exactly where patient_id is equal
    pid = load_prepared(ptbxl_sample_cache).meta["patient_id"].astype(str).to_numpy()
    rows = torch.cat([r for r, _ in seen]).numpy()
    codes = torch.cat([c for _, c in seen]).numpy()
    assert (codes >= 0).all()
    same_pid = pid[rows][:, None] == pid[rows][None, :]
    assert np.array_equal(same_pid, codes[:, None] == codes[None, :])
    loaded = load_model_dir(tmp_path / "r" / "model")
    assert loaded.method == "clocs" and not loaded.has_text
    assert loaded.model.encoder.in_leads == 12  # the 12-lead encoder the evaluation reads


def test_cmsc_trains_and_resumes_exactly(
    ptbxl_sample_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, cut = assert_resume_is_exact(
        lambda out: _args(ptbxl_sample_cache, out, "cmsc"), tmp_path, monkeypatch, crash_step=4
    )  # mid-epoch 2
    assert full["objective"] == {} == cut["objective"]  # CLOCS has no parts of its own


# -- two processes (gloo): global negatives and patients matched across processes ---------------

_SPLIT = (3, 5)  # uneven local batches
_PATIENTS = torch.tensor([0, 1, 2, 3, 3, 0, -1, 5])  # patients 0 and 3 span both processes


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(10, 6)

    def forward(self, a: torch.Tensor, b: torch.Tensor, pid: torch.Tensor) -> torch.Tensor:
        return PatientContrastiveLoss(0.1)([self.lin(a), self.lin(b)], pid)


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)


def _ddp_worker(r: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=2)
    try:
        a, b = _global_batch()
        lo = sum(_SPLIT[:r])
        part = slice(lo, lo + _SPLIT[r])
        model = DistributedDataParallel(_Toy())
        loss = model(a[part], b[part], _PATIENTS[part])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.module.named_parameters()}
        torch.save({"loss": loss.item(), "grads": grads}, Path(out) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ref = _Toy()
    a, b = _global_batch()
    want = ref(a, b, _PATIENTS)
    want.backward()
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(want.item(), rel=1e-5)
        for n, p in ref.named_parameters():
            torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["cmsc", "cmlc"])
def test_shipped_configs_hold_the_papers_settings(variant: str) -> None:
    from etp.config import PretrainConfig, load_config

    path = Path(__file__).parent.parent / "configs" / f"clocs-{variant}-ptbxl.yaml"
    cfg = load_config(PretrainConfig, path)
    assert cfg.data.train_folds == [1, 2, 3, 4, 5, 6, 7, 8] and cfg.data.val_folds == [9]
    assert cfg.data.exclude_folds == [10]
    t = cfg.train
    assert (t.method, t.batch_size, t.lr) == ("clocs", 256, pytest.approx(1e-4))
    assert t.weight_decay == 0.0
    opts = objectives.get("clocs").parse_options(cfg.objective)
    assert (opts.variant, opts.temperature) == (variant, 0.1)
    assert variant == "cmsc" or lead_indices(opts.leads) == list(range(12))
