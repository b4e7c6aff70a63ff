#!/usr/bin/env python
"""Pretraining speed and memory on real PTB-XL records: a naive peer-style loop vs etp's pipeline.

One run measures, on the PTB-XL records present beside the checkout (../shared/data/ptb-xl,
100 Hz, ecg_id 1-999), prepared once into an etp cache:

(a) a naive loop as ECG-text pretraining code is commonly written: fp32, every item read with
    ``wfdb.rdrecord`` and preprocessed in ``__getitem__``, the frozen text model (MiniLM) run on
    each batch's reports inside the loop, ResNet18-1D forward + backward + Adam;
(b) etp's pipeline — the real :func:`etp.train.loop.pretrain` — memory-mapped cache read with
    ``preadv``, text embeddings computed once before training, bf16 autocast;

the ratio (b)/(a), and the projected wall time of the paper's setting (17,400 training records
x 50 epochs). Then it profiles one bf16 step (torch.profiler), tries the usual CPU speed-ups
(threads, torch.compile, oneDNN on/off, bf16 weights) on identical steps, interleaved in rounds
so that a busy machine affects every variant alike, and measures the peak resident memory of
pretraining subprocesses on 100 and on 999 records.

Writes ``benchmarks/results/pretrain_speed.json`` and ``.md`` with the command, date, machine
(CPU model, cores, load average before/after each phase) and the records used. The machine may
be shared: figures are medians of per-step times (robust to short interruptions), and the load
average is recorded next to each phase.

    python benchmarks/pretrain_speed.py                    # everything (~10-15 min on 2 cores)
    python benchmarks/pretrain_speed.py --skip-tuning --skip-memory
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_RECORDS = 17_400  # PTB-XL folds 1-8 (of 21,837 records), the paper's pretraining set
PAPER_EPOCHS = 50
GOAL_SPS = PAPER_RECORDS * PAPER_EPOCHS / (45 * 60)  # 45 min -> 322 samples/s
PTBXL_DISTINCT_REPORTS = 9_883
#: what one run can measure (``--only``)
PHASES = ("speed", "workers", "tuning", "memory")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, core counts, memory, torch build facts."""
    model = platform.processor() or ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": mem_gb,
        "bf16_isa": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def median_sps(step_times: list[float], batch: int) -> float:
    return batch / statistics.median(step_times)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def prepare_caches(root: Path, work: Path) -> tuple[Path, Path, float]:
    """The benchmark's caches: official splits, and one with every present record in 'train'."""
    from etp.data.prepare import PrepareConfig, prepare_dataset

    t0 = time.perf_counter()
    split = work / "cache-ptbxl-100hz"
    prepare_dataset(PrepareConfig(dataset="ptbxl", root=str(root), out=str(split), only_present=True))
    took = time.perf_counter() - t0
    all_train = work / "cache-ptbxl-100hz-all-train"
    prepare_dataset(
        PrepareConfig(
            dataset="ptbxl", root=str(root), out=str(all_train), only_present=True,
            train_folds=list(range(1, 11)), val_folds=[], test_folds=[],
        )
    )
    return split, all_train, took


def training_rows(cache: Path) -> tuple[Any, np.ndarray]:
    """(prepared cache, rows of folds 1-8 with a non-empty report) — the pretraining records."""
    from etp.config import DataConfig
    from etp.data.cache import load_prepared
    from etp.data.selection import select_records

    prepared = load_prepared(cache)
    sel = select_records(prepared.meta, DataConfig(train_folds=list(range(1, 9)), val_folds=[9], exclude_folds=[10]))
    reports = prepared.meta["report"].astype(str).to_numpy()
    keep = np.array([bool(reports[i].strip()) for i in sel.train])
    return prepared, sel.train[keep]


# ----------------------------------------------------------------------------------------------
# (a) naive loop
# ----------------------------------------------------------------------------------------------


