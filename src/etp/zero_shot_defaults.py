"""Zero-shot defaults carried by a model directory, and the user cache for report galleries.

A model directory may hold, next to ``config.json`` and ``model.safetensors``:

* ``zero_shot.json``: the prompt variant the model ships with (e.g. ``en synonyms via reports``,
  the benchmark's ``zero_shot_default``), the dataset whose classes :meth:`LoadedModel.predict`
  uses when no labels are given, where the report gallery came from, and the SHA-256 of the
  prompt table the class embeddings were built with;
* ``class_embeddings.safetensors``: for a variant with report prototypes, the precomputed
  (C, embed_dim) class embeddings of each listed dataset's classes (one tensor per dataset), so
  that ``etp zero-shot --model M --dataset ptbxl FILE`` gives the shipped variant without
  re-embedding thousands of reports.

:func:`resolve_zero_shot` decides, for one call, which class embeddings to use: the user's own
prompt options (and ``--reports`` gallery) when given; else the model's variant with its
precomputed class embeddings when every label is one of a stored dataset's classes (matched
without regard to case or spacing, by code or by the prompt table's English names); else the
variant's prompts without report prototypes, with a warning that says how to get them.

Reports given by the user (``--reports FILE``) are embedded once and kept in a user cache
(:func:`user_cache_dir`), keyed by the text model and the reports' content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from etp.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

DEFAULTS_FILE = "zero_shot.json"
EMBEDDINGS_FILE = "class_embeddings.safetensors"
FORMAT = "etp-zero-shot-defaults"
FORMAT_VERSION = 1
#: environment variable overriding the user cache directory
CACHE_ENV = "ETP_CACHE_DIR"


def user_cache_dir() -> Path:
    """Where etp keeps per-user caches: ``$ETP_CACHE_DIR``, else ``$XDG_CACHE_HOME/etp``,
    else ``~/.cache/etp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "etp"


def label_key(label: str) -> str:
    """A label compared without regard to case or spacing (``"Normal  ECG"`` = ``"normal ecg"``)."""
    return " ".join(str(label).split()).casefold()


def merge_labels(labels: Sequence[str], where: str = "--labels") -> list[str]:
    """Labels with those that differ only in case or spacing merged (the first spelling kept);
    warns when a merge happened and when a single label is left (its probability is 1)."""
    out: dict[str, str] = {}
    for lab in labels:
        text = " ".join(str(lab).split())
        if not text:
            raise ConfigError(f"{where}: empty label in {list(labels)!r}")
        key = label_key(text)
        if key in out:
            log.warning("%s: %r and %r differ only in case or spacing; used as one label",
                        where, out[key], text)
            continue
        out[key] = text
    merged = list(out.values())
    if len(merged) == 1:
        log.warning(
            "%s: a single label (%r): its zero-shot probability is always 1 and means nothing; "
            "give the alternatives too, e.g. \"%s,normal ECG\"", where, merged[0], merged[0],
        )
    return merged


