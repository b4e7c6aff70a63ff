"""Tests of the benchmark orchestration: config checks, fold rotation, pooling, and a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from etp.benchmark import (
    BenchmarkConfig,
    Rotation,
    load_benchmark_config,
    pretrain_config,
    rotations,
)
from etp.errors import ConfigError, DataError
from etp.eval.aggregate import pooled_stats, unflatten

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_valid() -> None:
    for name in ("benchmark-ptbxl.yaml", "quickstart-benchmark.yaml"):
        cfg = load_benchmark_config(str(REPO / "configs" / name))
        assert cfg.methods and cfg.views == "auto"
    one = load_benchmark_config(str(REPO / "configs" / "quickstart-benchmark.yaml"), ["views=1"])
    assert one.views == "1"  # a YAML number is read as the views text


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("methods=[etp,nosuch]", "methods: 'nosuch' is not a registered objective"),
        ("min_class_records_for_ci=0", "min_class_records_for_ci: 0 must be at least 1"),
        ("seeds=[]", "seeds"),
        ("model_choice=first", "model_choice"),
        ("probe.label_fractions=[0.0]", "label_fractions"),
        ("probe.solver=sgd", r"probe\.solver must be one of"),
        ("probe.solver=adam", r"probe\.cv_folds needs solver lbfgs"),
        ("probe.cv_folds=1", r"probe\.cv_folds must be 0"),
        ("probe.pooling=[max]", r"probe\.pooling: \['max'\] must list distinct readouts"),
        ("probe.pooling=[avg,avg]", r"probe\.pooling: .* must list distinct readouts"),
        ("pretrain.train.epochz=3", r"unknown config key\(s\): pretrain\.train\.epochz"),
        ("pretrain.train.epochs=abc", "expected an integer"),
        ("zero_shot=[{name: a}, {name: a}]", "unique"),
        ("zero_shot=[{nam: a}]", r"unknown config key\(s\): zero_shot\[0\]\.nam"),
        ("test_fold=9", "must differ"),
        ("zero_shot_default=nope", "zero_shot_default: 'nope' is not a zero_shot variant"),
        ("bogus=1", r"unknown config key\(s\): bogus"),
        ("method_pretrain.nosuch.train.lr=0.1", r"method_pretrain\.nosuch: neither one of"),
        ("method_seeds.nosuch=[1]", r"method_seeds\.nosuch: neither one of"),
        ("views=3x1", "views: 3 views of the whole record"),
        ("views=many", "views: expected N or NxF"),
    ],
)
def test_bad_benchmark_config(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_benchmark_config(str(REPO / "configs" / "quickstart-benchmark.yaml"), [override])


def test_rotation_never_trains_on_its_test_fold() -> None:
    cfg = BenchmarkConfig(rotate_folds=True)
    rots = rotations(cfg, list(range(1, 11)))
    assert [r.test for r in rots] == list(range(1, 11))
    for r in rots:
        assert r.test not in r.train and r.val not in r.train and r.val != r.test
        assert sorted(r.train + [r.val, r.test]) == list(range(1, 11))
    assert rots[0].val == 10 and rots[9].val == 9
    single = rotations(BenchmarkConfig(), list(range(1, 11)))
    assert single == [Rotation(10, 9, list(range(1, 9)))]
    with pytest.raises(ConfigError, match="not a fold"):
        rotations(BenchmarkConfig(test_fold=11), list(range(1, 11)))
    with pytest.raises(DataError, match="at least 3 folds"):
        rotations(cfg, [1, 2])


def test_pretrain_config_excludes_the_test_fold() -> None:
    cfg = load_benchmark_config(str(REPO / "configs" / "benchmark-ptbxl.yaml"))
    pc = pretrain_config(cfg, "simclr", 3, Rotation(4, 3, [1, 2, 5, 6, 7, 8, 9, 10]), "out", "c")
    assert pc.data.exclude_folds == [4]
    assert pc.data.val_folds == [3]
    assert 4 not in pc.data.train_folds
    assert pc.train.method == "simclr" and pc.train.seed == 3 and pc.train.out_dir == "out"
    assert pc.train.augment  # the per-method section was merged


def test_paper_settings_etp_is_a_method_with_the_papers_settings() -> None:
    from etp.eval.report import method_label

    cfg = load_benchmark_config(str(REPO / "configs" / "benchmark-ptbxl.yaml"))
    assert "etp-paper" in cfg.methods and "etp" in cfg.methods
    rot = Rotation(4, 3, [1, 2, 5, 6, 7, 8, 9, 10])
    paper = pretrain_config(cfg, "etp-paper", 0, rot, "out", "c")
    tuned = pretrain_config(cfg, "etp", 0, rot, "out", "c")
    assert paper.train.method == "etp" and paper.train.ema_decay == 0.0
    assert paper.model.report_translation == "none" and tuned.model.report_translation == "builtin"
    assert tuned.train.ema_decay == 0.95
    assert paper.objective == {"augment": False} and tuned.objective == {"augment": True}
    # the per-method model section overrides one key; the shared model settings stay
    assert paper.model.text_model == tuned.model.text_model and paper.model.embed_dim == 512
    assert paper.data.exclude_folds == [4]
    assert method_label("etp-paper") == "ETP (paper settings)"
    labels = [method_label(m) for m in ("byol", "simsiam", "cpc", "ts-tcc", "clocs", "random")]
    assert labels == ["BYOL", "SimSiam", "CPC", "TS-TCC", "CLOCS", "Random init"]
    from etp.eval.report import PAPER_TABLE1

    assert set(labels) <= set(PAPER_TABLE1)  # each of our rows pairs with the paper's


def test_every_table1_baseline_trains_with_its_own_config_file(tmp_path: Path) -> None:
    """``method_pretrain.NAME.config`` starts a method from its configs/<method>-ptbxl.yaml (model,
    train and objective sections; the data section is the benchmark's): every Table 1 method of
    the PTB-XL benchmark, each with the hyperparameters written once in its own file."""
    from etp.config import read_yaml
    from etp.eval.report import PAPER_TABLE1, method_label

    cfg = load_benchmark_config(str(REPO / "configs" / "benchmark-ptbxl.yaml"))
    want = {"etp", "etp-paper", "simclr", "random", "byol", "simsiam", "cpc", "ts-tcc",
            "clocs-cmsc", "clocs-cmlc"}  # fmt: skip
    assert set(cfg.methods) == want
    rot = Rotation(4, 3, [1, 2, 5, 6, 7, 8, 9, 10])
    for name in ("byol", "simsiam", "cpc", "ts-tcc", "clocs-cmsc", "clocs-cmlc"):
        own = read_yaml(REPO / "configs" / f"{name}-ptbxl.yaml")
        pc = pretrain_config(cfg, name, 1, rot, "out", "c")
        assert pc.train.method == own["train"]["method"] and pc.objective == own["objective"]
        for key in ("epochs", "batch_size", "lr", "weight_decay"):
            assert getattr(pc.train, key) == own["train"][key], (name, key)
        assert (pc.data.cache, pc.data.exclude_folds, pc.data.val_folds) == ("c", [4], [3])
        assert (pc.train.seed, pc.train.out_dir) == (1, "out")
        assert method_label(name).split(" (")[0] in PAPER_TABLE1
    assert method_label("clocs-cmsc") == "CLOCS (CMSC)"
    # a subset of the methods runs with the others' entries kept
    sub = load_benchmark_config(str(REPO / "configs" / "benchmark-ptbxl.yaml"), ["methods=[random]"])
    assert sub.methods == ["random"] and "clocs-cmlc" in sub.method_pretrain
    # keys beside `config` override the file's; a missing file is one error line
    byol = str(REPO / "configs" / "byol-ptbxl.yaml")
    over = load_benchmark_config(
        str(REPO / "configs" / "benchmark-ptbxl.yaml"),
        [f"method_pretrain.byol={{config: {byol}, train: {{epochs: 7}}}}"],
    )
    pc = pretrain_config(over, "byol", 0, rot, "out", "c")
    assert pc.train.epochs == 7 and pc.objective["tau_base"] == 0.996
    with pytest.raises(ConfigError, match=r"config file not found: .*nosuch\.yaml"):
        load_benchmark_config(
            str(REPO / "configs" / "benchmark-ptbxl.yaml"),
            [f"method_pretrain.byol={{config: {tmp_path / 'nosuch.yaml'}}}"],
        )


def test_pooled_stats_mean_std_and_ci() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    good = np.eye(3)[y] * 0.6 + rng.random((60, 3)) * 0.4
    noise = rng.random((60, 3))
    out = pooled_stats(y, [good, noise], "probe", ["a", "b", "c"], n_boot=50)
    auc = out["stats"]["auc"]
    assert auc["n"] == 2
    per_seed = [r["auc"] for r in out["per_seed"]]
    assert auc["mean"] == pytest.approx(np.mean(per_seed))
    assert auc["std"] == pytest.approx(np.std(per_seed, ddof=1))
    lo, hi = auc["ci"]
    assert lo <= auc["mean"] <= hi
    zs = pooled_stats(y, [good], "zero_shot", ["a", "b", "c"], n_boot=0)
    cells = unflatten(zs["stats"])
    assert cells["average"]["auc"]["mean"] == pytest.approx(zs["per_seed"][0]["average"]["auc"])


def _on_sample(tmp_path: Path, sample_dir: Path) -> list[str]:
    """Overrides that point the quick-start benchmark at the bundled sample and ``tmp_path``."""
    return [
        f"out_dir={tmp_path / 'results'}",
        f"work_dir={tmp_path / 'work'}",
        f"prepare.root={sample_dir / 'ptb-xl'}",
        f"prepare.out={tmp_path / 'cache'}",
    ]


def test_tiny_benchmark_end_to_end(tmp_path: Path, sample_dir: Path) -> None:
    """The quick-start protocol on the bundled sample, shrunk: tables, JSON and plots appear."""

    from etp.benchmark import run_benchmark

    cfg = load_benchmark_config(
        str(REPO / "configs" / "quickstart-benchmark.yaml"),
        [
            *_on_sample(tmp_path, sample_dir),
            f"transfer.cpsc2018.prepare.root={sample_dir / 'cpsc2018'}",
            f"transfer.cpsc2018.prepare.out={tmp_path / 'cache-cpsc'}",
            "pretrain.train.epochs=2",
            "probe.weight_decays=[1.0,0.01]",
            "probe.pooling=[avg,avg+max]",
            "bootstrap=20",
        ],
    )
    results = run_benchmark(cfg, command=["etp", "benchmark", "(test)"])
    out = tmp_path / "results"
    md = (out / "results.md").read_text()
    assert "Table 1" in md and "Table 2" in md and "Table 3" in md and "Retrieval" in md
    assert "ETP (paper)" in md and "83.5" in md
    assert "linear probe: L-BFGS to convergence (L2-penalised cross-entropy), weight decay (of 2) " \
        "by 5-fold cross-validated loss over the training folds" in md
    assert "encoder readout chosen by the same cross-validation among avg, avg+max" in md
    assert "Encoder readout chosen by cross-validation over the training records by the probe " \
        "fits (ptbxl, 100 % of the labels): ETP" in md
    # per-class probe values for both datasets, with the counts of test records
    assert "### Linear probe per class — ptbxl (100 % of the labels)" in md
    assert "### Linear probe per class — cpsc2018 (100 % of the labels)" in md
    block = md.split("### Linear probe per class — ptbxl")[1].split("###")[0]
    assert "| Category | test records | Method | AUC | F1 |" in block
    assert "| Macro |" in block and "| Random init |" in block
    assert "## Table 2 — zero-shot, ptbxl, shipped prompt variant (fixed; chosen on all " \
        "rotations' validation folds) (`en via reports`)" in md
    # the headline zero-shot table is the nested one, and comes first
    nested = "## Table 2 — zero-shot, ptbxl, headline: prompt variant chosen on each rotation's " \
        "validation fold only (nested) (`val-selected`)"
    assert nested in md and md.index(nested) < md.index("## Table 2 — zero-shot, ptbxl, the paper")
    assert "| en via reports (fixed; chosen on all rotations' validation folds) |" in md
    assert "zero-shot (nested: variant chosen per rotation on its validation fold)" in md
    chosen = results["ptbxl"]["selection"]["etp"]["1.0"][0]
    assert chosen["best_epochs"] == [0] and "history" not in chosen  # curves not stored
    assert chosen["selected_on"] in ("cv", "val") and chosen["weight_decay"] in (1.0, 0.01)
    assert "ETP (tuned recipe) against the baselines — paired differences" in md
    assert "ETP (tuned recipe) − Random init" in md
    # the quick start's ETP trains on crops, so it is scored on its three views; random init not
    assert results["ptbxl"]["views"] == {"etp": ["3x0.75"], "random": ["1"]}
    assert "- test-time views: ETP 3x0.75; Random init 1" in md
    cmp = results["ptbxl"]["comparisons"]["random"]
    lp_diff = cmp["linear_probe"]["auc"]
    assert lp_diff["ci"][0] <= lp_diff["diff"] <= lp_diff["ci"][1]
    assert set(cmp["zero_shot"]) == {"average.auc", "average.f1"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["seeds"] == [0]
    lp = saved["results"]["ptbxl"]["linear_probe"]
    assert set(lp) == {"etp", "random"}
    # the two encoders differ, so their probes must too
    assert lp["etp"]["1.0"]["per_seed"] != lp["random"]["1.0"]["per_seed"]
    assert results["ptbxl"]["zero_shot"]["etp"]["val-selected"]["chosen"]
    assert {"en", "en+de synonyms", "en via reports"} <= set(results["ptbxl"]["zero_shot"]["etp"])
    assert "en via reports" in results["cpsc2018"]["zero_shot"]["etp"]  # PTB-XL reports as gallery
    assert (out / "roc_zero_shot_etp.png").stat().st_size > 1000
    assert (out / "embedding_map_etp.png").is_file()
    assert (out / "zero_shot_vs_paper_en_via_reports.png").is_file()  # the shipped variant
    # test-fold records never reached pretraining: fold 10 excluded in the saved run config
    run_cfg = (tmp_path / "work" / "models" / "etp" / "seed0" / "test10" / "config.yaml").read_text()
    assert "exclude_folds:\n  - 10" in run_cfg or "exclude_folds: [10]" in run_cfg
    # a second run reuses every model: nothing is pretrained (or initialised) again
    import etp.train.loop as loop

    calls: list[str] = []
    real = loop.pretrain

    def counting(pcfg, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(pcfg.train.method)
        return real(pcfg, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "pretrain", counting)
    try:
        run_benchmark(cfg, command=["etp", "benchmark", "(test)"])
        assert calls == []
        # a changed pretraining setting retrains ETP afresh (random init does not depend on
        # it); the old run's checkpoint (other settings) is not resumed
        cfg.pretrain["train"]["epochs"] = 3
        run_benchmark(cfg, command=["etp", "benchmark", "(test)"])
        assert calls == ["etp"]
    finally:
        mp.undo()
    run_dir = tmp_path / "work" / "models" / "etp" / "seed0" / "test10"
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 3


def test_transfer_from_a_fold_that_is_no_rotation_fails_before_training(
    tmp_path: Path, sample_dir: Path
) -> None:
    from etp.benchmark import run_benchmark

    cfg = load_benchmark_config(
        str(REPO / "configs" / "quickstart-benchmark.yaml"),
        [
            *_on_sample(tmp_path, sample_dir),
            "transfer.cpsc2018.model_test_fold=7",  # the quick start tests fold 10 only
        ],
    )
    with pytest.raises(ConfigError, match=r"transfer\.cpsc2018\.model_test_fold 7 is not a rotation"):
        run_benchmark(cfg, command=["etp", "benchmark", "(test)"])
    assert not (tmp_path / "work" / "models").exists()  # nothing was pretrained


def test_reuse_only_refuses_to_build_a_missing_model(tmp_path: Path, sample_dir: Path) -> None:
    """obtain_model(build=False), as the validation-fold scripts call it, never trains."""
    from etp.benchmark import obtain_model, prepare, rotations

    cfg = load_benchmark_config(
        str(REPO / "configs" / "quickstart-benchmark.yaml"), _on_sample(tmp_path, sample_dir)
    )
    prepared, _ = prepare(cfg.prepare)
    rot = rotations(cfg, prepared.meta["fold"].astype(int).unique().tolist())[0]
    for method in ("etp", "random"):
        with pytest.raises(DataError, match=rf"no saved {method} model with these settings"):
            obtain_model(cfg, method, 0, rot, prepared, tmp_path / "work", build=False)
    assert not (tmp_path / "work" / "models").exists()  # nothing was built


def test_reuse_key_follows_what_the_objective_depends_on() -> None:
    from etp import objectives
    from etp.benchmark.runs import _model_key
    from etp.config import PretrainConfig, to_dict

    simclr, etp, random_init = (objectives.get(n) for n in ("simclr", "etp", "random"))
    a, b = PretrainConfig(), PretrainConfig()
    b.model.report_translation = "builtin"
    b.model.text_model = "/some/other/model"
    # no text side: the text settings do not decide the model
    assert _model_key(to_dict(a), simclr) == _model_key(to_dict(b), simclr)
    assert _model_key(to_dict(a), etp) != _model_key(to_dict(b), etp)
    assert _model_key(to_dict(a), random_init) != _model_key(to_dict(b), random_init)
    b.train.lr = 1e-4  # anything else still counts ...
    assert _model_key(to_dict(a), simclr) != _model_key(to_dict(b), simclr)
    c = PretrainConfig()
    c.train.lr, c.train.epochs = 1e-4, 3  # ... but not for a model that is never trained
    assert _model_key(to_dict(a), random_init) == _model_key(to_dict(c), random_init)
    c.train.seed = 5
    assert _model_key(to_dict(a), random_init) != _model_key(to_dict(c), random_init)


def test_a_marker_written_before_a_setting_existed_counts_it_as_default(tmp_path: Path) -> None:
    from etp import objectives
    from etp.benchmark.runs import _model_key, _reusable
    from etp.config import PretrainConfig, to_dict

    etp = objectives.get("etp")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    marker = tmp_path / "benchmark-run.json"
    cfg = PretrainConfig()
    key = {"pretrain": _model_key(to_dict(cfg), etp), "cache": "abc", "choice": "last"}
    defaults = {**key, "pretrain": _model_key(to_dict(PretrainConfig()), etp)}
    old = json.loads(json.dumps(key))
    del old["pretrain"]["train"]["crop_min_frac"]  # as written by an etp without that setting
    marker.write_text(json.dumps({"key": old}))
    assert _reusable(marker, key, model_dir, defaults)
    # ... but not when the setting is now used with another value
    cfg.train.crop_min_frac = 0.8
    other = {**key, "pretrain": _model_key(to_dict(cfg), etp)}
    assert not _reusable(marker, other, model_dir, defaults)
    # a moved work_dir (another run directory) or another log interval keeps the model
    moved = json.loads(json.dumps(key))
    moved["pretrain"]["train"]["out_dir"] = "/elsewhere/run"
    moved["pretrain"]["train"]["log_every_steps"] = 99
    moved["pretrain"]["data"]["cache"] = "/elsewhere/cache"
    assert _reusable(marker, moved, model_dir, defaults)
    moved["pretrain"]["train"]["lr"] = 1.0  # a setting that changes the model does not
    assert not _reusable(marker, moved, model_dir, defaults)
    # a changed cache or an unreadable marker is never reused
    assert not _reusable(marker, {**key, "cache": "xyz"}, model_dir, defaults)
    marker.write_text("{not json")
    assert not _reusable(marker, key, model_dir, defaults)


def test_paired_difference_of_identical_and_of_better_predictions() -> None:
    from etp.eval.aggregate import paired_difference

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    noise = rng.dirichlet(np.ones(3), size=y.size)
    good = 0.5 * noise + 0.5 * np.eye(3)[y]
    same = paired_difference(y, [noise], [noise.copy()], "probe", ["a", "b", "c"], ("auc",), 200)
    assert same["auc"]["diff"] == 0.0 and same["auc"]["ci"] == (0.0, 0.0)
    better = paired_difference(
        y, [good, good], [noise], "zero_shot", ["a", "b", "c"], ("average.auc",), 200
    )
    d = better["average.auc"]
    assert d["diff"] > 0.3 and d["ci"][0] > 0.0


def test_label_fraction_sizes_are_reported_and_equal_draws_flagged() -> None:
    from etp.benchmark.render import _fraction_sizes, _same_draw_note

    selection = {
        "etp": {"0.01": [{"n_train": 9}, {"n_train": 9}], "0.1": [{"n_train": 9}],
                "1.0": [{"n_train": 49}, {"n_train": 52}]},
        "random": {"0.01": [{"n_train": 9}], "0.1": [{"n_train": 9}], "1.0": [{"n_train": 50}]},
    }
    sizes = _fraction_sizes(selection, ["0.01", "0.1", "1.0"])
    assert sizes == {"0.01": "9", "0.1": "9", "1.0": "49–52"}
    note = _same_draw_note(sizes, ["0.01", "0.1", "1.0"])
    assert "1 % and 10 % draw equally many records" in note
    assert _same_draw_note({"0.01": "8", "0.1": "60", "1.0": "600"}, ["0.01", "0.1", "1.0"]) == ""
