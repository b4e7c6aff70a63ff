"""Tests of etp.data.cache: loading a prepared cache, batches, selections, labels, bad caches."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from etp.data.cache import (
    META_COLUMNS,
    CacheDataset,
    PreparedDataset,
    load_prepared,
    read_meta,
    write_meta,
)
from etp.data.readers import open_reader
from etp.data.signal import PreprocessConfig, preprocess
from etp.errors import DataError

from conftest import SAMPLE_DIR


@pytest.fixture(scope="module")
def data(ptbxl_sample_cache: Path) -> PreparedDataset:
    return load_prepared(ptbxl_sample_cache)


@pytest.fixture()
def cache_copy(ptbxl_sample_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the sample cache that a test may break."""
    dst = tmp_path / "cache"
    shutil.copytree(ptbxl_sample_cache, dst)
    return dst


def test_load_shapes_and_meta(data: PreparedDataset) -> None:
    n = len(data)
    assert n == len(data.meta) > 100
    assert isinstance(data.signals, np.memmap)
    assert data.signals.dtype == np.float32 and data.signals.shape == (n, 12, 1000)
    assert not data.signals.flags.writeable
    with pytest.raises(ValueError):
        data.signals[0, 0, 0] = 1.0
    assert list(data.meta.columns[: len(META_COLUMNS)]) == list(META_COLUMNS)
    assert data.classes == ("NORM", "MI", "STTC", "CD", "HYP")
    assert (data.fs, data.length) == (100.0, 1000)
    assert data.info["fingerprint"] == data.fingerprint and len(data.fingerprint) == 64
    assert PreprocessConfig.from_dict(data.preprocessing) == PreprocessConfig()
    assert data.meta["fold"].dtype == np.int64
    assert data.meta["record_id"].is_unique
    assert "ptbxl" in repr(data)


