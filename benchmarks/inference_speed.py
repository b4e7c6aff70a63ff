"""Benchmark: ECG embedding throughput on CPU (goal: >= 500 ECGs/s, bf16, 10-s 100 Hz records).

Measures ECGs per second of the ECG tower (ResNet18-1D + projection head + L2 normalisation) on
preprocessed 10-s, 100 Hz records (12 x 1000), the input of every default etp model, for

* **fp32**: the model as trained;
* **bf16 autocast**: ``torch.autocast(dtype=bfloat16)`` around the fp32 model;
* **bf16 weights**: a bfloat16 copy of the model (:func:`etp.eval.features.inference_module`) —
  what ``etp embed --bf16``, ``etp zero-shot --bf16`` and ``etp evaluate --bf16`` run;
* **bf16 weights, 3 views**: the same, each ECG averaged over three stretched 75 % crops
  (:mod:`etp.data.views`) — the default of models trained on crops, such as the shipped ETP.

Each setting runs ``--repeats`` timed passes over ``--n`` records (after a warm-up pass),
round-robin with the other settings, and reports the median and the best pass; the machine's
load average is recorded beside them, because a shared machine's other processes slow passes.
Reading and preprocessing raw 100 Hz files (:func:`etp.data.signal.preprocess`, band-pass
filter) is timed separately on the bundled PTB-XL sample. Weights do not change the speed, so an
untrained model is used unless ``--model DIR`` is given. Results go to
``benchmarks/results/inference_speed.md``.

    python benchmarks/inference_speed.py [--n 2048] [--batch-size 256] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
GOAL = 500.0
VIEWS_ROW = "bf16 weights, 3 views (crop-trained default)"


def _load(model_dir: str | None) -> torch.nn.Module:
    if model_dir:
        from etp.models.etp import load_model_dir

        return load_model_dir(model_dir).model
    from etp.config import ModelConfig
    from etp.models.etp import ETPModel

    torch.manual_seed(0)
    return ETPModel(ModelConfig(), 384, "etp").eval()


def _time_interleaved(settings: dict, x: np.ndarray, batch: int, repeats: int) -> dict:
    """ECGs/s of ``repeats`` passes per setting, taken round-robin (after one warm-up each).

    Round-robin passes see the same background load, so settings stay comparable on a shared
    machine even when the absolute numbers move.
    """
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)]
    for fn in settings.values():
        fn(chunks[:1])
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, fn in settings.items():
            t0 = time.perf_counter()
            fn(chunks)
            rates[name].append(len(x) / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: an untrained default model)")
    ap.add_argument("--n", type=int, default=2048, help="records per timed pass")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "inference_speed.md"))
    args = ap.parse_args(argv)

    from etp.data.views import TRAINED_CROP, TRAINED_VIEWS, Views
    from etp.eval.features import run_batches
    from etp.eval.report import machine_info
    from etp.io import atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load(args.model)
    views = Views(TRAINED_VIEWS, TRAINED_CROP)
    length = 1000
    x = np.random.default_rng(0).normal(scale=0.3, size=(args.n, 12, length)).astype(np.float32)

    def autocast_fn(chunks: list[np.ndarray]) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for c in chunks:
                model.embed_ecg(torch.from_numpy(c)).float()

    settings = {
        "fp32": lambda chunks: run_batches(model, chunks, "embedding", bf16=False),
        "bf16 autocast": autocast_fn,
        "bf16 weights (etp --bf16)": lambda chunks: run_batches(model, chunks, "embedding", True),
        VIEWS_ROW: lambda chunks: run_batches(model, chunks, "embedding", True, views=views),
    }
    load_before = os.getloadavg()
    results = {}
    for name, rates in _time_interleaved(settings, x, args.batch_size, args.repeats).items():
        results[name] = (statistics.median(rates), max(rates))
        print(f"{name:28s} median {results[name][0]:7.0f} ECGs/s, best {results[name][1]:7.0f}")
    load_after = os.getloadavg()

    # agreement of the bf16 path with fp32
    e32 = run_batches(model, [x[:64]], "embedding", bf16=False)
    e16 = run_batches(model, [x[:64]], "embedding", bf16=True)
    cos = float(np.min(np.sum(e32 * e16, axis=1)))

    # preprocessing of raw 100 Hz files (read + filter), on the bundled sample
    from etp.data.signal import PreprocessConfig, preprocess
    from etp.data.signal_io import read_signal_file

    files = sorted((REPO / "data" / "sample" / "ptb-xl" / "records100").glob("*/*.hea"))[:100]
    raw = [read_signal_file(f) for f in files]
    cfg = PreprocessConfig()
    t0 = time.perf_counter()
    for sig, fs in raw:
        preprocess(sig, fs, cfg)
    pre_rate = len(raw) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for f in files:
        read_signal_file(f)
    read_rate = len(files) / (time.perf_counter() - t0)
    print(f"preprocess {pre_rate:.0f} records/s, read WFDB {read_rate:.0f} records/s")

    info = machine_info()
    best_bf16 = results["bf16 weights (etp --bf16)"]
    verdict = "meets" if best_bf16[1] >= GOAL else "misses"
    best_views = results[VIEWS_ROW]
    verdict_views = "meets" if best_views[1] >= GOAL else "misses"
    lines = [
        "# Inference speed: ECG embeddings per second on CPU",
        "",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  ",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Machine: {info.get('cpu_model', info['processor'])}, {info['cpu_count']} CPU(s), "
        f"torch {info['torch']} with {torch.get_num_threads()} thread(s), {info['platform']}  ",
        f"Load average (1/5/15 min) before: {' / '.join(f'{v:.1f}' for v in load_before)}, "
        f"after: {' / '.join(f'{v:.1f}' for v in load_after)} (other processes share the CPUs)  ",
        f"Model: {args.model or 'untrained default ETP model (ResNet18-1D, 512-d linear head)'}; "
        f"input 12 x {length} (10 s at 100 Hz, preprocessed); batch {args.batch_size}; "
        f"{args.n} records per pass, {args.repeats} passes after a warm-up.",
        "",
        "| setting | median ECGs/s | best ECGs/s |",
        "|---|---|---|",
        *(f"| {k} | {m:.0f} | {b:.0f} |" for k, (m, b) in results.items()),
        "",
        f"Goal: >= {GOAL:.0f} ECGs/s with bf16 — the bf16-weights path {verdict} it: best pass "
        f"{best_bf16[1]:.0f} ECGs/s (the pass least disturbed by other processes), median "
        f"{best_bf16[0]:.0f}; with the three test-time views of crop-trained models (the shipped "
        f"ETP's default) it {verdict_views} it: best {best_views[1]:.0f}, median "
        f"{best_views[0]:.0f}. Passes run round-robin over the settings, so each setting sees the "
        f"same background load. bf16 vs fp32 embeddings: minimum cosine similarity {cos:.5f} "
        "over 64 records.",
        "",
        f"Reading and preprocessing raw files (not included above; done once per file): "
        f"`preprocess` (band-pass, crop/pad) {pre_rate:.0f} records/s, reading a WFDB 100 Hz "
        f"record {read_rate:.0f} records/s, single-threaded, on {len(files)} sample records.",
        "",
    ]
    out = Path(args.out)
    atomic_write_text(out, "\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
