"""The evaluation protocol: one model on one split -> per-record outputs.

:func:`evaluate_model` is the one function that ``etp evaluate`` and ``etp benchmark`` (and the
development scripts under ``benchmarks/``) call to evaluate a model: the linear probe (every
choice on the training and validation records, then one look at the test records), zero-shot
classification with each prompt variant (scored on validation too, to choose a variant), and
ECG-report retrieval. It returns per-record outputs (test probabilities, labels, embeddings);
:mod:`etp.eval.aggregate` turns them into figures with bootstrap confidence intervals.

Classification uses the single-label records of each split (the paper's setting); retrieval uses
every record of the test split that has a report. The defaults (:class:`EvalSettings`) are the
shipped protocol: the probe of :class:`~etp.eval.linear_probe.ProbeConfig` and the prompt variant
:data:`SHIPPED_PROMPTS`, those of ``configs/benchmark-ptbxl.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from etp.errors import DataError
from etp.eval.linear_probe import ProbeConfig
from etp.eval.zero_shot import PromptOptions

#: the shipped zero-shot prompt variant (``zero_shot_default`` of configs/benchmark-ptbxl.yaml)
SHIPPED_PROMPTS = PromptOptions(
    name="en synonyms via reports", languages=["en"], synonyms=True, via_reports=True
)

#: the tasks of an evaluation
TASKS = ("linear_probe", "zero_shot", "retrieval")


@dataclass
class Split:
    """Record indices of one evaluation.

    ``train`` / ``val`` / ``test`` hold the single-label records that are classified (the probe
    trains on ``train`` and chooses on ``val``; zero-shot variants are scored on ``val``),
    ``retrieval`` every test record (any labels) whose report may be retrieved, and ``reports``
    the records whose reports pretraining saw (the gallery of ``via_reports`` prompt variants).
    """

    test: np.ndarray
    train: np.ndarray | None = None
    val: np.ndarray | None = None
    retrieval: np.ndarray | None = None
    reports: np.ndarray | None = None


def _single(prepared: Any, idx: np.ndarray | None) -> np.ndarray | None:
    if idx is None:
        return None
    idx = np.asarray(idx, dtype=np.int64)
    return idx[prepared.label_index(idx) >= 0]


def make_split(
    prepared: Any,
    test: np.ndarray,
    train: np.ndarray | None = None,
    val: np.ndarray | None = None,
) -> Split:
    """A :class:`Split` from record indices of any labels (single-label ones are classified)."""
    test = np.asarray(test, dtype=np.int64)
    split = Split(
        test=_single(prepared, test),  # type: ignore[arg-type]
        train=_single(prepared, train),
        val=_single(prepared, val),
        retrieval=test,
        reports=None if train is None else np.asarray(train, dtype=np.int64),
    )
    ids = prepared.meta["record_id"].astype(str).to_numpy()
    seen = set(ids[split.test])
    for other in (split.train, split.val):
        if other is not None:
            assert not seen & set(ids[other]), "test records leak into train/val"
    return split


def fold_split(prepared: Any, train: Sequence[int], val: int, test: int) -> Split:
    """The split of a fold rotation: training folds, one validation fold, one test fold."""
    return make_split(
        prepared,
        prepared.select(folds=[test]),
        prepared.select(folds=list(train)),
        prepared.select(folds=[val]),
    )


def named_split(
    prepared: Any, test: str = "test", train: str | None = "train", val: str | None = "val"
) -> Split:
    """The split of the cache's ``split`` column (``train`` / ``val`` / ``test``)."""
    return make_split(
        prepared,
        prepared.select(split=test),
        None if train is None else prepared.select(split=train),
        None if val is None else prepared.select(split=val),
    )


def training_reports(prepared: Any, split: Split) -> list[str]:
    """The non-empty reports of the split's pretraining records (the ``via_reports`` gallery)."""
    if split.reports is None:
        return []
    return [r for r in prepared.reports(split.reports) if r.strip()]


@dataclass
class EvalSettings:
    """How :func:`evaluate_model` evaluates (defaults: the shipped protocol)."""

    probe: ProbeConfig = field(default_factory=ProbeConfig)
    zero_shot: list[PromptOptions] = field(default_factory=lambda: [SHIPPED_PROMPTS])
    prompts: str | None = None  # prompt table YAML (None: the packaged one)
    precision: str = "bf16"  # feature extraction: bf16 or fp32
    views: str = "auto"  # test-time views: 'auto' (the model's own), '1', N or NxF
    seed: int = 0  # the probe's label draw, initialisation and cross-validation folds
    batch_size: int = 256
    features_cache: str | Path | None = None
    text_cache: str | Path | None = None


