"""Frozen-encoder extraction (etp.eval.features): batching, bf16, on-disk cache keyed by model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from etp.config import ModelConfig
from etp.errors import ConfigError
from etp.eval.features import cache_key, embed_arrays, extract, model_fingerprint, run_batches
from etp.models.etp import ETPModel


class FakePrepared:
    """The part of PreparedDataset that extraction uses."""

    def __init__(self, n: int = 40, length: int = 250, fingerprint: str = "data-1") -> None:
        self.signals = np.random.default_rng(0).normal(size=(n, 12, length)).astype(np.float32)
        self.fingerprint = fingerprint
        self.batches: list[int] = []

    def __len__(self) -> int:
        return len(self.signals)

    def get_batch(self, idx: np.ndarray) -> np.ndarray:
        self.batches.append(len(idx))
        return self.signals[np.asarray(idx)]


@pytest.fixture(scope="module")
def model() -> ETPModel:
    torch.manual_seed(0)
    return ETPModel(ModelConfig(), 16, "etp")


def test_extract_matches_model_and_batches(model: ETPModel) -> None:
    data = FakePrepared()
    idx = np.array([5, 1, 30, 7, 12])
    emb = extract(model, data, idx, kind="embedding", batch_size=2)
    assert data.batches == [2, 2, 1] and emb.shape == (5, 512) and emb.dtype == np.float32
    model.eval()
    with torch.no_grad():
        want = model.embed_ecg(torch.from_numpy(data.signals[idx])).numpy()
        feats = model.features(torch.from_numpy(data.signals[idx])).numpy()
    assert np.allclose(emb, want, atol=1e-5)
    assert np.allclose(extract(model, data, idx, kind="features"), feats, atol=1e-4)
    with pytest.raises(ValueError, match="kind"):
        extract(model, data, idx, kind="logits")  # type: ignore[arg-type]


def test_bf16_is_close_and_model_mode_restored(model: ETPModel) -> None:
    x = FakePrepared(8).signals
    model.train()
    e32 = run_batches(model, [x], "embedding", bf16=False)
    e16 = embed_arrays(model, x, "embedding", batch_size=3, bf16=True)
    assert model.training  # left as found
    assert next(model.parameters()).dtype == torch.float32  # bf16 runs on a copy
    assert np.min(np.sum(e32 * e16, axis=1)) > 0.99
    model.eval()


def test_cache_is_keyed_by_model_data_and_indices(model: ETPModel, tmp_path) -> None:
    data = FakePrepared()
    idx = np.arange(10)
    first = extract(model, data, idx, kind="features", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.npy"))) == 1
    data.batches.clear()
    again = extract(model, data, idx, kind="features", cache_dir=tmp_path)
    assert data.batches == [] and np.array_equal(first, again)  # read from disk, no forward
    extract(model, data, idx[:5], kind="features", cache_dir=tmp_path)
    extract(model, FakePrepared(fingerprint="data-2"), idx, kind="features", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.npy"))) == 3
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.ecg_head.parameters()).add_(1.0)
    assert model_fingerprint(other) != model_fingerprint(model)  # new weights, new cache key


def test_avg_max_pooling_is_its_own_readout_and_cache_entry(model: ETPModel, tmp_path) -> None:
    data = FakePrepared()
    idx = np.arange(6)
    model.eval()
    with torch.no_grad():
        want = model.features(torch.from_numpy(data.signals[idx]), "avg+max").numpy()
    got = extract(model, data, idx, kind="features", cache_dir=tmp_path, pooling="avg+max")
    assert got.shape == (6, 1024) and np.allclose(got, want, atol=1e-4)
    avg = extract(model, data, idx, kind="features", cache_dir=tmp_path)
    assert np.allclose(got[:, :512], avg, atol=1e-5)
    assert len(list(tmp_path.glob("features-*.npy"))) == 2  # one cache file per readout
    # average pooling keeps the cache keys written before the readouts existed
    args = ("m", "features", "d", idx, True, "3x0.75")
    assert cache_key(*args) == cache_key(*args, "avg") != cache_key(*args, "avg+max")
    with pytest.raises(ConfigError, match="not 'embedding'"):
        extract(model, data, idx, kind="embedding", pooling="avg+max")
    with pytest.raises(ConfigError, match="unknown feature pooling"):
        extract(model, data, idx, kind="features", pooling="sum")
