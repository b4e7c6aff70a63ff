"""Evaluation-side choices scored on validation folds only, with the benchmark's saved models.

The models of ``etp benchmark --config configs/benchmark-ptbxl.yaml`` (one per method, seed and
rotation, under its ``work_dir``) are reused (random-init models, which are only seeded
initialisations, are made as the benchmark makes them when missing); nothing is pretrained and no
rotation's test fold is read: every figure comes from the rotations' *validation* folds, pooled
over rotations. Only validation folds declared in the config's ``dev_folds`` are scored (by
default all of them; ``--val-folds`` picks some): any other fold is a clean test fold of the
benchmark and is refused with one error line.

``probe``: linear-probe settings. The probe chooses its epoch and weight decay on validation, so
scoring it on the same records would flatter the more flexible setting; each validation fold is
therefore cross-fitted: split in two stratified halves, the probe selects on one half and is
scored on the other, and the other way round. Candidates: ``solvers`` (``adam``: the minibatch
probe; ``lbfgs``: converged L-BFGS probes, decay chosen on validation; ``lbfgs-cvK``: decay chosen
by K-fold cross-validation over the training folds, the selection half unused) and ``pooling`` (the encoder readout the probe reads: ``avg`` 512-d, ``avg+max`` 1024-d,
:data:`etp.models.resnet1d.POOLINGS`; ``avg|avg+max``: the probe chooses on validation), every
combination.

``zero-shot``: label-free ways of scoring ECGs against classes, which need no cross-fitting since
they choose nothing on labels: every prompt variant of the config (report prototypes included;
with ``--more`` a few more report-prototype variants), and two alternatives kept out of the
library because they did not help here:

* ``prior``: class biases fitted so the average prediction over the training folds' (unlabelled)
  ECGs matches the class frequencies the frozen text model gives the training reports;
* ``report vote``: an ECG's class distribution is the mix of the text-only class distributions of
  the training reports, weighted by the ECG's softmax similarity to each report.

With ``--more``, two more label-free alternatives for every report-prototype variant (``via
reports``), not in the library either:

* ``ECG prototypes``: each class is the mean ECG embedding of the training records whose reports
  the frozen text model assigns to it (the same assignment as the report prototypes), so test
  ECGs are compared with ECGs instead of with text;
* ``text+ECG prototypes``: the renormalised sum of a class's report prototype and ECG prototype.

One markdown file per part is written to ``benchmarks/results/`` with the command, date and
machine.

    python benchmarks/dev_validation.py probe --methods etp --pooling "avg,avg+max,avg|avg+max"
    python benchmarks/dev_validation.py probe --methods etp,random --solvers adam,lbfgs,lbfgs-cv3,lbfgs-cv5 --pooling "avg|avg+max"
    python benchmarks/dev_validation.py zero-shot --more
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: more report-prototype variants for ``zero-shot --more`` (languages, synonyms, ensemble)
MORE_VARIANTS = (
    ("en synonyms via reports", ("en",), True, False),
    ("en+de synonyms ensemble via reports", ("en", "de"), True, True),
    ("en+de+sv synonyms via reports", ("en", "de", "sv"), True, False),
    ("de synonyms via reports", ("de",), True, False),
)


def _checked(config: str, val_folds: str) -> tuple[Any, set[int]]:
    """The benchmark config and the validation folds to score: ``--val-folds`` (each one a
    declared development fold of the config, else one error line) or the config's dev_folds."""
    from etp.benchmark import check_dev_folds, load_benchmark_config
    from etp.errors import EtpError

    try:
        cfg = load_benchmark_config(config)
        folds = {int(f) for f in val_folds.split(",")} if val_folds else set(cfg.dev_folds)
        if not folds:
            raise EtpError(f"{config} declares no dev_folds: no fold may be scored here")
        check_dev_folds(cfg, sorted(folds), "--val-folds: validation fold(s)", config)
    except (EtpError, ValueError) as exc:
        raise SystemExit(f"dev_validation.py: error: {exc}") from None
    return cfg, folds


