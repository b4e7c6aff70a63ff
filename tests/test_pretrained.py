"""The shipped pretrained model (etp-ptbxl-mini): loadable by name, half-precision weights cast to
float32, its zero-shot defaults, and its prediction on a known CPSC2018 record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import etp
from conftest import SAMPLE_DIR
from etp.cli import main
from etp.errors import ModelError

CPSC = SAMPLE_DIR / "cpsc2018" / "wfdb"
#: a CPSC2018 record (never seen in training) and its label in the record's header (#Dx)
KNOWN = ("A0029", "Normal")


def _dx(record: str) -> str:
    line = next(x for x in (CPSC / f"{record}.hea").read_text().splitlines() if x.startswith("#Dx"))
    return line.split(":", 1)[1].strip()


def test_shipped_model_loads_by_name_in_float32() -> None:
    from safetensors import safe_open

    from etp.pretrained import shipped_path

    assert "etp-ptbxl-mini" in etp.shipped_models()
    path = shipped_path("etp-ptbxl-mini")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes  # stored small
    model = etp.load("etp-ptbxl-mini")
    assert all(p.dtype == torch.float32 for p in model.model.parameters())
    d = model.zero_shot_defaults
    assert d.variant == "en synonyms via reports" and d.dataset == "ptbxl"
    assert sorted(d.class_embeddings) == ["cpsc2018", "ptbxl"]
    assert d.class_embeddings["cpsc2018"][1].shape == (9, model.embed_dim)
    with pytest.raises(ModelError, match="shipped model"):
        etp.load("etp-ptbxl-maxi")


def test_known_record_prediction() -> None:
    record, label = KNOWN
    assert _dx(record) == label
    model = etp.load("etp-ptbxl-mini")
    probs = model.predict([CPSC / f"{record}.hea"], dataset="cpsc2018")
    assert probs["prediction"].iloc[0] == label
    assert probs.iloc[0, :-1].astype(float).idxmax() == label


def test_half_precision_weights_load_as_float32(tmp_path: Path) -> None:
    """A model directory whose weights are bf16 (or fp16) loads into float32 tensors."""
    from safetensors.torch import load_file, save_file

    from etp.pretrained import shipped_path

    for dtype in (torch.bfloat16, torch.float16):
        out = tmp_path / str(dtype)
        shutil.copytree(shipped_path("etp-ptbxl-mini"), out)
        state = load_file(str(out / "model.safetensors"))
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                  str(out / "model.safetensors"))
        m = etp.load(str(out))
        assert all(p.dtype == torch.float32 for p in m.model.parameters())
        got = m.model.state_dict()
        for k, v in state.items():
            if v.is_floating_point():
                np.testing.assert_array_equal(got[k].numpy(), v.to(dtype).float().numpy())


def test_zero_shot_cli_with_the_shipped_model_and_plot(tmp_path: Path, capsys) -> None:
    f = str(CPSC / f"{KNOWN[0]}.hea")
    rc = main(["zero-shot", "--model", "etp-ptbxl-mini", "--dataset", "cpsc2018", "--json",
               "--plot", str(tmp_path), f])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["prediction"] == KNOWN[1]
    assert (tmp_path / f"{KNOWN[0]}.png").stat().st_size > 10_000
