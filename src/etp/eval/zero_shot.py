"""Zero-shot classification: class prompts -> text embeddings -> cosine similarity to ECGs.

The paper's protocol (Tables 2 and 3): each class is described by the prompt
``"this ECG indicates {name}"``; an ECG is assigned the class whose prompt embedding has the
highest cosine similarity to the ECG embedding. Class probabilities, from which the per-class AUC
is computed, are ``softmax(logit_scale * similarities)`` with the model's own learned scale.

Beyond the paper, each selectable through :class:`PromptOptions`:

* a *prompt ensemble*: several templates per class, text embeddings L2-normalised, averaged and
  re-normalised (as in CLIP);
* *synonyms*: every name the prompt table lists for a class, not only the first;
* *languages*: names in the reports' own languages (PTB-XL: German, English, Swedish);
* *report prototypes* (``via_reports``): each class is represented by the pretraining reports
  that the frozen text model places nearest to the class's prompts (no ECG label is read); the
  class embedding is the mean of those reports' embeddings in the shared space, where the ECG
  encoder was trained to put the ECGs of such reports. Short prompts lie apart from the reports
  the projection heads were fitted on; the reports themselves do not.

Class names and phrasings live in a user-editable YAML table (``etp/resources/prompts.yaml`` by
default, any path with ``load_prompt_table(path)``). The functions here take ECG embeddings as
numpy arrays and a text-embedding *function*, so they run with any model or with a stub.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from etp.config import config_field
from etp.errors import ConfigError
from etp.eval.metrics import zero_shot_metrics

#: the paper's prompt template
DEFAULT_TEMPLATE = "this ECG indicates {name}"

#: a function mapping texts to (n, D) embeddings in the shared ECG-text space
TextEmbedFn = Callable[[list[str]], np.ndarray]


def default_prompt_table_path() -> Path:
    """Path of the prompt table shipped with etp (``etp/resources/prompts.yaml``)."""
    return Path(str(importlib.resources.files("etp").joinpath("resources/prompts.yaml")))


@dataclass
class PromptTable:
    """Class names per dataset/class/language plus prompt templates per language.

    Attributes:
        templates: language -> default templates (each contains ``{name}``).
        ensemble_templates: language -> templates used for a prompt ensemble.
        datasets: dataset -> class -> language -> names (first = name, rest = synonyms).
        source: the file it was read from.
    """

    templates: dict[str, list[str]] = field(default_factory=lambda: {"en": [DEFAULT_TEMPLATE]})
    ensemble_templates: dict[str, list[str]] = field(default_factory=dict)
    datasets: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    source: str = "<built-in>"

    def names(self, dataset: str | None, cls: str, language: str) -> list[str]:
        """Names of ``cls`` in ``language`` (empty when the table has none)."""
        if dataset is None:
            return []
        return list(self.datasets.get(dataset, {}).get(cls, {}).get(language, []))

    def classes(self, dataset: str) -> list[str]:
        """The classes the table lists for ``dataset`` (ConfigError when it has none)."""
        if dataset not in self.datasets:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise ConfigError(
                f"{self.source}: no classes for dataset {dataset!r} "
                f"(datasets in the table: {known})"
            )
        return list(self.datasets[dataset])

    def languages(self) -> list[str]:
        """Every language that has a template or a class name in the table."""
        langs = set(self.templates) | set(self.ensemble_templates)
        for classes in self.datasets.values():
            for names in classes.values():
                langs |= set(names)
        return sorted(langs)


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise ConfigError(f"{where}: expected a non-empty list of non-empty strings, got {value!r}")
    return [v.strip() for v in value]


def _templates(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping language -> list of templates")
    out = {}
    for lang, tmpls in value.items():
        out[str(lang)] = _str_list(tmpls, f"{where}.{lang}")
        for t in out[str(lang)]:
            check_template(t, f"{where}.{lang}")
    return out


def check_template(template: str, where: str = "template") -> str:
    """Raise ConfigError unless ``template`` contains ``{name}`` and nothing else to format."""
    try:
        filled = template.format(name="X")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{where}: template {template!r} may only contain {{name}} ({exc})"
        ) from None
    if "{name}" not in template or filled == template:
        raise ConfigError(f"{where}: template {template!r} must contain {{name}}")
    return template


def load_prompt_table(path: str | Path | None = None) -> PromptTable:
    """Read a prompt table YAML (the shipped one when ``path`` is None).

    Raises :class:`ConfigError` naming the file and key of any structural problem.
    """
    p = Path(path) if path is not None else default_prompt_table_path()
    if not p.is_file():
        raise ConfigError(f"prompt table not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not a valid YAML prompt table ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping with 'templates' and 'datasets'")
    unknown = sorted(set(data) - {"version", "templates", "ensemble_templates", "datasets"})
    if unknown:
        raise ConfigError(
            f"{p}: unknown key(s) {unknown} (valid: version, templates, "
            "ensemble_templates, datasets)"
        )
    table = PromptTable(source=str(p))
    if "templates" in data:
        table.templates = _templates(data["templates"], f"{p}: templates")
    if "ensemble_templates" in data:
        table.ensemble_templates = _templates(
            data["ensemble_templates"], f"{p}: ensemble_templates"
        )
    datasets = data.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise ConfigError(f"{p}: datasets must be a mapping dataset -> class -> language -> names")
    for ds, classes in datasets.items():
        if not isinstance(classes, dict) or not classes:
            raise ConfigError(f"{p}: datasets.{ds} must map class codes to names per language")
        table.datasets[str(ds)] = {}
        for cls, langs in classes.items():
            where = f"{p}: datasets.{ds}.{cls}"
            if not isinstance(langs, dict) or not langs:
                raise ConfigError(f"{where}: expected a mapping language -> list of names")
            table.datasets[str(ds)][str(cls)] = {
                str(lang): _str_list(names, f"{where}.{lang}") for lang, names in langs.items()
            }
    return table


_f = config_field


@dataclass(frozen=True)
class PromptOptions:
    """How class prompts are built: one zero-shot prompt variant (an item of the ``zero_shot:``
    list of ``etp benchmark`` and ``etp evaluate`` configs)."""

    name: str = _f("", "label of the variant in tables (default: describe(), e.g. 'en, synonyms')")
    languages: list[str] = _f(
        ["en"], "languages whose class names the prompt table gives (en, de, sv); en: the paper's"
    )
    synonyms: bool = _f(False, "use every name of a class, not only the first")
    ensemble: bool = _f(False, "average the table's ensemble templates (of every language)")
    templates: list[str] | None = _f(
        None, "English templates overriding the table's (each contains {name})"
    )
    via_reports: bool = _f(
        False,
        "class embeddings from a gallery of (pretraining) reports that the frozen text model "
        "places nearest to the prompts (report prototypes; no label read) instead of the "
        "prompts' own",
    )

    def __post_init__(self) -> None:
        """The checks of every prompt setting (a ConfigError naming the key)."""
        langs = self.languages
        if isinstance(langs, str) or not langs or not all(
            isinstance(x, str) and x.strip() for x in langs
        ):
            raise ConfigError(
                f"prompt variant {self.name or '?'}: languages: give at least one language, "
                f"e.g. [en] or [en, de]; got {langs!r}"
            )
        for t in self.templates or ():
            check_template(t, f"prompt variant {self.name or '?'}: templates")

    @property
    def label(self) -> str:
        """The variant's name, or its description when it has none."""
        return self.name or self.describe()

    def describe(self) -> str:
        """Short label for tables, e.g. ``en`` or ``en+de, synonyms, ensemble``."""
        parts = ["+".join(self.languages)]
        if self.synonyms:
            parts.append("synonyms")
        if self.ensemble:
            parts.append("ensemble")
        if self.templates:
            parts.append(f"{len(self.templates)} template(s)")
        if self.via_reports:
            parts.append("via reports")
        return ", ".join(parts)


