"""The top-level `etp` command: sub-commands registered, errors as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from etp.cli import COMMANDS, build_parser, main


def test_every_command_is_registered() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "prepare" in capsys.readouterr().out


def test_user_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    code = main(["pretrain", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "config file not found" in err and "Traceback" not in err


def test_console_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "etp.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("etp ")
