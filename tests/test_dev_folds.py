"""Declared development folds: the benchmark's clean figures and the dev scripts' refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from etp.benchmark import BenchmarkConfig, check_dev_folds, load_benchmark_config, rotations
from etp.errors import ConfigError

from conftest import benchmark_script

REPO = Path(__file__).resolve().parents[1]
PTBXL = str(REPO / "configs" / "benchmark-ptbxl.yaml")


def test_shipped_config_declares_the_development_folds() -> None:
    assert load_benchmark_config(PTBXL).dev_folds == [6, 7, 8, 9]
    assert BenchmarkConfig().dev_folds == []
    with pytest.raises(ConfigError, match=r"dev_folds\[0\]: expected an integer"):
        load_benchmark_config(PTBXL, ["dev_folds=[a]"])


def test_check_dev_folds_names_the_clean_folds() -> None:
    cfg = load_benchmark_config(PTBXL)
    check_dev_folds(cfg, [9, 8, 7, 6], "folds", "x.yaml")  # the development rotations pass
    with pytest.raises(ConfigError, match=r"folds \[5, 10\] not in dev_folds \[6, 7, 8, 9\] of x\.yaml"):
        check_dev_folds(cfg, [10, 9, 5], "folds", "x.yaml")
    with pytest.raises(ConfigError, match=r"not in dev_folds \[\]"):
        check_dev_folds(BenchmarkConfig(), [9], "folds", "x.yaml")


@pytest.mark.parametrize("rotation", ["10/9", "6/5", "5/4"])
def test_dev_rotations_refuses_a_clean_fold(
    rotation: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = benchmark_script("dev_rotations")
    argv = ["x", "--rotations", rotation, "--root", str(tmp_path / "none"),
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.jsonl")]
    with pytest.raises(SystemExit) as exc:
        script.main(argv)
    msg = str(exc.value.code)
    assert msg.startswith("dev_rotations.py: error: --rotations: test/validation fold(s) [")
    assert "not in dev_folds [6, 7, 8, 9]" in msg and "\n" not in msg
    assert not (tmp_path / "work").exists() and not (tmp_path / "out.jsonl").exists()


def test_dev_rotations_with_a_config_without_dev_folds_refuses_everything(tmp_path: Path) -> None:
    script = benchmark_script("dev_rotations")
    quick = str(REPO / "configs" / "quickstart-benchmark.yaml")
    with pytest.raises(SystemExit, match=r"\[6, 7, 8, 9\] not in dev_folds \[\]"):
        script.main(["x", "--config", quick, "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_dev_validation_refuses_a_clean_validation_fold(tmp_path: Path) -> None:
    script = benchmark_script("dev_validation")
    for part in ("probe", "zero-shot"):
        with pytest.raises(SystemExit, match=r"--val-folds: validation fold\(s\) \[10\] not in dev_folds"):
            script.main([part, "--config", PTBXL, "--val-folds", "9,10", "--out", str(tmp_path / "o.md")])
    quick = str(REPO / "configs" / "quickstart-benchmark.yaml")
    with pytest.raises(SystemExit, match="declares no dev_folds"):
        script.main(["probe", "--config", quick])
    cfg, folds = script._checked(PTBXL, "")
    assert folds == {6, 7, 8, 9}
    assert not (tmp_path / "o.md").exists()


def _outputs(rng: Any, rots: list[Any], n: int = 30) -> dict[str, dict[int, list[Any]]]:
    """Per-record outputs of two methods on each rotation's test fold (n records each)."""
    import numpy as np

    from etp.eval.protocol import EvalOutput

    out: dict[str, dict[int, list[Any]]] = {}
    for method in ("etp", "random"):
        for rot in rots:
            y = np.arange(n) % 3
            probs = rng.dirichlet(np.ones(3), size=n)
            res = EvalOutput(
                test_ids=[f"{rot.test}-{i}" for i in range(n)], test_y=y,
                test_indices=np.arange(n), probe={1.0: probs},
                probe_results={1.0: {"selection": {"n_train": 9}}},
                zs_test={"en": probs, "other": probs[:, ::-1]},
                zs_val_auc={"en": 0.6, "other": 0.7}, zs_selected="other",
            )
            out.setdefault(method, {}).setdefault(0, []).append(res)
    return out


