"""The benchmark's results.md (Tables 1-3 in the paper's layout, label fractions, prompt variants,
paired differences, retrieval) and its PNG plots."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from etp.benchmark.config import BenchmarkConfig
from etp.benchmark.runs import seeds_of
from etp.eval.aggregate import unflatten
from etp.eval.linear_probe import ProbeConfig
from etp.eval.protocol import EvalOutput


def _probe_line(section: ProbeConfig) -> str:
    """The results' one-line description of the probe protocol."""
    grid = f"weight decay (of {len(section.weight_decays)})"
    if section.solver == "lbfgs":
        where = (
            f"by {section.cv_folds}-fold cross-validated {section.select_by} over the training folds"
            if section.cross_validated
            else f"by validation {section.select_by}"
        )
        line = f"- linear probe: L-BFGS to convergence (L2-penalised cross-entropy), {grid} {where}"
    else:
        line = (
            f"- linear probe: Adam, batch {section.batch_size}, epoch and {grid} by validation "
            f"{section.select_by}"
        )
    if len(section.pooling) > 1:
        how = "by the same cross-validation" if section.cross_validated else "on validation"
        return line + (
            f"; encoder readout chosen {how} among {', '.join(section.pooling)} "
            "(avg: the 512-d average over time; avg+max: average and maximum, 1024-d)"
        )
    return line + f"; encoder readout {section.pooling[0]}"


def _stat_cells(stats: Mapping[str, Any]) -> dict[str, Any]:
    return unflatten(stats)