class NaiveDataset(torch.utils.data.Dataset):
    """Peer-style: read the WFDB file and preprocess it in every ``__getitem__``."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        import wfdb

        from etp.data.signal import PreprocessConfig, preprocess

        path, report = self.items[i]
        rec = wfdb.rdrecord(path)
        sig = np.asarray(rec.p_signal, dtype=np.float32).T  # PTB-XL stores the canonical order
        return torch.from_numpy(preprocess(sig, float(rec.fs), PreprocessConfig())), report


def bench_naive(root: Path, prepared: Any, rows: np.ndarray, steps: int, batch: int) -> dict[str, Any]:
    import pandas as pd

    from etp.config import ModelConfig
    from etp.losses.clip import ClipLoss
    from etp.models.etp import ETPModel

    db = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    ids = prepared.meta["record_id"].astype(int).to_numpy()[rows]
    items = [(str(root / db.loc[i, "filename_lr"]), str(db.loc[i, "report"])) for i in ids]
    loader = torch.utils.data.DataLoader(
        NaiveDataset(items), batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )
    from transformers import AutoModel, AutoTokenizer

    from etp.text.encoder import packaged_minilm_path

    torch.manual_seed(0)
    # the text model as peer code runs it: one padded batch per step, mean pooling
    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    lm = AutoModel.from_pretrained(str(packaged_minilm_path())).eval().requires_grad_(False)

    def encode(reports: list[str]) -> torch.Tensor:
        with torch.no_grad():
            b = tok(reports, padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = lm(**b).last_hidden_state
            mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1)

    model = ETPModel(ModelConfig(), text_dim=lm.config.hidden_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-5)
    loss_fn = ClipLoss()
    parts: dict[str, list[float]] = {"data": [], "text": [], "model": [], "total": []}
    it = iter(loader)
    for step in range(steps + 1):  # the first step warms up (allocations, kernel selection)
        t0 = time.perf_counter()
        try:
            x, reports = next(it)
        except StopIteration:
            it = iter(loader)
            x, reports = next(it)
        t1 = time.perf_counter()
        t_emb = encode(list(reports))
        t2 = time.perf_counter()
        e, t = model(x, t_emb)
        loss = loss_fn(e, t, model.scale())
        opt.zero_grad()
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        if step:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                parts[k].append(v)
        log(f"naive step {step}: {t3 - t0:.2f} s (data {t1 - t0:.2f}, text {t2 - t1:.2f}, model {t3 - t2:.2f})")
    total = parts["total"]
    return {
        "steps": steps,
        "batch": batch,
        "samples_per_s": median_sps(total, batch),
        "samples_per_s_mean": batch * len(total) / sum(total),
        "median_s_per_step": {k: statistics.median(v) for k, v in parts.items()},
        "ms_per_record_read": 1000 * statistics.median(parts["data"]) / batch,
    }


# ----------------------------------------------------------------------------------------------
# (b) etp's pipeline: the real pretraining loop
# ----------------------------------------------------------------------------------------------


def text_embedding_cost(prepared: Any, rows: np.ndarray) -> dict[str, Any]:
    """One-off cost of embedding the distinct training reports (no on-disk cache)."""
    from etp.text.cache import embed_texts
    from etp.text.encoder import TextEncoder

    texts = prepared.meta["report"].astype(str).to_numpy()[rows].tolist()
    enc = TextEncoder("minilm")
    t0 = time.perf_counter()
    emb, _ = embed_texts(texts, enc, cache_dir=None)
    took = time.perf_counter() - t0
    return {
        "reports": len(texts),
        "distinct": int(emb.shape[0]),
        "seconds": took,
        "projected_full_ptbxl_s": took / emb.shape[0] * PTBXL_DISTINCT_REPORTS,
        "s_per_128_reports": took / emb.shape[0] * 128,
    }


def bench_etp(cache: Path, work: Path, steps: int, batch: int, workers: int) -> dict[str, Any]:
    import csv

    from etp.config import PretrainConfig, from_dict
    from etp.train.loop import pretrain

    out = work / f"etp-run-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = from_dict(PretrainConfig, {
        "data": {"cache": str(cache), "train_folds": list(range(1, 9)), "val_folds": [9],
                 "exclude_folds": [10]},
        "train": {"batch_size": batch, "epochs": 1, "precision": "bf16", "num_workers": workers,
                  "progress": False, "log_every_steps": 1, "out_dir": str(out), "seed": 0},
    })
    n_train = len(training_rows(cache)[1])
    per_epoch = n_train // batch
    cfg.train.epochs = 1 + math.ceil(steps / per_epoch)  # the first epoch is warm-up
    t0 = time.perf_counter()
    pretrain(cfg)
    wall = time.perf_counter() - t0
    with (out / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    steady = [r for r in rows if int(r["epoch"]) >= 2]
    step_s = [batch / float(r["samples_per_s"]) for r in steady]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "num_workers": workers,
        "batch": batch,
        "epochs": cfg.train.epochs,
        "steps_total": summary["steps"],
        "steps_measured": len(step_s),
        "train_records": summary["n_train"],
        "val_records": summary["n_val"],
        "samples_per_s": median_sps(step_s, batch),
        "samples_per_s_mean": batch * len(step_s) / sum(step_s),
        "wall_s_including_startup_val_checkpoints": wall,
    }


# ----------------------------------------------------------------------------------------------
# Profile and tuning variants (identical steps on one real batch)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of running the same training step."""

    name: str
    threads: int = 0  # 0: the default (usable cores), -1: twice that
    autocast: bool = True
    channels_last: bool = True  # etp's CPU fast path (2-D channels-last convolutions)
    bf16_weights: bool = False
    compile: bool = False
    onednn: bool = True
    slow: bool = False  # one step per round only


