"""PNG figures of an evaluation (matplotlib, Agg backend — no display needed).

* :func:`plot_roc_curves`: one-vs-rest ROC curve per class with its AUC;
* :func:`plot_vs_paper`: grouped bars of our numbers against the paper's, with error bars;
* :func:`plot_embedding_map`: 2-D map (PCA, optionally t-SNE) of ECG embeddings by class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from etp.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_roc_curves(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str = "ROC curves (one-vs-rest)",
) -> Path:
    """One ROC curve per class present in ``y_true`` (labels are class indices)."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(probs)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c, name in enumerate(classes):
        truth = y == c
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, p[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {100 * roc_auc_score(truth, p[:, c]):.1f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_vs_paper(
    ours: Mapping[str, float],
    paper: Mapping[str, float],
    path: str | Path,
    title: str = "ours vs. paper",
    ylabel: str = "AUC (%)",
    errors: Mapping[str, float] | None = None,
    ours_label: str = "etp (ours)",
    paper_label: str = "paper",
) -> Path:
    """Grouped bars per category: our value (with optional error bar) beside the paper's."""
    cats = [c for c in dict.fromkeys([*ours, *paper]) if c != "Average"]
    if "Average" in ours or "Average" in paper:
        cats.append("Average")  # the summary bar goes last
    x = np.arange(len(cats))
    w = 0.38
    ov = [ours.get(c, np.nan) for c in cats]
    pv = [paper.get(c, np.nan) for c in cats]
    err = [errors.get(c, 0.0) if errors else 0.0 for c in cats]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cats) + 2), 4))
    ax.bar(x - w / 2, ov, w, yerr=err if errors else None, capsize=3, label=ours_label)
    ax.bar(x + w / 2, pv, w, label=paper_label, alpha=0.7)
    ax.set_xticks(x, cats, rotation=30 if len(cats) > 6 else 0)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def embedding_2d(emb: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, 2) projection of embeddings: ``pca`` or ``tsne`` (sklearn)."""
    x = np.asarray(emb, dtype=np.float64)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
        return TSNE(
            n_components=2, random_state=seed, perplexity=perplexity, init="pca"
        ).fit_transform(x)
    raise ValueError(f"unknown projection {method!r} (pca or tsne)")


def plot_embedding_map(
    emb: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    method: str = "pca",
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Scatter of a 2-D projection of ``emb`` coloured by class index (-1 = unlabelled, grey)."""
    xy = embedding_2d(emb, method, seed)
    y = np.asarray(labels).astype(np.int64)
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10")
    if (y < 0).any():
        ax.scatter(*xy[y < 0].T, s=8, c="lightgrey", label="other")
    for c, name in enumerate(classes):
        m = y == c
        if m.any():
            ax.scatter(*xy[m].T, s=10, color=cmap(c % 10), label=f"{name} ({int(m.sum())})")
    ax.set(title=title or f"ECG embeddings ({method.upper()})", xticks=[], yticks=[])
    ax.legend(fontsize=8, markerscale=1.5)
    return _save(fig, path)
