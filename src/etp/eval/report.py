"""Markdown tables in the paper's layouts, and the results.json record of a run.

* Table 1 (linear probe): one row per method, AUC and F1 per dataset; the paper's rows are printed
  in the same table, marked "(paper)".
* Tables 2 and 3 (zero-shot): per category, one row per method with AUC / ACC / F1, the paper's
  numbers for the same category and method in the columns beside ours.

A cell value is a plain number or a *stat* mapping ``{"mean": m, "std": s, "ci": [lo, hi]}``
(all fractions in [0, 1]); cells print in percent as ``83.5 ± 1.2 [81.0, 85.9]``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from etp.io import atomic_write_text

#: the paper's Table 1 (linear evaluation), percent
PAPER_TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "Random init": {"ptbxl": {"auc": 71.5, "f1": 52.3}, "cpsc2018": {"auc": 72.1, "f1": 59.9}},
    "CPC": {"ptbxl": {"auc": 70.3, "f1": 54.2}, "cpsc2018": {"auc": 74.6, "f1": 53.6}},
    "SimCLR": {"ptbxl": {"auc": 67.5, "f1": 55.5}, "cpsc2018": {"auc": 73.2, "f1": 56.8}},
    "BYOL": {"ptbxl": {"auc": 76.1, "f1": 56.8}, "cpsc2018": {"auc": 77.4, "f1": 61.3}},
    "SimSiam": {"ptbxl": {"auc": 71.4, "f1": 56.8}, "cpsc2018": {"auc": 75.5, "f1": 62.0}},
    "TS-TCC": {"ptbxl": {"auc": 81.8, "f1": 56.4}, "cpsc2018": {"auc": 83.5, "f1": 62.2}},
    "CLOCS": {"ptbxl": {"auc": 81.7, "f1": 55.8}, "cpsc2018": {"auc": 82.0, "f1": 61.3}},
    "ASTCL": {"ptbxl": {"auc": 82.0, "f1": 57.4}, "cpsc2018": {"auc": 84.2, "f1": 62.8}},
    "ETP": {"ptbxl": {"auc": 83.5, "f1": 61.3}, "cpsc2018": {"auc": 86.1, "f1": 63.4}},
}


def _zs(rows: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]):
    return {
        cat: {
            "Random init": dict(zip(("auc", "acc", "f1"), rnd)),
            "ETP": dict(zip(("auc", "acc", "f1"), etp)),
        }
        for cat, (rnd, etp) in rows.items()
    }


#: the paper's Tables 2 (PTB-XL) and 3 (CPSC2018): category -> method -> metric, percent
PAPER_ZERO_SHOT: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "ptbxl": _zs(
        {
            "NORM": ((52.7, 58.8, 72.8), (71.8, 56.8, 73.4)),
            "MI": ((57.6, 54.4, 28.7), (46.4, 15.5, 26.6)),
            "STTC": ((55.3, 43.7, 26.4), (56.3, 57.8, 24.8)),
            "CD": ((35.5, 10.6, 19.3), (52.6, 87.4, 28.1)),
            "HYP": ((25.4, 3.5, 6.3), (45.8, 86.4, 12.2)),
            "Average": ((45.3, 34.2, 30.7), (54.6, 60.8, 33.1)),
        }
    ),
    "cpsc2018": _zs(
        {
            "Normal": ((51.6, 23.1, 21.9), (55.1, 60.6, 26.8)),
            "AF": ((49.9, 15.9, 27.4), (50.9, 52.7, 32.5)),
            "I-AVB": ((46.3, 47.4, 22.7), (50.8, 51.8, 23.4)),
            "LBBB": ((33.3, 4.9, 6.0), (81.3, 94.0, 35.1)),
            "RBBB": ((45.3, 24.3, 39.3), (55.3, 24.3, 39.3)),
            "PAC": ((39.9, 9.6, 16.4), (46.3, 72.3, 18.8)),
            "PVC": ((43.8, 10.8, 19.4), (65.9, 78.3, 27.0)),
            "STD": ((39.5, 35.1, 22.7), (47.0, 19.6, 24.3)),
            "STE": ((45.0, 27.0, 8.1), (61.2, 95.0, 16.2)),
            "Average": ((43.8, 24.2, 18.2), (57.1, 60.9, 27.1)),
        }
    ),
}

#: etp method keys -> the paper's method names
METHOD_LABELS: dict[str, str] = {
    "etp": "ETP",
    "etp-paper": "ETP (paper settings)",
    "simclr": "SimCLR",
    "random": "Random init",
    "byol": "BYOL",
    "simsiam": "SimSiam",
    "cpc": "CPC",
    "ts-tcc": "TS-TCC",
    "clocs": "CLOCS",
    "clocs-cmsc": "CLOCS (CMSC)",
    "clocs-cmlc": "CLOCS (CMLC)",
}
DATASET_LABELS: dict[str, str] = {"ptbxl": "PTB-XL", "cpsc2018": "CPSC2018"}


def method_label(method: str) -> str:
    """The paper's name of a method key (``random`` -> ``Random init``, ``etp x`` -> ``ETP x``)."""
    low = method.strip().lower()
    for key, label in METHOD_LABELS.items():
        if low == key or low.startswith(key + " "):
            return label + method.strip()[len(key) :]
    return method