@dataclass
class EvalOutput:
    """Per-record outputs of one model on one split."""

    test_ids: list[str]
    test_y: np.ndarray
    test_indices: np.ndarray
    views: str = "1"
    probe: dict[float, np.ndarray] = field(default_factory=dict)  # fraction -> test probs
    probe_results: dict[float, dict[str, Any]] = field(default_factory=dict)  # ProbeResult.to_dict
    test_features: np.ndarray | None = None
    zs_test: dict[str, np.ndarray] = field(default_factory=dict)  # variant -> test probs
    zs_val_auc: dict[str, float] = field(default_factory=dict)  # variant -> val average AUC
    zs_details: dict[str, dict[str, Any]] = field(default_factory=dict)  # prompts, options, ...
    zs_selected: str | None = None
    retrieval: dict[str, Any] | None = None
    test_emb: np.ndarray | None = None

    def probe_selection(self, frac: float) -> dict[str, Any]:
        """What the probe of ``frac`` chose, without its per-epoch validation curves."""
        sel = self.probe_results[frac]["selection"]
        return {k: v for k, v in sel.items() if k != "history"}


def _zs_average_auc(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> float:
    from etp.eval.metrics import zero_shot_metrics

    return float(zero_shot_metrics(y, probs, classes, warn=False)["average"]["auc"])


def _nonempty(prepared: Any, split: Split, names: Sequence[str]) -> None:
    for name in names:
        idx = getattr(split, name)
        if idx is None or idx.size == 0:
            raise DataError(f"{prepared.path}: no single-label record in the {name} split")


def evaluate_model(
    model: Any,
    prepared: Any,
    split: Split,
    settings: EvalSettings | None = None,
    tasks: Sequence[str] = TASKS,
    gallery: Sequence[str] | None = None,
) -> EvalOutput:
    """Linear probe, zero-shot and retrieval of one model on one split of a prepared dataset.

    Args:
        model: a :class:`~etp.models.etp.LoadedModel` (its ``views`` are set from
            ``settings.views`` unless that is ``"auto"``).
        prepared: a :class:`~etp.data.cache.PreparedDataset`.
        split: the records (:func:`fold_split`, :func:`named_split`, :func:`make_split`).
        settings: the protocol (default: the shipped one).
        tasks: any of :data:`TASKS`; zero-shot and retrieval need a model with a text side.
        gallery: the reports of ``via_reports`` variants (default: :func:`training_reports`).
    """
    from etp.eval.features import extract

    s = settings or EvalSettings()
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown evaluation task(s) {unknown} (valid: {', '.join(TASKS)})")
    if s.views != "auto":
        from etp.data.views import Views

        model.views = Views.parse(str(s.views))
    _nonempty(prepared, split, ["test"])
    classes = list(prepared.classes)
    ids = prepared.meta["record_id"].astype(str).to_numpy()
    y_test = prepared.label_index(split.test)
    out = EvalOutput(
        test_ids=ids[split.test].tolist(),
        test_y=y_test,
        test_indices=split.test,
        views=str(model.views),
    )
    kw: dict[str, Any] = dict(
        bf16=s.precision == "bf16", cache_dir=s.features_cache, batch_size=s.batch_size
    )

    if "linear_probe" in tasks:
        _nonempty(prepared, split, ["train", "val", "test"])
        _probe(model, prepared, split, s, out, classes, kw)

    want_zs = "zero_shot" in tasks and model.has_text
    if want_zs or ("retrieval" in tasks and model.has_text):
        have_val = split.val is not None and split.val.size > 0
        emb = {"test": extract(model, prepared, split.test, "embedding", **kw)}
        if have_val and want_zs:
            emb["val"] = extract(model, prepared, split.val, "embedding", **kw)
        out.test_emb = emb["test"]

        def embed_texts(texts: list[str]) -> np.ndarray:
            return model.embed_texts(texts, cache_dir=s.text_cache)

        if want_zs:
            reports = gallery if gallery is not None else training_reports(prepared, split)
            _zero_shot(model, prepared, split, s, out, classes, emb, embed_texts, reports)
        if "retrieval" in tasks:
            out.retrieval = _retrieval(model, prepared, split, kw, embed_texts)
    return out


def _probe(
    model: Any,
    prepared: Any,
    split: Split,
    s: EvalSettings,
    out: EvalOutput,
    classes: list[str],
    kw: dict[str, Any],
) -> None:
    """One probe per label fraction; the readout (with several) chosen like the weight decay."""
    from etp.eval.features import extract
    from etp.eval.linear_probe import select_readout

    parts = {"train": split.train, "val": split.val, "test": split.test}
    y = {k: prepared.label_index(i) for k, i in parts.items()}
    feats = {
        pooling: {
            k: extract(model, prepared, i, "features", **kw, pooling=pooling)
            for k, i in parts.items()
        }
        for pooling in s.probe.pooling
    }
    out.test_features = feats[s.probe.pooling[0]]["test"]
    device = str(getattr(model, "device", "cpu"))
    for frac in s.probe.label_fractions:
        # the probe standardises with the whole training split, then draws the fraction; with
        # several readouts, the one whose probe does best (validation or CV) is kept
        chosen, probe = select_readout(
            classes,
            s.probe,
            {k: (f["train"], f["val"]) for k, f in feats.items()},
            y["train"],
            y["val"],
            label_fraction=float(frac),
            seed=s.seed,
            device=device,
        )
        res = probe.evaluate_test(feats[chosen]["test"], y["test"])  # the one look at test
        out.probe[float(frac)] = res.test_probabilities
        out.probe_results[float(frac)] = res.to_dict()


def _zero_shot(
    model: Any,
    prepared: Any,
    split: Split,
    s: EvalSettings,
    out: EvalOutput,
    classes: list[str],
    emb: dict[str, np.ndarray],
    embed_texts: Callable[[list[str]], np.ndarray],
    reports: Sequence[str],
) -> None:
    """Every prompt variant on the test (and validation) records; the best on validation."""
    from etp.eval.zero_shot import ReportGallery, load_prompt_table, zero_shot_classify

    table = load_prompt_table(s.prompts)
    variants = s.zero_shot or [PromptOptions()]
    gallery = None
    if any(v.via_reports for v in variants):
        if not reports:
            raise DataError(
                f"{prepared.path}: a via_reports prompt variant needs the reports of the "
                "pretraining records, and the training split has none"
            )
        gallery = ReportGallery(
            texts=list(reports),
            embed_frozen=lambda ts: model.embed_texts_frozen(ts, cache_dir=s.text_cache),
        )
    scale = float(model.model.scale().detach())
    dataset = prepared.info.get("dataset")
    n_val = len(emb["val"]) if "val" in emb else 0
    both = np.concatenate([emb["val"], emb["test"]]) if n_val else emb["test"]
    y_val = prepared.label_index(split.val) if n_val else None
    for variant in variants:
        # one call for both splits: class embeddings (and prototypes) built once
        pred = zero_shot_classify(
            both, classes, embed_texts, scale, dataset, table, variant, gallery
        )
        name = variant.label
        out.zs_test[name] = pred.probabilities[n_val:]
        if n_val:
            out.zs_val_auc[name] = _zs_average_auc(y_val, pred.probabilities[:n_val], classes)
        out.zs_details[name] = {
            "prompts": pred.prompts,
            "options": {
                "templates": list(variant.templates) if variant.templates else None,
                "ensemble": variant.ensemble,
                "synonyms": variant.synonyms,
                "languages": list(variant.languages),
                "via_reports": variant.via_reports,
            },
            "logit_scale": pred.logit_scale,
            "report_counts": pred.report_counts,
        }
    finite = {k: v for k, v in out.zs_val_auc.items() if math.isfinite(v)}
    out.zs_selected = max(finite, key=finite.get) if finite else None  # type: ignore[arg-type]


def _retrieval(
    model: Any,
    prepared: Any,
    split: Split,
    kw: dict[str, Any],
    embed_texts: Callable[[list[str]], np.ndarray],
) -> dict[str, Any] | None:
    """ECG <-> report Recall@K over the test records with a report (distinct reports)."""
    from etp.eval.features import extract
    from etp.eval.retrieval import evaluate_retrieval

    every = split.retrieval if split.retrieval is not None else split.test
    reports = prepared.reports(every)  # as written: canonical= applies the model's translation
    if not any(r.strip() for r in reports):
        return None
    # every test record embedded; those without a report are left out of the queries
    every_emb = extract(model, prepared, every, "embedding", **kw)
    return evaluate_retrieval(every_emb, reports, embed_texts, canonical=model.prepare_texts)
