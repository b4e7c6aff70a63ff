"""Frozen text encoder: packaged MiniLM offline, pooling, determinism, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from etp.errors import DataError, ModelError
from etp.text.encoder import (
    TextEncoder,
    dir_fingerprint,
    packaged_minilm_path,
    resolve_text_model,
)

REPORTS = [
    "sinus rhythm. normal ecg.",
    "sinusrhythmus linkstyp sonst normales ekg",
    "atrial fibrillation with rapid ventricular response, complete left bundle branch block",
    "normal sinus rhythm",
]


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    return TextEncoder("minilm", pooling="mean", max_length=128, batch_size=2)


@pytest.fixture(scope="module")
def emb(enc: TextEncoder) -> np.ndarray:
    return enc.encode(REPORTS)


def test_minilm_resolves_to_the_packaged_directory() -> None:
    path = Path(resolve_text_model("minilm"))
    assert path == packaged_minilm_path() and (path / "config.json").is_file()
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") == str(path)
    hub = "emilyalsentzer/Bio_ClinicalBERT"
    assert resolve_text_model(hub) == hub


def test_spec(enc: TextEncoder) -> None:
    spec = enc.spec
    assert spec["name"] == "minilm" and spec["source"] == "package"
    assert spec["path"] == str(packaged_minilm_path())
    assert (spec["pooling"], spec["max_length"], spec["dim"]) == ("mean", 128, 384)
    assert spec["model_type"] == "bert" and len(spec["fingerprint"]) == 16
    # the same files as a local directory give the same fingerprint, without loading weights
    local = TextEncoder(str(packaged_minilm_path()))
    assert local.spec["source"] == "local" and local.fingerprint == enc.fingerprint
    assert not local.loaded


def test_real_embeddings(enc: TextEncoder, emb: np.ndarray) -> None:
    assert emb.shape == (4, 384) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert enc.dim == 384
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    # "sinus rhythm. normal ecg." is closer to "normal sinus rhythm" than to AF + LBBB
    assert sims[0, 3] > sims[0, 2] + 0.1


def test_deterministic_and_order_independent(enc: TextEncoder, emb: np.ndarray) -> None:
    again = enc.encode(REPORTS[::-1])[::-1]
    np.testing.assert_allclose(again, emb, atol=1e-5)  # batches sorted by length internally
    single = enc.encode([REPORTS[2]])[0]
    np.testing.assert_allclose(single, emb[2], atol=1e-5)  # padding does not change the result
    same = enc.encode([REPORTS[0], REPORTS[0]])
    np.testing.assert_array_equal(same[0], same[1])


def test_frozen(enc: TextEncoder, emb: np.ndarray) -> None:
    assert enc.loaded
    model = enc._model
    assert model is not None and not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_cls_pooling_differs_from_mean(emb: np.ndarray) -> None:
    cls = TextEncoder("minilm", pooling="cls")
    out = cls.encode(REPORTS[:1])
    assert out.shape == (1, 384) and cls.spec["pooling"] == "cls"
    assert not np.allclose(out[0], emb[0], atol=1e-3)


def test_from_spec(enc: TextEncoder) -> None:
    again = TextEncoder.from_spec(enc.spec)
    assert again.spec == enc.spec and not again.loaded
    with pytest.raises(ModelError, match="differs from the one this model was trained with"):
        TextEncoder.from_spec({**enc.spec, "fingerprint": "0" * 16})


def test_hub_name_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelError) as info:
        TextEncoder("emilyalsentzer/Bio_ClinicalBERT")
    msg = str(info.value)
    assert "emilyalsentzer/Bio_ClinicalBERT" in msg
    assert "hub could not be reached" in msg
    assert "local" in msg and "directory" in msg and "minilm" in msg


def test_missing_or_invalid_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="directory not found: ./no/such/model"):
        TextEncoder("./no/such/model")
    with pytest.raises(ModelError, match="has no config.json"):
        TextEncoder(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        TextEncoder(str(tmp_path / "f.txt"))


def test_bad_options() -> None:
    with pytest.raises(ModelError, match="pooling must be one of"):
        TextEncoder("minilm", pooling="max")
    with pytest.raises(ModelError, match="non-empty string"):
        resolve_text_model("  ")


def test_bad_texts(enc: TextEncoder) -> None:
    with pytest.raises(DataError, match="position 1 is empty"):
        enc.encode(["ok report", "   "])
    with pytest.raises(DataError, match=r"record A0002 \(position 1\) is not text"):
        enc.encode(["ok report", None], ids=["A0001", "A0002"])  # type: ignore[list-item]
    with pytest.raises(DataError, match="single string"):
        enc.encode("a report")  # type: ignore[arg-type]
    assert enc.encode([]).shape == (0, 384)


def test_fingerprint_sees_weight_content(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(2_000_000))
    before = dir_fingerprint(tmp_path)
    data = bytearray(weights.read_bytes())
    data[1_000_001] = 1  # same size, one byte changed in the middle
    weights.write_bytes(bytes(data))
    assert dir_fingerprint(tmp_path) != before