VARIANTS: list[Variant] = [
    Variant("etp default: bf16 autocast, 2-D channels-last convolutions"),
    Variant("bf16 autocast, 1-D convolutions (channels-first)", channels_last=False),
    Variant("fp32, channels-last", autocast=False),
    Variant("fp32, 1-D convolutions", autocast=False, channels_last=False),
    Variant("bf16 autocast, channels-last, 1 thread", threads=1),
    Variant("bf16 autocast, channels-last, 2x oversubscribed threads", threads=-1, slow=True),
    Variant("bf16 weights and activations (no fp32 master weights)", autocast=False, bf16_weights=True),
    Variant("bf16 autocast, channels-last + torch.compile (inductor)", compile=True),
    Variant("bf16 autocast, 1-D convolutions, oneDNN disabled", channels_last=False, onednn=False, slow=True),
]


def _step_factory(v: Variant, x: torch.Tensor, t: torch.Tensor) -> Any:
    from etp.config import ModelConfig
    from etp.losses.clip import ClipLoss
    from etp.models.etp import ETPModel
    from etp.models.channels_last import enable_channels_last

    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), text_dim=t.shape[1])
    if v.channels_last and not enable_channels_last(model.encoder):
        raise RuntimeError("channels-last fast path unavailable")
    xb, tb = x, t
    if v.bf16_weights:
        model = model.to(torch.bfloat16)
        xb, tb = x.to(torch.bfloat16), t.to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-5)
    loss_fn = ClipLoss()

    def forward(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.autocast):
            e, tt = model(xb, tb)
            s = model.scale()
        return loss_fn(e.float(), tt.float(), s.float())

    fwd = torch.compile(forward) if v.compile else forward

    def ctx() -> Any:
        return nullcontext() if v.onednn else torch.backends.mkldnn.flags(enabled=False)

    def step() -> None:
        with ctx():
            loss = fwd(xb, tb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def bench_tuning(prepared: Any, rows: np.ndarray, batch: int, steps: int, rounds: int) -> dict[str, Any]:
    default_threads = torch.get_num_threads()
    x = torch.from_numpy(prepared.get_batch(rows[:batch]))
    t = torch.randn(batch, 384, generator=torch.Generator().manual_seed(0))
    results: dict[str, Any] = {}
    steppers: dict[str, Any] = {}
    slow: set[str] = set()
    for v in VARIANTS:
        n_threads = default_threads if v.threads == 0 else (2 * default_threads if v.threads < 0 else v.threads)
        key = f"{v.name} | {n_threads} thread(s)"
        if v.slow:
            slow.add(key)
        torch.set_num_threads(n_threads)
        try:
            step = _step_factory(v, x, t)
            t0 = time.perf_counter()
            step()  # warm-up: kernel selection (and compilation for torch.compile)
            step()
            results[key] = {"warmup_s": time.perf_counter() - t0, "times": [], "threads": n_threads}
            steppers[key] = step
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, not fatal
            results[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        log(f"tuning warm-up {key}: {results[key].get('warmup_s', results[key].get('error'))}")
    for r in range(rounds):
        for key, step in steppers.items():
            torch.set_num_threads(results[key]["threads"])
            for _ in range(1 if key in slow else steps):
                t0 = time.perf_counter()
                step()
                results[key]["times"].append(time.perf_counter() - t0)
        log(f"tuning round {r + 1}/{rounds} done (load {load()})")
    torch.set_num_threads(default_threads)
    for key, res in results.items():
        if "times" in res:
            res["samples_per_s"] = median_sps(res["times"], batch)
            res["best_samples_per_s"] = batch / min(res["times"])
            del res["times"]
    return results


def profile_step(prepared: Any, rows: np.ndarray, batch: int, top: int = 12) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    x = torch.from_numpy(prepared.get_batch(rows[:batch]))
    t = torch.randn(batch, 384, generator=torch.Generator().manual_seed(0))
    step = _step_factory(VARIANTS[0], x, t)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / 3,
         "share": e.self_cpu_time_total / total, "calls_per_step": e.count / 3}
        for e in events[:top]
    ]


