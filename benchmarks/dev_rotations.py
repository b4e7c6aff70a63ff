"""Development runs: how a pretraining setting changes zero-shot and probe AUC, without fold 10.

The protocol behind every "development run" figure quoted in ``configs/benchmark-ptbxl.yaml``
and the README: three rotations inside PTB-XL folds 1-9 (test/validation folds 9/8, 8/7, 7/6;
the other six of folds 1-9 pretrain), so that fold 10 is never read while settings are chosen.
For each rotation an ETP model is pretrained with the paper's schedule (50 epochs, batch 128)
plus the given ``key=value`` overrides; its test-fold predictions are pooled over the three
rotations (single-label records, n = 258 with ids 1-999) and scored:

* zero-shot average one-vs-rest AUC / accuracy / F1 for four prompt variants;
* linear-probe macro AUC / F1 with the probe's epoch and weight decay chosen on the validation
  fold by cross-entropy (``lp loss``) and by macro AUC (``lp auc``) (the paper's Adam probe on
  the ``avg`` readout), and the shipped probe (``lp shipped``: :class:`etp.eval.linear_probe.
  ProbeConfig`'s defaults, those of the benchmark config: the converged L-BFGS probe, weight
  decay and readout by 5-fold cross-validation over the training folds, readouts among
  ``--probe-pooling``; the chosen readouts are recorded).

Every figure comes from :func:`etp.eval.protocol.evaluate_model`, the evaluation of
``etp evaluate`` and ``etp benchmark``.

Features and embeddings are averaged over each model's test-time views
(:mod:`etp.data.views`; ``--views 1`` scores the record as it is, as runs before the views
did). Models are kept under ``--work/NAME`` and reused. One line per run is appended to
``benchmarks/results/dev_rotations.jsonl`` with the command, date and machine.

    python benchmarks/dev_rotations.py NAME [key=value ...] [--root ../shared/data/ptb-xl]
    python benchmarks/dev_rotations.py shipped objective.augment=true model.report_translation=builtin

The folds it scores and validates on must be declared development folds (``dev_folds``) of the
benchmark config given by ``--config``: a rotation on a clean test fold of the benchmark is
refused with one error line before anything is read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROTATIONS = ((9, 8), (8, 7), (7, 6))  # (test fold, validation fold); fold 10 never read


def _rotations(text: str) -> list[tuple[int, int]]:
    """``"9/8,8/7"`` -> ``[(9, 8), (8, 7)]`` (test fold / validation fold)."""
    out = []
    for part in text.split(","):
        test, sep, val = part.strip().partition("/")
        if not sep or not test.isdigit() or not val.isdigit():
            raise SystemExit(
                f"dev_rotations.py: error: --rotations: {part!r} is not TEST/VAL (e.g. 9/8)"
            )
        out.append((int(test), int(val)))
    return out
VARIANTS = {
    "en": {},
    "en syn": {"synonyms": True},
    "en+de syn": {"languages": ["en", "de"], "synonyms": True},
    "en+de syn ens": {"languages": ["en", "de"], "synonyms": True, "ensemble": True},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", help="name of this setting (its models go to --work/NAME)")
    ap.add_argument("overrides", nargs="*", help="pretraining key=value overrides")
    ap.add_argument(
        "--views",
        default=None,
        help="test-time views, N or NxF (default: each model's own; 1 = the record as it is)",
    )
    ap.add_argument(
        "--pretrain-on-val",
        action="store_true",
        help="pretrain on the validation fold's records too (no pretraining validation loss)",
    )
    ap.add_argument(
        "--probe-pooling",
        default="avg,avg+max",
        help="lp shipped: encoder readouts the probe chooses among on the validation fold "
        "(comma-separated, etp.models.resnet1d.POOLINGS; the benchmark config's probe.pooling)",
    )
    ap.add_argument(
        "--rotations",
        default=",".join(f"{t}/{v}" for t, v in ROTATIONS),
        help="TEST/VAL fold pairs, comma-separated; every fold must be in the config's dev_folds",
    )
    ap.add_argument(
        "--config",
        default=str(REPO / "configs" / "benchmark-ptbxl.yaml"),
        help="the benchmark config whose dev_folds bound the folds scored and validated on",
    )
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "ptb-xl"))
    ap.add_argument("--work", default=str(REPO / "runs" / "dev-rotations"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dev_rotations.jsonl"))
    args = ap.parse_intermixed_args(argv)  # options may follow the overrides
    logging.basicConfig(level=logging.WARNING)
    from etp.benchmark import check_dev_folds, load_benchmark_config
    from etp.errors import EtpError

    rots = _rotations(args.rotations)
    try:
        check_dev_folds(
            load_benchmark_config(args.config),
            [f for pair in rots for f in pair],
            "--rotations: test/validation fold(s)",
            args.config,
        )
    except EtpError as exc:
        raise SystemExit(f"dev_rotations.py: error: {exc}") from None

    from etp.config import PretrainConfig, load_config
    from etp.data.cache import load_prepared
    from etp.data.prepare import PrepareConfig, prepare_dataset
    from etp.data.views import Views
    from etp.eval.linear_probe import SELECT_BY, ProbeConfig
    from etp.eval.metrics import classification_metrics, zero_shot_metrics
    from etp.eval.protocol import EvalSettings, evaluate_model, fold_split
    from etp.eval.report import machine_info
    from etp.eval.zero_shot import PromptOptions
    from etp.models.etp import load_model_dir
    from etp.models.resnet1d import check_poolings
    from etp.train.loop import pretrain

    work = Path(args.work)
    cache = work / "cache-ptbxl-100hz"
    prepare_dataset(PrepareConfig(dataset="ptbxl", root=args.root, out=str(cache), only_present=True))
    prepared = load_prepared(cache)
    classes = list(prepared.classes)
    views = "auto" if args.views is None else str(Views.parse(args.views))
    poolings = check_poolings(args.probe_pooling.split(","), "--probe-pooling")
    used_views: set[str] = set()
    pooled: dict[str, list[np.ndarray]] = {"y": []}
    seconds = 0.0
    chosen_readouts: list[str] = []
    for test, val in rots:
        train = [f for f in range(1, 10) if f not in (test, val)]
        out = work / args.name / f"test{test}"
        if not (out / "model" / "config.json").is_file():
            folds = sorted(train + [val]) if args.pretrain_on_val else train
            held = (
                ["data.val_folds=null", "data.val_split="]
                if args.pretrain_on_val
                else [f"data.val_folds=[{val}]"]
            )
            base = [
                f"data.cache={cache}", f"data.train_folds={folds}", *held,
                f"data.exclude_folds=[{test},10]", "train.epochs=50", "train.batch_size=128",
                "train.progress=false", f"train.out_dir={out}",
            ]
            t0 = time.perf_counter()
            # an interrupted run continues from its checkpoint (a finished one has its model)
            pretrain(load_config(PretrainConfig, None, base + list(args.overrides)), resume=True)
            seconds += time.perf_counter() - t0
        model = load_model_dir(out / "model")
        split = fold_split(prepared, train, val, test)
        base_settings = dict(views=views, features_cache=work / args.name / "features")
        zs = evaluate_model(
            model, prepared, split,
            EvalSettings(
                zero_shot=[PromptOptions(name=n, **o) for n, o in VARIANTS.items()],
                **base_settings,
            ),
            tasks=["zero_shot"],
        )
        pooled["y"].append(zs.test_y)
        used_views.add(zs.views)
        for name in VARIANTS:
            pooled.setdefault(f"zs {name}", []).append(zs.zs_test[name])
        probes = {  # the paper's Adam probe on the avg readout, by either criterion
            f"lp {criterion}": ProbeConfig(
                solver="adam", cv_folds=0, pooling=["avg"], label_fractions=[1.0],
                select_by=criterion,
            )
            for criterion in SELECT_BY
        }
        probes["lp shipped"] = ProbeConfig(pooling=list(poolings), label_fractions=[1.0])
        for key, probe in probes.items():
            res = evaluate_model(
                model, prepared, split, EvalSettings(probe=probe, **base_settings),
                tasks=["linear_probe"],
            )
            pooled.setdefault(key, []).append(res.probe[1.0])
            if key == "lp shipped":
                chosen_readouts.append(res.probe_selection(1.0)["readout"])

    y_all = np.concatenate(pooled.pop("y"))
    record: dict[str, object] = {
        "name": args.name,
        "overrides": list(args.overrides),
        "pretrain_on_val": bool(args.pretrain_on_val),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "pretrain_seconds": round(seconds),
        "n_test": int(y_all.size),
        "views": ", ".join(sorted(used_views)),
        "probe_pooling": list(poolings),
        "readouts_chosen": chosen_readouts,
    }
    for key, probs in pooled.items():
        p = np.concatenate(probs)
        if key.startswith("zs "):
            avg = zero_shot_metrics(y_all, p, classes, warn=False)["average"]
            record[key] = [round(100 * avg[m], 1) for m in ("auc", "acc", "f1")]
        else:
            m = classification_metrics(y_all, p, classes, warn=False)
            record[key] = [round(100 * m["auc"], 1), round(100 * m["f1"], 1)]
    line = json.dumps(record, default=str)
    out_file = Path(args.out)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