def render_markdown(
    cfg: BenchmarkConfig, results: Mapping[str, Any], meta: Mapping[str, Any], dataset: str
) -> str:
    """results.md: records used, Tables 1-3, label fractions, prompt variants, retrieval."""
    from etp.eval.report import (
        linear_probe_table,
        markdown_table,
        method_label,
        probe_per_class_table,
        retrieval_table,
        zero_shot_table,
    )

    lines = [f"# {cfg.name}", ""]
    lines += [
        f"- command: `{meta.get('command')}`",
        f"- date: {meta.get('date')}; git commit: {meta.get('git_commit')}; etp {meta.get('etp_version')}",
        f"- machine: {meta.get('machine', {}).get('cpu_model', '?')}, "
        f"{meta.get('machine', {}).get('cpu_count', '?')} cores; torch {meta.get('machine', {}).get('torch')}",
        f"- methods and seeds: {', '.join(f'{m} {seeds_of(cfg, m)}' for m in cfg.methods)}; "
        f"bootstrap resamples: {cfg.bootstrap}",
        f"- protocol: {'fold rotation (every fold the test fold once; the previous fold validates; out-of-fold test predictions pooled)' if cfg.rotate_folds else f'test fold {cfg.test_fold}, validation fold {cfg.val_fold}'}; "
        f"pretrained model: {'the last epoch' if cfg.model_choice == 'last' else 'the epoch with the lowest validation loss'}; probe and prompt choices on validation only"
        + (
            " (the probe's decay and readout by cross-validation inside the training folds)"
            if cfg.probe.cross_validated
            else ""
        ),
        _probe_line(cfg.probe),
        f"- wall time: {results.get('seconds', {}).get('total', 0) / 60:.1f} min",
        "",
        "## Records used",
        "",
    ]
    views = results.get(dataset, {}).get("views") or {}
    if views:
        lines.insert(
            lines.index("## Records used") - 1,
            "- test-time views: "
            + "; ".join(f"{method_label(m)} {', '.join(v)}" for m, v in views.items())
            + " (NxF: each ECG averaged over N evenly spaced crops of a fraction F of the record, "
            "stretched back to its length as the crop augmentation shows ECGs in training; "
            "1: the record as it is)",
        )
    for name, r in results["records_used"].items():
        lines.append(
            f"- **{name}**: {r['records']} records in the cache ({r['single_label']} single-label: "
            f"{', '.join(f'{k} {v}' for k, v in r['single_label_per_class'].items())}); "
            f"listed by the source: {r['listed']}, without signal files here: "
            f"{r['missing_from_download']}; ids {r['first_ids'][0]}…{r['last_ids'][-1]}; "
            f"folds {r['folds'] or 'none (split column)'}; {r['fs']:g} Hz × {r['length']} samples; "
            f"cache fingerprint `{r['fingerprint'][:12]}`"
        )
    lines += [
        "",
        "Cells: mean ± std over seeds [bootstrap 95 % CI of the seed mean, records resampled "
        "within each class, so every resample keeps each class's count of test records], in "
        "percent; the paper's numbers beside ours. A per-class CI is n/e (not estimable) where "
        f"the class has fewer than {cfg.min_class_records_for_ci} test records.",
        "",
    ]
    datasets = [dataset] + list(cfg.transfer)
    full = str(max(cfg.probe.label_fractions)) if cfg.probe.label_fractions else None
    if full is not None:
        table1: dict[str, dict[str, Any]] = {}
        for method in cfg.methods:
            for ds in datasets:
                lp = results.get(ds, {}).get("linear_probe", {}).get(method, {}).get(full)
                if lp is None:
                    continue
                table1.setdefault(method, {})[ds] = _stat_cells(lp["stats"])
        lines += [
            f"## Table 1 — linear probe ({float(full) * 100:g} % of the training labels)",
            "",
            linear_probe_table(table1, datasets=tuple(datasets)),
            "",
        ]
        lines += _clean_table1(cfg, results, dataset, full)
        fracs = [str(f) for f in cfg.probe.label_fractions]
        for ds in datasets:
            lp_all = results.get(ds, {}).get("linear_probe", {})
            per_class = {m: _stat_cells(v[full]["stats"]) for m, v in lp_all.items() if full in v}
            if per_class:
                lines += [
                    f"### Linear probe per class — {ds} ({float(full) * 100:g} % of the labels)",
                    "",
                    probe_per_class_table(per_class),
                    "",
                ]
            if len(fracs) > 1 and lp_all:
                sizes = _fraction_sizes(results.get(ds, {}).get("selection", {}), fracs)
                header = ["Method"] + [f"{float(f) * 100:g} % AUC" for f in fracs] + [
                    f"{float(f) * 100:g} % F1" for f in fracs
                ]
                rows = []
                for method, per_frac in lp_all.items():
                    cells = [
                        _stat_cells(per_frac[f]["stats"]).get(metric) if f in per_frac else None
                        for metric in ("auc", "f1")
                        for f in fracs
                    ]
                    rows.append([method_label(method)] + [_fmt(c) for c in cells])
                lines += [
                    f"### Linear probe by label fraction — {ds}", "", markdown_table(header, rows), ""
                ]
                if sizes:
                    lines += [
                        "Training records per probe fit: "
                        + "; ".join(f"{float(f) * 100:g} %: {sizes[f]}" for f in fracs if f in sizes)
                        + "."
                        + _same_draw_note(sizes, fracs),
                        "",
                    ]
            if len(cfg.probe.pooling) > 1 and lp_all and full is not None:
                counts = _readout_counts(results.get(ds, {}).get("selection", {}), str(full))
                if counts:
                    lines += [
                        "Encoder readout chosen "
                        + (
                            "by cross-validation over the training records"
                            if cfg.probe.cross_validated
                            else "on validation"
                        )
                        + f" by the probe fits ({ds}, "
                        f"{float(full) * 100:g} % of the labels): "
                        + "; ".join(
                            f"{method_label(m)} "
                            + ", ".join(f"{k} {n}" for k, n in sorted(c.items()))
                            for m, c in counts.items()
                        )
                        + ".",
                        "",
                    ]
    lines += _comparison_lines(results, datasets)
    for ds, number in ((dataset, 2), *((t, 3) for t in cfg.transfer)):
        zs = results.get(ds, {}).get("zero_shot", {})
        if not zs:
            continue
        for variant, title in _zero_shot_tables(cfg):
            table = {
                method: _stat_cells(v[variant]["stats"]) for method, v in zs.items() if variant in v
            }
            if table:
                lines += [
                    f"## Table {number} — zero-shot, {ds}, {title} (`{variant}`)",
                    "",
                    zero_shot_table(ds, table, classes=None),
                    "",
                ]
        clean_zs = (results.get(ds, {}).get("clean") or {}).get("zero_shot", {})
        table = {m: _stat_cells(v["val-selected"]["stats"]) for m, v in clean_zs.items()
                 if "val-selected" in v}
        if table:
            lines += [
                f"## Table {number}, clean folds only (records no development choice has seen) "
                f"— zero-shot, {ds}, prompt variant chosen on each rotation's validation fold",
                "",
                f"Pooled over {_clean_note(cfg, results, ds)}.",
                "",
                zero_shot_table(ds, table, classes=None),
                "",
            ]
        header = ["Method", "Variant", "val avg AUC (mean over rotations)", "test avg AUC", "test avg ACC", "test avg F1"]
        rows = []
        for method, v in zs.items():
            for variant, r in v.items():
                st = _stat_cells(r["stats"]).get("average", {})
                rows.append(
                    [
                        method_label(method),
                        _variant_label(cfg, variant),
                        _fmt(r.get("val_auc_mean")) if variant != "val-selected" else "(chosen per rotation)",
                        _fmt(st.get("auc")),
                        _fmt(st.get("acc")),
                        _fmt(st.get("f1")),
                    ]
                )
        lines += [f"### Zero-shot prompt variants — {ds}", "", markdown_table(header, rows), ""]
        for method, v in zs.items():
            chosen = v.get("val-selected", {}).get("chosen")
            if chosen:
                lines.append(f"- {method_label(method)}: variants chosen on validation per rotation/seed: {chosen}")
        lines.append("")
    ret = results.get(dataset, {}).get("retrieval", {})
    if ret:
        table = {m: unflatten(v) for m, v in ret.items()}
        lines += [
            f"## Retrieval — {dataset} test folds (distinct reports as the gallery; mean ± std over rotations and seeds)",
            "",
            retrieval_table(table),
            "",
        ]
    return "\n".join(lines) + "\n"


