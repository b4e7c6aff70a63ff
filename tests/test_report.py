"""Markdown tables in the paper's layouts, results.json, and PNG plots (etp.eval.report/plots)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from etp.eval import report
from etp.eval.metrics import zero_shot_metrics
from etp.eval.plots import plot_embedding_map, plot_roc_curves, plot_vs_paper
from etp.eval.report import (
    PAPER_TABLE1,
    PAPER_ZERO_SHOT,
    format_stat,
    linear_probe_table,
    method_label,
    per_class_table,
    probe_per_class_table,
    retrieval_table,
    combine_seeds,
    stat,
    with_ci,
    write_results_json,
    zero_shot_table,
)

PTBXL = ["NORM", "MI", "STTC", "CD", "HYP"]
PNG = b"\x89PNG\r\n\x1a\n"


def _zs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, size=200)
    p = rng.dirichlet(np.ones(5), size=200)
    return zero_shot_metrics(y, p, PTBXL)


def test_paper_numbers_are_the_papers() -> None:
    assert PAPER_TABLE1["ETP"]["ptbxl"] == {"auc": 83.5, "f1": 61.3}
    assert PAPER_TABLE1["Random init"]["cpsc2018"] == {"auc": 72.1, "f1": 59.9}
    assert PAPER_ZERO_SHOT["ptbxl"]["Average"]["ETP"] == {"auc": 54.6, "acc": 60.8, "f1": 33.1}
    assert PAPER_ZERO_SHOT["cpsc2018"]["LBBB"]["ETP"]["auc"] == 81.3
    assert PAPER_ZERO_SHOT["cpsc2018"]["Average"]["Random init"]["f1"] == 18.2
    assert list(PAPER_ZERO_SHOT["ptbxl"]) == PTBXL + ["Average"]


def test_format_stat() -> None:
    assert format_stat(0.8352) == "83.5"
    assert format_stat(stat(0.835, 0.012, (0.81, 0.859))) == "83.5 ± 1.2 [81.0, 85.9]"
    assert format_stat(stat(0.5)) == "50.0"
    assert format_stat(float("nan")) == "–" and format_stat(None) == "–"
    assert format_stat({"mean": 0.5, "std": 0.0, "n": 1}) == "50.0"
    assert method_label("random") == "Random init" and method_label("etp (en+de)") == "ETP (en+de)"
    assert method_label("my-method") == "my-method"


def test_linear_probe_table_layout() -> None:
    ours = {
        "etp": {"ptbxl": {"auc": stat(0.88, 0.01, (0.85, 0.9)), "f1": 0.6}},
        "random": {"ptbxl": {"auc": 0.67, "f1": 0.4}},
    }
    md = linear_probe_table(ours)
    lines = md.splitlines()
    assert lines[0] == "| Method | PTB-XL AUC | PTB-XL F1 | CPSC2018 AUC | CPSC2018 F1 |"
    assert "| ETP (ours) | 88.0 ± 1.0 [85.0, 90.0] | 60.0 | – | – |" in lines
    assert "| Random init (ours) | 67.0 | 40.0 | – | – |" in lines
    assert "| ETP (paper) | 83.5 | 61.3 | 86.1 | 63.4 |" in lines
    assert len(lines) == 2 + 2 + len(PAPER_TABLE1)
    assert "(paper)" not in linear_probe_table(ours, paper=False)


def test_zero_shot_table_layout() -> None:
    md = zero_shot_table("ptbxl", {"random": _zs(0), "etp": _zs(1)})
    lines = md.splitlines()
    assert lines[0].startswith(
        "| Category | Method | AUC | ACC | F1 | paper AUC | paper ACC | paper F1"
    )
    assert len(lines) == 2 + 6 * 2  # 5 classes + Average, 2 methods
    norm_etp = [line for line in lines if line.startswith("| NORM | ETP |")][0]
    assert norm_etp.endswith("| 71.8 | 56.8 | 73.4 |")
    avg = [line for line in lines if line.startswith("| Average | Random init |")][0]
    assert avg.endswith("| 45.3 | 34.2 | 30.7 |")
    # a variant of ETP still finds the paper's ETP row; an unknown method gets dashes
    md2 = zero_shot_table("ptbxl", {"etp (en+de)": _zs(1), "simclr": _zs(2)})
    assert "| NORM | ETP (en+de) |" in md2 and md2.count("| – | – | – |") == 6
    md3 = zero_shot_table("manifest", {"etp": _zs(1)})
    assert "paper" not in md3


def test_other_tables() -> None:
    r = {
        "ecg_to_report": {"R@1": 0.1, "R@5": 0.3, "R@10": 0.5},
        "report_to_ecg": {"R@1": 0.2, "R@5": 0.4, "R@10": 0.6},
    }
    md = retrieval_table({"etp": r})
    assert "| ETP | 10.0 | 30.0 | 50.0 | 20.0 | 40.0 | 60.0 |" in md
    pc = per_class_table(_zs(), columns=("auc", "acc", "f1"))
    assert pc.splitlines()[0] == "| Class | n | AUC | ACC | F1 |" and len(pc.splitlines()) == 7


def test_probe_per_class_table() -> None:
    from etp.eval.metrics import classification_metrics

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), [50, 20, 15, 10, 5])
    runs = [classification_metrics(y, rng.dirichlet(np.ones(5), size=y.size), PTBXL)
            for _ in range(2)]
    cells = combine_seeds(runs)
    md = probe_per_class_table({"etp": cells, "random": runs[0]})
    lines = md.splitlines()
    assert lines[0] == "| Category | test records | Method | AUC | F1 |"
    assert len(lines) == 2 + 6 * 2  # 5 classes + the macro row, 2 methods
    hyp = [line for line in lines if line.startswith("| HYP | 5 | ETP |")][0]
    auc = np.mean([r["per_class"]["HYP"]["auc"] for r in runs])
    assert hyp.split(" | ")[3].startswith(f"{100 * auc:.1f} ± ")
    macro = [line for line in lines if line.startswith("| Macro | 100 | Random init |")][0]
    assert macro == f"| Macro | 100 | Random init | {100 * runs[0]['auc']:.1f} | {100 * runs[0]['f1']:.1f} |"
    # counts stored as stat cells (the benchmark's results.json) print as integers
    assert "| MI | 20 | ETP |" in probe_per_class_table(
        {"etp": {"per_class": {"MI": {"auc": 0.7, "f1": 0.2, "n": {"mean": 20.0, "std": 0.0}}}}}
    )


def test_results_json(tmp_path, monkeypatch) -> None:
    payload = write_results_json(
        tmp_path / "results.json",
        {"zero_shot": _zs(), "nan": float("nan"), "arr": np.arange(3)},
        command=["etp", "evaluate", "--model", "m"],
        config={"split": "test"},
        data_fingerprint="abc123",
        seeds=[0, 1, 2],
    )
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded == json.loads(json.dumps(payload))
    meta = loaded["meta"]
    assert meta["command"] == "etp evaluate --model m"
    assert meta["seeds"] == [0, 1, 2] and meta["data_fingerprint"] == "abc123"
    assert meta["config"] == {"split": "test"}
    assert meta["machine"]["cpu_count"] >= 1 and "torch" in meta["machine"]
    assert "git_commit" in meta and meta["date"]
    assert loaded["results"]["nan"] is None and loaded["results"]["arr"] == [0, 1, 2]
    # no git (or no repository): recorded as null, never an error
    monkeypatch.setenv("PATH", str(tmp_path))
    assert report.git_commit(tmp_path) is None


def test_plots_write_png(tmp_path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=120)  # HYP absent: skipped, no error
    probs = rng.dirichlet(np.ones(5), size=120)
    probs[np.arange(120), y] += 0.5
    files = [
        plot_roc_curves(y, probs, PTBXL, tmp_path / "roc.png"),
        plot_vs_paper(
            {"NORM": 80.0, "MI": 70.0},
            {"NORM": 71.8, "MI": 46.4, "HYP": 45.8},
            tmp_path / "bars.png",
            errors={"NORM": 2.0, "MI": 3.0},
        ),
        plot_embedding_map(
            rng.normal(size=(120, 16)), np.where(y == 3, -1, y), PTBXL, tmp_path / "sub" / "map.png"
        ),
        plot_embedding_map(
            rng.normal(size=(40, 16)), y[:40], PTBXL, tmp_path / "tsne.png", method="tsne"
        ),
    ]
    for f in files:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 2000
    with pytest.raises(ValueError, match="projection"):
        plot_embedding_map(
            rng.normal(size=(10, 4)), y[:10], PTBXL, tmp_path / "x.png", method="umap"
        )


def test_seed_combination_and_ci_cells() -> None:
    runs = [_zs(0), _zs(1), _zs(2)]
    cells = combine_seeds(runs, cis={"average.auc": (0.4, 0.6)})
    aucs = [r["average"]["auc"] for r in runs]
    assert cells["average"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert cells["average"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    assert cells["average"]["auc"]["ci"] == [0.4, 0.6] and cells["average"]["f1"]["ci"] is None
    assert cells["per_class"]["MI"]["n"] == runs[0]["per_class"]["MI"]["n"]
    md = zero_shot_table("ptbxl", {"etp": cells})
    avg = [line for line in md.splitlines() if line.startswith("| Average | ETP |")][0]
    assert " ± " in avg and "[40.0, 60.0]" in avg
    single = with_ci(runs[0], {"per_class.MI.auc": (0.1, 0.9)})
    assert single["per_class"]["MI"]["auc"]["ci"] == [0.1, 0.9]
    assert format_stat(single["per_class"]["MI"]["auc"]).endswith("[10.0, 90.0]")
