"""`etp zero-shot` on real sample files: formats, preprocessing, and every bad-input path."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAMPLE_DIR, flat_lead_npy
from etp.cli import main

PTB = SAMPLE_DIR / "ptb-xl" / "records100" / "00000"
CPSC = SAMPLE_DIR / "cpsc2018"
LABELS = "atrial fibrillation,normal ECG,left bundle branch block"


def _save(path: Path, method: str = "etp") -> Path:
    from etp.config import ModelConfig
    from etp.data.signal import PreprocessConfig
    from etp.models.etp import ETPModel, save_model_dir
    from etp.text.encoder import TextEncoder

    enc = TextEncoder("minilm")
    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), None if method == "simclr" else enc.dim, method)
    spec = None if method == "simclr" else enc.spec
    return save_model_dir(path, model, model.cfg, PreprocessConfig().to_dict(), spec, {})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained ETP model (MiniLM text side, default 100 Hz / 10 s preprocessing)."""
    return _save(tmp_path_factory.mktemp("zs") / "model")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["zero-shot", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_all_formats_json(model_dir: Path, tmp_path: Path, capsys) -> None:
    npy = tmp_path / "rec.npy"
    np.save(npy, np.random.default_rng(0).normal(scale=0.3, size=(5000, 12)))  # (N, 12), 500 Hz
    files = [
        str(PTB / "00016_lr"),
        str(CPSC / "wfdb" / "A0002.hea"),
        str(CPSC / "original-mat" / "A1980.mat"),
        str(npy),
    ]
    # --fs is for files without a header (.npy, original .mat); WFDB headers give their own rate
    rc, out, err = _run(
        capsys, "--model", str(model_dir), "--labels", LABELS, "--fs", "500", "--json", *files
    )
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["file"] for r in rows] == files
    for r in rows:
        assert list(r["probabilities"]) == LABELS.split(",")
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["prediction"] == max(r["probabilities"], key=r["probabilities"].get)
    rc, out, err = _run(
        capsys, "--model", str(model_dir), "--labels", LABELS, "--fs", "500", "--csv", files[3]
    )
    assert rc == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["file", "prediction", *LABELS.split(","), "warnings"]
    assert table[1][0] == files[3] and table[1][-1] == ""
    assert all(r["warnings"] == [] for r in rows)


def test_a_flat_lead_warning_reaches_json_csv_and_predict(model_dir: Path, tmp_path: Path,
                                                           capsys) -> None:  # fmt: skip
    import etp

    flat, sig = flat_lead_npy(tmp_path)  # record 16 with V1 zeroed, (1000, 12) at 100 Hz
    files = [str(PTB / "00016_lr"), str(flat)]
    rc, out, err = _run(capsys, "--model", str(model_dir), "--labels", LABELS, "--fs", "100",
                        "--json", *files)  # fmt: skip
    assert rc == 0, err
    rows = json.loads(out)
    assert rows[0]["warnings"] == [] and len(rows[1]["warnings"]) == 1
    assert "flat lead(s) ['V1']" in rows[1]["warnings"][0]
    rc, out, err = _run(capsys, "--model", str(model_dir), "--labels", LABELS, "--fs", "100",
                        "--csv", *files)  # fmt: skip
    table = list(csv.DictReader(io.StringIO(out)))
    assert table[0]["warnings"] == "" and "flat lead(s) ['V1']" in table[1]["warnings"]
    model = etp.load(str(model_dir))
    df = model.predict(files, labels=LABELS.split(","), fs=100)
    assert list(df.attrs["warnings"]) == [str(flat)]
    assert "flat lead(s) ['V1']" in df.attrs["warnings"][str(flat)][0]
    df = model.predict(sig.T, labels=LABELS.split(","), fs=100)
    assert list(df.attrs["warnings"]) == ["array[0]"]