def _paper_ref(refs: Mapping[str, Any], method: str) -> Mapping[str, float] | None:
    """The paper's row matching ``method`` (``ETP (en+de)`` matches the paper's ``ETP``)."""
    label = method_label(method)
    for name, values in refs.items():
        if label == name or label.startswith(name + " "):
            return values
    return None


def stat(
    mean: float, std: float | None = None, ci: Sequence[float] | None = None
) -> dict[str, Any]:
    """A table cell value: mean, optional std over seeds, optional confidence interval."""
    return {"mean": mean, "std": std, "ci": list(ci) if ci is not None else None}


def with_ci(
    metrics: Mapping[str, Any], cis: Mapping[str, Sequence[float]] | None, prefix: str = ""
) -> dict[str, Any]:
    """Copy of ``metrics`` whose numbers become stat cells carrying their bootstrap CI.

    ``cis`` is keyed like :func:`etp.eval.metrics.flatten_metrics` (``"per_class.MI.auc"``),
    as :func:`etp.eval.metrics.bootstrap_ci` returns it. Counts (``n``) stay plain numbers.
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out[key] = with_ci(value, cis, name + ".")
        elif key != "n" and _finite(value) and not isinstance(value, bool):
            ci = (cis or {}).get(name)
            out[key] = stat(float(value), None, ci)
            if cis and name in cis and ci is None:  # too few records of the class
                out[key]["ci_estimable"] = False
        else:
            out[key] = value
    return out


def combine_seeds(
    runs: Sequence[Mapping[str, Any]],
    cis: Mapping[str, Sequence[float]] | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Metric dicts of several seeds -> one dict of stat cells ``{"mean", "std", "n", "ci"}``.

    The structure follows ``runs[0]``; ``cis`` (keyed like
    :func:`etp.eval.metrics.flatten_metrics`, e.g. from a bootstrap of pooled predictions) is
    attached where given. Counts (``n``) and non-numbers are taken from the first run.
    """
    if not runs:
        raise ValueError("combine_seeds needs at least one run")
    from etp.eval.metrics import mean_std

    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out[key] = combine_seeds(
                [r[key] for r in runs if isinstance(r.get(key), Mapping)], cis, name + "."
            )
        elif key != "n" and _finite(value) and not isinstance(value, bool):
            values = [float(r[key]) for r in runs if _finite(r.get(key))]
            m, sd = mean_std(values)
            ci = (cis or {}).get(name)
            out[key] = {"mean": m, "std": sd, "n": len(values), "ci": list(ci) if ci else None}
        else:
            out[key] = value
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def format_stat(value: Any, scale: float = 100.0, digits: int = 1) -> str:
    """``0.835`` -> ``83.5``; a stat -> ``83.5 ± 1.2 [81.0, 85.9]``; missing/NaN -> ``–``; a stat
    whose CI is not estimable (``"ci_estimable": False``: too few records of its class) ->
    ``83.5 ± 1.2 [n/e]``."""
    if value is None:
        return "–"
    if isinstance(value, Mapping):
        mean = value.get("mean")
        if not _finite(mean):
            return "–"
        text = f"{float(mean) * scale:.{digits}f}"
        std = value.get("std")
        if _finite(std) and value.get("n", 2) != 1:
            text += f" ± {float(std) * scale:.{digits}f}"
        ci = value.get("ci")
        if ci is not None and len(ci) == 2 and all(_finite(c) for c in ci):
            text += f" [{float(ci[0]) * scale:.{digits}f}, {float(ci[1]) * scale:.{digits}f}]"
        elif value.get("ci_estimable") is False:
            text += " [n/e]"
        return text
    if not _finite(value):
        return "–"
    return f"{float(value) * scale:.{digits}f}"


