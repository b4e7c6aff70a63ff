"""`etp embed`: ECG and report embeddings to .npy/.csv, equal to the model on cached inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAMPLE_DIR, flat_lead_npy
from etp.cli import main
from etp.errors import ModelError

PTB = SAMPLE_DIR / "ptb-xl" / "records100" / "00000"
CPSC = SAMPLE_DIR / "cpsc2018"


def _save(path: Path, method: str = "etp", extra: dict | None = None) -> Path:
    from etp.config import ModelConfig
    from etp.data.signal import PreprocessConfig
    from etp.models.etp import ETPModel, save_model_dir
    from etp.text.encoder import TextEncoder

    enc = TextEncoder("minilm")
    torch.manual_seed(1)
    model = ETPModel(ModelConfig(), None if method == "simclr" else enc.dim, method)
    spec = None if method == "simclr" else enc.spec
    return save_model_dir(path, model, model.cfg, PreprocessConfig().to_dict(), spec, extra or {})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("embed") / "model")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """The bundled PTB-XL sample prepared with the model's (default) preprocessing."""
    from etp.data.cache import load_prepared
    from etp.data.prepare import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("embed") / "cache"
    prepare_dataset(PrepareConfig(dataset="ptbxl", root=str(SAMPLE_DIR / "ptb-xl"), out=str(out)))
    return load_prepared(out)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["embed", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ecg_embeddings_equal_the_cached_inputs(model_dir, cache, tmp_path, capsys) -> None:
    from etp.models.etp import load_model_dir

    ids = ["16", "18"]
    files = [str(PTB / f"{int(i):05d}_lr") for i in ids]
    out = tmp_path / "ecg.npy"
    rc, stdout, err = _run(capsys, "--model", str(model_dir), *files, "--out", str(out))
    assert rc == 0, err
    assert "2 embeddings of dimension 512" in stdout
    emb = np.load(out)
    loaded = load_model_dir(model_dir)
    rows = [int(np.flatnonzero(cache.meta["record_id"] == i)[0]) for i in ids]
    want = loaded.embed_ecg(cache.get_batch(rows))
    assert np.allclose(emb, want, atol=1e-5)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    side = list(csv.reader(open(tmp_path / "ecg.rows.csv")))
    assert side == [
        ["row", "kind", "source", "warnings"], ["0", "ecg", files[0], ""], ["1", "ecg", files[1], ""]
    ]

    feats = tmp_path / "features.npy"
    rc, _, err = _run(
        capsys, "--model", str(model_dir), "--features", "--bf16", files[0], "--out", str(feats)
    )
    assert rc == 0, err
    f32 = loaded.features(cache.get_batch(rows[:1]))
    got = np.load(feats)
    assert got.shape == (1, 512)
    cos = float(got[0] @ f32[0] / np.linalg.norm(got[0]) / np.linalg.norm(f32[0]))
    assert cos > 0.99  # bf16 close to fp32

    rc, stdout, err = _run(
        capsys, "--model", str(model_dir), "--features", "--pooling", "avg+max", files[0],
        "--out", str(feats),
    )
    assert rc == 0, err
    assert "1 features of dimension 1024" in stdout
    wide = np.load(feats)
    assert wide.shape == (1, 1024) and np.allclose(wide[:, :512], f32, atol=1e-4)
    assert np.allclose(wide, loaded.features(cache.get_batch(rows[:1]), pooling="avg+max"), atol=1e-4)


def test_texts_and_csv(model_dir, tmp_path, capsys) -> None:
    from etp.models.etp import load_model_dir

    reports = tmp_path / "reports.txt"
    reports.write_text(
        "sinusrhythmus normales ekg\n\nsinus rhythm. left bundle branch block.\n", encoding="utf-8"
    )
    out = tmp_path / "both.csv"
    rc, _, err = _run(
        capsys,
        "--model",
        str(model_dir),
        str(CPSC / "wfdb" / "A0044"),
        "--text",
        "atrial fibrillation",
        "--text-file",
        str(reports),
        "--out",
        str(out),
    )
    assert rc == 0, err
    rows = list(csv.reader(open(out, encoding="utf-8")))
    assert rows[0][:5] == ["row", "kind", "source", "warnings", "e0"] and len(rows[0]) == 4 + 512
    assert [r[1] for r in rows[1:]] == ["ecg", "text", "text", "text"]
    assert rows[2][2] == "atrial fibrillation" and rows[3][2] == "sinusrhythmus normales ekg"
    text_emb = np.array([[float(v) for v in r[4:]] for r in rows[2:]])
    want = load_model_dir(model_dir).embed_texts(
        [
            "atrial fibrillation",
            "sinusrhythmus normales ekg",
            "sinus rhythm. left bundle branch block.",
        ]
    )
    assert np.allclose(text_emb, want, atol=1e-5)
    rc, _, err = _run(
        capsys, "--model", str(model_dir), "--text", "normal ecg", "--out", str(tmp_path / "t.npy")
    )
    assert rc == 0, err
    assert np.load(tmp_path / "t.npy").shape == (1, 512)


def test_a_flat_lead_warning_is_written_beside_the_embedding(model_dir, tmp_path, capsys) -> None:
    flat, _ = flat_lead_npy(tmp_path)  # record 16 with V1 zeroed, (1000, 12) at 100 Hz
    out = tmp_path / "e.npy"
    rc, _, err = _run(capsys, "--model", str(model_dir), str(PTB / "00016_lr"), str(flat),
                      "--fs", "100", "--out", str(out))  # fmt: skip
    assert rc == 0, err
    side = list(csv.DictReader(open(tmp_path / "e.rows.csv")))
    assert side[0]["warnings"] == ""
    assert "flat lead(s) ['V1']" in side[1]["warnings"] and str(flat) in side[1]["warnings"]


def test_an_untrained_ecg_head_is_refused_for_embeddings(tmp_path, capsys) -> None:
    """BYOL, SimSiam, CPC and TS-TCC never train the ECG projection head: embedding with it is a
    one-line error that points at encoder features, which work."""
    from etp.models.etp import load_model_dir

    model = _save(tmp_path / "byol", "simclr", {"objective": {"name": "byol", "trains_ecg_head": False}})
    rc, _, err = _run(capsys, "--model", str(model), str(PTB / "00016_lr"),
                      "--out", str(tmp_path / "e.npy"))  # fmt: skip
    assert rc == 2 and "ECG projection head was never trained" in err and "--features" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, "--model", str(model), str(PTB / "00016_lr"), "--features",
                      "--out", str(tmp_path / "f.npy"))  # fmt: skip
    assert rc == 0, err
    loaded = load_model_dir(model)
    assert not loaded.ecg_head_trained
    with pytest.raises(ModelError, match="never trained"):
        loaded.embed_ecg(np.zeros((1, 12, 1000), np.float32))


