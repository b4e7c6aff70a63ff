"""The pretraining loop on the bundled PTB-XL sample: outputs, record selection (held-out folds
never read), exact in-process resume, NaN handling and the bad-input errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from etp.config import DataConfig, PretrainConfig, load_config
from etp.errors import ConfigError, DataError, ModelError, TrainingError
from etp.train import checkpoint as ckpt
from etp.train import loop
from etp.data import batches
from etp.data.batches import EpochBatchSampler
from etp.data.selection import drop_empty_reports, select_records
from etp.train.loop import lr_factor, pretrain


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(ptbxl_sample_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the sample cache (tests alter their copy)."""
    dst = tmp_path_factory.mktemp("loop") / "cache"
    shutil.copytree(ptbxl_sample_cache, dst)
    return dst


def _cfg(cache: Path, out: Path, *overrides: str) -> PretrainConfig:
    base = [
        f"data.cache={cache}", f"train.out_dir={out}",
        "data.train_folds=[1,2,3,4,5,6,7,8]", "data.val_folds=[9]", "data.exclude_folds=[10]",
        "data.max_records=16", "train.batch_size=8", "train.epochs=2", "train.progress=false",
        "train.log_every_steps=1",
    ]
    return load_config(PretrainConfig, None, base + list(overrides))


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def etp_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny ETP pretraining, recording which cache rows were read."""
    read: list[int] = []
    original = batches.CacheBatches.__getitem__

    def spy(self, positions):  # type: ignore[no-untyped-def]
        item = original(self, positions)
        read.extend(item[1].tolist())
        return item

    out = tmp_path_factory.mktemp("etp-run") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(batches.CacheBatches, "__getitem__", spy)
    try:
        model_dir = pretrain(_cfg(cache, out))
    finally:
        mp.undo()
    return {"out": out, "model": model_dir, "read": read}


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------


def _meta() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "record_id": [str(i) for i in range(10)],
            "patient_id": ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", ""],
            "fold": [1, 1, 2, 2, 3, 3, 9, 9, 10, 10],
            "split": ["train"] * 6 + ["val"] * 2 + ["test"] * 2,
            "report": ["r"] * 10,
        }
    )


def test_select_records_by_folds_and_split() -> None:
    sel = select_records(_meta(), DataConfig(train_folds=[1, 2], val_folds=[9], exclude_folds=[10]))
    assert sel.train.tolist() == [0, 1, 2, 3]
    assert sel.val.tolist() == [6, 7]
    assert sel.held_out.tolist() == [8, 9]
    by_split = select_records(_meta(), DataConfig(max_records=5))
    assert by_split.train.tolist() == [0, 1, 2, 3, 4]
    assert by_split.val.tolist() == [6, 7]
    no_val = select_records(_meta(), DataConfig(val_split=""))
    assert no_val.val.size == 0


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (DataConfig(train_folds=[1, 10], exclude_folds=[10]), ConfigError,
         r"data\.train_folds \[1, 10\] overlaps data\.exclude_folds"),
        (DataConfig(train_folds=[1, 10]), ConfigError,
         r"training selection includes 2 held-out record\(s\).*\['8', '9'\]"),
        (DataConfig(val_split="test"), ConfigError, "validation selection includes 2 held-out"),
        (DataConfig(train_folds=[1, 2], val_folds=[2]), ConfigError, "both training and validation"),
        (DataConfig(train_folds=[7]), DataError, r"no training records: data\.train_folds=\[7\]"),
        (DataConfig(train_folds=[]), ConfigError, "empty list"),
    ],
)
def test_bad_selection_is_rejected(data: DataConfig, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        select_records(_meta(), data)


def test_patients_shared_with_held_out_records_are_rejected() -> None:
    meta = _meta()
    meta.loc[8, "patient_id"] = "p1"  # a test record of a training patient
    with pytest.raises(DataError, match=r"patient.*p1.*leak test patients"):
        select_records(meta, DataConfig(train_folds=[1, 2], exclude_folds=[10]))
    meta = _meta()
    meta.loc[8, "record_id"] = "0"
    with pytest.raises(DataError, match=r"record id\(s\) \['0'\]"):
        select_records(meta, DataConfig(train_folds=[1, 2], exclude_folds=[10]))


def test_epoch_batch_sampler_is_a_replayable_sharded_permutation() -> None:
    s = EpochBatchSampler(n=23, batch_size=5, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    assert len(e0) == len(s) == 4 and all(len(b) == 5 for b in e0)  # 3 dropped (drop_last)
    assert len(set(sum(e0, []))) == 20
    s.set_epoch(0, start_batch=2)
    assert list(s) == e0[2:] and len(s) == 2
    s.set_epoch(1)
    assert list(s) != e0
    ranks = [EpochBatchSampler(23, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(3)
    a, b = (sum(list(r), []) for r in ranks)
    assert len(a) == len(b) == 10 and not set(a) & set(b)


def test_lr_schedule() -> None:
    assert lr_factor(5, "none", 100, 10) == 1.0
    assert lr_factor(0, "cosine", 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, "cosine", 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, "cosine", 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, "cosine", 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, "cosine", 100, 10) == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def test_etp_run_writes_a_loadable_model_and_logs(etp_run: dict, cache: Path) -> None:
    import etp
    from etp.data.cache import load_prepared

    out, model_dir = etp_run["out"], etp_run["model"]
    assert model_dir == out / "model"
    loaded = etp.load(str(model_dir))
    prepared = load_prepared(cache)
    assert loaded.method == "etp"
    assert loaded.preprocessing == prepared.preprocessing  # inference preprocesses identically
    assert loaded.text_spec["name"] == "minilm" and loaded.text_spec["pooling"] == "mean"
    assert (out / "model-best" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "last.pt").is_file()
    with (out / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "epoch", "loss", "lr", "temperature", "samples_per_s"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # 16 records / batch 8 x 2 epochs
    assert all(np.isfinite(float(r["loss"])) and float(r["samples_per_s"]) > 0 for r in rows)
    assert float(rows[0]["temperature"]) == pytest.approx(0.07, rel=0.05)
    val = list(csv.DictReader((out / "val_log.csv").open()))
    assert [int(r["epoch"]) for r in val] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["n_train"] == 16 and summary["n_val"] == 18
    # text embeddings were cached in the user's text-embedding cache, not inside the data cache
    from etp.text.cache import default_cache_dir

    assert list(default_cache_dir().glob("*.npy"))
    assert not (cache / "text_emb").exists()
    # the model directory records its objective and whether it trained on crops
    objective = json.loads((model_dir / "config.json").read_text())["extra"]["objective"]
    assert objective == {"name": "etp", "options": {"augment": False}, "trained_on_crops": False,
                         "trains_ecg_head": True}
    # embeddings of ECG and text come out normalised
    x = prepared.get_batch([0, 1])
    assert np.allclose(np.linalg.norm(loaded.embed_ecg(x), axis=1), 1.0, atol=1e-4)


def test_held_out_fold_is_never_read(etp_run: dict, cache: Path) -> None:
    from etp.data.cache import load_prepared

    meta = load_prepared(cache).meta
    read = set(etp_run["read"])
    assert read  # the spy saw the reads
    assert set(meta["fold"].to_numpy()[sorted(read)]) <= set(range(1, 10))
    assert not (set(meta.index[meta["fold"] == 10]) & read)


def test_existing_checkpoint_needs_resume(etp_run: dict, cache: Path) -> None:
    with pytest.raises(ConfigError, match="already holds a checkpoint.*--resume"):
        pretrain(_cfg(cache, etp_run["out"]))


def test_resume_with_other_config_is_refused(etp_run: dict, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(etp_run["out"], out)
    with pytest.raises(ConfigError, match=r"different config \(train\.lr: 0\.002 -> 0\.001\)"):
        pretrain(_cfg(cache, out, "train.lr=0.001"), resume=True)


def test_resume_from_checkpoint_of_another_architecture_fails(
    etp_run: dict, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(etp_run["out"], out)
    path = out / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("text_head")}
    torch.save(payload, path)
    with pytest.raises(ModelError, match="does not match the model architecture: missing"):
        pretrain(_cfg(cache, out), resume=True)


def test_finished_run_resumes_to_the_same_model(etp_run: dict, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(etp_run["out"], out)
    model_dir = pretrain(_cfg(cache, out), resume=True)
    a, b = _weights(etp_run["model"]), _weights(model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_simclr_run(cache: Path, tmp_path: Path) -> None:
    import etp

    model_dir = pretrain(
        _cfg(cache, tmp_path / "s", "train.method=simclr", "train.epochs=1", "train.num_workers=1",
             "data.val_folds=null", "data.val_split=")
    )
    loaded = etp.load(str(model_dir))
    assert loaded.method == "simclr" and loaded.text_spec is None
    assert not (tmp_path / "s" / "model-best").exists()  # no validation set -> no best model


def test_ema_run_saves_the_weight_average(cache: Path, tmp_path: Path) -> None:
    """With train.ema_decay the saved model is the moving average kept in the checkpoint, not the
    last weights; validation scores the average too."""
    model_dir = pretrain(_cfg(cache, tmp_path / "ema", "train.ema_decay=0.5", "train.epochs=1"))
    payload = ckpt.load_checkpoint(tmp_path / "ema" / "checkpoints" / "last.pt")
    saved = _weights(model_dir)
    averaged = {k.removeprefix("module."): v for k, v in payload["ema"].items()}
    assert set(saved) <= set(averaged)
    differs = False
    for k, v in saved.items():
        assert torch.equal(v, averaged[k].to(v.dtype)), k
        differs |= v.dtype.is_floating_point and not torch.equal(v, payload["model"][k].to(v.dtype))
    assert differs, "the average equals the last weights"
    assert (tmp_path / "ema" / "val_log.csv").read_text().count("\n") >= 2
    with pytest.raises(ConfigError, match="ema_decay"):
        pretrain(_cfg(cache, tmp_path / "bad", "train.ema_decay=1.0"))


class _Crash(Exception):
    pass


@pytest.mark.parametrize("ema", [0.0, 0.7], ids=["plain", "ema"])
def test_mid_epoch_resume_is_exact(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema: float
) -> None:
    over = ["data.max_records=12", "train.batch_size=4", "train.precision=fp32", "train.checkpoint_every_steps=2",
            "train.scheduler=cosine", "train.warmup_epochs=0.5", "objective.augment=true",
            "data.val_folds=null", "data.val_split=", f"train.ema_decay={ema}"]
    full = pretrain(_cfg(cache, tmp_path / "full", *over))

    original = loop._Run._save_checkpoint

    def crash_after(self, pos):  # type: ignore[no-untyped-def]
        original(self, pos)
        if pos.step == 4:  # mid-epoch 2 (3 steps per epoch)
            raise _Crash

    monkeypatch.setattr(loop._Run, "_save_checkpoint", crash_after)
    with pytest.raises(_Crash):
        pretrain(_cfg(cache, tmp_path / "cut", *over))
    monkeypatch.setattr(loop._Run, "_save_checkpoint", original)
    saved = ckpt.position_of(ckpt.load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt"))
    assert (saved.epoch, saved.batch, saved.step) == (1, 1, 4)
    resumed = pretrain(_cfg(cache, tmp_path / "cut", *over), resume=True)
    a, b = _weights(full), _weights(resumed)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7), k


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from etp.losses.clip import ClipLoss

    calls = {"n": 0}
    original = ClipLoss.forward

    def nan_at_third(self, *args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = original(self, *args)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(ClipLoss, "forward", nan_at_third)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"non-finite \(nan\) at epoch 2, step 3 .*last good checkpoint"):
        pretrain(_cfg(cache, out, "train.checkpoint_every_steps=1", "data.val_folds=null",
                      "data.val_split="))
    payload = ckpt.load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt.position_of(payload).step == 2
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())
    assert not (out / "model").exists()


def test_huge_learning_rate_is_reported_as_non_finite_loss(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"non-finite .* at epoch \d+, step \d+"):
        pretrain(_cfg(cache, tmp_path / "lr", "train.lr=1.0e+30", "train.epochs=3",
                      "data.val_folds=null", "data.val_split="))


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["train.batch_size=1"], ConfigError, r"train\.batch_size=1: a contrastive loss needs at least 2"),
        (["data.max_records=5"], DataError, r"5 training record\(s\).*fewer than train\.batch_size=8"),
        (["model.text_model=/nonexistent"], ModelError, "/nonexistent"),
        (["data.cache="], ConfigError, r"data\.cache is not set"),
        (
            ["model.report_translation=/nonexistent/glossary.yaml"],
            ConfigError,
            r"model\.report_translation='/nonexistent/glossary\.yaml': report glossary .*cannot read",
        ),
        (["train.augment=[crop,zoom]", "train.method=simclr"], ConfigError, "unknown augmentation 'zoom'"),
        (["train.method=byol2"], ConfigError, r"train\.method: unknown objective 'byol2' \(known: .*simclr"),
        (["train.method=simclr", "objective.temperature=0"], ConfigError, r"objective\.temperature must be > 0"),
        (["objective.temperature=0.1"], ConfigError, r"unknown config key\(s\): objective\.temperature"),
        (["train.crop_min_frac=1.5"], ConfigError, r"train\.crop_min_frac must be in \(0, 1\], got 1\.5"),
    ],
)
def test_bad_input_is_a_clear_error(
    cache: Path, tmp_path: Path, overrides: list[str], error: type, match: str
) -> None:
    cfg = _cfg(cache, tmp_path / "bad", *overrides)
    if overrides == ["data.cache="]:
        cfg.data.cache = ""
    with pytest.raises(error, match=match):
        pretrain(cfg)


@pytest.mark.parametrize(
    "key", ["train.soft_targets=0.5", "train.ssl_weight=1", "train.freeze_text_head=true",
            "model.pooling=avg", "model.text_normalize=true", "train.etp_augment=true"]
)
def test_removed_options_are_unknown_keys(cache: Path, tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key\\(s\\): {key.split('=')[0]}"):
        _cfg(cache, tmp_path / "old", key)


def test_missing_cache_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prepared cache not found"):
        pretrain(_cfg(tmp_path / "nope", tmp_path / "out"))


def test_empty_reports_are_left_out_with_a_warning(
    cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from etp.data.cache import load_prepared

    meta = load_prepared(cache).meta
    sel = select_records(meta, DataConfig(train_folds=[1, 2], exclude_folds=[10]))
    meta = meta.copy()
    meta.loc[sel.train[0], "report"] = "   "
    with caplog.at_level("WARNING"):
        kept = drop_empty_reports(meta, sel, "report")
    assert kept.train.size == sel.train.size - 1
    assert kept.dropped_empty_reports == [meta.loc[sel.train[0], "record_id"]]
    assert "empty report" in caplog.text


def test_cache_batches_read_the_same_rows_as_the_memmap(cache: Path) -> None:
    import pickle

    from etp.data.cache import load_prepared

    prepared = load_prepared(cache)
    rows = np.array([7, 3, 150, 0, 42])
    ds = batches.CacheBatches(prepared, rows)
    x, got = ds[[4, 0, 2]]
    assert got.tolist() == [42, 7, 150]
    assert np.array_equal(x.numpy(), prepared.get_batch([42, 7, 150]))
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives
    assert np.array_equal(clone[[1]][0].numpy(), prepared.get_batch([3]))


def test_fold_rotation_may_train_on_the_caches_test_fold() -> None:
    """With explicit exclude_folds the folds decide: fold 10 trains while fold 1 is held out."""
    sel = select_records(
        _meta(), DataConfig(train_folds=[2, 10], val_folds=[9], exclude_folds=[1])
    )
    meta = _meta()
    assert set(meta["fold"].to_numpy()[sel.train]) == {2, 10}
    assert set(meta["fold"].to_numpy()[sel.held_out]) == {1}
    assert not set(sel.train) & set(sel.held_out)
