#!/usr/bin/env python
"""Pretraining throughput of every Table 1 method, measured in one run on the same cache.

Each trainable method is run through the real :func:`etp.train.loop.pretrain` with its own
``configs/<method>-ptbxl.yaml`` (its batch size, augmentations and objective options), on the
PTB-XL cache the benchmark uses, for a short number of steps; the first epoch is warm-up and the
steps after it are timed (median step time, from ``train_log.csv`` written every step). Methods
are measured in rounds, the order reversed in every other round, and each method keeps its best
round, so a busy machine affects every method alike. The result is the samples/s of each method
and its ratio to ETP's, and the projected pretraining time of one benchmark model (the training
records of one fold rotation x the config's epochs).

Precision: ``--precision auto`` uses bf16 on a GPU or a CPU with bf16 instructions (what the
configs ask for) and fp32 on a CPU without them, where bf16 autocast would be emulated (about
1 ECG/s); the report says which precision ran and why.

    etp prepare --dataset ptbxl --root ../shared/data/ptb-xl --out runs/cache/ptbxl-100hz --only-present
    python benchmarks/method_speed.py --cache runs/cache/ptbxl-100hz

Writes ``benchmarks/results/method_speed.json`` and ``.md`` (command, date, machine, records).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: config files that are not one method's Table 1 config
NOT_METHOD_CONFIGS = {"benchmark"}
#: models per method in configs/benchmark-ptbxl.yaml: ten fold rotations x three seeds
MODELS_PER_METHOD = 30


def method_configs() -> dict[str, Path]:
    """``{name: config}`` for every ``configs/*-ptbxl.yaml`` of a trainable registered objective."""
    from etp import objectives
    from etp.config import read_yaml

    out: dict[str, Path] = {}
    for path in sorted((REPO / "configs").glob("*-ptbxl.yaml")):
        name = path.name.removesuffix("-ptbxl.yaml")
        if name in NOT_METHOD_CONFIGS:
            continue
        method = read_yaml(path).get("train", {}).get("method", "etp")
        if objectives.get(method).trains:
            out[name] = path
    return out


def bf16_reason(device: str) -> tuple[str, str]:
    """(precision, why) for ``--precision auto``."""
    import torch

    from etp.train.settings import cpu_has_bf16

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "bf16", "a CUDA device: bf16 autocast as the configs ask"
    if cpu_has_bf16():
        return "bf16", "the CPU has bf16 instructions: bf16 autocast as the configs ask"
    return "fp32", (
        "the CPU has no bf16 instructions, so bf16 autocast would be emulated (about 1 ECG/s): "
        "every method runs in fp32 instead"
    )


def run_one(config: Path, cache: Path, out: Path, steps: int, precision: str, device: str,
            workers: int) -> dict[str, Any]:
    """Pretrain one method for ``steps`` timed steps after a warm-up epoch."""
    from etp.config import PretrainConfig, load_config
    from etp.train.loop import pretrain

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(PretrainConfig, config, [
        f"data.cache={cache}", f"train.out_dir={out}", f"train.precision={precision}",
        f"train.device={device}", f"train.num_workers={workers}", "train.progress=false",
        "train.log_every_steps=1", "train.checkpoint_every_steps=0",
    ])
    config_epochs = cfg.train.epochs
    cfg.train.epochs = 1 + math.ceil(steps / _steps_per_epoch(cfg))
    t0 = time.perf_counter()
    pretrain(cfg)
    wall = time.perf_counter() - t0
    with (out / "train_log.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) >= 2]
    bs = cfg.train.batch_size
    step_s = [bs / float(r["samples_per_s"]) for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "config": str(config.relative_to(REPO)),
        "method": cfg.train.method,
        "batch_size": bs,
        "config_epochs": config_epochs,
        "train_records": summary["n_train"],
        "steps_timed": len(step_s),
        "samples_per_s": bs / statistics.median(step_s),
        "wall_s": wall,
    }


def _steps_per_epoch(cfg: Any) -> int:
    from etp import objectives
    from etp.data.cache import load_prepared
    from etp.data.selection import pretraining_records

    needs_reports = objectives.get(cfg.train.method).needs_reports
    sel = pretraining_records(load_prepared(cfg.data.cache).meta, cfg.data, needs_reports)
    return max(1, int(sel.train.size) // cfg.train.batch_size)


def machine() -> dict[str, Any]:
    """etp's record of the machine (:func:`etp.eval.report.machine_info`), plus whether the CPU
    runs bf16 natively."""
    from etp.eval.report import machine_info
    from etp.train.settings import cpu_has_bf16

    return {**machine_info(), "bf16_instructions": cpu_has_bf16()}


def write_report(res: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "method_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["machine"]
    etp = res["methods"].get("etp", {}).get("samples_per_s")
    lines = [
        "# Pretraining throughput per method (`benchmarks/method_speed.py`)",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}; git commit: {res['commit']}",
        f"- machine: {m.get('cpu_model', m['processor'])}, {m['cpu_count']} CPUs, bf16 "
        f"instructions: {'yes' if m['bf16_instructions'] else 'no'}; GPU: {m['cuda'] or 'none'}; "
        f"torch {m['torch']} ({m['torch_threads']} threads)",
        f"- precision: {res['precision']} ({res['precision_why']}); device: {res['device']}; "
        f"DataLoader workers: {res['workers']}",
        f"- data: {res['records']}",
        f"- timing: one warm-up epoch, then {res['steps']}+ steps timed (median step); "
        f"{res['rounds']} round(s), order reversed every other round, best round kept",
        "",
        "| method | config | batch | samples/s | vs ETP | one benchmark model (train records x "
        f"epochs) | the rotated benchmark ({MODELS_PER_METHOD} models: 10 rotations x 3 seeds) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    order = sorted(res["methods"], key=lambda k: (k != "etp", k))
    for name in order:
        r = res["methods"][name]
        ratio = f"{r['samples_per_s'] / etp:.2f}x" if etp else "n/a"
        secs = r["train_records"] * r["config_epochs"] / r["samples_per_s"]
        lines.append(
            f"| {name} | `{r['config']}` | {r['batch_size']} | {r['samples_per_s']:.1f} | {ratio} "
            f"| {r['train_records']} x {r['config_epochs']} = {secs / 60:.1f} min "
            f"| {secs * MODELS_PER_METHOD / 3600:.1f} h |"
        )
    lines += [
        "",
        "All rounds (samples/s): " + "; ".join(
            f"{k} {', '.join(f'{v:.1f}' for v in res['methods'][k]['rounds_sps'])}" for k in order
        ),
        "",
    ]
    (out_dir / "method_speed.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / "runs/cache/ptbxl-100hz",
                    help="prepared PTB-XL cache (folds 1-8 train, 9 validates, 10 is not read)")
    ap.add_argument("--work", type=Path, default=REPO / "runs/method-speed", help="scratch runs")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    ap.add_argument("--only", default="", help="comma-separated method names (default: all)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method and round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the .md from the existing .json (no measurement)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for every method")
    args = ap.parse_args(argv)

    if args.report_only:
        res = json.loads((args.out / "method_speed.json").read_text())
        write_report(res, args.out)
        return 0
    configs = method_configs()
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(configs))
        if unknown:
            print(f"error: --only: unknown method(s) {unknown}; known: {sorted(configs)}",
                  file=sys.stderr)
            return 2
        configs = {k: configs[k] for k in wanted}
    if not args.cache.is_dir():
        print(f"error: --cache {args.cache} is not a prepared cache; run the `etp prepare` line "
              "in this script's docstring first", file=sys.stderr)
        return 2
    if args.precision == "auto":
        precision, why = bf16_reason(args.device)
    else:
        precision, why = args.precision, "as asked on the command line"
    from etp.eval.report import git_commit

    commit = git_commit(REPO)  # at the start: the code that measures
    names = list(configs)
    best: dict[str, dict[str, Any]] = {}
    rounds: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            print(f"[{time.strftime('%H:%M:%S')}] round {rnd + 1}: {name}", flush=True)
            r = run_one(configs[name], args.cache.resolve(), args.work / name, args.steps,
                        precision, args.device, args.workers)
            rounds[name].append(r["samples_per_s"])
            if name not in best or r["samples_per_s"] > best[name]["samples_per_s"]:
                best[name] = r
            print(f"  {r['samples_per_s']:.1f} samples/s", flush=True)
    for name in names:
        best[name]["rounds_sps"] = rounds[name]
    n = best[names[0]]["train_records"] if names else 0
    res = {
        "command": "python benchmarks/method_speed.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": machine(),
        "precision": precision,
        "precision_why": why,
        "device": args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
        "workers": args.workers,
        "records": f"PTB-XL cache {args.cache}: folds 1-8 pretrain ({n} records), fold 9 "
                   "validates, fold 10 is not read",
        "steps": args.steps,
        "rounds": args.rounds,
        "methods": best,
    }
    write_report(res, args.out)
    print((args.out / "method_speed.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