def test_bad_inputs(model_dir, tmp_path, capsys) -> None:
    m = ["--model", str(model_dir)]
    rec = str(PTB / "00016_lr")
    rc, _, err = _run(capsys, *m, rec, "--out", str(tmp_path / "x.txt"))
    assert rc == 2 and "x.txt" in err and ".npy or .csv" in err
    rc, _, err = _run(capsys, *m, "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "nothing to embed" in err
    rc, _, err = _run(
        capsys, *m, "--text-file", str(tmp_path / "none.txt"), "--out", str(tmp_path / "x.npy")
    )
    assert rc == 2 and "none.txt" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    rc, _, err = _run(capsys, *m, "--text-file", str(empty), "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "empty.txt" in err
    rc, _, err = _run(
        capsys, *m, "--features", rec, "--text", "x", "--out", str(tmp_path / "x.npy")
    )
    assert rc == 2 and "--features" in err
    rc, _, err = _run(capsys, *m, "--pooling", "avg+max", rec, "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "--pooling avg+max" in err and "--features" in err
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((12, 300), np.float32))
    rc, _, err = _run(capsys, *m, "--fs", "100", str(short), "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "short.npy" in err and "--pad" in err
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 1000), np.float32))
    rc, _, err = _run(capsys, *m, "--fs", "100", str(wrong), "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "wrong.npy" in err and "leads" in err
    assert not (tmp_path / "x.npy").exists()

    simclr = _save(tmp_path / "simclr_model", method="simclr")
    rc, _, err = _run(
        capsys, "--model", str(simclr), "--text", "normal ecg", "--out", str(tmp_path / "x.npy")
    )
    assert rc == 2 and "simclr_model" in err and "no text side" in err
    rc, _, err = _run(capsys, "--model", str(simclr), rec, "--out", str(tmp_path / "s.npy"))
    assert rc == 0, err  # an ECG-only model still embeds ECGs


def test_views_option(model_dir, cache, tmp_path, capsys) -> None:
    """--views averages over crops (as the model with those views does); bad values are errors."""
    from etp.data.views import Views
    from etp.models.etp import load_model_dir

    files = [str(PTB / "00016_lr"), str(PTB / "00018_lr")]
    loaded = load_model_dir(model_dir)
    assert loaded.views == Views()  # trained without crops (no training settings): as it is
    rows = [int(np.flatnonzero(cache.meta["record_id"] == i)[0]) for i in ("16", "18")]
    plain = loaded.features(cache.get_batch(rows))
    loaded.views = Views(3, 0.75)
    want = loaded.features(cache.get_batch(rows))
    out = tmp_path / "v.npy"
    rc, _, err = _run(
        capsys, "--model", str(model_dir), "--features", "--views", "3x0.75", *files, "--out", str(out)
    )
    assert rc == 0, err
    assert np.allclose(np.load(out), want, atol=1e-4) and not np.allclose(want, plain, atol=1e-3)
    rc, _, err = _run(
        capsys, "--model", str(model_dir), "--views", "3x1", files[0], "--out", str(out)
    )
    assert rc == 2 and "--views: 3 views" in err and "all be the same" in err