def _clean_note(cfg: BenchmarkConfig, results: Mapping[str, Any], dataset: str) -> str:
    """Which test folds are clean (no development choice has scored their records)."""
    clean = results.get(dataset, {}).get("clean_test_folds")
    if not cfg.dev_folds:
        return "no development folds declared (dev_folds: []): the figures over all test folds"
    if not clean:
        return f"no clean test fold: every test fold is in dev_folds {sorted(cfg.dev_folds)}"
    return (
        f"test folds {clean} (dev_folds {sorted(cfg.dev_folds)}, on which development choices "
        "were scored or validated, left out)"
    )


def _clean_table1(
    cfg: BenchmarkConfig, results: Mapping[str, Any], dataset: str, full: str
) -> list[str]:
    """Table 1 over the clean test folds only (records no development choice has seen)."""
    from etp.eval.report import linear_probe_table

    pooled = results.get(dataset, {})
    clean = pooled.get("clean")
    folds = pooled.get("clean_test_folds")
    title = f"### Table 1, clean folds only (records no development choice has seen) — {dataset}"
    if clean is None:
        if cfg.dev_folds and folds:  # every test fold is clean: the table above is the clean one
            return [title, "", f"Every test fold is clean ({_clean_note(cfg, results, dataset)}): "
                    "Table 1 above is the clean table.", ""]
        return [title, "", _clean_note(cfg, results, dataset) + ".", ""] if cfg.dev_folds else []
    table = {
        method: {dataset: _stat_cells(per_frac[full]["stats"])}
        for method, per_frac in clean.get("linear_probe", {}).items()
        if full in per_frac
    }
    return [
        title,
        "",
        f"Pooled over {_clean_note(cfg, results, dataset)}; {clean.get('n_test')} test records.",
        "",
        linear_probe_table(table, datasets=(dataset,)),
        "",
    ]