def prompt_table_sha256(table: Any) -> str:
    """SHA-256 of the prompt table's content (its classes, names and templates)."""
    blob = json.dumps(
        {"t": table.templates, "e": table.ensemble_templates, "d": table.datasets},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class ZeroShotDefaults:
    """A model directory's zero-shot defaults (``zero_shot.json`` + class embeddings)."""

    variant: str
    options: Any  # PromptOptions
    dataset: str
    table_sha256: str
    class_embeddings: dict[str, tuple[list[str], np.ndarray]]
    gallery: dict[str, Any]

    def lookup(self, labels: Sequence[str], dataset: str | None, table: Any) -> np.ndarray | None:
        """Stored (C, D) class embeddings of ``labels`` in order, or None when a label is not one
        of a stored dataset's classes (matched by code or English name, any case/spacing)."""
        if prompt_table_sha256(table) != self.table_sha256:
            return None
        candidates = [dataset] if dataset else list(self.class_embeddings)
        for ds in candidates:
            if ds not in self.class_embeddings:
                continue
            classes, emb = self.class_embeddings[ds]
            index: dict[str, int] = {}
            for i, cls in enumerate(classes):
                index.setdefault(label_key(cls), i)
                for name in table.names(ds, cls, "en"):
                    index.setdefault(label_key(name), i)
            rows = [index.get(label_key(lab)) for lab in labels]
            if all(r is not None for r in rows):
                return emb[np.asarray(rows, dtype=np.int64)]
        return None


def read_defaults(model_dir: str | Path) -> ZeroShotDefaults | None:
    """The defaults stored in ``model_dir`` (None when it has none); ModelError when broken."""
    from safetensors.numpy import load_file

    from etp.eval.zero_shot import PromptOptions

    p = Path(model_dir) / DEFAULTS_FILE
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{p}: unreadable zero-shot defaults ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{p}: not an etp zero-shot defaults file (format != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{p}: unknown format_version {meta.get('format_version')!r}")
    try:
        v = meta["variant"]
        options = PromptOptions(
            ensemble=bool(v.get("ensemble", False)),
            synonyms=bool(v.get("synonyms", False)),
            languages=tuple(v.get("languages") or ("en",)),
            via_reports=bool(v.get("via_reports", False)),
        )
        classes = {ds: list(c["classes"]) for ds, c in (meta.get("class_embeddings") or {}).items()}
        stored: dict[str, tuple[list[str], np.ndarray]] = {}
        if classes:
            tensors = load_file(str(Path(model_dir) / EMBEDDINGS_FILE))
            for ds, names in classes.items():
                emb = np.asarray(tensors[ds], dtype=np.float32)
                if emb.ndim != 2 or emb.shape[0] != len(names):
                    raise ValueError(f"{ds}: shape {emb.shape} for {len(names)} classes")
                stored[ds] = (names, emb)
        return ZeroShotDefaults(
            variant=str(v["name"]), options=options, dataset=str(meta["dataset"]),
            table_sha256=str(meta["prompt_table_sha256"]), class_embeddings=stored,
            gallery=dict(meta.get("gallery") or {}),
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ModelError(f"{p}: invalid zero-shot defaults ({exc})") from None


def write_defaults(
    model: Any,
    variant: str,
    options: Any,
    datasets: Sequence[str],
    gallery_texts: Sequence[str] | None,
    gallery_info: dict[str, Any],
    table: Any = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Compute and write ``zero_shot.json`` (+ class embeddings) into a loaded model's directory.

    With ``options.via_reports`` every dataset's classes get their report prototypes over
    ``gallery_texts`` (:func:`etp.eval.zero_shot.report_prototypes`); the first dataset is the
    default of :meth:`LoadedModel.predict`.
    """
    from safetensors.numpy import save_file

    from etp.eval.zero_shot import (
        ReportGallery, build_prompts, class_text_embeddings, load_prompt_table, report_prototypes,
    )
    from etp.io import atomic_path, atomic_write_json

    table = table if table is not None else load_prompt_table()
    embed = _cached(model.embed_texts, cache_dir)
    tensors: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    for ds in datasets:
        classes = table.classes(ds)
        prompts = build_prompts(classes, ds, table, options)
        if options.via_reports:
            if not gallery_texts:
                raise ConfigError(f"variant {variant!r} uses report prototypes: give reports")
            gallery = ReportGallery(gallery_texts, _cached(model.embed_texts_frozen, cache_dir))
            emb, counts = report_prototypes(prompts, gallery, embed)
        else:
            emb, counts = class_text_embeddings(prompts, embed), None
        tensors[ds] = np.ascontiguousarray(emb, dtype=np.float32)
        info[ds] = {"classes": classes, "report_counts": counts}
    out = Path(model.path)
    with atomic_path(out / EMBEDDINGS_FILE) as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": {
            "name": variant, "languages": list(options.languages), "synonyms": options.synonyms,
            "ensemble": options.ensemble, "via_reports": options.via_reports,
        },
        "dataset": datasets[0],
        "prompt_table_sha256": prompt_table_sha256(table),
        "gallery": gallery_info,
        "class_embeddings": info,
    }
    atomic_write_json(out / DEFAULTS_FILE, meta)
    return out / DEFAULTS_FILE


def _cached(fn: Callable[..., np.ndarray], cache_dir: str | Path | None) -> Callable[..., Any]:
    return lambda texts: fn(list(texts), cache_dir=cache_dir)


@dataclass
class ResolvedZeroShot:
    """Class embeddings for one zero-shot call and how they were obtained."""

    class_emb: np.ndarray
    prompts: dict[str, list[str]]
    description: str
    report_counts: dict[str, int] | None = None


def resolve_zero_shot(
    model: Any,
    labels: Sequence[str],
    dataset: str | None,
    table: Any,
    options: Any = None,
    reports: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> ResolvedZeroShot:
    """Class embeddings (C, D) of ``labels`` for a loaded model.

    ``options`` None means "the model's defaults" (the paper's prompt when it has none). With
    ``reports`` (a gallery of report texts) their embeddings are cached in ``cache_dir``
    (default :func:`user_cache_dir`).
    """
    from etp.eval.zero_shot import (
        PromptOptions, ReportGallery, build_prompts, class_text_embeddings, report_prototypes,
    )

    defaults = getattr(model, "zero_shot_defaults", None)
    explicit = options is not None
    if options is None:
        options = defaults.options if defaults is not None else PromptOptions()
        if reports is not None and not options.via_reports:
            options = dataclasses.replace(options, via_reports=True)
    prompts = build_prompts(list(labels), dataset, table, options)
    what = options.describe()
    if defaults is not None and not explicit:
        what = f"{what}; the model's default ({defaults.variant})"
    if options.via_reports and reports is not None:
        cache = Path(cache_dir) if cache_dir is not None else user_cache_dir()
        gallery = ReportGallery(list(reports), _cached(model.embed_texts_frozen, cache))
        emb, counts = report_prototypes(prompts, gallery, _cached(model.embed_texts, cache))
        return ResolvedZeroShot(emb, prompts, f"{what}; {len(reports)} reports given", counts)
    if options.via_reports and defaults is not None and options == defaults.options:
        stored = defaults.lookup(labels, dataset, table)
        if stored is not None:
            src = defaults.gallery.get("summary", "the model's report gallery")
            return ResolvedZeroShot(stored, prompts, f"{what}; class embeddings from {src}")
    if options.via_reports:
        plain = dataclasses.replace(options, via_reports=False)
        log.warning(
            "report prototypes need a report gallery: the model stores class embeddings only for "
            "the classes of %s, and no --reports FILE was given; using the prompts themselves "
            "(%s)", ", ".join(sorted(defaults.class_embeddings)) if defaults else "no dataset",
            plain.describe(),
        )
        prompts = build_prompts(list(labels), dataset, table, plain)
        what = plain.describe()
    emb = class_text_embeddings(prompts, model.embed_texts)
    return ResolvedZeroShot(emb, prompts, what)
