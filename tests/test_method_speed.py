"""benchmarks/method_speed.py: every Table 1 config is measured, through the real loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import benchmark_script

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_trainable_table1_config_is_measured() -> None:
    names = set(benchmark_script("method_speed").method_configs())
    assert names == {"etp", "simclr", "byol", "simsiam", "cpc", "ts-tcc", "clocs-cmsc",
                     "clocs-cmlc"}  # fmt: skip


def test_one_method_measured_on_the_sample(ptbxl_sample_cache: Path, tmp_path: Path) -> None:
    ms = benchmark_script("method_speed")
    out = tmp_path / "out"
    rc = ms.main(["--cache", str(ptbxl_sample_cache), "--only", "cpc", "--steps", "1",
                  "--precision", "fp32", "--work", str(tmp_path / "w"), "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "method_speed.json").read_text())
    r = res["methods"]["cpc"]
    assert r["method"] == "cpc" and r["steps_timed"] >= 1 and r["samples_per_s"] > 0
    assert r["config_epochs"] == 50 and r["batch_size"] == 128
    md = (out / "method_speed.md").read_text()
    assert "| cpc | `configs/cpc-ptbxl.yaml` | 128 |" in md and "precision: fp32" in md
    # the report is rewritten from the JSON alone
    (out / "method_speed.md").unlink()
    assert ms.main(["--report-only", "--out", str(out)]) == 0
    assert (out / "method_speed.md").read_text() == md
    assert ms.main(["--only", "nosuch", "--cache", str(ptbxl_sample_cache)]) == 2
