"""Does a benchmark rerun reproduce a committed one? Compare two ``results.json`` figure by figure.

``etp benchmark`` writes every figure of its tables (per seed, per class, means, standard
deviations, bootstrap intervals) to ``results.json``. This script walks the results of the
chosen methods in both files, pairs the numbers found at the same place (dataset / task /
method / ... / metric) and counts how many agree within ``--tol``; it lists the largest
differences and the places only one file has. Exit status 0 when every figure has its equal
in the other file, 1 otherwise. Use it to check a rerun on another machine or
commit, or a partial rerun (``methods=[etp] out_dir=...``) against the full committed tables.
The meta data (commits, dates, wall times) is reported, not compared.

    python benchmarks/compare_results.py NEW/results.json benchmarks/results/ptbxl/results.json \
        --methods etp --out benchmarks/results/ptbxl/reproduction.md --note "how NEW was made"
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

#: the per-method result sections of ``results.json`` (per dataset); ``selection`` holds the
#: choices made on validation (probe epochs, weight decays, readouts, their validation scores)
TASKS = ("linear_probe", "zero_shot", "retrieval", "selection")


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file (a results.json written by etp benchmark)")
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not valid JSON ({exc})")
    if not isinstance(data, dict) or "results" not in data or "meta" not in data:
        raise SystemExit(f"{path}: not an etp benchmark results.json (no 'meta' / 'results')")
    return data


def numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every number in ``tree`` by its path (``a/b[2]/c``); booleans are not numbers."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(numbers(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out.update(numbers(value, f"{prefix}[{i}]"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


def method_numbers(results: dict[str, Any], methods: list[str]) -> dict[str, float]:
    """The numbers of ``methods`` in every dataset's task sections of a ``results`` block."""
    out: dict[str, float] = {}
    for dataset, block in results.items():
        if not isinstance(block, dict):
            continue
        for task in TASKS:
            section = block.get(task)
            if not isinstance(section, dict):
                continue
            for method in methods:
                if method in section:
                    out.update(numbers(section[method], f"{dataset}/{task}/{method}"))
    return out


def _same(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def compare(
    new: dict[str, float], old: dict[str, float], tol: float
) -> tuple[int, list[tuple[str, float, float]], list[str], list[str]]:
    """(agreeing count, differing (path, new, old) largest first, only-new paths, only-old)."""
    shared = sorted(set(new) & set(old))
    diffs = [(p, new[p], old[p]) for p in shared if not _same(new[p], old[p], tol)]
    diffs.sort(key=lambda d: -abs(d[1] - d[2]) if not math.isnan(d[1] - d[2]) else -math.inf)
    return (
        len(shared) - len(diffs),
        diffs,
        sorted(set(new) - set(old)),
        sorted(set(old) - set(new)),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("new", type=Path, help="results.json of the rerun")
    ap.add_argument("old", type=Path, help="results.json to reproduce (e.g. the committed one)")
    ap.add_argument("--methods", default="etp,simclr,random", help="comma-separated methods")
    ap.add_argument("--tol", type=float, default=0.0, help="largest absolute difference allowed")
    ap.add_argument("--show", type=int, default=20, help="how many differences to list")
    ap.add_argument("--out", type=Path, default=None, help="also write the report (markdown)")
    ap.add_argument("--note", default="", help="a line for the report: how the new file was made")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        ap.error("--methods names no method")
    if not args.tol >= 0:
        ap.error(f"--tol must be >= 0, got {args.tol}")
    if args.show < 0:
        ap.error(f"--show must be >= 0, got {args.show}")
    new_data, old_data = _load(args.new), _load(args.old)
    new = method_numbers(new_data["results"], methods)
    old = method_numbers(old_data["results"], methods)
    if not new or not old:
        empty = args.new if not new else args.old
        raise SystemExit(f"{empty}: no result of the methods {methods}")
    agree, diffs, only_new, only_old = compare(new, old, args.tol)

    def meta(d: dict[str, Any]) -> str:
        m = d["meta"]
        machine = m.get("machine") or {}
        return (
            f"commit {str(m.get('git_commit'))[:7]}, {m.get('date')}, seeds {m.get('seeds')}; "
            f"{machine.get('cpu_model')}, {machine.get('cpu_count')} cores, "
            f"torch {machine.get('torch')}"
        )

    lines = [
        "# Reproduction check: two benchmark results compared figure by figure",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- new: `{args.new}` ({meta(new_data)})",
        f"- old: `{args.old}` ({meta(old_data)})",
        f"- methods: {', '.join(methods)}; tolerance {args.tol:g}",
        *([f"- note: {args.note}"] if args.note else []),
        "",
        f"**{agree} of {agree + len(diffs)} figures agree**; {len(diffs)} differ; "
        f"{len(only_new)} only in the new file, {len(only_old)} only in the old one.",
    ]
    if diffs:
        lines += ["", "| figure | new | old | new - old |", "|---|---|---|---|"]
        lines += [f"| `{p}` | {a:.6g} | {b:.6g} | {a - b:+.3g} |" for p, a, b in diffs[: args.show]]
    for title, paths in (("Only in the new file", only_new), ("Only in the old file", only_old)):
        if paths:
            lines += ["", f"{title} (first {min(len(paths), args.show)}):", ""]
            lines += [f"- `{p}`" for p in paths[: args.show]]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        from etp.io import atomic_write_text

        atomic_write_text(args.out, text)
    return 0 if not (diffs or only_new or only_old) else 1


if __name__ == "__main__":
    sys.exit(main())