def _paper(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (a ``|`` inside a cell, e.g. in a label, is escaped)."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [row(r) for r in rows]
    return "\n".join(lines)


def linear_probe_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    datasets: Sequence[str] = ("ptbxl", "cpsc2018"),
    paper: bool = True,
) -> str:
    """Paper Table 1: rows = methods (ours, then the paper's), columns = AUC, F1 per dataset.

    ``results[method][dataset] = {"auc": value|stat, "f1": value|stat}``.
    """
    header = ["Method"]
    for ds in datasets:
        header += [f"{DATASET_LABELS.get(ds, ds)} AUC", f"{DATASET_LABELS.get(ds, ds)} F1"]
    rows = []
    for method, per_ds in results.items():
        row = [f"{method_label(method)} (ours)"]
        for ds in datasets:
            m = per_ds.get(ds, {})
            row += [format_stat(m.get("auc")), format_stat(m.get("f1"))]
        rows.append(row)
    if paper:
        for method, per_ds in PAPER_TABLE1.items():
            row = [f"{method} (paper)"]
            for ds in datasets:
                m = per_ds.get(ds, {})
                row += [_paper(m.get("auc")), _paper(m.get("f1"))]
            rows.append(row)
    return markdown_table(header, rows)


def zero_shot_table(
    dataset: str,
    results: Mapping[str, Mapping[str, Any]],
    classes: Sequence[str] | None = None,
    paper: bool = True,
) -> str:
    """Paper Tables 2/3: per category, one row per method: AUC, ACC, F1 (+ the paper's beside).

    ``results[method] = {"per_class": {cls: {"auc", "acc", "f1"}}, "average": {...}}`` — the
    output of :func:`etp.eval.metrics.zero_shot_metrics`, or the same shape with stat cells.
    """
    if classes is None:
        classes = []
        for r in results.values():
            classes.extend(c for c in r.get("per_class", {}) if c not in classes)
    paper_ds = PAPER_ZERO_SHOT.get(dataset, {}) if paper else {}
    header = ["Category", "Method", "AUC", "ACC", "F1"]
    if paper_ds:
        header += ["paper AUC", "paper ACC", "paper F1"]
    rows = []
    for cat in list(classes) + ["Average"]:
        for method, r in results.items():
            cell = r.get("average", {}) if cat == "Average" else r.get("per_class", {}).get(cat, {})
            row = [cat, method_label(method)] + [
                format_stat(cell.get(m)) for m in ("auc", "acc", "f1")
            ]
            if paper_ds:
                ref = _paper_ref(paper_ds.get(cat, {}), method)
                row += [_paper(ref.get(m)) if ref else "–" for m in ("auc", "acc", "f1")]
            rows.append(row)
    return markdown_table(header, rows)