def test_cache_equals_reader_plus_preprocess(data: PreparedDataset) -> None:
    reader = open_reader("ptbxl", SAMPLE_DIR / "ptb-xl")
    recs = {r.record_id: r for r in reader.records()}
    for i in (0, len(data) // 2, len(data) - 1):
        rec = recs[data.meta["record_id"].iloc[i]]
        expected = preprocess(reader.read_signal(rec), rec.fs, PreprocessConfig())
        np.testing.assert_array_equal(data.get_batch([i])[0], expected)
        # metadata kept verbatim
        row = data.meta.iloc[i]
        assert row["report"] == rec.report
        assert row["labels"] == ";".join(rec.labels)
        assert row["fold"] == rec.fold and row["split"] == rec.split


def test_get_batch_order_duplicates_negative_and_empty(data: PreparedDataset) -> None:
    idx = [7, 2, 7, 0, -1]
    batch = data.get_batch(idx)
    assert batch.shape == (5, 12, 1000) and batch.dtype == np.float32
    assert batch.flags.writeable and batch.flags.c_contiguous
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(batch[j], data.signals[i])
    assert data.get_batch(np.array([], dtype=int)).shape == (0, 12, 1000)
    mask = np.zeros(len(data), dtype=bool)
    mask[[3, 5]] = True
    np.testing.assert_array_equal(data.get_batch(mask), data.signals[[3, 5]])


def test_get_batch_bad_indices(data: PreparedDataset) -> None:
    with pytest.raises(DataError, match="out of range"):
        data.get_batch([0, len(data)])
    with pytest.raises(DataError, match="integers"):
        data.get_batch([0.5])
    with pytest.raises(DataError, match="boolean mask"):
        data.get_batch(np.ones(3, dtype=bool))


def test_select(data: PreparedDataset) -> None:
    meta = data.meta
    parts = [data.select(split=s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(data)
    assert len(np.unique(np.concatenate(parts))) == len(data)
    for s, p in zip(("train", "val", "test"), parts):
        assert (meta["split"].to_numpy()[p] == s).all()
        assert np.all(np.diff(p) > 0)
    f9 = data.select(folds=[9])
    assert set(meta["fold"].to_numpy()[f9]) == {9}
    assert np.array_equal(f9, parts[1])  # default PTB-XL split: fold 9 = val
    no_test = data.select(exclude_folds=[10])
    assert 10 not in set(meta["fold"].to_numpy()[no_test])
    assert len(no_test) == len(data) - len(parts[2])
    single = data.select(single_label=True)
    assert len(single) == int((meta["label"] != "").sum())
    train_single = data.select(split="train", single_label=True, exclude_folds=[10])
    assert set(train_single) <= set(parts[0]) & set(single)
    with pytest.raises(DataError, match="unknown split 'valid'"):
        data.select(split="valid")


def test_labels(data: PreparedDataset) -> None:
    li = data.label_index()
    lm = data.label_matrix()
    assert li.shape == (len(data),) and lm.shape == (len(data), 5)
    single = li >= 0
    assert (lm[single].sum(axis=1) == 1).all()
    assert (lm[single].argmax(axis=1) == li[single]).all()
    assert (lm[~single].sum(axis=1) != 1).all()
    for i in np.nonzero(single)[0][:20]:
        assert data.classes[li[i]] == data.meta["label"].iloc[i]
    sub = [4, 1]
    np.testing.assert_array_equal(data.label_index(sub), li[sub])
    np.testing.assert_array_equal(data.label_matrix(sub), lm[sub])
    assert data.reports([0])[0] == data.meta["report"].iloc[0]
    assert data.reports([0], normalized=True)[0] == data.meta["report_norm"].iloc[0]


def test_cache_dataset_with_dataloader_workers(data: PreparedDataset) -> None:
    idx = data.select(split="val")
    ds = CacheDataset(data, idx)
    assert len(ds) == len(idx)
    x, i = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (12, 1000) and x.dtype == torch.float32
    assert i == idx[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._signals is None and torch.equal(clone[0][0], x)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    xs, ids = zip(*loader)
    got = torch.cat(xs).numpy()
    np.testing.assert_array_equal(torch.cat(ids).numpy(), idx)
    np.testing.assert_array_equal(got, data.get_batch(idx))
    by_path = CacheDataset(str(data.path))
    assert len(by_path) == len(data)


def test_meta_roundtrip_keeps_odd_text(tmp_path: Path) -> None:
    odd = ["  lead", "trail  ", "a\r\nb", "x\ry", 'q"uote"', "NA", "nan", "",
           "unvollstÄndiger  fÜr", "tab\there", "\n", "None", "#c", ",", "  "]  # fmt: skip
    meta = pd.DataFrame({c: [""] * len(odd) for c in META_COLUMNS})
    meta["record_id"] = [f"r{i}" for i in range(len(odd))]
    meta["report"] = odd
    meta["fold"] = -1
    write_meta(meta, tmp_path / "meta.csv")
    back = read_meta(tmp_path / "meta.csv")
    assert back["report"].tolist() == odd
    assert back["patient_id"].tolist() == [""] * len(odd)


def test_missing_and_incomplete_caches(tmp_path: Path, cache_copy: Path) -> None:
    with pytest.raises(DataError, match="prepared cache not found.*nope"):
        load_prepared(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a prepared cache"):
        load_prepared(tmp_path / "empty")
    (cache_copy / "signals.npy").unlink()
    with pytest.raises(DataError, match="lacks signals.npy"):
        load_prepared(cache_copy)


def _edit_info(path: Path, **changes: object) -> None:
    info = json.loads((path / "info.json").read_text())
    for k, v in changes.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    (path / "info.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"fingerprint": None}, "no fingerprint"),
        ({"fingerprint": ""}, "no fingerprint"),
        ({"format": None}, "format marker"),
        ({"format_version": 99}, "format version 99"),
        ({"classes": None}, "lacks 'classes'"),
        ({"length": 500}, "info.json says float32"),
        ({"n_records": 3}, "info.json says float32"),
    ],
)
def test_bad_info(cache_copy: Path, changes: dict, match: str) -> None:
    _edit_info(cache_copy, **changes)
    with pytest.raises(DataError, match=match):
        load_prepared(cache_copy)


def test_garbled_info(cache_copy: Path) -> None:
    (cache_copy / "info.json").write_text("{not json")
    with pytest.raises(DataError, match="info.json: unreadable"):
        load_prepared(cache_copy)


def test_truncated_signals(cache_copy: Path) -> None:
    sig = cache_copy / "signals.npy"
    sig.write_bytes(sig.read_bytes()[: sig.stat().st_size // 2])
    with pytest.raises(DataError, match="signals.npy"):
        load_prepared(cache_copy)


def test_meta_problems(cache_copy: Path) -> None:
    meta_path = cache_copy / "meta.csv"
    meta = read_meta(meta_path)
    meta.iloc[:-1].to_csv(meta_path, index=False)
    with pytest.raises(DataError, match="rows, info.json says"):
        load_prepared(cache_copy)
    meta.drop(columns=["label"]).to_csv(meta_path, index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
        load_prepared(cache_copy)
    bad = meta.copy()
    bad.loc[2, "labels"] = "NORM;XYZ"
    write_meta(bad, meta_path)
    rid = bad.loc[2, "record_id"]
    with pytest.raises(DataError, match=rf"record {rid} has label\(s\) \['XYZ'\]"):
        load_prepared(cache_copy)
    dup = meta.copy()
    dup.loc[1, "record_id"] = dup.loc[0, "record_id"]
    write_meta(dup, meta_path)
    with pytest.raises(DataError, match="occurs more than once"):
        load_prepared(cache_copy)


def test_cpsc_cache(cpsc_sample_cache: Path) -> None:
    data = load_prepared(cpsc_sample_cache)
    assert data.classes[:2] == ("Normal", "AF") and len(data.classes) == 9
    assert data.signals.shape[1:] == (12, 1000)
    assert set(data.meta["split"]) <= {"train", "val", "test"}
    assert (data.meta["fold"] == -1).all()
    assert (data.label_matrix().sum(axis=1) >= 1).all()
