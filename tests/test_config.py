"""Tests of the typed config machinery: YAML in, dotted overrides, unknown keys and types rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from etp.config import (
    PretrainConfig,
    apply_overrides,
    describe,
    from_dict,
    load_config,
    parse_override,
    save_yaml,
    to_dict,
)
from etp.errors import ConfigError


def test_defaults_follow_the_paper() -> None:
    cfg = PretrainConfig()
    assert cfg.train.lr == pytest.approx(2e-3)
    assert cfg.train.weight_decay == pytest.approx(1e-5)
    assert cfg.train.epochs == 50
    assert cfg.train.batch_size == 128
    assert cfg.model.embed_dim == 512
    assert cfg.model.init_temperature == pytest.approx(0.07)


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 1.0e-3\nmodel:\n  head: mlp\n")
    cfg = load_config(PretrainConfig, path, ["train.epochs=5", "data.train_folds=[1,2]"])
    assert cfg.train.epochs == 5
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.head == "mlp"
    assert cfg.data.train_folds == [1, 2]


def test_int_is_accepted_for_float() -> None:
    cfg = from_dict(PretrainConfig, {"train": {"lr": 1}})
    assert isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"train": {"epoch": 3}}, r"unknown config key\(s\): train\.epoch"),
        ({"trian": {}}, r"unknown config key\(s\): trian"),
        ({"train": {"epochs": "many"}}, r"train\.epochs: expected an integer"),
        ({"train": {"epochs": 2.5}}, r"train\.epochs: expected an integer"),
        ({"train": {"progress": "yes"}}, r"train\.progress: expected true/false"),
        ({"model": {"head": "conv"}}, r"model\.head: 'conv' is not one of"),
        ({"model": {"pooling": "avg"}}, r"unknown config key\(s\): model\.pooling"),
        ({"data": {"train_folds": 3}}, r"data\.train_folds"),
        ({"train": []}, r"train: expected a mapping"),
    ],
)
def test_bad_config_is_rejected_with_the_key(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(PretrainConfig, data)


def test_bad_files_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PretrainConfig, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(PretrainConfig, listing)
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": 3}, ["train.epochs=2"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(PretrainConfig, None, ["train.epochs=abc"])


def test_round_trip_and_describe(tmp_path: Path) -> None:
    cfg = load_config(PretrainConfig, None, ["train.epochs=7", "model.head=mlp"])
    out = tmp_path / "resolved.yaml"
    save_yaml(cfg, out)
    again = load_config(PretrainConfig, out)
    assert to_dict(again) == to_dict(cfg)
    rows = {key: help_text for key, help_text, _ in describe(PretrainConfig)}
    assert "train.lr" in rows and rows["train.lr"]
    assert all(text for text in rows.values()), "every field carries help text"


def test_exponent_without_dot_is_a_number() -> None:
    cfg = load_config(PretrainConfig, None, ["train.lr=1e-3"])
    assert cfg.train.lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number"):
        load_config(PretrainConfig, None, ["train.lr=fast"])