#: the benchmark's name of a prompt variant (the same dataclass)
ZeroShotVariant = PromptOptions


def build_prompts(
    classes: Sequence[str],
    dataset: str | None = None,
    table: PromptTable | None = None,
    options: PromptOptions = PromptOptions(),
) -> dict[str, list[str]]:
    """The prompts of every class, in class order (duplicates removed, order kept).

    A class the table does not list for ``dataset`` (or any class when ``dataset`` is None, e.g.
    free-text labels a user typed) is used verbatim as its English name.
    """
    if not classes:
        raise ConfigError("no classes to build prompts for (the label list is empty)")
    if not options.languages:
        raise ConfigError("no prompt language selected")
    table = table if table is not None else load_prompt_table()
    if options.templates is not None:
        for t in options.templates:
            check_template(t, "--template")
    out: dict[str, list[str]] = {}
    for cls in classes:
        name = str(cls).strip()
        if not name:
            raise ConfigError(f"empty class name in {list(classes)!r}")
        listed = dataset is not None and cls in table.datasets.get(dataset, {})
        prompts: list[str] = []
        for lang in options.languages:
            names = table.names(dataset, cls, lang)
            if not names and lang == "en" and not listed:
                names = [name]
            if not names:
                continue
            if not options.synonyms:
                names = names[:1]
            if options.ensemble:
                tmpls = (
                    table.ensemble_templates.get(lang) or table.templates.get(lang) or ["{name}"]
                )
            elif options.templates is not None and lang == "en":
                tmpls = list(options.templates)
            else:
                tmpls = table.templates.get(lang) or (
                    [DEFAULT_TEMPLATE] if lang == "en" else ["{name}"]
                )
            prompts.extend(t.format(name=n) for t in tmpls for n in names)
        if not prompts:  # no name in any selected language: fall back to the English name
            en = table.names(dataset, cls, "en") or [name]
            tmpls = (
                list(options.templates)
                if options.templates
                else (table.templates.get("en") or [DEFAULT_TEMPLATE])
            )
            prompts = [t.format(name=n) for t in tmpls for n in en[:1]]
        out[cls] = list(dict.fromkeys(prompts))
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def class_text_embeddings(
    prompts: Mapping[str, Sequence[str]], embed_texts: TextEmbedFn
) -> np.ndarray:
    """(C, D) class embeddings: mean of each class's normalised prompt embeddings, renormalised.

    All prompts are embedded in one call (each distinct text once).
    """
    unique = list(dict.fromkeys(t for ps in prompts.values() for t in ps))
    emb = _normalize(np.asarray(embed_texts(unique)))
    if emb.shape[0] != len(unique):
        raise ValueError(
            f"text embedding function returned {emb.shape[0]} rows for {len(unique)} texts"
        )
    row = {t: i for i, t in enumerate(unique)}
    return _normalize(np.stack([emb[[row[t] for t in ps]].mean(axis=0) for ps in prompts.values()]))