def test_results_report_figures_over_the_clean_folds() -> None:
    import numpy as np

    from etp.benchmark.render import render_markdown
    from etp.benchmark.run import _clean_figures
    from etp.eval.aggregate import pool_outputs
    from etp.eval.zero_shot import PromptOptions

    cfg = BenchmarkConfig(
        rotate_folds=True, dev_folds=[3], bootstrap=20, methods=["etp", "random"],
        zero_shot=[PromptOptions(name="en"), PromptOptions(name="other", synonyms=True)],
    )
    rots = rotations(cfg, [1, 2, 3])
    outputs = _outputs(np.random.default_rng(0), rots)
    classes = ["a", "b", "c"]
    pooled = pool_outputs(outputs, classes, cfg.bootstrap)
    pooled.update(_clean_figures(cfg, rots, outputs, classes))
    assert pooled["n_test"] == 90 and pooled["clean_test_folds"] == [1, 2]
    clean = pooled["clean"]
    assert clean["n_test"] == 60  # folds 1 and 2 only
    want = pool_outputs({m: {0: per[0][:2]} for m, per in outputs.items()}, classes, 20)
    assert clean["linear_probe"]["etp"]["1.0"]["per_seed"] == want["linear_probe"]["etp"]["1.0"]["per_seed"]
    assert "comparisons" in clean
    results = {"records_used": {}, "ptbxl": pooled, "seconds": {"total": 1.0}}
    md = render_markdown(cfg, results, {}, "ptbxl")
    assert "### Table 1, clean folds only (records no development choice has seen) — ptbxl" in md
    assert "Pooled over test folds [1, 2] (dev_folds [3]" in md
    assert "## Table 2, clean folds only" in md
    assert "ptbxl, clean folds [1, 2]" in md  # the paired differences over the clean folds
    # no dev folds declared: no clean section, and the results say so nowhere falsely
    cfg.dev_folds = []
    none = _clean_figures(cfg, rots, outputs, classes)
    assert none == {"clean_test_folds": [1, 2, 3]}
    cfg.dev_folds = [1, 2, 3]
    assert _clean_figures(cfg, rots, outputs, classes) == {"clean_test_folds": []}


def test_the_headline_zero_shot_is_the_nested_choice() -> None:
    """Table 2 leads with the variant chosen per rotation on its own validation fold; the fixed
    shipped variant is labelled as chosen on every rotation's validation folds."""
    import numpy as np

    from etp.benchmark.render import render_markdown
    from etp.eval.aggregate import pool_outputs
    from etp.eval.zero_shot import PromptOptions

    cfg = BenchmarkConfig(
        rotate_folds=True, bootstrap=0, methods=["etp", "random"], zero_shot_default="other",
        zero_shot=[PromptOptions(name="en"), PromptOptions(name="other", synonyms=True)],
    )
    rots = rotations(cfg, [1, 2, 3])
    outputs = _outputs(np.random.default_rng(1), rots)
    outputs["etp"][0][1].zs_selected = "en"  # rotation 2 chose the other variant
    pooled = pool_outputs(outputs, ["a", "b", "c"], 0)
    zs = pooled["zero_shot"]["etp"]
    assert zs["val-selected"]["chosen"] == ["other", "en", "other"]
    # the paired difference uses the nested choice of each rotation
    y = np.concatenate([r.test_y for r in outputs["etp"][0]])
    nested = np.concatenate([r.zs_test[r.zs_selected] for r in outputs["etp"][0]])
    from etp.eval.metrics import zero_shot_metrics

    want = zero_shot_metrics(y, nested, ["a", "b", "c"], warn=False)["average"]["auc"]
    assert zs["val-selected"]["per_seed"][0]["average"]["auc"] == want
    assert zs["val-selected"]["per_seed"] != zs["other"]["per_seed"]
    md = render_markdown(cfg, {"records_used": {}, "ptbxl": pooled}, {}, "ptbxl")
    heads = [line for line in md.splitlines() if line.startswith("## Table 2")]
    assert heads[0].endswith("headline: prompt variant chosen on each rotation's validation "
                             "fold only (nested) (`val-selected`)")
    assert "shipped prompt variant (fixed; chosen on all rotations' validation folds) (`other`)" \
        in heads[2]
    assert "| ETP | other (fixed; chosen on all rotations' validation folds) |" in md
