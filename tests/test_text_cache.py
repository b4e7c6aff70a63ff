"""Text-embedding cache: dedup, on-disk reuse without the model, keys, bad reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from etp.errors import DataError
from etp.text import encoder as encoder_mod
from etp.text.cache import cache_key, embed_texts
from etp.text.encoder import TextEncoder


class CountingEncoder(TextEncoder):
    """A TextEncoder stand-in that records every text it is asked to encode."""

    def __init__(self, pooling: str = "mean") -> None:  # no model files needed
        self.name, self.pooling, self.max_length, self.dim = "fake", pooling, 128, 8
        self.calls: list[list[str]] = []

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": "fake", "path": "fake", "source": "test", "pooling": self.pooling,
                "max_length": 128, "dim": 8, "model_type": "fake", "fingerprint": "f" * 16}

    def encode(self, texts: Sequence[str], ids: Sequence[Any] | None = None) -> np.ndarray:
        self.calls.append(list(texts))
        seeds = [sum(map(ord, t)) + (0 if self.pooling == "mean" else 1) for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=8) for s in seeds]).astype("f4")


TEXTS = ["sinus rhythm", "afib", "sinus rhythm", "lbbb", "afib", "sinus rhythm"]


def test_dedup_and_index() -> None:
    enc = CountingEncoder()
    uniq, index = embed_texts(TEXTS, enc)
    assert enc.calls == [["afib", "lbbb", "sinus rhythm"]]  # each distinct text once, sorted
    assert uniq.shape == (3, 8) and uniq.dtype == np.float32
    assert index.dtype == np.int64 and index.tolist() == [2, 0, 2, 1, 0, 2]
    full = enc.encode(TEXTS)
    np.testing.assert_array_equal(uniq[index], full)


def test_second_call_reads_the_cache(tmp_path: Path) -> None:
    enc = CountingEncoder()
    first = embed_texts(TEXTS, enc, tmp_path)
    assert len(enc.calls) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]  # no temp files
    second = embed_texts(TEXTS[::-1], enc, tmp_path)  # same distinct texts, other order
    assert len(enc.calls) == 1
    np.testing.assert_array_equal(first[0], second[0])
    assert second[1].tolist() == first[1][::-1].tolist()
    # another pooling or another text set is another key
    embed_texts(TEXTS, CountingEncoder(pooling="cls"), tmp_path)
    embed_texts(TEXTS + ["stemi"], enc, tmp_path)
    assert len(enc.calls) == 2 and len(list(tmp_path.glob("*.npy"))) == 3


def test_corrupted_cache_is_recomputed(tmp_path: Path) -> None:
    enc = CountingEncoder()
    uniq, _ = embed_texts(TEXTS, enc, tmp_path)
    (npy,) = tmp_path.glob("*.npy")
    npy.write_bytes(b"garbage")
    again, _ = embed_texts(TEXTS, enc, tmp_path)
    assert len(enc.calls) == 2
    np.testing.assert_array_equal(again, uniq)


def test_key_ignores_path_but_not_model() -> None:
    spec = CountingEncoder().spec
    assert cache_key(spec, ["a"]) == cache_key({**spec, "path": "/elsewhere"}, ["a"])
    assert cache_key(spec, ["a"]) != cache_key({**spec, "fingerprint": "0" * 16}, ["a"])
    assert cache_key(spec, ["a"]) != cache_key({**spec, "max_length": 64}, ["a"])
    assert cache_key(spec, ["a"]) != cache_key(spec, ["b"])


def test_real_minilm_cache_hit_never_loads_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = TextEncoder("minilm")
    texts = ["sinus rhythm. normal ecg.", "atrial fibrillation", "sinus rhythm. normal ecg."]
    uniq, index = embed_texts(texts, enc, tmp_path)
    assert uniq.shape == (2, 384) and index.tolist() == [1, 0, 1]

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the text model must not be loaded or run on a cache hit")

    monkeypatch.setattr(encoder_mod.TextEncoder, "_load", fail)
    monkeypatch.setattr(encoder_mod.TextEncoder, "encode", fail)
    cached, index2 = embed_texts(texts, enc.spec, tmp_path)  # from the spec alone
    np.testing.assert_array_equal(cached, uniq)
    assert index2.tolist() == [1, 0, 1]
    cached2, _ = embed_texts(texts, TextEncoder("minilm"), tmp_path)  # a fresh, unloaded encoder
    np.testing.assert_array_equal(cached2, uniq)


def test_bad_reports_name_the_record() -> None:
    enc = CountingEncoder()
    with pytest.raises(DataError, match=r"record 17 \(position 1\) is empty"):
        embed_texts(["ok", ""], enc, ids=[16, 17])
    with pytest.raises(DataError, match=r"position 2 is not text \(float"):
        embed_texts(["ok", "fine", float("nan")], enc)  # type: ignore[list-item]
    with pytest.raises(DataError, match="2 texts but 1 record ids"):
        embed_texts(["a", "b"], enc, ids=["x"])
    assert enc.calls == []


def test_empty_input() -> None:
    uniq, index = embed_texts([], CountingEncoder())
    assert uniq.shape == (0, 8) and index.shape == (0,)
