"""ETPModel and its model directory: round trip, strict loading, inference helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import etp
from etp.config import ModelConfig
from etp.errors import ConfigError, DataError, ModelError
from etp.models.etp import ETPModel, load_model_dir, save_model_dir, unwrap
from etp.text.encoder import TextEncoder

PREP = {"fs": 100.0, "length_s": 10.0, "bandpass": [0.5, 40.0], "normalize": "zscore"}


@pytest.fixture(scope="module")
def text_spec() -> dict:
    return TextEncoder("minilm").spec  # reads config + file sizes only


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, text_spec: dict) -> tuple[Path, ETPModel]:
    torch.manual_seed(0)
    model = ETPModel(ModelConfig(), text_dim=384)
    model.train()
    with torch.no_grad():  # move BN running stats away from their defaults
        model.embed_ecg(torch.randn(8, 12, 500))
    model.eval()
    path = tmp_path_factory.mktemp("run") / "model"
    save_model_dir(path, model, model.cfg, PREP, text_spec, {"epochs": 1})
    return path, model


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(path: Path, **changes: object) -> None:
    meta = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("model."):
            meta["model"][key[6:]] = value
        else:
            meta[key] = value
    (path / "config.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------ ETPModel


def test_model_shapes_and_normalisation() -> None:
    model = ETPModel(ModelConfig(embed_dim=128), text_dim=384).eval()
    x = torch.randn(3, 12, 1000)
    assert model.features(x).shape == (3, 512)
    e, t = model(x, torch.randn(3, 384))
    assert e.shape == t.shape == (3, 128)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model(x)[1] is None


def test_temperature() -> None:
    model = ETPModel(ModelConfig(), text_dim=384)
    assert isinstance(model.logit_scale, torch.nn.Parameter)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.scale().item() == pytest.approx(100.0)  # CLIP clamp
    fixed = ETPModel(ModelConfig(learn_temperature=False, init_temperature=0.1), text_dim=384)
    assert "logit_scale" not in dict(fixed.named_parameters())
    assert "logit_scale" in fixed.state_dict()
    assert float(fixed.scale()) == pytest.approx(10.0, rel=1e-5)


def test_the_architecture_follows_text_dim_not_the_objective() -> None:
    """The objective's name is a label; whether a text head exists is ``text_dim``'s business."""
    no_text = ETPModel(ModelConfig(), text_dim=None, method="simclr")
    assert no_text.text_head is None and no_text.text_dim is None and no_text.method == "simclr"
    with pytest.raises(ModelError, match="no text head"):
        no_text.embed_text(torch.randn(2, 384))
    assert ETPModel(ModelConfig(), text_dim=384, method="random").text_head is not None
    assert ETPModel(ModelConfig(), text_dim=384, method="any-name").text_head is not None
    fixed = ETPModel(ModelConfig(learn_temperature=False), text_dim=384)
    assert "logit_scale" not in dict(fixed.named_parameters()) and "logit_scale" in fixed.state_dict()
    mlp = ETPModel(ModelConfig(head="mlp"), text_dim=384)
    assert mlp.embed_ecg(torch.randn(2, 12, 100)).shape == (2, 512)


def test_unwrap() -> None:
    model = ETPModel(ModelConfig(), text_dim=8)
    wrapper = torch.nn.Module()
    wrapper.module = model  # what DDP looks like
    assert unwrap(wrapper) is model
    with pytest.raises(ModelError, match="expected an ETPModel"):
        unwrap(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------ round trip


def test_round_trip_equal_outputs(saved: tuple[Path, ETPModel], text_spec: dict) -> None:
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert not list(path.parent.glob(".model.*"))  # no temp dirs left behind
    meta = json.loads((path / "config.json").read_text())
    assert meta["format"] == "etp-model" and meta["format_version"] == 1
    assert meta["method"] == "etp" and meta["text_dim"] == 384
    assert meta["model"]["embed_dim"] == 512 and meta["etp_version"] == etp.__version__

    loaded = etp.load(str(path))
    assert loaded.method == "etp" and loaded.preprocessing == PREP
    assert loaded.text_spec == text_spec and loaded.extra == {"epochs": 1}
    assert loaded.config == model.cfg and not loaded.model.training
    x = np.random.default_rng(0).normal(size=(5, 12, 1000)).astype(np.float32)
    with torch.no_grad():
        ref = model.embed_ecg(torch.from_numpy(x)).numpy()
        ref_f = model.features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded.embed_ecg(x, batch_size=2), ref, atol=1e-6)
    np.testing.assert_allclose(loaded.features(x), ref_f, rtol=1e-5, atol=1e-6)
    assert loaded.model.scale().item() == pytest.approx(model.scale().item())
    low = loaded.embed_ecg(x, precision="bf16")
    assert np.all(np.sum(low * ref, axis=1) > 0.95)  # bf16 close to fp32 (cosine)


def test_overwrite_is_atomic_and_complete(saved: tuple[Path, ETPModel], tmp_path: Path) -> None:
    path = tmp_path / "m"
    save_model_dir(path, ETPModel(ModelConfig(), method="simclr"), preprocessing=PREP)
    save_model_dir(path, saved[1], preprocessing=PREP)
    assert load_model_dir(path).method == "etp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_loaded_model_text_side(saved: tuple[Path, ETPModel]) -> None:
    loaded = load_model_dir(saved[0])
    prompts = ["this ecg indicates normal", "this ecg indicates myocardial infarction"]
    t = loaded.embed_texts(prompts + prompts[:1])
    assert t.shape == (3, 512) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(t[0], t[2])
    x = np.zeros((2, 12, 1000), np.float32)
    probs = loaded.zero_shot(x, prompts)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1)


def test_translating_model_translates_prompts_with_its_stored_glossary(
    tmp_path: Path, text_spec: dict
) -> None:
    cfg = ModelConfig(report_translation="builtin")
    model = ETPModel(cfg, text_dim=384)
    spec = dict(text_spec, report_glossary={"vorhofflimmern": "atrial fibrillation"})
    loaded = load_model_dir(save_model_dir(tmp_path / "t", model, cfg, PREP, spec))
    # the glossary stored in the model directory is used, not the packaged one
    assert loaded.prepare_texts(["Vorhofflimmern", "sinusrhythmus"]) == [
        "atrial fibrillation",
        "sinusrhythmus",
    ]
    t = loaded.embed_texts(["vorhofflimmern", "atrial fibrillation"])
    np.testing.assert_allclose(t[0], t[1])
    no_glossary = load_model_dir(save_model_dir(tmp_path / "n", model, cfg, PREP, text_spec))
    with pytest.raises(ModelError, match="holds no glossary"):
        no_glossary.embed_texts(["vorhofflimmern"])


def test_simclr_model_has_no_text_side(tmp_path: Path) -> None:
    path = save_model_dir(tmp_path / "s", ETPModel(ModelConfig(), method="simclr"), None, PREP)
    loaded = load_model_dir(path)
    assert loaded.method == "simclr" and not loaded.has_text
    assert loaded.features(np.zeros((1, 12, 1000), np.float32)).shape == (1, 512)
    with pytest.raises(ModelError, match="has no text side"):
        loaded.embed_texts(["normal ecg"])


def test_bad_ecg_input(saved: tuple[Path, ETPModel]) -> None:
    loaded = load_model_dir(saved[0])
    with pytest.raises(DataError, match=r"shape \(B, 12, L\), got \(12, 1000\)"):
        loaded.embed_ecg(np.zeros((12, 1000), np.float32))
    with pytest.raises(DataError, match=r"expects preprocessed ECGs of 1000 samples"):
        loaded.embed_ecg(np.zeros((1, 12, 100), np.float32))  # not the model's input length
    x = np.zeros((3, 12, 1000), np.float32)
    x[2, 5, 7] = np.nan
    with pytest.raises(DataError, match="ECG at index 2 has NaN"):
        loaded.features(x)


def test_save_rejects_inconsistent_inputs(tmp_path: Path) -> None:
    model = ETPModel(ModelConfig(), text_dim=384)
    with pytest.raises(ModelError, match="cfg differs"):
        save_model_dir(tmp_path / "a", model, ModelConfig(embed_dim=256))
    with pytest.raises(ModelError, match="text spec dim 768 != model text_dim 384"):
        save_model_dir(tmp_path / "b", model, text_spec={"dim": 768})
    with pytest.raises(ModelError, match="preprocessing is not JSON-serialisable"):
        save_model_dir(tmp_path / "c", model, preprocessing={"f": object()})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ strict loading


def test_edited_embed_dim_is_a_shape_mismatch(saved: tuple[Path, ETPModel], tmp_path: Path) -> None:
    path = _copy(saved[0], tmp_path / "m")
    _edit_config(path, **{"model.embed_dim": 256})
    with pytest.raises(ModelError) as info:
        load_model_dir(path)
    msg = str(info.value)
    assert str(path) in msg and "shape mismatches" in msg and "nothing was loaded" in msg
    assert "ecg_head.net.weight: file (512, 512) vs model (256, 512)" in msg


def test_deleted_tensor_is_missing(saved: tuple[Path, ETPModel], tmp_path: Path) -> None:
    path = _copy(saved[0], tmp_path / "m")
    state = load_file(str(path / "model.safetensors"))
    del state["encoder.layer3.1.bn2.running_var"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ModelError, match=r"missing keys: encoder\.layer3\.1\.bn2\.running_var"
                       r"; unexpected keys: extra\.weight"):
        load_model_dir(path)


def test_text_dim_that_does_not_match_the_weights(saved: tuple[Path, ETPModel], tmp_path: Path) -> None:
    path = _copy(saved[0], tmp_path / "m")
    _edit_config(path, text_dim=None)  # no text head: its tensors are unexpected
    with pytest.raises(ModelError, match=r"unexpected keys: text_head\.net\.bias"):
        load_model_dir(path)
    _edit_config(path, text_dim=384, method="byol")  # the objective's name is only recorded
    assert load_model_dir(path).method == "byol"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: (p / "config.json").write_text('{"format": "etp-model", '), "corrupted JSON"),
        (lambda p: _edit_config(p, format_version=99), "unknown format version 99"),
        (lambda p: _edit_config(p, format="other"), "not an etp model config"),
        (lambda p: _edit_config(p, **{"model.depth": 34}), r"unknown config key\(s\): model.depth"),
        (lambda p: _edit_config(p, **{"model.head": "conv"}), "model.head: 'conv' is not one of"),
        (lambda p: (p / "config.json").unlink(), "config.json is missing"),
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 20), "cannot read the weights"),
    ],
)
def test_broken_directories(saved: tuple[Path, ETPModel], tmp_path: Path, edit, match) -> None:
    path = _copy(saved[0], tmp_path / "m")
    edit(path)
    with pytest.raises(ModelError, match=match) as info:
        load_model_dir(path)
    assert str(path) in str(info.value)


def test_non_finite_weights(saved: tuple[Path, ETPModel], tmp_path: Path) -> None:
    path = _copy(saved[0], tmp_path / "m")
    state = load_file(str(path / "model.safetensors"))
    state["ecg_head.net.bias"][0] = float("nan")
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ModelError, match="non-finite values in ecg_head.net.bias"):
        load_model_dir(path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model directory not found: .*nope"):
        etp.load(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="is not a model directory"):
        load_model_dir(tmp_path / "file")


def test_model_dir_with_removed_keys_at_the_kept_behaviour_loads(
    saved: tuple[Path, ETPModel], tmp_path: Path
) -> None:
    """A directory written while model.pooling / model.text_normalize existed loads when they
    hold the behaviour etp kept (the paper's readout, reports as written) ..."""
    path = _copy(saved[0], tmp_path / "old")
    meta = json.loads((path / "config.json").read_text())
    meta["model"].update(pooling="avg", text_normalize=False)
    (path / "config.json").write_text(json.dumps(meta))
    loaded = load_model_dir(path)
    x = np.random.default_rng(1).normal(size=(2, 12, 1000)).astype(np.float32)
    with torch.no_grad():
        ref = saved[1].embed_ecg(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded.embed_ecg(x), ref, atol=1e-6)
    # ... and is a clear error when they hold a removed behaviour
    meta["model"]["pooling"] = "avg+max"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.pooling='avg\+max' is an option this etp no longer has"):
        load_model_dir(path)