def probe_per_class_table(
    results: Mapping[str, Mapping[str, Any]], classes: Sequence[str] | None = None
) -> str:
    """Per-class linear-probe values, one row per (class, method): test records, AUC, F1.

    ``results[method] = {"per_class": {cls: {"auc", "f1", "n"}}}`` (plain values or stat cells),
    as :func:`etp.eval.metrics.classification_metrics` gives it; the macro row comes from the
    top-level ``auc`` / ``f1``. Table 1 shows only the macro values; rare classes decide them.
    """
    if classes is None:
        classes = []
        for r in results.values():
            classes.extend(c for c in r.get("per_class", {}) if c not in classes)
    rows = []
    for cat in list(classes) + ["Macro"]:
        for method, r in results.items():
            cell = r if cat == "Macro" else r.get("per_class", {}).get(cat, {})
            rows.append(
                [cat, _count(cell.get("n")), method_label(method)]
                + [format_stat(cell.get(m)) for m in ("auc", "f1")]
            )
    return markdown_table(["Category", "test records", "Method", "AUC", "F1"], rows)


def _count(n: Any) -> str:
    """A record count as text: a plain int, or a stat cell of one (the same in every seed)."""
    if isinstance(n, Mapping):
        n = n.get("mean")
    return str(int(round(float(n)))) if _finite(n) else ""


def retrieval_table(
    results: Mapping[str, Mapping[str, Any]], ks: Sequence[int] = (1, 5, 10)
) -> str:
    """Rows = methods; columns = ECG→report and report→ECG Recall@K (percent)."""
    header = ["Method"] + [f"ECG→report R@{k}" for k in ks] + [f"report→ECG R@{k}" for k in ks]
    rows = []
    for method, r in results.items():
        row = [method_label(method)]
        row += [format_stat(r.get("ecg_to_report", {}).get(f"R@{k}")) for k in ks]
        row += [format_stat(r.get("report_to_ecg", {}).get(f"R@{k}")) for k in ks]
        rows.append(row)
    return markdown_table(header, rows)


def per_class_table(metrics: Mapping[str, Any], columns: Sequence[str] = ("auc", "f1")) -> str:
    """Per-class values of one metrics dict (``metrics["per_class"]``) with the class counts."""
    header = ["Class", "n"] + [c.upper() for c in columns]
    rows = []
    for cls, v in metrics.get("per_class", {}).items():
        n = v.get("n")
        rows.append(
            [cls, str(n) if isinstance(n, int) else "", *(format_stat(v.get(c)) for c in columns)]
        )
    return markdown_table(header, rows)


# ------------------------------------------------------------------------------------------
# results.json
# ------------------------------------------------------------------------------------------


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checked-out git commit of ``cwd`` (this file's repository by default), or None."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return commit + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """Machine and library versions worth recording next to a measurement."""
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: dataclasses/paths/numpy converted, NaN/inf -> None, tuples -> lists."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def run_metadata(
    command: Sequence[str] | str | None = None,
    config: Any = None,
    data_fingerprint: str | Mapping[str, str] | None = None,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """What produced a result: command line, config, git commit, data, seeds, machine, time."""
    from etp import __version__

    if command is None:
        command = sys.argv
    return {
        "command": command if isinstance(command, str) else " ".join(str(c) for c in command),
        "config": to_jsonable(config),
        "git_commit": git_commit(),
        "etp_version": __version__,
        "data_fingerprint": to_jsonable(data_fingerprint),
        "seeds": list(seeds) if seeds is not None else None,
        "machine": machine_info(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write_results_json(
    path: str | Path,
    results: Mapping[str, Any],
    command: Sequence[str] | str | None = None,
    config: Any = None,
    data_fingerprint: str | Mapping[str, str] | None = None,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write ``{"meta": run_metadata(...), "results": results}`` atomically; returns the payload."""
    payload = {
        "meta": run_metadata(command, config, data_fingerprint, seeds),
        "results": to_jsonable(results),
    }
    atomic_write_text(Path(path), json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return payload
