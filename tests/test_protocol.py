"""One evaluation core: `etp evaluate` and `etp benchmark` give a model the same figures, and the
shipped protocol is defined once (the benchmark config's probe and prompt variant are the
defaults of `etp evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etp.benchmark import load_benchmark_config, run_benchmark
from etp.cli import main
from etp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart-benchmark.yaml")


def test_the_shipped_protocol_is_the_default_of_etp_evaluate() -> None:
    from etp.commands.evaluate import EvaluateConfig
    from etp.eval.linear_probe import ProbeConfig
    from etp.eval.protocol import SHIPPED_PROMPTS

    cfg = load_benchmark_config(str(REPO / "configs" / "benchmark-ptbxl.yaml"))
    assert cfg.probe == ProbeConfig() == EvaluateConfig().probe
    shipped = [v for v in cfg.zero_shot if v.label == cfg.zero_shot_default]
    assert shipped == [SHIPPED_PROMPTS] == EvaluateConfig().zero_shot
    # the shipped benchmark writes under runs/, never over the committed benchmarks/results/
    for name in ("benchmark-ptbxl.yaml", "quickstart-benchmark.yaml"):
        out = load_benchmark_config(str(REPO / "configs" / name)).out_dir
        assert out.startswith("runs/"), (name, out)


def test_etp_evaluate_and_etp_benchmark_give_the_same_figures(
    tmp_path: Path, sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same model and records: the benchmark's probe and zero-shot figures are those of
    `etp evaluate` with its defaults (the quick start's random-init model: nothing to train)."""
    shrink = ["bootstrap=0", "probe.weight_decays=[1.0,0.01]", "probe.label_fractions=[1.0]"]
    cfg = load_benchmark_config(
        QUICKSTART,
        [
            f"out_dir={tmp_path / 'results'}",
            f"work_dir={tmp_path / 'work'}",
            f"prepare.root={sample_dir / 'ptb-xl'}",
            f"prepare.out={tmp_path / 'cache'}",
            "methods=[random]",
            "transfer={}",
            "retrieval=false",
            "plots=false",
            "zero_shot=[{name: en synonyms via reports, languages: [en], synonyms: true, "
            "via_reports: true}]",
            "zero_shot_default=en synonyms via reports",
            *shrink,
        ],
    )
    bench = run_benchmark(cfg, command=["etp", "benchmark", "(test)"])["ptbxl"]
    model = tmp_path / "work" / "models" / "random" / "seed0" / "test10" / "model"
    rc = main(
        [
            "evaluate", "--model", str(model), "--cache", str(tmp_path / "cache"), "--json",
            "--zero-shot", "--linear-probe", *shrink, f"features_cache={tmp_path / 'feat'}",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    ev = json.loads(captured.out)
    # the same records: the cache's split column is folds 1-8 / 9 / 10
    assert ev["data"]["n_test_single_label"] == bench["n_test"]
    lp_bench = bench["linear_probe"]["random"]["1.0"]["per_seed"][0]
    lp_eval = ev["linear_probe"]["100%"]["test"]
    for key in ("auc", "f1", "acc"):
        assert lp_eval[key] == lp_bench[key], key
    zs_bench = bench["zero_shot"]["random"]["en synonyms via reports"]["per_seed"][0]["average"]
    zs_eval = ev["zero_shot"]["en synonyms via reports"]["metrics"]["average"]
    for key in ("auc", "f1", "acc"):
        assert zs_eval[key] == zs_bench[key], key
    # the choices too: the probe's readout and weight decay
    sel = bench["selection"]["random"]["1.0"][0]
    assert ev["linear_probe"]["100%"]["selection"]["readout"] == sel["readout"]
    assert ev["linear_probe"]["100%"]["selection"]["weight_decay"] == sel["weight_decay"]


def test_a_missing_dataset_root_says_how_to_point_the_config_at_a_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-ptb-xl"
    overrides = [
        f"prepare.root={missing}",
        f"prepare.out={tmp_path / 'cache'}",
        f"work_dir={tmp_path / 'work'}",
        f"out_dir={tmp_path / 'results'}",
    ]
    cfg = load_benchmark_config(QUICKSTART, overrides)
    with pytest.raises(ConfigError, match=r"prepare\.root: .* does not exist; .*prepare\.root=/path/to/ptb-xl"):
        run_benchmark(cfg)
    rc = main(["benchmark", "--config", QUICKSTART, *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(missing) in err
    assert not (tmp_path / "work" / "models").exists()
