"""The objective interface: the registry, and a method added in one small class that trains
through `etp pretrain` with checkpoints and an exact resume."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from etp import objectives
from etp.cli import main
from etp.config import config_field
from etp.errors import ConfigError
from etp.objectives.base import Objective
from etp.train import loop
from resume_check import assert_resume_is_exact

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_builtin_objectives_are_registered() -> None:
    assert {"etp", "simclr", "random"} <= set(objectives.names())
    etp, simclr, random_init = (objectives.get(n) for n in ("etp", "simclr", "random"))
    assert etp.text_head and etp.needs_reports and etp.trains
    assert not simclr.text_head and not simclr.needs_reports
    assert random_init.text_head and not random_init.trains
    with pytest.raises(ConfigError, match=r"unknown objective 'nope' \(known: .*etp"):
        objectives.get("nope")


def test_objective_options_are_typed_and_checked() -> None:
    simclr = objectives.get("simclr")
    assert simclr.parse_options({}).temperature == 0.07
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): objective\.temp "):
        simclr.parse_options({"temp": 0.1})
    with pytest.raises(ConfigError, match=r"objective\.temperature: expected a number"):
        simclr.parse_options({"temperature": "warm"})
    with pytest.raises(ConfigError, match=r"objective\.temperature must be > 0"):
        simclr.parse_options({"temperature": 0})


def test_a_second_objective_may_not_take_a_registered_name() -> None:
    class Other(Objective):
        name = "etp"

    with pytest.raises(ConfigError, match="objective name 'etp' is taken"):
        objectives.register(Other)


# -- a method in a few lines -----------------------------------------------------------------


@dataclass
class TinyOptions:
    weight: float = config_field(1.0, "loss weight")


class TinyObjective(Objective):
    """Predict each ECG's embedding from the previous ECG's, with a predictor of its own and a
    step counter that only after_step updates (both must survive a resume)."""

    name = "tiny-test"
    Options = TinyOptions
    log_names = ("fit",)

    def setup(self) -> None:
        self.predictor = nn.Linear(self.model.cfg.embed_dim, self.model.cfg.embed_dim).to(self.ctx.device)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, inputs, model=None):  # type: ignore[no-untyped-def]
        with self.ctx.autocast():
            z = self.net(model).embed_ecg(self.ctx.to_device(inputs.x)).float()
        fit = (self.predictor(z) - z.detach().roll(1, 0)).pow(2).mean()
        return self.options.weight * fit, {"fit": float(fit.detach())}

    def after_step(self, step: int, total_steps: int) -> None:
        self.updates += 1


@pytest.fixture()
def tiny_registered():
    objectives.register(TinyObjective)
    yield TinyObjective
    objectives.unregister(TinyObjective.name)


def _args(cache: Path, out: Path) -> list[str]:
    return [
        "pretrain", f"data.cache={cache}", f"train.out_dir={out}", "train.method=tiny-test",
        "objective.weight=2.0", "data.train_folds=[1,2,3,4,5,6,7,8]", "data.val_folds=[9]",
        "data.exclude_folds=[10]", "data.max_records=12", "train.batch_size=4", "train.epochs=2",
        "train.precision=fp32", "train.checkpoint_every_steps=2", "train.progress=false",
    ]


def test_a_registered_objective_trains_checkpoints_and_resumes_exactly(
    tiny_registered: type, ptbxl_sample_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, _ = assert_resume_is_exact(
        lambda out: _args(ptbxl_sample_cache, out), tmp_path, monkeypatch, crash_step=4
    )
    assert set(full["objective"]) == {"predictor.weight", "predictor.bias", "updates"}
    assert int(full["objective"]["updates"]) == 6  # 12 records / batch 4 x 2 epochs
    # the objective's own logs are train_log.csv columns, averaged like the loss; the resume
    # keeps the rows up to its checkpoint (step 4) and its first window starts there
    rows = {d: list(csv.DictReader((tmp_path / d / "train_log.csv").open())) for d in ("full", "cut")}
    assert [r["step"] for r in rows["full"]] == [r["step"] for r in rows["cut"]] == ["3", "6"]
    assert (rows["full"][0]["loss"], rows["full"][0]["fit"]) == (rows["cut"][0]["loss"], rows["cut"][0]["fit"])
    for r in rows["full"] + rows["cut"]:
        assert float(r["loss"]) == pytest.approx(2.0 * float(r["fit"]), rel=1e-5)  # weight 2
    # a resume that lost the objective's own parts is refused, not silently re-initialised
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "cut", broken)
    state = torch.load(broken / "checkpoints" / "last.pt", weights_only=True)
    state["objective"] = {}
    torch.save(state, broken / "checkpoints" / "last.pt")
    assert main(_args(ptbxl_sample_cache, broken) + ["--resume"]) == 2


def test_logs_an_objective_does_not_declare_are_refused(
    tiny_registered: type, ptbxl_sample_cache: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(tiny_registered, "log_names", ("fit", "other"))
    assert main(_args(ptbxl_sample_cache, tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "objective 'tiny-test' returned logs ['fit'] but declares log_names ['fit', 'other']" in err


def test_emulated_bf16_warns_only_where_training_runs_autocast(
    tiny_registered: type, ptbxl_sample_cache: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from etp.train import settings

    monkeypatch.setattr(settings, "cpu_has_bf16", lambda: False)
    base = ["pretrain", f"data.cache={ptbxl_sample_cache}", "train.precision=bf16",
            "data.train_folds=[1,2]", "data.val_folds=[9]", "data.exclude_folds=[10]"]  # fmt: skip
    with caplog.at_level("WARNING", logger="etp.train.settings"):
        assert main(base + ["train.method=random", f"train.out_dir={tmp_path / 'r'}"]) == 0
    assert "no bf16 instructions" not in caplog.text  # nothing trains, nothing is emulated
    with caplog.at_level("WARNING", logger="etp.train.settings"):
        settings.warn_emulated_bf16(torch.device("cpu"), "bf16")
    assert "no bf16 instructions" in caplog.text and "train.precision=fp32" in caplog.text


def test_random_init_saves_the_seeded_initialisation_without_reading_batches(
    ptbxl_sample_cache: Path, tmp_path: Path
) -> None:
    from etp.config import ModelConfig
    from etp.models.etp import ETPModel, load_model_dir

    args = ["pretrain", f"data.cache={ptbxl_sample_cache}", "train.method=random", "train.seed=3",
            "data.train_folds=[1,2]", "data.val_folds=[9]", "data.exclude_folds=[10]"]
    assert main(args + [f"train.out_dir={tmp_path / 'r'}"]) == 0
    loaded = load_model_dir(tmp_path / "r" / "model")
    assert loaded.method == "random" and loaded.has_text
    assert not (tmp_path / "r" / "checkpoints").exists()
    loop.seed_everything(3)
    want = ETPModel(ModelConfig(), text_dim=384, method="random").state_dict()
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
