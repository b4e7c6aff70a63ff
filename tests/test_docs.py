"""The user documents: README length, relative links, and the test command CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

#: README stays a user's document; the lab notebook lives in docs/experiments.md
MAX_README_WORDS = 1600
TEST_COMMAND = "python -m pytest -q"

# [text](target) and ![alt](target); the target ends at whitespace or ")"
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^```[^\n]*\n.*?^```", re.S | re.M)


def links(markdown: str) -> list[str]:
    """Link targets of a Markdown text, code blocks and inline code left out."""
    text = _FENCE.sub("", markdown)
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def relative_targets(markdown: str) -> list[str]:
    """The links that point into the repository (no scheme, no pure #anchor), anchors cut."""
    out = []
    for target in links(markdown):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def code_blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", markdown, re.S | re.M)


def test_link_parser_on_a_known_text() -> None:
    text = (
        "See [a](docs/a.md), [b](../x/b.md#part), ![img](p.png), [web](https://e.org/x),\n"
        "[anchor](#top) and `[not](code.md)`.\n```bash\n[also not](block.md)\n```\n"
    )
    assert relative_targets(text) == ["docs/a.md", "../x/b.md", "p.png"]


def test_readme_is_a_short_users_document() -> None:
    words = len(README.read_text(encoding="utf-8").split())
    assert words < MAX_README_WORDS, f"README.md has {words} words (limit {MAX_README_WORDS})"


def test_docs_exist() -> None:
    names = {p.name for p in DOCS}
    assert {"experiments.md", "method.md", "benchmarks.md"} <= names


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_to_existing_files(doc: Path) -> None:
    targets = relative_targets(doc.read_text(encoding="utf-8"))
    missing = [t for t in targets if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(REPO)}: links to missing files: {missing}"


def test_readme_links_to_the_docs() -> None:
    targets = set(relative_targets(README.read_text(encoding="utf-8")))
    for doc in DOCS:
        assert doc.relative_to(REPO).as_posix() in targets, f"README does not link {doc.name}"


def test_readme_test_command_is_the_one_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    commands = [
        line.split("#", 1)[0].strip()
        for block in code_blocks(text, "bash")
        for line in block.splitlines()
        if "pytest" in line
    ]
    assert commands == [TEST_COMMAND], f"README's pytest command(s): {commands}"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci_commands = [
        line.strip()
        for line in ci.splitlines()
        if "pytest" in line and not line.lstrip().startswith(("#", "echo"))
    ]
    assert ci_commands == [TEST_COMMAND], f".ci/run's pytest command(s): {ci_commands}"


def test_readme_quick_start_commands_verbatim() -> None:
    text = README.read_text(encoding="utf-8")
    first = code_blocks(text, "bash")[0]
    commands = [line.split("#", 1)[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == [
        'pip install torch==2.13.0 -e ".[test]"',
        "etp benchmark --config configs/quickstart-benchmark.yaml",
        TEST_COMMAND,
    ]