@dataclass(frozen=True)
class ReportGallery:
    """Reports that stand in for the class prompts (``PromptOptions.via_reports``).

    Attributes:
        texts: the reports, repeats counted (e.g. every pretraining record's report), as written.
        embed_frozen: texts -> (n, d) embeddings of the *frozen* text model (before the
            projection head), with the model's own text preprocessing; they assign reports to
            classes.
    """

    texts: Sequence[str]
    embed_frozen: TextEmbedFn


def report_prototypes(
    prompts: Mapping[str, Sequence[str]],
    gallery: ReportGallery,
    embed_texts: TextEmbedFn,
) -> tuple[np.ndarray, dict[str, int]]:
    """(C, D) class embeddings from a report gallery, and how many reports each class got.

    Every report goes to the class whose prompts the frozen text model finds most similar to it
    (the text-only zero-shot classifier, no labels); a class embedding is the renormalised mean of
    its reports' shared-space embeddings (``embed_texts``). A class that gets no report keeps its
    prompts' embedding.
    """
    texts = [t for t in gallery.texts if str(t).strip()]
    if not texts:
        raise ConfigError("via_reports: the report gallery holds no non-empty report")
    class_frozen = class_text_embeddings(prompts, gallery.embed_frozen)
    frozen = _normalize(np.asarray(gallery.embed_frozen(texts)))
    joint = _normalize(np.asarray(embed_texts(texts)))
    if frozen.shape[0] != len(texts) or joint.shape[0] != len(texts):
        raise ValueError(
            f"text embedding functions returned {frozen.shape[0]} / {joint.shape[0]} rows "
            f"for {len(texts)} reports"
        )
    assigned = (frozen @ class_frozen.T).argmax(axis=1)
    fallback = class_text_embeddings(prompts, embed_texts)
    out = np.empty_like(fallback)
    counts: dict[str, int] = {}
    for c, cls in enumerate(prompts):
        members = joint[assigned == c]
        counts[cls] = int(members.shape[0])
        out[c] = members.mean(axis=0) if members.shape[0] else fallback[c]
    return _normalize(out), counts


