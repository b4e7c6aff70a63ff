"""Summary of the development runs: one row per pretraining setting, averaged over its seeds.

Reads ``benchmarks/results/dev_rotations.jsonl`` (written by ``benchmarks/dev_rotations.py``) and
writes ``benchmarks/results/dev_rotations.md``. Runs are grouped by their overrides without
``train.seed``, their test-time views and ``--pretrain-on-val``; for a setting run more than
once with the same seed the latest line counts. Only runs scored with test-time views (the
protocol since they were introduced) are listed; earlier lines stay in the JSONL file.

    python benchmarks/dev_summary.py
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the pretraining overrides of the shipped ETP setting (configs/benchmark-ptbxl.yaml)
SHIPPED = frozenset(
    {"train.etp_augment=true", "model.report_translation=builtin", "train.ema_decay=0.95"}
)
#: (column title, JSONL key, index of the AUC in the key's list)
COLUMNS = (
    ("zero-shot AUC (en+de syn)", "zs en+de syn", 0),
    ("zero-shot F1 (en+de syn)", "zs en+de syn", 2),
    ("probe AUC (lp loss)", "lp loss", 0),
    ("probe AUC (lp shipped)", "lp shipped", 0),
)


def _setting(record: dict) -> tuple[frozenset[str], str, bool]:
    overrides = frozenset(o for o in record.get("overrides", []) if not o.startswith("train.seed="))
    return overrides, str(record.get("views")), bool(record.get("pretrain_on_val"))


def _seed(record: dict) -> int:
    for o in record.get("overrides", []):
        if o.startswith("train.seed="):
            return int(o.split("=", 1)[1])
    return 0


def summarise(lines: list[dict]) -> list[dict]:
    """One row per setting: its seeds and the mean of each column over them (latest line per
    seed), sorted by the zero-shot mean."""
    latest: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for record in lines:
        if record.get("views") is None:
            continue
        latest[_setting(record)][_seed(record)] = record  # later lines replace earlier ones
    rows = []
    for (overrides, views, on_val), by_seed in latest.items():
        seeds = sorted(by_seed)
        given = dict(o.split("=", 1) for o in overrides)
        shipped = dict(o.split("=", 1) for o in SHIPPED)
        row: dict = {
            "changed": sorted(f"{k}={v}" for k, v in given.items() if shipped.get(k) != v),
            "dropped": sorted(f"{k}={v}" for k, v in shipped.items() if k not in given),
            "shipped": overrides == SHIPPED and views == "3x0.75" and not on_val,
            "views": views,
            "pretrain_on_val": on_val,
            "seeds": seeds,
            "names": [by_seed[s]["name"] for s in seeds],
        }
        for title, key, i in COLUMNS:
            values = [by_seed[s][key][i] for s in seeds if key in by_seed[s]]
            row[title] = (float(np.mean(values)), len(values)) if values else None
        rows.append(row)
    rows.sort(key=lambda r: -(r[COLUMNS[0][0]] or (0.0, 0))[0])
    return rows


def to_markdown(rows: list[dict], source: str, left_out: int = 0) -> str:
    head = [
        "# Development runs: pretraining settings, averaged over seeds",
        "",
        f"Written by `python benchmarks/dev_summary.py` from `{source}` (one line per run of "
        "`python benchmarks/dev_rotations.py NAME key=value ...`: three rotations inside PTB-XL "
        "folds 1-9, test folds 9/8/7, validation folds 8/7/6, fold 10 never read; 258 pooled "
        "single-label test records). Each cell is the mean over the setting's seeds (n: how many "
        "runs had that column; older runs lack `lp shipped`). Settings are listed by how they "
        "differ from the shipped ETP setting (" + ", ".join(f"`{o}`" for o in sorted(SHIPPED))
        + "; the paper's schedule otherwise): a changed or added override, or one left out "
        "(\"without\"). The row marked **shipped** is what the benchmark config ships. Its "
        "three seeds spread by about 1 point on each AUC column, so a one-seed difference "
        "smaller than that is noise."
        + (f" Left out: {left_out} earlier runs scored without test-time views." * bool(left_out)),
        "",
        "| setting | views | seeds | " + " | ".join(t for t, _, _ in COLUMNS) + " | runs |",
        "|---|---|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    body = []
    for r in rows:
        if r["shipped"]:
            name = "**shipped**"
        else:
            parts = [f"`{o}`" for o in r["changed"]] + [f"without `{o}`" for o in r["dropped"]]
            name = "shipped, " + ", ".join(parts) if parts else "shipped"
        if r["pretrain_on_val"]:
            name += " (pretrained on the validation fold too)"
        cells = []
        for title, _, _ in COLUMNS:
            v = r[title]
            note = f" (n={v[1]})" if v is not None and v[1] != len(r["seeds"]) else ""
            cells.append("–" if v is None else f"{v[0]:.1f}{note}")
        seeds = ",".join(str(s) for s in r["seeds"])
        runs = ", ".join(r["names"])
        body.append(f"| {name} | {r['views']} | {seeds} | " + " | ".join(cells) + f" | {runs} |")
    return "\n".join(head + body) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    results = REPO / "benchmarks" / "results"
    ap.add_argument("--jsonl", default=str(results / "dev_rotations.jsonl"))
    ap.add_argument("--out", default=str(results / "dev_rotations.md"))
    args = ap.parse_args(argv)
    src = Path(args.jsonl)
    if not src.is_file():
        ap.error(f"--jsonl: no such file {src} (benchmarks/dev_rotations.py writes it)")
    lines = []
    for number, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as exc:
                ap.error(f"{src}, line {number}: not a JSON record ({exc.msg})")
    from etp.io import atomic_write_text

    where = src.relative_to(REPO).as_posix() if src.is_relative_to(REPO) else str(src)
    left_out = sum(1 for record in lines if record.get("views") is None)
    text = to_markdown(summarise(lines), where, left_out)
    atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
