"""The public Python API (etp.read_ecg / preprocess / predict), a model directory's zero-shot
defaults, and the user cache of --reports galleries; on the bundled real sample files."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import etp
from conftest import SAMPLE_DIR
from etp.cli import main
from etp.errors import DataError

PTB = SAMPLE_DIR / "ptb-xl" / "records100" / "00000"
CPSC = SAMPLE_DIR / "cpsc2018"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained ETP model (MiniLM text side, default 100 Hz / 10 s preprocessing)."""
    from etp.config import ModelConfig
    from etp.data.signal import PreprocessConfig
    from etp.models.etp import ETPModel, save_model_dir
    from etp.text.encoder import TextEncoder

    enc = TextEncoder("minilm")
    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), enc.dim, "etp")
    path = tmp_path_factory.mktemp("api") / "model"
    return save_model_dir(path, model, model.cfg, PreprocessConfig().to_dict(), enc.spec, {})


def test_read_ecg_and_preprocess_match_the_file_reader(model_dir: Path) -> None:
    from etp.eval.features import model_preprocess_config, read_ecg_file

    model = etp.load(str(model_dir))
    hea = CPSC / "wfdb" / "A0002.hea"
    ecg = etp.read_ecg(hea)
    assert ecg.fs == 500 and ecg.signal.shape[0] == 12 and ecg.leads[:3] == ("I", "II", "III")
    x = model.preprocess(ecg)
    assert x.shape == (12, 1000)
    np.testing.assert_array_equal(x, read_ecg_file(hea, model_preprocess_config(model)))
    np.testing.assert_array_equal(etp.preprocess(ecg, model), x)
    # a raw array with its rate gives the same input
    np.testing.assert_array_equal(model.preprocess(ecg.signal, fs=500), x)
    with pytest.raises(DataError, match="pass fs=HZ"):
        model.preprocess(ecg.signal)
    with pytest.raises(DataError, match="carries no sampling rate"):
        etp.read_ecg(Path("x.npy"))


def test_wrong_rate_or_length_is_an_error_not_a_result(model_dir: Path) -> None:
    model = etp.load(str(model_dir))
    hea = CPSC / "wfdb" / "A0002.hea"
    ecg = etp.read_ecg(hea)  # 500 Hz
    raw = ecg.signal[None, :, :5000]  # 10 s at 500 Hz, shaped like a 100 Hz model input batch
    for fn in (model.embed_ecg, model.features):
        with pytest.raises(DataError, match=r"expects preprocessed ECGs of 1000 samples "
                           r"\(10 s at 100 Hz\), got 5000 \(a 5x higher sampling rate\?\)"):
            fn(raw)
    with pytest.raises(DataError, match="1000 samples"):
        model.zero_shot(raw, ["normal ECG", "atrial fibrillation"])
    with pytest.raises(DataError, match="model.predict"):
        model.embed(raw)  # a raw array without fs
    # with fs a raw array is resampled and preprocessed exactly like the file
    np.testing.assert_array_equal(model.embed(ecg.signal, fs=500), model.embed([hea]))
    np.testing.assert_array_equal(model.embed([ecg]), model.embed(str(hea)))
    with pytest.raises(DataError, match=r"\(12, N\) or \(n, 12, N\)"):
        model.embed(np.zeros((3, 1000)), fs=100)


def test_predict_paths_arrays_and_signals_agree(model_dir: Path, caplog) -> None:
    model = etp.load(str(model_dir))
    files = [str(CPSC / "wfdb" / "A0002.hea"), str(PTB / "00016_lr")]
    labels = ["atrial fibrillation", "normal ECG", "Normal  ecg"]
    with caplog.at_level(logging.WARNING):
        df = model.predict(files, labels=labels)
    assert "differ only in case or spacing" in caplog.text
    assert list(df.columns) == ["atrial fibrillation", "normal ECG", "prediction"]
    assert list(df.index) == files
    np.testing.assert_allclose(df.iloc[:, :2].sum(axis=1), 1.0, rtol=1e-6)
    sig = etp.read_ecg(files[0])
    again = etp.predict(model, [sig], labels=labels[:2])
    np.testing.assert_allclose(again.iloc[0, :2], df.iloc[0, :2], rtol=1e-5)
    arr = model.predict(sig.signal, labels=labels[:2], fs=sig.fs)
    np.testing.assert_allclose(arr.iloc[0, :2], df.iloc[0, :2], rtol=1e-5)
    with caplog.at_level(logging.WARNING):
        one = model.predict(files[:1], labels=["atrial fibrillation"])
    assert "single label" in caplog.text and float(one.iloc[0, 0]) == pytest.approx(1.0)


def _with_defaults(model_dir: Path, tmp_path: Path, reports: list[str]) -> Path:
    """A copy of the model with zero-shot defaults computed from ``reports``."""
    import shutil

    from etp.eval.zero_shot import PromptOptions
    from etp.zero_shot_defaults import write_defaults

    out = tmp_path / "with-defaults"
    shutil.copytree(model_dir, out)
    opts = PromptOptions(languages=("en",), synonyms=True, via_reports=True)
    write_defaults(etp.load(str(out)), "en synonyms via reports", opts, ["ptbxl", "cpsc2018"],
                   reports, {"summary": "test reports"}, cache_dir=tmp_path / "tc")
    return out


REPORTS = [
    "sinus rhythm. normal ecg.", "atrial fibrillation.", "sinus rhythm. left bundle branch block.",
    "sinus rhythm. right bundle branch block.", "sinus rhythm. first degree av block.",
    "sinus rhythm. inferior myocardial infarction, possibly old.",
    "sinus rhythm. left ventricular hypertrophy.", "sinus rhythm. st depression, t inversion.",
    "sinus rhythm. ventricular extrasystoles.", "sinus rhythm. atrial premature complexes.",
]