def zero_shot_scores(
    ecg_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities (n, C) and ``softmax(logit_scale * similarities)`` probabilities."""
    sims = _normalize(ecg_emb) @ _normalize(class_emb).T
    logits = float(logit_scale) * sims
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return sims.astype(np.float32), probs


@dataclass
class ZeroShotPrediction:
    """Zero-shot output for n ECGs over C classes."""

    classes: list[str]
    prompts: dict[str, list[str]]
    similarities: np.ndarray  # (n, C) cosine
    probabilities: np.ndarray  # (n, C) softmax(scale * cosine)
    predictions: np.ndarray  # (n,) class index = argmax similarity
    logit_scale: float
    options: PromptOptions = PromptOptions()
    report_counts: dict[str, int] | None = None  # reports per class with ``via_reports``


def zero_shot_classify(
    ecg_emb: np.ndarray,
    classes: Sequence[str],
    embed_texts: TextEmbedFn,
    logit_scale: float,
    dataset: str | None = None,
    table: PromptTable | None = None,
    options: PromptOptions = PromptOptions(),
    gallery: ReportGallery | None = None,
) -> ZeroShotPrediction:
    """Classify ECG embeddings (n, D) among ``classes`` by prompt similarity.

    With ``options.via_reports`` the classes are represented by ``gallery``'s reports
    (:func:`report_prototypes`); the gallery is required then.
    """
    prompts = build_prompts(classes, dataset, table, options)
    counts = None
    if options.via_reports:
        if gallery is None:
            raise ConfigError(
                "via_reports needs a report gallery (e.g. the reports of the pretraining records)"
            )
        class_emb, counts = report_prototypes(prompts, gallery, embed_texts)
    else:
        class_emb = class_text_embeddings(prompts, embed_texts)
    sims, probs = zero_shot_scores(ecg_emb, class_emb, logit_scale)
    return ZeroShotPrediction(
        classes=list(classes),
        prompts=prompts,
        similarities=sims,
        probabilities=probs,
        predictions=sims.argmax(axis=1),
        logit_scale=float(logit_scale),
        options=options,
        report_counts=counts,
    )


@dataclass
class ZeroShotResult:
    """A zero-shot evaluation: the prediction plus the paper's per-class metrics."""

    prediction: ZeroShotPrediction
    y_true: np.ndarray
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (metrics, prompts, options; no per-record arrays)."""
        opts = self.prediction.options
        return {
            "metrics": self.metrics,
            "prompts": self.prediction.prompts,
            "options": {
                "templates": list(opts.templates) if opts.templates else None,
                "ensemble": opts.ensemble,
                "synonyms": opts.synonyms,
                "languages": list(opts.languages),
                "via_reports": opts.via_reports,
            },
            "logit_scale": self.prediction.logit_scale,
            "report_counts": self.prediction.report_counts,
        }


def evaluate_zero_shot(
    ecg_emb: np.ndarray,
    y_true: np.ndarray,
    classes: Sequence[str],
    embed_texts: TextEmbedFn,
    logit_scale: float,
    dataset: str | None = None,
    table: PromptTable | None = None,
    options: PromptOptions = PromptOptions(),
    gallery: ReportGallery | None = None,
) -> ZeroShotResult:
    """Zero-shot classification of labelled ECGs with the paper's Table 2/3 metrics."""
    y = np.asarray(y_true).astype(np.int64)
    if y.shape[0] != np.asarray(ecg_emb).shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {np.asarray(ecg_emb).shape[0]} ECG embeddings")
    pred = zero_shot_classify(
        ecg_emb, classes, embed_texts, logit_scale, dataset, table, options, gallery
    )
    # the prediction is the argmax of the similarities, which the softmax does not change
    metrics = zero_shot_metrics(y, pred.probabilities, list(classes))
    return ZeroShotResult(prediction=pred, y_true=y, metrics=metrics)
