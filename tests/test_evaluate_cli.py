"""`etp evaluate` on the bundled PTB-XL sample with a small untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAMPLE_DIR
from etp.cli import main
from etp.commands.evaluate import results_markdown


def _save(path: Path, method: str = "etp") -> Path:
    from etp.config import ModelConfig
    from etp.data.signal import PreprocessConfig
    from etp.models.etp import ETPModel, save_model_dir
    from etp.text.encoder import TextEncoder

    enc = TextEncoder("minilm")
    torch.manual_seed(2)
    model = ETPModel(ModelConfig(), None if method == "simclr" else enc.dim, method)
    spec = None if method == "simclr" else enc.spec
    return save_model_dir(path, model, model.cfg, PreprocessConfig().to_dict(), spec, {})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from etp.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("evaluate")
    cache = root / "cache"
    prepare_dataset(PrepareConfig(dataset="ptbxl", root=str(SAMPLE_DIR / "ptb-xl"), out=str(cache)))
    return _save(root / "model"), _save(root / "simclr", "simclr"), cache


#: the paper's Adam probe on one readout and one label fraction, shortened (the defaults are the
#: shipped protocol: tests/test_protocol.py)
FAST = [
    "bootstrap=30", "probe.solver=adam", "probe.cv_folds=0", "probe.max_epochs=3",
    "probe.patience=2", "probe.label_fractions=[1.0]", "probe.pooling=[avg]",
]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["evaluate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_everything_json_and_files(setup, tmp_path, capsys) -> None:
    model, _, cache = setup
    out_dir = tmp_path / "eval"
    rc, out, err = _run(
        capsys,
        "--model",
        str(model),
        "--cache",
        str(cache),
        "--json",
        "--out",
        str(out_dir),
        "--plots",
        *FAST,
        "zero_shot=[{name: en+de, languages: [en, de]}]",
        f"features_cache={tmp_path / 'feat'}",
    )
    assert rc == 0, err
    res = json.loads(out)
    data = res["data"]
    assert data["dataset"] == "ptbxl" and data["classes"] == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert data["test_counts"]["HYP"] == 0  # fold 10 of ids 1-999 has no single-label HYP
    zs = res["zero_shot"]["en+de"]
    assert zs["metrics"]["absent"] == ["HYP"] and "average.auc" in zs["ci"]
    assert zs["prompts"]["MI"] == ["this ECG indicates myocardial infarction", "inferiorer infarkt"]
    lp = res["linear_probe"]["100%"]
    assert 1 <= lp["selection"]["best_epoch"] <= 3 and 0 <= lp["test"]["auc"] <= 1
    assert set(res["retrieval"]["ecg_to_report"]) == {"R@1", "R@5", "R@10"}
    assert res["model"]["method"] == "etp" and len(res["model"]["fingerprint"]) == 64
    assert res["model"]["views"] == "1"  # no training settings: the record as it is
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["results"] == res and saved["meta"]["seeds"] == [0]
    md = (out_dir / "results.md").read_text()
    assert "| Average | ETP |" in md and "| ETP (paper) | 83.5 | 61.3 |" in md
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert "embedding-map.png" in pngs and any(p.startswith("roc-zero-shot") for p in pngs)
    assert any(p.startswith("roc-linear-probe") for p in pngs)
    assert len(list((tmp_path / "feat").glob("*.npy"))) >= 3  # features extracted once, kept


def test_markdown_tables_and_fractions(setup, capsys) -> None:
    model, _, cache = setup
    rc, out, err = _run(
        capsys,
        "--model",
        str(model),
        "--cache",
        str(cache),
        "--linear-probe",
        *FAST,
        "probe.label_fractions=[0.1,1]",
        "views=2x0.8",
        "probe.pooling=[avg,avg+max]",
    )
    assert rc == 0, err
    assert "Test-time views: 2x0.8" in out
    assert "## Linear probe — 10% of the training labels" in out
    assert "## Linear probe — 100% of the training labels" in out
    assert "(chosen on validation among avg, avg+max)" in out
    assert "Zero-shot" not in out and "Retrieval" not in out


def test_lbfgs_probe_cross_validated_on_the_training_split(setup, capsys) -> None:
    model, _, cache = setup
    argv = ["--model", str(model), "--cache", str(cache), "--linear-probe", "bootstrap=0"]
    lbfgs = [
        "probe.solver=lbfgs", "probe.cv_folds=2", "probe.pooling=[avg,avg+max]",
        "probe.label_fractions=[1.0]",
    ]
    rc, out, err = _run(capsys, *argv, *lbfgs)
    assert rc == 0, err
    assert "Selected by cross-validation over the training records" in out
    assert "(chosen by the same cross-validation among avg, avg+max)" in out
    rc, out, err = _run(capsys, *argv, *lbfgs, "--json")
    results = json.loads(out)
    sel = results["linear_probe"]["100%"]["selection"]
    assert sel["selected_on"] == "cv" and sel["best_epoch"] == 0
    assert sel["readout_scores"][sel["readout"]] == pytest.approx(-sel["cv_loss"])
    # the text quotes the value of the criterion that chose, and no epoch for the L-BFGS probe
    assert f"(by cross-validated cross-entropy {sel['cv_loss']:.3f};" in results_markdown(results)
    sel.update(select_by="auc")
    assert f"(by cross-validated macro AUC {100 * sel['cv_auc']:.1f};" in results_markdown(results)
    sel.update(selected_on="val")
    text = results_markdown(results)
    assert "weight decay" in text and "converged L-BFGS probe (by validation macro AUC)" in text


def test_simclr_model_and_bad_arguments(setup, tmp_path, capsys) -> None:
    model, simclr, cache = setup
    rc, out, err = _run(capsys, "--model", str(simclr), "--cache", str(cache), *FAST)
    assert rc == 0, err  # no text side: only the linear probe runs
    assert "Linear probe" in out and "Zero-shot" not in out
    rc, _, err = _run(capsys, "--model", str(simclr), "--cache", str(cache), "--zero-shot")
    assert rc == 2 and "simclr" in err and "no text" in err
    rc, _, err = _run(capsys, "--model", str(model), "--cache", str(tmp_path / "nocache"))
    assert rc == 2 and "nocache" in err
    rc, _, err = _run(
        capsys, "--model", str(model), "--cache", str(cache), "--linear-probe", "split=val"
    )
    assert rc == 2 and "split" in err
    rc, _, err = _run(
        capsys, "--model", str(model), "--cache", str(cache), "probe.label_fractions=[2]"
    )
    assert rc == 2 and "label_fractions" in err
    rc, _, err = _run(
        capsys, "--model", str(model), "--cache", str(cache), "probe.solver=adam",
        "probe.cv_folds=3",
    )
    assert rc == 2 and "probe.cv_folds" in err and "needs solver lbfgs" in err
    rc, _, err = _run(capsys, "--model", str(model), "--cache", str(cache), "probe.pooling=[max]")
    assert rc == 2 and "probe.pooling" in err and "'max'" in err
    rc, _, err = _run(capsys, "--model", str(model), "--cache", str(cache), "--plots")
    assert rc == 2 and "--out" in err


def test_evaluate_model_library_api(setup) -> None:
    """The core `etp benchmark` shares: explicit record indices (e.g. rotated folds)."""
    from etp.commands.evaluate import results_of
    from etp.data.cache import load_prepared
    from etp.eval.linear_probe import ProbeConfig
    from etp.eval.protocol import EvalSettings, evaluate_model, make_split
    from etp.eval.zero_shot import PromptOptions
    from etp.models.etp import load_model_dir

    model, _, cache = setup
    prepared = load_prepared(cache)
    loaded = load_model_dir(model)
    test = prepared.select(folds=[9, 10])
    train = prepared.select(folds=list(range(1, 8)))
    val = prepared.select(folds=[8])
    settings = EvalSettings(
        zero_shot=[PromptOptions(name="en"), PromptOptions(name="de", languages=["de"])],
        probe=ProbeConfig(
            solver="adam", cv_folds=0, max_epochs=2, patience=1, weight_decays=[0.0],
            label_fractions=[1.0], pooling=["avg"],
        ),
    )
    split = make_split(prepared, test, train, val)
    out = evaluate_model(loaded, prepared, split, settings, ["zero_shot", "linear_probe"])
    results = results_of(out, loaded, prepared, test.size, bootstrap=0, seed=0)
    assert set(results["zero_shot"]) == {"en", "de"}
    assert "ci" not in results["zero_shot"]["en"]
    y = out.test_y
    assert y.size == results["data"]["n_test_single_label"]
    assert out.zs_test["de"].shape == (y.size, 5)
    assert out.probe[1.0].shape == (y.size, 5)
    assert np.all(np.isin(y, range(5)))
    assert np.array_equal(prepared.label_index(out.test_indices), y)


def test_zero_shot_via_training_reports(setup, capsys) -> None:
    """--reports train: the cache's training-split reports stand in for the prompts."""
    model, _, cache = setup
    base = ["--model", str(model), "--cache", str(cache), "--zero-shot", "--json", "bootstrap=0"]
    rc, out, err = _run(capsys, *base, "zero_shot=[{languages: [en], via_reports: true}]")
    assert rc == 0, err
    (name, entry), = json.loads(out)["zero_shot"].items()
    assert name == "en, via reports" and entry["options"]["via_reports"] is True
    counts = entry["report_counts"]
    assert set(counts) == {"NORM", "MI", "STTC", "CD", "HYP"} and sum(counts.values()) > 0
    rc, _, err = _run(capsys, *base, "reports=train", "split=train")
    assert rc == 2 and "training split" in err