def _setup(config: str, val_folds: str) -> tuple[Any, Any, list[Any], list[str], Path]:
    """Config, prepared data, the rotations validated on a development fold, classes, work."""
    from etp.benchmark import prepare, rotations

    cfg, folds = _checked(config, val_folds)
    prepared, _ = prepare(cfg.prepare)
    rots = rotations(cfg, prepared.meta["fold"].astype(int).unique().tolist())
    rots = [r for r in rots if r.val in folds]
    return cfg, prepared, rots, list(prepared.classes), Path(cfg.work_dir)


def _halves(y: np.ndarray, seed: int) -> np.ndarray:
    """A stratified random half of ``y`` (boolean mask)."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(y), bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        half[members[: len(members) // 2]] = True
    return half


def probe_part(args: argparse.Namespace) -> list[str]:
    """Cross-fitted validation AUC / F1 of the probe for each (pooling, solver) candidate."""
    import itertools

    from etp.benchmark import obtain_model
    from etp.eval.features import extract
    from etp.eval.linear_probe import select_readout
    from etp.eval.metrics import classification_metrics
    from etp.eval.protocol import fold_split
    from etp.models.etp import load_model_dir

    cfg, prepared, rots, classes, work = _setup(args.config, args.val_folds)
    fits = []  # (solver label, {probe section overrides})
    for solver in args.solvers.split(","):
        if solver == "adam":
            fits.append(("adam", {"solver": "adam", "cv_folds": 0}))
        elif solver == "lbfgs":
            fits.append(("lbfgs, val", {"solver": "lbfgs", "cv_folds": 0}))
        elif solver.startswith("lbfgs-cv") and solver[8:].isdigit():
            k = int(solver[8:])
            fits.append((f"lbfgs, {k}-fold CV", {"solver": "lbfgs", "cv_folds": k}))
        else:
            raise SystemExit(f"--solvers: unknown {solver!r} (adam, lbfgs, lbfgs-cvK)")
    candidates = list(itertools.product(args.pooling.split(","), fits))
    readouts = list(dict.fromkeys(r for c, _ in candidates for r in c.split("|")))
    rows = []
    for method in args.methods.split(","):
        for seed in cfg.seeds:
            pooled: dict[tuple[str, str], tuple[list[np.ndarray], list[np.ndarray]]] = {}
            for rot in rots:
                # a random-init model is only an initialisation: made when missing, never trained
                built = obtain_model(cfg, method, seed, rot, prepared, work, build=method == "random")
                model = load_model_dir(built)
                split = fold_split(prepared, rot.train, rot.val, rot.test)
                parts = {"train": split.train, "val": split.val}
                y = {s: prepared.label_index(i) for s, i in parts.items()}
                half = _halves(y["val"], rot.test)
                f = {
                    r: {
                        s: extract(model, prepared, i, "features", bf16=True,
                                   cache_dir=work / "features", pooling=r)
                        for s, i in parts.items()
                    }
                    for r in readouts
                }
                for cand, (label, over) in candidates:
                    section = dataclasses.replace(cfg.probe, **over)
                    fit = None
                    for sel in (half, ~half):
                        # a fit chosen by cross-validation never read its selection half: reuse it
                        if fit is None or fit[1].selection.selected_on != "cv":
                            fit = select_readout(
                                classes,
                                section,
                                {r: (f[r]["train"], f[r]["val"][sel]) for r in cand.split("|")},
                                y["train"],
                                y["val"][sel],
                                label_fraction=1.0,
                                seed=seed,
                            )
                        chosen, probe = fit
                        ys, ps = pooled.setdefault((cand, label), ([], []))
                        ys.append(y["val"][~sel])
                        ps.append(probe.predict_proba(f[chosen]["val"][~sel]))
            for cand, (label, _) in candidates:
                ys, ps = pooled[(cand, label)]
                m = classification_metrics(np.concatenate(ys), np.concatenate(ps), classes, warn=False)
                rows.append([method, str(seed), cand.replace("|", " or "), label,
                             f"{100 * m['auc']:.1f}", f"{100 * m['f1']:.1f}"])
                print(" | ".join(rows[-1]), flush=True)
    lines = [
        "Cross-fitted validation (each rotation's validation fold split in two stratified halves; "
        "the probe selects on one and is scored on the other, both ways), pooled over rotations. "
        "pooling `a or b`: the probe chooses the readout on its selection half "
        "(etp.eval.linear_probe.select_readout), as the benchmark does with `probe.pooling: [a, b]`. "
        "probe `adam`: the Adam probe, epoch and decay chosen on the selection half; "
        "`lbfgs, val`: converged L-BFGS probes, decay chosen on the selection half; `lbfgs, k-fold "
        "CV`: decay (and readout) chosen by k-fold cross-validation over the training folds, so "
        "the selection half is not used (etp.eval.linear_probe.ProbeConfig solver / cv_folds).",
        "",
        "| method | seed | pooling | probe | val AUC | val F1 |",
        "|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]
    return lines


def _normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def _prior_biases(logits: np.ndarray, prior: np.ndarray, iters: int = 200) -> np.ndarray:
    """Class biases that make the mean softmax of ``logits`` (unlabelled ECGs) equal ``prior``."""
    b = np.zeros(logits.shape[1])
    for _ in range(iters):
        b += np.log(prior / np.maximum(_softmax(logits + b).mean(axis=0), 1e-12))
    return b


def zero_shot_part(args: argparse.Namespace) -> list[str]:
    """Validation average AUC / F1 of each variant and of the two alternatives (ETP models)."""
    from etp.benchmark import obtain_model
    from etp.eval.features import extract
    from etp.eval.metrics import zero_shot_metrics
    from etp.eval.protocol import fold_split, training_reports
    from etp.eval.zero_shot import (
        PromptOptions,
        ReportGallery,
        build_prompts,
        class_text_embeddings,
        load_prompt_table,
        report_prototypes,
    )
    from etp.models.etp import load_model_dir

    cfg, prepared, rots, classes, work = _setup(args.config, args.val_folds)
    if args.more:
        known = {v.name for v in cfg.zero_shot}
        cfg.zero_shot += [
            PromptOptions(name=n, languages=list(lang), synonyms=syn, ensemble=ens, via_reports=True)
            for n, lang, syn, ens in MORE_VARIANTS
            if n not in known
        ]
    table = load_prompt_table(cfg.prompts)
    dataset = str(prepared.info.get("dataset"))
    folds = {r.val for r in rots}
    pooled: dict[tuple[int, str], tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for seed in cfg.seeds:
        for rot in rots:
            model = load_model_dir(obtain_model(cfg, "etp", seed, rot, prepared, work, build=False))
            split = fold_split(prepared, rot.train, rot.val, rot.test)
            y_val = prepared.label_index(split.val)
            ecg = {
                "val": _normalize(extract(model, prepared, split.val, "embedding", bf16=True,
                                          cache_dir=work / "features")),
                "train": _normalize(extract(model, prepared, prepared.select(folds=rot.train),
                                            "embedding", bf16=True, cache_dir=work / "features")),
            }
            text_cache = work / "text"

            def embed(ts: list[str], m: Any = model) -> np.ndarray:
                return m.embed_texts(ts, cache_dir=text_cache)

            def frozen(ts: list[str], m: Any = model) -> np.ndarray:
                return m.embed_texts_frozen(ts, cache_dir=text_cache)

            reports = training_reports(prepared, split)
            # the training ECGs whose reports are the gallery (same order: empty reports dropped)
            has_report = np.array(
                [bool(str(r).strip()) for r in prepared.reports(prepared.select(folds=rot.train))]
            )
            gallery = ReportGallery(texts=reports, embed_frozen=frozen)
            joint, text_frozen = _normalize(embed(reports)), _normalize(frozen(reports))
            scale = float(model.model.scale().detach())
            for v in cfg.zero_shot:
                prompts = build_prompts(classes, dataset, table, v)
                protos, counts = report_prototypes(prompts, gallery, embed)
                class_emb = protos if v.via_reports else class_text_embeddings(prompts, embed)
                logits = scale * ecg["val"] @ class_emb.T
                out = {v.name: _softmax(logits)}
                if not v.via_reports:
                    prior = np.array([counts[c] for c in classes], float) + 1.0
                    b = _prior_biases(scale * ecg["train"] @ class_emb.T, prior / prior.sum())
                    out[f"{v.name}, prior"] = _softmax(logits + b)
                    text_probs = _softmax(
                        30.0 * text_frozen @ class_text_embeddings(prompts, frozen).T
                    )
                    out[f"{v.name}, report vote"] = _softmax(scale * ecg["val"] @ joint.T) @ text_probs
                if v.via_reports and args.more:
                    assigned = (text_frozen @ class_text_embeddings(prompts, frozen).T).argmax(1)
                    ecg_with_report = ecg["train"][has_report]
                    ecg_protos = np.stack(
                        [
                            ecg_with_report[assigned == c].mean(axis=0)
                            if (assigned == c).any() else class_emb[c]
                            for c in range(len(classes))
                        ]
                    )
                    for name, emb in (
                        ("ECG prototypes", _normalize(ecg_protos)),
                        ("text+ECG prototypes", _normalize(_normalize(ecg_protos) + class_emb)),
                    ):
                        out[f"{v.name}, {name}"] = _softmax(scale * ecg["val"] @ emb.T)
                for name, p in out.items():
                    ys, ps = pooled.setdefault((seed, name), ([], []))
                    ys.append(y_val)
                    ps.append(p)
        print(f"seed {seed} done", flush=True)
    names = list(dict.fromkeys(n for _, n in pooled))
    lines = [
        "Validation folds "
        + (f"{sorted(folds)}" if folds else "of every rotation")
        + ", pooled over rotations; ETP models, per seed: average one-vs-rest AUC / F1.",
        "",
        "| variant | " + " | ".join(f"seed {s} AUC / F1" for s in cfg.seeds) + " | mean AUC / F1 |",
        "|---|" + "---|" * (len(cfg.seeds) + 1),
    ]
    for name in names:
        cells, aucs, f1s = [], [], []
        for seed in cfg.seeds:
            ys, ps = pooled[(seed, name)]
            m = zero_shot_metrics(np.concatenate(ys), np.concatenate(ps), classes, warn=False)
            aucs.append(100 * m["average"]["auc"])
            f1s.append(100 * m["average"]["f1"])
            cells.append(f"{aucs[-1]:.1f} / {f1s[-1]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(aucs):.1f} / {np.mean(f1s):.1f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("probe", "zero-shot"))
    ap.add_argument("--config", default="configs/benchmark-ptbxl.yaml", help="benchmark config")
    ap.add_argument("--methods", default="etp", help="probe: comma-separated methods")
    ap.add_argument(
        "--solvers", default="adam",
        help="probe: comma-separated fits: adam, lbfgs (decay on validation), "
        "lbfgs-cvK (decay by K-fold CV over the training folds)",
    )
    ap.add_argument(
        "--pooling", default="avg", help="probe: comma-separated readout candidates (avg, avg+max; a|b = chosen on validation)"
    )
    ap.add_argument(
        "--more", action="store_true", help="zero-shot: also score more report-prototype variants, and ECG prototypes for each"
    )
    ap.add_argument(
        "--val-folds",
        default="",
        help="only rotations validated on these folds (default: the config's dev_folds; any "
        "other fold is refused: it is a clean test fold of the benchmark)",
    )
    ap.add_argument("--out", default=None, help="markdown output (default benchmarks/results/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from etp.eval.report import machine_info

    _checked(args.config, args.val_folds)  # refused before any data is read
    t0 = time.perf_counter()
    lines = probe_part(args) if args.part == "probe" else zero_shot_part(args)
    m = machine_info()
    head = [
        f"# Validation-fold check: {args.part}",
        "",
        f"- command: `python benchmarks/dev_validation.py {shlex.join(sys.argv[1:] if argv is None else argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {m.get('cpu_model')}, {m.get('cpu_count')} cores; torch {m.get('torch')}",
        f"- models: the saved benchmark models of `{args.config}`; "
        f"wall time {(time.perf_counter() - t0) / 60:.1f} min",
        "- records: PTB-XL single-label records of the rotations' validation folds (test folds "
        "not read)",
        "",
    ]
    name = "dev_validation_probe.md" if args.part == "probe" else "dev_validation_zero_shot.md"
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / name
    from etp.io import atomic_write_text

    atomic_write_text(out, "\n".join(head + lines) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
