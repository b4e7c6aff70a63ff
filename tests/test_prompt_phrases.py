"""benchmarks/prompt_phrases.py and the PTB-XL phrasings of the packaged prompt table."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from etp.errors import ConfigError

from conftest import benchmark_script

REPO = Path(__file__).resolve().parents[1]

STATEMENTS = """\
,description,diagnostic,diagnostic_class
NORM,normal ECG,1.0,NORM
IMI,inferior myocardial infarction,1.0,MI
CLBBB,complete left bundle branch block,1.0,CD
SR,sinus rhythm,,
"""


def _tiny_ptbxl(root: Path) -> Path:
    """A PTB-XL folder with a few records: two below ecg_id 1000 whose reports must never show."""
    rows = [
        (5, "SECRETPHRASE sinusrhythmus normales ekg", {"NORM": 100.0, "SR": 0.0}),
        (999, "Geheimtest inferiorer infarkt", {"IMI": 100.0}),
        (1000, "Sinusrhythmus   normales EKG", {"NORM": 100.0, "SR": 0.0}),
        (1001, "sinusrhythmus normales ekg", {"NORM": 80.0}),
        (1002, "sinusrhythmus linkstyp sonst normales ekg", {"NORM": 100.0}),
        (1003, "sinusrhythmus qrs(t) abnorm inferiorer infarkt", {"IMI": 50.0}),
        (1004, "sinusrhythmus qrs(t) abnorm inferiorer infarkt", {"IMI": 100.0, "SR": 0.0}),
        (1005, "sinus rhythm. left bundle branch block.", {"CLBBB": 100.0}),
        # two superclasses: not single-label, left out of the superclass tables
        (1006, "sinusrhythmus linksschenkelblock inferiorer infarkt", {"CLBBB": 100.0, "IMI": 0.0}),
        (1007, "", {"NORM": 100.0}),
    ]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "ecg_id": [r[0] for r in rows],
            "report": [r[1] for r in rows],
            "scp_codes": [repr(r[2]) for r in rows],
            "strat_fold": [1] * len(rows),
        }
    ).to_csv(root / "ptbxl_database.csv", index=False)
    (root / "scp_statements.csv").write_text(STATEMENTS, encoding="utf-8")
    return root


def test_lists_phrasings_of_ids_from_1000_only(tmp_path: Path) -> None:
    root = _tiny_ptbxl(tmp_path / "ptb-xl")
    out = tmp_path / "phrases.md"
    assert benchmark_script("prompt_phrases").main(["--root", str(root), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "secretphrase" not in text.lower() and "geheimtest" not in text.lower()
    assert f"Command: `python benchmarks/prompt_phrases.py --root {root} --out {out}`" in text
    assert "only reports of PTB-XL records with ecg_id >= 1000 were read" in text
    assert "Date: " in text
    # normalised (lower case, whitespace collapsed): 1000 and 1001 are one phrasing, counted twice
    assert "| sinusrhythmus normales ekg | 2 |" in text
    assert "### NORM, de (3 reports)" in text
    assert "### MI, de (2 reports)" in text
    # ecg_id 1006 has two superclasses: only in the CPSC2018 (statement) section
    assert "### CD, en (1 reports)" in text and "### CD, de" not in text
    assert "### LBBB (SCP CLBBB), de (1 reports)" in text
    # a phrase of both MI reports and of no other (the shorter ones it holds, with the same
    # count, are left out); with its glossary English
    assert (
        "| sinusrhythmus qrs(t) abnorm inferiorer infarkt | 2 | 1.00 | "
        "sinus rhythm qrs(t) abnormal inferior infarction |" in text
    )
    # same data, same tables (only the date and the command's --out differ)
    again = tmp_path / "again.md"
    assert benchmark_script("prompt_phrases").main(["--root", str(root), "--out", str(again)]) == 0
    assert _tables(again.read_text(encoding="utf-8")) == _tables(text)


def _tables(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.startswith(("Date:", "Command:"))]


def test_refuses_reports_below_id_1000(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = benchmark_script("prompt_phrases")
    root = _tiny_ptbxl(tmp_path / "ptb-xl")
    out = tmp_path / "phrases.md"
    assert script.main(["--root", str(root), "--out", str(out), "--min-id", "999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prompt_phrases: error: --min-id 999:") and "\n" not in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="ecg_id < 1000"):
        script.read_reports(root, min_id=1)
    assert script.read_reports(root)["ecg_id"].min() == 1000
    assert set(script.read_reports(root, min_id=1003)["ecg_id"]) == {1003, 1004, 1005, 1006}


def test_missing_table_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark_script("prompt_phrases").main(["--root", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert "PTB-XL database not found" in err and "\n" not in err


@cache
def _reports_from_1000(root: Path) -> tuple[pd.DataFrame, tuple[str, ...], tuple[str, ...]]:
    """Single-label reports of ecg_id >= 1000; every such report (normalised) and its glossary
    English."""
    from etp.data.ptbxl import DATABASE_CSV
    from etp.data.text import ReportTranslator, load_glossary, normalize_report

    db = pd.read_csv(root / DATABASE_CSV)
    db = db[db["ecg_id"] >= 1000]
    texts = tuple(normalize_report(r) for r in db["report"].fillna(""))
    translate = ReportTranslator(load_glossary())
    return benchmark_script("prompt_phrases").single_label_reports(root), texts, tuple(translate.translate(texts))


def test_ptbxl_prompt_phrasings_occur_in_reports_from_id_1000(shared_data: Path) -> None:
    from etp.eval.zero_shot import load_prompt_table

    single, texts, english = _reports_from_1000(shared_data / "ptb-xl")
    table = load_prompt_table()
    for cls, names in table.datasets["ptbxl"].items():
        for lang, phrasings in names.items():
            # the English class name is the paper's; the rest are report phrasings
            for phrase in phrasings[1:] if lang == "en" else phrasings:
                p = phrase.lower()
                if lang == "en":
                    found = any(p in t for t in texts) or any(p in t for t in english)
                    assert found, f"ptbxl {cls} en synonym {phrase!r} is in no report >= 1000"
                    continue
                assert any(p in t for t in texts), f"ptbxl {cls} {lang} {phrase!r} in no report"
                # and a phrasing of the class: most single-label reports holding it are of it
                holding = single[single["text"].str.contains(p, regex=False)]
                share = float((holding["label"] == cls).mean())
                assert share >= 0.5, f"ptbxl {cls} {lang} {phrase!r}: only {share:.0%} {cls}"


def test_cpsc2018_report_phrasings_occur_in_reports_from_id_1000(shared_data: Path) -> None:
    from etp.eval.zero_shot import load_prompt_table

    _, texts, _ = _reports_from_1000(shared_data / "ptb-xl")
    for cls, names in load_prompt_table().datasets["cpsc2018"].items():
        for lang in ("de", "sv"):
            for phrase in names.get(lang, []):
                assert any(phrase.lower() in t for t in texts), f"cpsc2018 {cls} {lang} {phrase!r}"
