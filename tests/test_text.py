"""Report normalisation and language tags (etp.data.text) on real PTB-XL report text."""

from __future__ import annotations

import pandas as pd
import pytest

from etp.data.text import detect_language, normalize_report


@pytest.fixture(scope="module")
def sample_reports(sample_dir) -> pd.Series:
    db = pd.read_csv(sample_dir / "ptb-xl" / "ptbxl_database.csv", index_col="ecg_id")
    return db["report"].fillna("")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("unvollstÄndiger rechtsschenkelblock", "unvollständiger rechtsschenkelblock"),
        ("mÄssige amplitudenkriterien fÜr linkshypertrophie", "mässige amplitudenkriterien für linkshypertrophie"),
        ("sinusrytm vÄnster el-axel", "sinusrytm vänster el-axel"),
        ("sÅsom vid    anterolateral ischemi", "såsom vid anterolateral ischemi"),
        ("  Edit: ASMI 100,   LAFB \n", "edit: asmi 100, lafb"),
        ("", ""),
    ],
)  # fmt: skip
def test_normalize_report(raw, expected):
    assert normalize_report(raw) == expected


def test_umlaut_repair_without_lowercasing():
    raw = "vorhofÜberbelastung fÜr Edit: ASMI  mÖglich"
    out = normalize_report(raw, lowercase=False)
    assert out == "vorhofüberbelastung für Edit: ASMI möglich"
    assert normalize_report(raw, lowercase=False, umlauts=False, whitespace=False) == raw


def test_decomposed_umlaut_is_composed():
    assert normalize_report("fu\u0308r") == "für"


def test_normalize_real_reports(sample_reports):
    for raw in sample_reports:
        norm = normalize_report(raw)
        assert norm == norm.strip() and "  " not in norm
        assert not any(ch in norm for ch in "ÄÖÜÅ")
        # nothing but case and spacing changes
        assert norm.replace(" ", "") == raw.lower().replace(" ", "").replace("\n", "")
    assert any("ä" in normalize_report(r) for r in sample_reports)


def test_language_of_real_reports(sample_reports):
    langs = sample_reports.map(detect_language)
    assert set(langs) <= {"de", "en", "sv", "unknown"}
    for phrase, lang in (("sinusrytm", "sv"), ("sinusrhythmus", "de"), ("sinus rhythm", "en")):
        has = sample_reports.str.contains(phrase)
        assert has.sum() >= 3, phrase
        assert (langs[has] == lang).all(), sample_reports[has & (langs != lang)].tolist()
    for lang in ("de", "en", "sv"):
        assert (langs == lang).sum() >= 20


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("sinus rhythm. left axis deviation. otherwise normal ecg.", "en"),
        ("sinusrhythmus linkstyp sonst normales ekg", "de"),
        ("sinusrytm vÄnster kammarhypertrofi", "sv"),
        ("", "unknown"),
        ("   ", "unknown"),
        ("pacemaker ekg", "unknown"),
    ],
)
def test_detect_language_examples(text, lang):
    assert detect_language(text) == lang


def test_language_on_all_shared_reports(shared_data):
    db = pd.read_csv(shared_data / "ptb-xl" / "ptbxl_database.csv", usecols=["report"])
    reports = db["report"].fillna("")
    langs = reports.map(detect_language)
    # the reports a key phrase makes unambiguous are all tagged right
    for phrase, lang in (("sinusrytm", "sv"), ("sinusrhythmus", "de"), ("sinus rhythm.", "en")):
        has = reports.str.contains(phrase, regex=False)
        assert (langs[has] == lang).mean() > 0.999
    assert (langs == "unknown").mean() < 0.01
