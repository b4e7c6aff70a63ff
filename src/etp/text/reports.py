"""The text side of a pretraining run: the frozen text model a model records, and the embedding
of each training report, computed once per distinct report and cached on disk."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from etp.config import ModelConfig

log = logging.getLogger(__name__)


def text_side(m: ModelConfig, device: str) -> tuple[Any, dict[str, Any]]:
    """The frozen text encoder of ``m`` and the spec a saved model records (with the report
    glossary when reports are translated, so prompts are translated the same way)."""
    from etp.data.text import translation_glossary
    from etp.text.encoder import TextEncoder

    encoder = TextEncoder(m.text_model, pooling=m.text_pooling, max_length=m.text_max_length, device=device)
    spec = dict(encoder.spec)
    glossary = translation_glossary(m.report_translation)
    if glossary is not None:
        spec["report_glossary"] = glossary
    return encoder, spec


def report_embeddings(
    prepared: Any, rows: np.ndarray, encoder: Any, spec: dict[str, Any], main: bool = True
) -> tuple[Tensor, Tensor]:
    """``(embeddings (n_distinct, dim), row index (len(prepared),))``: the frozen text model's
    embedding of each distinct report of cache ``rows`` (translated with ``spec``'s glossary),
    and for every cache row the index of its report's embedding (-1 for rows not asked for).

    Under torchrun rank 0 encodes (and fills the on-disk cache) first; the others then read it.
    """
    from etp.data.text import ReportTranslator
    from etp.text.cache import default_cache_dir, embed_texts
    from etp.train.distributed import barrier

    texts = prepared.meta["report"].astype(str).to_numpy()[rows].tolist()
    if spec.get("report_glossary"):
        texts = ReportTranslator(spec["report_glossary"]).translate(texts)
    if not main:
        barrier()
    t0 = time.perf_counter()
    ids = prepared.meta["record_id"].astype(str).to_numpy()[rows].tolist()
    emb, index = embed_texts(texts, encoder, cache_dir=default_cache_dir(), ids=ids)
    if main:
        barrier()
        log.info(
            "text embeddings: %d reports, %d distinct, dim %d (%.1f s)",
            len(texts), emb.shape[0], emb.shape[1], time.perf_counter() - t0,
        )
    row = np.full(len(prepared), -1, dtype=np.int64)
    row[rows] = np.asarray(index, dtype=np.int64)
    return (
        torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)),
        torch.from_numpy(row),
    )


__all__ = ["report_embeddings", "text_side"]
