"""Benchmark: how well can report *text* alone be matched to the zero-shot class prompts?

Zero-shot ETP classifies an ECG by the class prompt nearest to its embedding; the ECG embedding
is trained to sit where its report's embedding sits. If an ECG were embedded exactly where its
report is, zero-shot accuracy would be that of matching the report to the prompts in the frozen
text model's space. This script measures that text-only ceiling on real PTB-XL reports, for the
report text as written, normalised (:func:`etp.data.text.normalize_report`) and translated to
English (:class:`etp.data.text.ReportTranslator`, the packaged glossary), with the packaged
prompt table (prompts go through the same text processing as the reports).

Records: reports of PTB-XL records with ``ecg_id >= 1000`` (no signals of those exist in this
project's sample data, so none is ever a test record of the benchmark), ``--n`` drawn at random
(seeded), kept when single-label (one diagnostic superclass) and non-empty. Labels are used only
to score. Metric: average over the 5 superclasses of the one-vs-rest AUC of
``softmax(scale * cosine)`` (``--scale``, default 30), accuracy and F1, as in paper Table 2.
Results go to ``benchmarks/results/text_ceiling.md``.

    python benchmarks/text_ceiling.py [--root ../shared/data/ptb-xl] [--n 4000] [--text-model minilm]
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "ptb-xl"))
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-id", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=30.0)
    ap.add_argument("--text-model", default="minilm")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "text_ceiling.md"))
    args = ap.parse_args(argv)

    from etp.data.text import ReportTranslator, load_glossary, normalize_report
    from etp.eval.metrics import zero_shot_metrics
    from etp.eval.zero_shot import PromptOptions, load_prompt_table, zero_shot_classify
    from etp.io import atomic_write_text
    from etp.text.cache import embed_texts
    from etp.text.encoder import TextEncoder

    root = Path(args.root)
    db = pd.read_csv(root / "ptbxl_database.csv")
    st = pd.read_csv(root / "scp_statements.csv", index_col=0)
    diag = st[st["diagnostic"] == 1]["diagnostic_class"].to_dict()
    db = db[db["ecg_id"] >= args.min_id]
    db = db.sample(min(args.n, len(db)), random_state=args.seed)
    labels = []
    for codes in db["scp_codes"]:
        found = {diag[k] for k in ast.literal_eval(codes) if k in diag}
        labels.append(found.pop() if len(found) == 1 else None)
    db = db.assign(label=labels)
    db = db[db["label"].notna() & (db["report"].fillna("").str.strip() != "")]
    y = db["label"].map(CLASSES.index).to_numpy()

    encoder = TextEncoder(args.text_model)
    translator = ReportTranslator(load_glossary())
    table = load_prompt_table()

    def embed(texts: list[str]) -> np.ndarray:
        unique, index = embed_texts(texts, encoder, None)
        return unique[index]

    processing = {
        "as written": lambda t: t,
        "normalised": normalize_report,
        "translated (builtin glossary)": translator,
    }
    variants = {
        "en (paper prompt)": PromptOptions(),
        "en synonyms": PromptOptions(synonyms=True),
        "en+de synonyms": PromptOptions(languages=("en", "de"), synonyms=True),
    }
    rows = []
    for pname, fn in processing.items():
        emb = embed([fn(r) for r in db["report"]])
        for vname, opts in variants.items():
            pred = zero_shot_classify(
                emb,
                CLASSES,
                lambda ts, fn=fn: embed([fn(t) for t in ts]),
                args.scale,
                "ptbxl",
                table,
                opts,
            )
            m = zero_shot_metrics(y, pred.probabilities, CLASSES, warn=False)["average"]
            rows.append((pname, vname, m["auc"], m["acc"], m["f1"]))
            print(f"{pname:32s} {vname:20s} AUC {100 * m['auc']:.1f}", flush=True)

    counts = ", ".join(f"{c} {int((y == i).sum())}" for i, c in enumerate(CLASSES))
    lines = [
        "# Text-only ceiling of zero-shot: reports matched to the class prompts",
        "",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  ",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Text model: {encoder.name} (frozen, {encoder.dim}-d); softmax scale {args.scale:g}  ",
        f"Records: {len(y)} single-label reports among {args.n} drawn (seed {args.seed}) from "
        f"PTB-XL records with ecg_id >= {args.min_id} ({counts}).",
        "",
        "Each report's own text embedding stands in for a perfectly trained ECG embedding; the",
        "numbers bound what zero-shot can reach with this text model and these prompts.",
        "",
        "| report text | prompts | avg AUC | avg accuracy | avg F1 |",
        "|---|---|---|---|---|",
        *(
            f"| {p} | {v} | {100 * a:.1f} | {100 * c:.1f} | {100 * f:.1f} |"
            for p, v, a, c, f in rows
        ),
        "",
    ]
    out = Path(args.out)
    atomic_write_text(out, "\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
