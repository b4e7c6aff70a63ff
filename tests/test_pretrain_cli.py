"""`etp pretrain`: the shipped configs, --print-config / --help-config, a tiny run through the
CLI, and bad input reported as one line with exit code 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from etp.cli import main
from etp.config import PretrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(ptbxl_sample_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the sample cache (the run writes text embeddings beside it)."""
    dst = tmp_path_factory.mktemp("cli") / "cache"
    shutil.copytree(ptbxl_sample_cache, dst)
    return dst


@pytest.mark.parametrize("name", ["quickstart.yaml", "etp-ptbxl.yaml", "simclr-ptbxl.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(PretrainConfig, CONFIGS / name)
    assert cfg.data.exclude_folds == [10]
    assert 10 not in (cfg.data.train_folds or []) and 10 not in (cfg.data.val_folds or [])


def test_paper_settings() -> None:
    for name, method in (("etp-ptbxl.yaml", "etp"), ("simclr-ptbxl.yaml", "simclr")):
        cfg = load_config(PretrainConfig, CONFIGS / name)
        t = cfg.train
        assert (t.method, t.epochs, t.batch_size) == (method, 50, 128)
        assert (t.lr, t.weight_decay) == (pytest.approx(2e-3), pytest.approx(1e-5))
        assert cfg.data.train_folds == [1, 2, 3, 4, 5, 6, 7, 8] and cfg.data.val_folds == [9]
        assert cfg.model.embed_dim == 512 and cfg.model.head == "linear"
    assert load_config(PretrainConfig, CONFIGS / "simclr-ptbxl.yaml").objective == {"temperature": 0.07}
    assert load_config(PretrainConfig, CONFIGS / "etp-ptbxl.yaml").objective == {"augment": True}
    quick = load_config(PretrainConfig, CONFIGS / "quickstart.yaml")
    assert quick.data.cache == "runs/cache/sample-ptbxl"


def test_print_config_applies_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["pretrain", "--config", str(CONFIGS / "quickstart.yaml"), "--print-config",
               "train.epochs=3", "data.train_folds=[1,2]"])
    assert rc == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3 and printed["data"]["train_folds"] == [1, 2]
    assert printed["train"]["batch_size"] == 32


def test_help_config_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("data.exclude_folds", "model.text_model", "train.checkpoint_every_steps"):
        assert key in out
    assert "Adam learning rate" in out
    # every registered objective with its own settings
    for text in ("train.method=etp", "objective.augment", "train.method=simclr",
                 "objective.temperature", "train.method=random"):
        assert text in out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["train.epoch=3"], "unknown config key(s): train.epoch"),
        (["train.epochs=many"], "train.epochs: expected an integer"),
        (["train.batch_size=1"], "train.batch_size=1: a contrastive loss needs at least 2"),
        (["model.text_model=/nonexistent"], "/nonexistent"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    rc = main(["pretrain", "--config", str(CONFIGS / "quickstart.yaml"), f"data.cache={cache}",
               f"train.out_dir={tmp_path / 'run'}", "train.progress=false", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("etp pretrain: error: ") and "\n" not in err
    assert match in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--config", "no/such.yaml"]) == 2
    assert "config file not found: no/such.yaml" in capsys.readouterr().err


def test_tiny_quickstart_run_through_the_cli(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import etp

    out = tmp_path / "run"
    rc = main(["pretrain", "--config", str(CONFIGS / "quickstart.yaml"), f"data.cache={cache}",
               f"train.out_dir={out}", "train.epochs=1", "train.batch_size=8",
               "data.max_records=16", "train.progress=false"])
    assert rc == 0
    assert f"model saved to {out / 'model'}" in capsys.readouterr().out
    loaded = etp.load(str(out / "model"))
    assert loaded.method == "etp" and loaded.has_text
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["data"]["cache"] == str(cache)
    # resuming a finished run is a no-op that re-saves the same model
    assert main(["pretrain", "--config", str(CONFIGS / "quickstart.yaml"), f"data.cache={cache}",
                 f"train.out_dir={out}", "train.epochs=1", "train.batch_size=8",
                 "data.max_records=16", "train.progress=false", "--resume"]) == 0


def test_two_process_torchrun_run(cache: Path, tmp_path: Path) -> None:
    """The DDP path (gloo on the CPU): sharded batches, wrapped model, rank 0 writes."""
    import os
    import subprocess
    import sys

    import etp

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", "-m", "etp.cli", "pretrain",
         "--config", str(CONFIGS / "quickstart.yaml"), f"data.cache={cache}",
         f"train.out_dir={out}", "train.epochs=1", "train.batch_size=8", "data.max_records=16",
         "train.progress=false", "train.log_every_steps=1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model saved to") == 1
    rows = (out / "train_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + 2 steps of a global batch of 8 (4 per process)
    assert etp.load(str(out / "model")).method == "etp"
