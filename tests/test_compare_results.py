"""benchmarks/compare_results.py: figure-by-figure comparison of two benchmark results.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import benchmark_script

REPO = Path(__file__).resolve().parents[1]


def _results() -> dict[str, Any]:
    per_seed = [{"auc": 0.86, "f1": 0.52, "per_class": {"HYP": {"auc": float("nan"), "n": 0}}}]
    return {
        "meta": {
            "git_commit": "abc1234def",
            "date": "2026-12-01",
            "seeds": [0],
            "machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "torch": "2.13.0+cpu"},
        },
        "results": {
            "name": "x",
            "ptbxl": {
                "linear_probe": {
                    "etp": {"1.0": {"per_seed": per_seed, "stats": {"auc": {"ci": [0.8, 0.9]}}}},
                    "simclr": {"1.0": {"per_seed": [{"auc": 0.82, "f1": 0.47}]}},
                },
                "zero_shot": {"etp": {"en": {"average": {"auc": 0.74}, "chosen": True}}},
                "selection": {"etp": {"1.0": [{"weight_decay": 0.1, "readout": "avg+max"}]}},
                "n_test": 782,
            },
            "seconds": {"total": 991.3},
        },
    }


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_identical_results_agree_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _write(tmp_path / "a.json", _results())
    out = tmp_path / "report.md"
    assert benchmark_script("compare_results").main([str(a), str(a), "--methods", "etp", "--out", str(out)]) == 0
    # etp: auc, f1, HYP auc (NaN == NaN), HYP n, two CI ends, zero-shot auc, the chosen weight
    # decay; the boolean "chosen", strings, simclr, n_test and the wall time are not compared
    assert "**8 of 8 figures agree**; 0 differ" in capsys.readouterr().out
    text = out.read_text()
    assert "**8 of 8 figures agree**" in text
    assert "(commit abc1234, 2026-12-01, seeds [0]; AMD EPYC, 2 cores, torch 2.13.0+cpu)" in text


def test_a_changed_figure_and_a_missing_one_are_listed(tmp_path: Path) -> None:
    new = _results()
    new["results"]["ptbxl"]["linear_probe"]["etp"]["1.0"]["per_seed"][0]["auc"] = 0.87
    del new["results"]["ptbxl"]["zero_shot"]["etp"]["en"]["average"]
    new["results"]["ptbxl"]["linear_probe"]["simclr"]["1.0"]["per_seed"][0]["f1"] = 0.5
    a, b = _write(tmp_path / "new.json", new), _write(tmp_path / "old.json", _results())
    out = tmp_path / "report.md"
    assert benchmark_script("compare_results").main([str(a), str(b), "--methods", "etp,simclr", "--out", str(out)]) == 1
    text = out.read_text()
    assert "**7 of 9 figures agree**; 2 differ; 0 only in the new file, 1 only in the old one" in text
    assert "| `ptbxl/linear_probe/etp/1.0/per_seed[0]/auc` | 0.87 | 0.86 | +0.01 |" in text
    assert "- `ptbxl/zero_shot/etp/en/average/auc`" in text
    # within a tolerance the changed figures agree
    assert benchmark_script("compare_results").main([str(a), str(b), "--methods", "etp,simclr", "--tol", "0.05"]) == 1
    assert benchmark_script("compare_results").main([str(a), str(a), "--methods", "etp,simclr", "--tol", "0.05"]) == 0


def test_nan_against_a_number_differs() -> None:
    mod = benchmark_script("compare_results")
    agree, diffs, _, _ = mod.compare({"x": float("nan"), "y": 1.0}, {"x": 0.5, "y": 1.0}, 0.1)
    assert agree == 1 and [d[0] for d in diffs] == ["x"]


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    mod = benchmark_script("compare_results")
    good = _write(tmp_path / "good.json", _results())
    with pytest.raises(SystemExit, match="missing.json: no such file"):
        mod.main([str(tmp_path / "missing.json"), str(good)])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SystemExit, match="broken.json: not valid JSON"):
        mod.main([str(broken), str(good)])
    other = _write(tmp_path / "other.json", {"a": 1})
    with pytest.raises(SystemExit, match="other.json: not an etp benchmark results.json"):
        mod.main([str(other), str(good)])
    no_random = copy.deepcopy(_results())
    with pytest.raises(SystemExit, match=r"no result of the methods \['random'\]"):
        mod.main([str(_write(tmp_path / "n.json", no_random)), str(good), "--methods", "random"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tol", "-0.1"], "--tol must be >= 0, got -0.1"),
        (["--tol", "nan"], "--tol must be >= 0, got nan"),
        (["--show", "-1"], "--show must be >= 0, got -1"),
        (["--methods", " , "], "--methods names no method"),
    ],
)
def test_bad_flags_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    good = str(_write(tmp_path / "good.json", _results()))
    with pytest.raises(SystemExit) as exc:
        benchmark_script("compare_results").main([good, good, *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err