def _file_part(name: str) -> str:
    """``name`` as part of a file name: runs of other characters than [A-Za-z0-9.+-] -> ``_``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name)


def _zero_shot_tables(cfg: BenchmarkConfig) -> list[tuple[str, str]]:
    """(variant, title) of the zero-shot tables: the paper's prompt, the shipped variant, the
    per-rotation validation choice."""
    first = cfg.zero_shot[0].name if cfg.zero_shot else "en"
    out = [(NESTED, NESTED_TITLE), (first, "the paper's prompt (fixed)")]
    if cfg.zero_shot_default and cfg.zero_shot_default != first:
        out.append((cfg.zero_shot_default, f"shipped prompt variant {FIXED_NOTE}"))
    return out


#: the headline zero-shot figures: the variant chosen on each rotation's own validation fold
NESTED = "val-selected"
NESTED_TITLE = (
    "headline: prompt variant chosen on each rotation's validation fold only (nested)"
)
#: the label of a variant fixed for every rotation by a choice over every validation fold
FIXED_NOTE = "(fixed; chosen on all rotations' validation folds)"


def _variant_label(cfg: BenchmarkConfig, variant: str) -> str:
    """A variant's name in the tables: the nested choice and the fixed shipped one said so."""
    if variant == NESTED:
        return f"{NESTED} (nested headline: chosen per rotation on its validation fold)"
    if variant == cfg.zero_shot_default:
        return f"{variant} {FIXED_NOTE}"
    return variant


def _fraction_sizes(
    selection: Mapping[str, Mapping[str, list[Any]]], fracs: Sequence[str]
) -> dict[str, str]:
    """Label fraction -> training records per probe fit ("8" or "8-11" over rotations/seeds)."""
    out: dict[str, str] = {}
    for f in fracs:
        n = sorted(
            {
                int(sel["n_train"])
                for per_frac in selection.values()
                for sel in per_frac.get(f, [])
                if isinstance(sel, Mapping) and "n_train" in sel
            }
        )
        if n:
            out[f] = str(n[0]) if n[0] == n[-1] else f"{n[0]}–{n[-1]}"
    return out


def _readout_counts(
    selection: Mapping[str, Mapping[str, list[Any]]], frac: str
) -> dict[str, dict[str, int]]:
    """Method -> {readout: how many probe fits (rotations x seeds) chose it} at ``frac``."""
    out: dict[str, dict[str, int]] = {}
    for method, per_frac in selection.items():
        for sel in per_frac.get(frac, []):
            if isinstance(sel, Mapping) and sel.get("readout"):
                counts = out.setdefault(method, {})
                counts[sel["readout"]] = counts.get(sel["readout"], 0) + 1
    return out


def _same_draw_note(sizes: Mapping[str, str], fracs: Sequence[str]) -> str:
    """A warning when two fractions train on equally many records (every class keeps >= 1)."""
    seen: dict[str, str] = {}
    same = []
    for f in fracs:
        if f in sizes and sizes[f] in seen.values():
            first = next(k for k, v in seen.items() if v == sizes[f])
            same.append(f"{float(first) * 100:g} % and {float(f) * 100:g} %")
        seen[f] = sizes.get(f, "")
    if not same:
        return ""
    return (
        f" {', '.join(same)} draw equally many records here (each class keeps at least one), "
        "so their rows can coincide on this little data."
    )