def test_table_output_and_dataset_prompts(model_dir: Path, capsys) -> None:
    rc, out, err = _run(
        capsys,
        "--model",
        str(model_dir),
        "--dataset",
        "ptbxl",
        "--languages",
        "en,de",
        "--synonyms",
        str(PTB / "00016_lr.hea"),
        str(PTB / "00018_lr"),
    )
    assert rc == 0, err
    header = out.splitlines()[0]
    assert header == "| file | prediction | NORM | MI | STTC | CD | HYP |"
    assert "00018_lr" in out and "en+de, synonyms" in err
    rc, out, err = _run(
        capsys,
        "--model",
        str(model_dir),
        "--dataset",
        "cpsc2018",
        "--labels",
        "AF,LBBB",
        "--template",
        "an ECG showing {name}",
        str(PTB / "00016_lr"),
    )
    assert rc == 0, err
    assert "| AF | LBBB |" in out.splitlines()[0]
    rc, _, err = _run(
        capsys,
        "--model",
        str(model_dir),
        "--dataset",
        "cpsc2018",
        "--labels",
        "AF,XYZ",
        str(PTB / "00016_lr"),
    )
    assert rc == 2 and "XYZ" in err


def test_probabilities_match_the_model_on_the_cache_preprocessing(model_dir: Path, capsys) -> None:
    """The CLI's input equals what `etp prepare` makes of the same record."""
    from etp.data.signal import PreprocessConfig, preprocess
    from etp.data.signal_io import read_signal_file
    from etp.models.etp import load_model_dir

    rc, out, err = _run(
        capsys,
        "--model",
        str(model_dir),
        "--labels",
        LABELS,
        "--json",
        str(CPSC / "wfdb" / "A0003"),
    )
    assert rc == 0, err
    got = np.array(list(json.loads(out)[0]["probabilities"].values()))
    sig, fs = read_signal_file(CPSC / "wfdb" / "A0003")
    x = preprocess(sig, fs, PreprocessConfig())[None]
    loaded = load_model_dir(model_dir)
    prompts = [f"this ECG indicates {name}" for name in LABELS.split(",")]
    assert np.allclose(got, loaded.zero_shot(x, prompts)[0], atol=1e-5)


def test_bad_inputs_name_the_file(model_dir: Path, tmp_path: Path, capsys) -> None:
    m = ["--model", str(model_dir), "--labels", LABELS]
    eight = tmp_path / "eight_leads.npy"
    np.save(eight, np.zeros((8, 1000)))
    rc, _, err = _run(capsys, *m, "--fs", "100", str(eight))
    assert rc == 2 and "eight_leads.npy" in err and "lead" in err

    import wfdb

    wfdb.wrsamp(
        "six",
        fs=100,
        units=["mV"] * 6,
        sig_name=["I", "II", "III", "aVR", "aVL", "aVF"],
        p_signal=np.zeros((1000, 6)),
        fmt=["16"] * 6,
        write_dir=str(tmp_path),
    )
    rc, _, err = _run(capsys, *m, str(tmp_path / "six"))
    assert rc == 2 and "six" in err

    at500 = tmp_path / "at500.npy"
    np.save(at500, np.zeros((12, 5000), np.float32))
    rc, _, err = _run(capsys, *m, str(at500))  # no --fs: not the model's 1000 samples
    assert rc == 2 and "at500.npy" in err and "--fs" in err
    ok = tmp_path / "at100.npy"
    np.save(ok, np.random.default_rng(1).normal(size=(12, 1000)).astype(np.float32))
    assert _run(capsys, *m, str(ok))[0] == 0  # the model's own length and rate

    short = tmp_path / "short.npy"
    np.save(short, np.random.default_rng(2).normal(size=(12, 600)).astype(np.float32))
    rc, _, err = _run(capsys, *m, "--fs", "100", str(short))
    assert rc == 2 and "short.npy" in err and "--pad" in err and "6.00 s" in err
    assert _run(capsys, *m, "--fs", "100", "--pad", str(short))[0] == 0

    rc, _, err = _run(capsys, *m, str(tmp_path / "missing.hea"))
    assert rc == 2 and "missing" in err

    rc, _, err = _run(capsys, "--model", str(model_dir), "--labels", " , ", str(ok))
    assert rc == 2 and "label list is empty" in err
    rc, _, err = _run(capsys, "--model", str(model_dir), str(ok))
    assert rc == 2 and "--labels" in err
    rc, _, err = _run(capsys, *m, "--template", "no placeholder", str(ok))
    assert rc == 2 and "{name}" in err


