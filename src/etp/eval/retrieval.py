"""Cross-modal retrieval: ECG -> report and report -> ECG Recall@K.

The gallery of reports is the set of *distinct* report texts of the split: many ECGs share a
report (PTB-XL's "sinus rhythm. normal ecg." alone covers thousands), so each text is one gallery
item. ECG -> report: an ECG query counts as a hit at K when its own report text is among the K
reports most similar to it. Report -> ECG: each distinct report is a query; it counts as a hit at K
when any ECG that carries this report is among the K most similar ECGs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _rank_of_targets(sims: np.ndarray, targets: list[np.ndarray]) -> np.ndarray:
    """Per query row, the 0-based rank of its best-ranked target column.

    Ties are resolved pessimistically: every non-target item scoring at least as high as the best
    target ranks before it (so a collapsed model gets no credit for ties).
    """
    ranks = np.empty(sims.shape[0], dtype=np.int64)
    for i, cols in enumerate(targets):
        best = sims[i, cols].max()
        ranks[i] = int(np.sum(sims[i] >= best)) - int(np.sum(sims[i, cols] >= best))
    return ranks


def retrieval_metrics(
    ecg_emb: np.ndarray,
    report_emb: np.ndarray,
    report_index: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Recall@K in both directions from embeddings.

    Args:
        ecg_emb: (n, D) ECG embeddings.
        report_emb: (U, D) embeddings of the distinct reports (the gallery).
        report_index: (n,) index into ``report_emb`` of each ECG's own report.
        ks: the K values.

    Returns:
        ``{"ecg_to_report": {"R@1": .., ...}, "report_to_ecg": {...}, "n_ecgs": n,
        "n_reports": U, "median_rank_ecg_to_report": ..}`` (recalls in [0, 1]).
    """
    e = _normalize(ecg_emb)
    t = _normalize(report_emb)
    idx = np.asarray(report_index, dtype=np.int64).ravel()
    if e.shape[0] != idx.shape[0]:
        raise ValueError(f"{idx.shape[0]} report indices for {e.shape[0]} ECG embeddings")
    if idx.size and (idx.min() < 0 or idx.max() >= t.shape[0]):
        raise ValueError("report_index points outside the report gallery")
    sims = e @ t.T  # (n, U)
    e2t = _rank_of_targets(sims, [np.array([j]) for j in idx])
    used = np.unique(idx)
    owners = [np.flatnonzero(idx == u) for u in used]
    t2e = _rank_of_targets(sims.T[used], owners)
    return {
        "ecg_to_report": {f"R@{k}": float(np.mean(e2t < k)) for k in ks},
        "report_to_ecg": {f"R@{k}": float(np.mean(t2e < k)) for k in ks},
        "n_ecgs": int(e.shape[0]),
        "n_reports": int(used.size),
        "median_rank_ecg_to_report": float(np.median(e2t) + 1) if e2t.size else float("nan"),
    }


def evaluate_retrieval(
    ecg_emb: np.ndarray,
    reports: Sequence[str],
    embed_texts: Callable[[list[str]], np.ndarray],
    ks: Sequence[int] = DEFAULT_KS,
    canonical: Callable[[list[str]], list[str]] | None = None,
) -> dict[str, Any]:
    """Recall@K with the distinct non-empty report texts of ``reports`` as the gallery.

    ECGs without a report (empty text) are left out of the queries. ``canonical`` maps reports
    to the text the model actually embeds (e.g. :meth:`etp.models.etp.LoadedModel.prepare_texts`:
    normalised or translated); reports with the same canonical text are one gallery item, since
    as separate items their identical embeddings would tie and cost each other the hit.
    """
    texts = [str(r) for r in reports]
    if len(texts) != np.asarray(ecg_emb).shape[0]:
        raise ValueError(f"{len(texts)} reports for {np.asarray(ecg_emb).shape[0]} ECG embeddings")
    keep = np.array([bool(t.strip()) for t in texts], dtype=bool)
    if not keep.any():
        raise ValueError("no ECG in the split has a report to retrieve")
    kept = [t for t, k in zip(texts, keep) if k]
    keys = list(canonical(kept)) if canonical is not None else kept
    if len(keys) != len(kept):
        raise ValueError(f"canonical() returned {len(keys)} texts for {len(kept)} reports")
    first = dict(zip(reversed(keys), reversed(kept)))  # key -> its first report as written
    gallery = list(dict.fromkeys(keys))
    row = {t: i for i, t in enumerate(gallery)}
    out = retrieval_metrics(
        np.asarray(ecg_emb)[keep],
        np.asarray(embed_texts([first[k] for k in gallery])),
        np.array([row[t] for t in keys]),
        ks,
    )
    out["n_without_report"] = int((~keep).sum())
    return out
