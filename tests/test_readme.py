"""Every ```python block of README.md runs as written (from the repository root)."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text("utf-8"), re.M | re.S)


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ETP_CACHE_DIR", str(tmp_path / "cache"))
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