# ----------------------------------------------------------------------------------------------
# Memory: peak RSS of pretraining subprocesses
# ----------------------------------------------------------------------------------------------

_RSS_RUNNER = r"""
import json, resource, sys
from etp.cli import main
rc = main(sys.argv[1:])
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
kb = lambda k: int(status[k].split()[0]) if k in status else None
print("RSS-JSON " + json.dumps({"rc": rc, "VmHWM_kb": kb("VmHWM"), "RssAnon_kb": kb("RssAnon"),
      "RssFile_kb": kb("RssFile"),
      "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def peak_rss(cache: Path, work: Path, records: int, batch: int, epochs: int, workers: int) -> dict[str, Any]:
    out = work / f"rss-{records}-b{batch}-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    text_cache = work / f"text-cache-{records}-b{batch}-w{workers}"
    shutil.rmtree(text_cache, ignore_errors=True)  # same (cold) start for every run
    args = [
        "pretrain", f"data.cache={cache}", f"train.out_dir={out}", f"data.max_records={records}",
        "data.val_split=", f"train.batch_size={batch}", f"train.epochs={epochs}",
        f"train.num_workers={workers}", "train.progress=false", "train.precision=bf16",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ETP_CACHE_DIR=str(text_cache))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RSS_RUNNER, *args], capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RSS-JSON ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"memory run failed: {proc.stderr[-2000:]}")
    res = json.loads(line[-1][len("RSS-JSON "):])
    summary = json.loads((out / "summary.json").read_text())
    res.update({"records": summary["n_train"], "batch": batch, "epochs": epochs, "steps": summary["steps"],
                "num_workers": workers, "wall_s": time.perf_counter() - t0,
                "peak_rss_mb": res["VmHWM_kb"] / 1024})
    return res


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def fmt_min(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.1f} h"


def write_report(res: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pretrain_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["machine"]
    L: list[str] = [
        "# Pretraining speed and memory (`benchmarks/pretrain_speed.py`)",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}",
    ]
    secs = res.get("sections", {})
    if len({(v["command"], v["date"]) for v in secs.values()}) > 1:
        L += [f"  - section {k}: `{v['command']}` on {v['date']}"
              + (f" ({v['note']})" if v.get("note") else "") for k, v in secs.items()]
    L += [
        f"- machine: {m['cpu']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, "
        f"{m['memory_gb']} GB RAM, bf16 ISA: {', '.join(m['bf16_isa']) or 'none'}; "
        f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}",
        f"- data: {res['data']['description']}",
        "- the machine is shared with other jobs: pipeline figures are medians of per-step times, "
        "best of alternating repeats; the 1/5/15-min load average is given per phase",
        "",
    ]
    naive, etp = res.get("naive"), res.get("etp")
    if etp:
        L += ["## Throughput", "", "| pipeline | samples/s | load avg (before -> after) |", "|---|---:|---|"]
        if naive:
            L.append(f"| (a) naive: fp32, wfdb read + preprocessing per item, MiniLM run on each "
                     f"batch's reports (one padded batch), ResNet18-1D | "
                     f"{naive['samples_per_s']:.1f} | {naive['load'][0]} -> {naive['load'][1]} |")
        L.append(f"| (b) etp (`etp.train.loop.pretrain`): prepared cache read with preadv, text embeddings "
                 f"computed once, bf16 autocast, convolutions as 2-D channels-last, "
                 f"{etp['num_workers']} workers | {etp['samples_per_s']:.1f} | "
                 f"{etp['load'][0]} -> {etp['load'][1]} |")
        L.append("")
        runs = [("(b)", r) for r in res.get("etp_runs", [])] + [("(a)", r) for r in res.get("naive_runs", [])]
        if len(runs) > 2:
            L += ["Best of the alternating repeats; all repeats: " + "; ".join(
                f"{n} {r['samples_per_s']:.1f} (load {r['load'][0][0]} -> {r['load'][1][0]})" for n, r in runs
            ) + ".", ""]
        if naive:
            ratio = etp["samples_per_s"] / naive["samples_per_s"]
            p = naive["median_s_per_step"]
            L += [
                f"**Speed-up (b)/(a): {ratio:.1f}x** (goal >= 8x).",
                "",
                f"Naive step at batch {naive['batch']} (median): {p['total']:.2f} s = reading + "
                f"preprocessing {p['data']:.2f} s ({naive['ms_per_record_read']:.1f} ms/record) + "
                f"text model {p['text']:.2f} s + ResNet forward/backward/Adam {p['model']:.2f} s.",
                "",
            ]
            te = res.get("text_embedding")
            if te:
                alt = p["data"] + te["s_per_128_reports"] * naive["batch"] / 128 + p["model"]
                L += [
                    f"For reference: etp's own text encoder (reports sorted by length, batches of 64) "
                    f"needs {te['s_per_128_reports']:.2f} s per 128 reports; a naive loop using it "
                    f"would run at {naive['batch'] / alt:.0f} samples/s, i.e. a ratio of "
                    f"{etp['samples_per_s'] / (naive['batch'] / alt):.1f}x.",
                    "",
                ]
        proj = PAPER_RECORDS * PAPER_EPOCHS / etp["samples_per_s"]
        te = res.get("text_embedding", {})
        L += [
            f"**Projected paper setting** ({PAPER_RECORDS:,} records x {PAPER_EPOCHS} epochs at "
            f"{etp['samples_per_s']:.0f} samples/s): **{fmt_min(proj)}** of training (goal <= 45 min, "
            f"i.e. >= {GOAL_SPS:.0f} samples/s)"
            + (f", plus a one-off {te['projected_full_ptbxl_s'] / 60:.1f} min to embed PTB-XL's "
               f"{PTBXL_DISTINCT_REPORTS:,} distinct reports (measured {te['distinct']} distinct "
               f"reports in {te['seconds']:.1f} s)" if te else "")
            + (f"; the naive loop would need {fmt_min(PAPER_RECORDS * PAPER_EPOCHS / naive['samples_per_s'])}."
               if naive else "."),
            "",
            f"The etp run: {etp['train_records']} training / {etp['val_records']} validation records, "
            f"batch {etp['batch']}, {etp['epochs']} epochs ({etp['steps_total']} steps; the first "
            f"epoch is warm-up, {etp['steps_measured']} steps measured), wall "
            f"{etp['wall_s_including_startup_val_checkpoints']:.0f} s including start-up, text "
            "embedding, validation and checkpoints.",
            "",
        ]
        if res.get("etp_workers"):
            w = res["etp_workers"]
            wl = res["load"].get("etp_workers", [["?"], ["?"]])
            L += [f"Same with {w['num_workers']} DataLoader workers: {w['samples_per_s']:.1f} samples/s "
                  f"(load {wl[0][0]} -> {wl[1][0]}).", ""]
    tuning = res.get("tuning")
    if tuning:
        base_key = next((k for k in tuning if k.startswith("etp default")), None)
        base = tuning.get(base_key, {}).get("best_samples_per_s") if base_key else None
        L += [
            "## What was tried (one real batch of 128, identical steps, variants interleaved)",
            "",
            "Compared by each variant's fastest step (the least disturbed by other jobs on a shared "
            "machine); the median is shown for reference.",
            "",
            "| variant | samples/s (best step) | median | vs etp default | warm-up |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, r in tuning.items():
            if "error" in r:
                L.append(f"| {key} | failed: {r['error']} | | | |")
                continue
            rel = f"{r['best_samples_per_s'] / base:.2f}x" if base else ""
            L.append(f"| {key} | {r['best_samples_per_s']:.1f} | {r['samples_per_s']:.1f} | {rel} | "
                     f"{r['warmup_s']:.1f} s |")
        L += ["", f"Load average during tuning: {res['load']['tuning'][0]} -> {res['load']['tuning'][1]}.", ""]
        if res.get("conclusions"):
            L += [f"- {c}" for c in res["conclusions"]] + [""]
    prof = res.get("profile")
    if prof:
        L += ["## Where a bf16 step goes (torch.profiler, self CPU time)", "",
              "| op | ms/step | share | calls/step |", "|---|---:|---:|---:|"]
        L += [f"| `{p['op']}` | {p['self_ms_per_step']:.1f} | {100 * p['share']:.1f}% | "
              f"{p['calls_per_step']:.0f} |" for p in prof]
        L.append("")
    mem = res.get("memory")
    if mem:
        L += ["## Peak resident memory of a pretraining run (subprocess, VmHWM)", "",
              "| records | batch | steps | workers | peak RSS | RSS at exit: anon / file-backed |",
              "|---:|---:|---:|---:|---:|---|"]
        for r in mem:
            L.append(f"| {r['records']} | {r['batch']} | {r['steps']} | {r['num_workers']} | "
                     f"{r['peak_rss_mb']:.0f} MB | {r['RssAnon_kb'] / 1024:.0f} / {r['RssFile_kb'] / 1024:.0f} MB |")
        L += ["",
              "Signals are read with `preadv` from the memory-mapped cache's file, never mapped into "
              "the process, so resident memory does not depend on the number of records; it is the "
              "model, optimiser, activations of one batch and the frozen text model's weights while "
              "the reports are embedded (each run here embeds its reports from a cold cache).", ""]
    (out_dir / "pretrain_speed.md").write_text("\n".join(L))


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "ptb-xl"), help="PTB-XL folder")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench" / "pretrain_speed"), help="scratch folder")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where results go")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="measured steps of the etp pipeline")
    ap.add_argument("--naive-steps", type=int, default=5, help="measured steps of the naive loop")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of (b) and (a)")
    ap.add_argument("--tune-steps", type=int, default=2, help="steps per variant and round")
    ap.add_argument("--tune-rounds", type=int, default=4)
    ap.add_argument(
        "--only", default=",".join(PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all); the others are "
        "kept from the existing results file, each section keeping its own command and date",
    )
    ap.add_argument("--skip-naive", action="store_true", help="speed phase without the naive loop")
    args = ap.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PHASES))
    if unknown:
        ap.error(f"unknown phase(s) {unknown}; choose from {list(PHASES)}")
    logging_setup()
    root, work = Path(args.root), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    res: dict[str, Any] = {"load": {}, "sections": {}}
    previous = Path(args.out) / "pretrain_speed.json"
    if set(only) != set(PHASES) and previous.is_file():
        res = json.loads(previous.read_text())  # keep the phases not rerun now
        res.setdefault("load", {})
        kept = res.setdefault("sections", {})
        result_key = {"speed": "etp", "workers": "etp_workers", "tuning": "tuning", "memory": "memory"}
        for name in PHASES:  # sections measured before sections were recorded: the old run's
            if name not in only and name not in kept and res.get(result_key[name]):
                kept[name] = {"command": res.get("command", "?"), "date": res.get("date", "?")}
    res.update({"command": command, "date": date, "machine": machine()})
    for name in only:
        res["sections"][name] = {"command": command, "date": date}
    log(f"machine: {res['machine']}")
    cache, all_train, prep_s = prepare_caches(root, work)
    prepared, rows = training_rows(cache)
    res["data"] = {
        "root": str(root),
        "cache": str(cache),
        "prepare_s": prep_s,
        "records_in_cache": len(prepared),
        "training_records": int(rows.size),
        "description": f"PTB-XL 100 Hz records present in {root} ({len(prepared)} records, ecg_id "
        f"{prepared.meta['record_id'].astype(int).min()}-{prepared.meta['record_id'].astype(int).max()}); "
        f"pretraining on folds 1-8 = {rows.size} records with a report, validation fold 9, fold 10 "
        "never read",
    }

    def phase(name: str, fn: Any) -> Any:
        before = load()
        log(f"{name}: start (load {before})")
        out = fn()
        res["load"][name] = [before, load()]
        log(f"{name}: done -> {json.dumps(out, default=str)[:400]}")
        return out

    if "speed" in only:
        # etp and the naive loop alternate, so that each repeat measures both under similar load;
        # the best repeat of each is reported (the least disturbed by other jobs)
        res["etp_runs"], res["naive_runs"] = [], []
        res.pop("naive", None)
        for r in range(args.repeats):
            res["etp_runs"].append(phase(f"etp#{r + 1}", lambda: bench_etp(cache, work, args.steps, args.batch, 0)))
            res["etp_runs"][-1]["load"] = res["load"][f"etp#{r + 1}"]
            if not args.skip_naive:
                res["naive_runs"].append(
                    phase(f"naive#{r + 1}", lambda: bench_naive(root, prepared, rows, args.naive_steps, args.batch))
                )
                res["naive_runs"][-1]["load"] = res["load"][f"naive#{r + 1}"]
        res["etp"] = max(res["etp_runs"], key=lambda d: d["samples_per_s"])
        if res["naive_runs"]:
            res["naive"] = max(res["naive_runs"], key=lambda d: d["samples_per_s"])
        res["text_embedding"] = phase("text_embedding", lambda: text_embedding_cost(prepared, rows))
    if "workers" in only:
        res["etp_workers"] = phase("etp_workers", lambda: bench_etp(cache, work, args.steps, args.batch, 2))
    if "tuning" in only:
        res["profile"] = phase("profile", lambda: profile_step(prepared, rows, args.batch))
        res["tuning"] = phase(
            "tuning", lambda: bench_tuning(prepared, rows, args.batch, args.tune_steps, args.tune_rounds)
        )
        res["conclusions"] = conclusions(res["tuning"])
    if "memory" in only:
        def memory() -> list[dict[str, Any]]:
            # the same number of steps (15) on 100 and on 999 records, then the paper's batch
            return [
                peak_rss(all_train, work, 100, 64, 15, 0),
                peak_rss(all_train, work, 999, 64, 1, 0),
                peak_rss(all_train, work, 999, 128, 2, 0),
            ]
        res["memory"] = phase("memory", memory)
    if res.get("naive") and res.get("etp"):
        res["ratio"] = res["etp"]["samples_per_s"] / res["naive"]["samples_per_s"]
    if res.get("etp"):
        res["projected_paper_s"] = PAPER_RECORDS * PAPER_EPOCHS / res["etp"]["samples_per_s"]
    write_report(res, Path(args.out))
    log(f"wrote {Path(args.out) / 'pretrain_speed.md'}")
    return 0


def conclusions(tuning: dict[str, Any]) -> list[str]:
    """One line per variant: faster or slower than etp's default, by how much."""
    base_key = next((k for k in tuning if k.startswith("etp default")), None)
    if not base_key or "samples_per_s" not in tuning[base_key]:
        return []
    base = tuning[base_key]["best_samples_per_s"]
    lines = []
    for key, r in tuning.items():
        if key == base_key:
            continue
        if "error" in r:
            lines.append(f"{key}: does not run here ({r['error']})")
            continue
        rel = r["best_samples_per_s"] / base
        verdict = "faster" if rel > 1.05 else "slower" if rel < 0.95 else "no clear difference"
        lines.append(f"{key}: {rel:.2f}x of the default ({verdict})")
    return lines


def logging_setup() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