def _comparison_lines(results: Mapping[str, Any], datasets: Sequence[str]) -> list[str]:
    """The 'ETP against the baselines' table: paired differences with their CIs."""
    from etp.eval.report import markdown_table, method_label

    rows = []
    sources = [(ds, results.get(ds, {})) for ds in datasets]
    for ds in datasets:
        clean = results.get(ds, {}).get("clean")
        if clean:
            sources.append((f"{ds}, clean folds {results[ds].get('clean_test_folds')}", clean))
    for ds, pooled in sources:
        for method, cmp in (pooled.get("comparisons") or {}).items():
            for task, label, keys in (
                ("linear_probe", "linear probe", ("auc", "f1")),
                ("zero_shot", "zero-shot (nested: variant chosen per rotation on its validation fold)",
                 ("average.auc", "average.f1")),
            ):
                if task not in cmp:
                    continue
                cells = []
                for k in keys:
                    d = cmp[task][k]
                    ci = d.get("ci")
                    cells.append(
                        f"{100 * d['diff']:+.1f}"
                        + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
                    )
                rows.append([ds, label, f"{TUNED} − {method_label(method)}", *cells])
    if not rows:
        return []
    return [
        f"### {TUNED} against the baselines — paired differences",
        "",
        f"Seed-mean metric of {TUNED} (method `etp`) minus the baseline's, in points, with a "
        "paired bootstrap 95 % CI (the same resampled records for both methods, resampled within "
        "each class). A CI above zero means it is better on these records beyond resampling "
        "noise; two separate CIs may overlap even then.",
        "",
        markdown_table(["Dataset", "Task", "Comparison", "AUC difference", "F1 difference"], rows),
        "",
    ]


#: the ETP of the paired differences: method ``etp``, this project's recipe
TUNED = "ETP (tuned recipe)"


def _fmt(value: Any) -> str:
    from etp.eval.report import format_stat

    return format_stat(value)


def write_plots(
    cfg: BenchmarkConfig,
    outputs: Mapping[str, Mapping[int, list[EvalOutput]]],
    results: Mapping[str, Any],
    internals: Mapping[str, Any],
    classes: list[str],
    dataset: str,
    out_dir: Path,
) -> None:
    from etp.eval.plots import plot_embedding_map, plot_roc_curves, plot_vs_paper
    from etp.eval.report import PAPER_ZERO_SHOT

    pooled = results[dataset]
    y = internals.get("y")
    for method, probs in (internals.get("_probs") or {}).items():
        if probs.get("zs") is not None:
            plot_roc_curves(
                y, probs["zs"], classes, out_dir / f"roc_zero_shot_{method}.png",
                title=f"{method}: zero-shot ROC, pooled test folds",
            )
        if probs.get("probe") is not None:
            plot_roc_curves(
                y, probs["probe"], classes, out_dir / f"roc_linear_probe_{method}.png",
                title=f"{method}: linear-probe ROC, pooled test folds",
            )
    zs = pooled.get("zero_shot", {}).get("etp", {})
    paper = PAPER_ZERO_SHOT.get(dataset, {})
    for variant, _ in _zero_shot_tables(cfg):
        if variant in zs and paper:
            st = unflatten(zs[variant]["stats"])
            ours = {c: 100 * st["per_class"][c]["auc"]["mean"] for c in classes if c in st["per_class"]}
            ours["Average"] = 100 * st["average"]["auc"]["mean"]
            ref = {c: paper[c]["ETP"]["auc"] for c in paper}
            plot_vs_paper(
                ours, ref, out_dir / f"zero_shot_vs_paper_{_file_part(variant)}.png",
                title=f"{dataset} zero-shot AUC: etp ({variant}) vs. paper",
            )
    etp_runs = outputs.get("etp", {})
    if etp_runs:
        first = etp_runs[min(etp_runs)][-1]
        if first.test_emb is not None:
            plot_embedding_map(
                first.test_emb, first.test_y, classes, out_dir / "embedding_map_etp.png",
                method=cfg.embedding_map,
                title=f"etp: test-fold ECG embeddings ({cfg.embedding_map.upper()})",
            )