def test_model_directory_carries_its_zero_shot_defaults(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    from etp.eval.zero_shot import (
        PromptOptions, ReportGallery, build_prompts, load_prompt_table, report_prototypes,
        zero_shot_scores,
    )

    m = _with_defaults(model_dir, tmp_path, REPORTS)
    model = etp.load(str(m))
    d = model.zero_shot_defaults
    assert d.variant == "en synonyms via reports" and d.options.via_reports
    assert d.dataset == "ptbxl" and sorted(d.class_embeddings) == ["cpsc2018", "ptbxl"]
    assert etp.load(str(model_dir)).zero_shot_defaults is None
    # the CLI with no prompt flags gives what the flags + the gallery give
    f = str(CPSC / "wfdb" / "A0002.hea")
    assert main(["zero-shot", "--model", str(m), "--dataset", "cpsc2018", "--csv", f]) == 0
    out = capsys.readouterr()
    got = np.array([float(v) for v in out.out.splitlines()[1].split(",")[2:-1]])  # -1: warnings
    table = load_prompt_table()
    classes = table.classes("cpsc2018")
    opts = PromptOptions(languages=("en",), synonyms=True, via_reports=True)
    prompts = build_prompts(classes, "cpsc2018", table, opts)
    gallery = ReportGallery(REPORTS, model.embed_texts_frozen)
    emb, _ = report_prototypes(prompts, gallery, model.embed_texts)
    _, want = zero_shot_scores(model.embed([f]), emb, float(model.model.scale()))
    np.testing.assert_allclose(got, want[0], atol=2e-6)
    # free-text labels that name a stored class (any case) use the stored embedding too
    df = model.predict([f], labels=["atrial FIBRILLATION", "normal ecg"])
    c = [classes.index("AF"), classes.index("Normal")]
    _, want2 = zero_shot_scores(model.embed([f]), emb[c], float(model.model.scale()))
    np.testing.assert_allclose(df.iloc[0, :2].to_numpy(float), want2[0], atol=2e-6)
    assert "class embeddings from test reports" in df.attrs["prompts"]
    # predict() without labels: the default dataset's classes
    assert list(model.predict([f]).columns[:-1]) == table.classes("ptbxl")


def test_reports_gallery_is_cached_by_content(
    model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("ETP_CACHE_DIR", str(cache))
    from etp.zero_shot_defaults import user_cache_dir

    assert user_cache_dir() == cache
    rep = tmp_path / "reports.txt"
    rep.write_text("\n".join(REPORTS * 3) + "\n")
    argv = ["zero-shot", "--model", str(model_dir), "--labels", "atrial fibrillation,normal ECG",
            "--reports", str(rep), "--csv", str(CPSC / "wfdb" / "A0002.hea")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    files = sorted(p.name for p in cache.iterdir())
    assert files and all(n.startswith("text-emb-") for n in files)
    from etp.text import encoder as enc_mod

    calls = []
    real = enc_mod.TextEncoder.encode
    monkeypatch.setattr(enc_mod.TextEncoder, "encode",
                        lambda self, texts, *a, **k: calls.append(len(texts)) or real(self, texts, *a, **k))
    t0 = time.perf_counter()
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    # the reports are not embedded again (only the few prompts are)
    assert all(n < 20 for n in calls), calls
    assert time.perf_counter() - t0 < 60
    rep.write_text("\n".join(REPORTS[:5]) + "\n")  # other content: a new cache entry
    assert main(argv) == 0
    assert len(list(cache.iterdir())) > len(files)


def test_plot_writes_one_png_per_file(model_dir: Path, tmp_path: Path, capsys) -> None:
    files = [str(CPSC / "wfdb" / "A0002.hea"), str(PTB / "00016_lr")]
    out = tmp_path / "plots"
    argv = ["zero-shot", "--model", str(model_dir), "--labels", "atrial fibrillation,normal ECG",
            "--plot", str(out), *files]
    assert main(argv) == 0
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["00016_lr.png", "A0002.png"]
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "A0002.png")
    assert img.shape[0] > 300 and img.shape[1] > 2 * img.shape[0]  # wide ECG-paper layout
    # pink grid present: many pixels with red > green, blue
    rgb = img[..., :3]
    assert ((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.85) & (rgb[..., 2] < 0.85)).mean() > 0.01


def test_embed_map_coloured_by_a_label_column(model_dir: Path, tmp_path: Path, capsys) -> None:
    import pandas as pd

    recs = ["A0002", "A0029", "A0003", "A0007", "A0010", "A0027"]
    files = [str(CPSC / "wfdb" / f"{r}.hea") for r in recs]
    dx = ["Normal", "Normal", "AF", "AF", "RBBB", "RBBB"]
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file": files, "dx": dx}).to_csv(labels, index=False)
    png = tmp_path / "map.png"
    argv = ["embed", "--model", str(model_dir), "--out", str(tmp_path / "e.npy"), "--map", str(png),
            "--color-by", f"{labels}:dx", *files]
    assert main(argv) == 0
    assert str(png) in capsys.readouterr().out and png.stat().st_size > 5_000
    bad = ["embed", "--model", str(model_dir), "--out", str(tmp_path / "e.npy"), "--map",
           str(png), "--color-by", f"{labels}:nope", *files]
    assert main(bad) == 2 and "nope" in capsys.readouterr().err