def test_bad_model_directories(model_dir: Path, tmp_path: Path, capsys) -> None:
    rec = str(PTB / "00016_lr")
    other = tmp_path / "other_arch"
    shutil.copytree(model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["embed_dim"] = 256  # weights no longer fit the architecture
    (other / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _run(capsys, "--model", str(other), "--labels", LABELS, rec)
    assert rc == 2 and "other_arch" in err

    cfg["model"]["embed_dim"] = 512
    cfg["model"]["encoder"] = "resnet50_1d"
    (other / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _run(capsys, "--model", str(other), "--labels", LABELS, rec)
    assert rc == 2 and "other_arch" in err and "resnet50_1d" in err

    rc, _, err = _run(capsys, "--model", str(tmp_path / "nowhere"), "--labels", LABELS, rec)
    assert rc == 2 and "nowhere" in err

    simclr = _save(tmp_path / "simclr_model", method="simclr")
    rc, _, err = _run(capsys, "--model", str(simclr), "--labels", LABELS, rec)
    assert rc == 2 and "simclr_model" in err and "no text side" in err


def test_report_gallery(model_dir: Path, tmp_path: Path, capsys) -> None:
    """--reports: classes represented by real PTB-XL reports, as the library computes them."""
    import pandas as pd

    from etp.data.signal import PreprocessConfig, preprocess
    from etp.data.signal_io import read_signal_file
    from etp.eval.zero_shot import PromptOptions, ReportGallery, zero_shot_classify
    from etp.models.etp import load_model_dir

    reports = pd.read_csv(SAMPLE_DIR / "ptb-xl" / "ptbxl_database.csv")["report"].tolist()[:40]
    txt = tmp_path / "reports.txt"
    txt.write_text("\n".join(reports) + "\n\n", encoding="utf-8")
    csv_file = tmp_path / "reports.csv"
    pd.DataFrame({"id": range(len(reports)), "report": reports}).to_csv(csv_file, index=False)
    m = ["--model", str(model_dir), "--labels", LABELS, "--json"]
    rec = str(CPSC / "wfdb" / "A0003")
    got = []
    for f in (txt, csv_file):
        rc, out, err = _run(capsys, *m, "--reports", str(f), rec)
        assert rc == 0, err
        got.append(np.array(list(json.loads(out)[0]["probabilities"].values())))
    assert np.allclose(got[0], got[1])

    loaded = load_model_dir(model_dir)
    sig, fs = read_signal_file(CPSC / "wfdb" / "A0003")
    emb = loaded.embed_ecg(preprocess(sig, fs, PreprocessConfig())[None])
    pred = zero_shot_classify(
        emb,
        LABELS.split(","),
        loaded.embed_texts,
        float(loaded.model.scale().detach()),
        options=PromptOptions(via_reports=True),
        gallery=ReportGallery(reports, loaded.embed_texts_frozen),
    )
    assert np.allclose(got[0], pred.probabilities[0], atol=1e-5)
    plain = _run(capsys, *m, rec)[1]
    assert not np.allclose(got[0], list(json.loads(plain)[0]["probabilities"].values()))

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("id,text\n1,sinus rhythm\n", encoding="utf-8")
    for bad, msg in (
        (empty, "holds no report"),
        (no_col, "no 'report' column"),
        (tmp_path / "missing.txt", "no such file"),
    ):
        rc, _, err = _run(capsys, *m, "--reports", str(bad), rec)
        assert rc == 2 and bad.name in err and msg in err, err
