"""Text-embedding cache: the frozen text model runs once per distinct report, ever.

PTB-XL has 9,883 distinct reports for 21,837 records, so :func:`embed_texts` deduplicates,
encodes only the distinct texts and stores them in ``cache_dir`` under a key made of the text
model's fingerprint, pooling, max length and a hash of the sorted distinct texts. A second call
with the same inputs loads the ``.npy`` without loading or running the language model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from etp.errors import ModelError
from etp.io import atomic_path, atomic_write_json
from etp.text.encoder import TextEncoder, check_texts

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: spec fields that decide the embedding values (the path may differ between machines)
_KEY_FIELDS = ("fingerprint", "pooling", "max_length", "dim", "model_type")


def default_cache_dir() -> Path:
    """Where etp keeps text embeddings between runs: ``$ETP_CACHE_DIR/text_emb``, else
    ``$XDG_CACHE_HOME/etp/text_emb``, else ``~/.cache/etp/text_emb``. Entries are keyed by the
    text model and the texts, so one directory serves every dataset and run."""
    root = os.environ.get("ETP_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "text_emb"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "etp" / "text_emb"


def texts_hash(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts (order-sensitive, unambiguous)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def cache_key(spec: dict[str, Any], unique_texts: Sequence[str]) -> str:
    """Cache key of ``unique_texts`` embedded by the model described by ``spec``."""
    model = {k: spec.get(k) for k in _KEY_FIELDS}
    blob = json.dumps({"format": CACHE_FORMAT, "model": model, "texts": texts_hash(unique_texts)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _as_encoder(encoder_or_spec: Any, device: str) -> tuple[TextEncoder | None, dict[str, Any]]:
    """(encoder if already built, spec) from a TextEncoder, a spec dict or a model name."""
    if isinstance(encoder_or_spec, TextEncoder):
        return encoder_or_spec, encoder_or_spec.spec
    if isinstance(encoder_or_spec, dict):
        if all(encoder_or_spec.get(k) is not None for k in ("fingerprint", "pooling",
                                                            "max_length", "dim")):
            return None, dict(encoder_or_spec)
        enc = TextEncoder.from_spec(encoder_or_spec, device=device)
        return enc, enc.spec
    if isinstance(encoder_or_spec, str):
        enc = TextEncoder(encoder_or_spec, device=device)
        return enc, enc.spec
    raise ModelError(
        f"expected a TextEncoder, a text spec dict or a model name, got {type(encoder_or_spec)}"
    )


def _load_cached(
    npy: Path, meta_path: Path, key: str, n_unique: int, dim: int
) -> np.ndarray | None:
    """The cached embeddings if both files are present and consistent, else None."""
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        emb = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable text-embedding cache %s (%s); re-encoding", npy, exc)
        return None
    if meta.get("key") != key or emb.shape != (n_unique, dim) or emb.dtype != np.float32:
        log.warning("ignoring inconsistent text-embedding cache %s; re-encoding", npy)
        return None
    return emb


def embed_texts(
    texts: Sequence[str],
    encoder_or_spec: TextEncoder | dict[str, Any] | str,
    cache_dir: str | Path | None = None,
    *,
    ids: Sequence[Any] | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Embed each distinct text once -> ``(emb_unique (U, D) float32, index (n,) int64)``.

    Row ``index[i]`` of ``emb_unique`` is the embedding of ``texts[i]``; rows follow the sorted
    distinct texts. With ``cache_dir`` the result is stored (atomically) and reused; the model
    is then neither loaded nor run. ``ids`` (e.g. record ids) name the record of a bad text in
    the :class:`~etp.errors.DataError` raised for an empty or non-string report.
    """
    texts = check_texts(texts, ids)
    unique = sorted(set(texts))
    position = {t: i for i, t in enumerate(unique)}
    index = np.fromiter((position[t] for t in texts), dtype=np.int64, count=len(texts))
    encoder, spec = _as_encoder(encoder_or_spec, device)
    dim = int(spec["dim"])
    if not unique:
        return np.zeros((0, dim), np.float32), index

    key = cache_key(spec, unique)
    npy = meta_path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        npy = cache_dir / f"text-emb-{key}.npy"
        meta_path = cache_dir / f"text-emb-{key}.json"
        cached = _load_cached(npy, meta_path, key, len(unique), dim)
        if cached is not None:
            log.info("text embeddings: %d distinct texts loaded from %s", len(unique), npy)
            return cached, index

    if encoder is None:
        encoder = TextEncoder.from_spec(spec, device=device)
    t0 = time.perf_counter()
    emb = np.ascontiguousarray(encoder.encode(unique), dtype=np.float32)
    log.info(
        "text embeddings: encoded %d distinct of %d texts with %s in %.1f s",
        len(unique), len(texts), spec.get("name"), time.perf_counter() - t0,
    )
    if emb.shape != (len(unique), dim):
        raise ModelError(f"text encoder returned shape {emb.shape}, expected {(len(unique), dim)}")

    if npy is not None and meta_path is not None:
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, emb, allow_pickle=False)
        # the JSON is written last: it marks a complete cache entry
        atomic_write_json(meta_path, {
            "format": CACHE_FORMAT, "key": key, "spec": spec, "n_unique": len(unique),
            "n_texts": len(texts), "texts_sha256": texts_hash(unique), "dim": dim,
        })
    return emb, index
