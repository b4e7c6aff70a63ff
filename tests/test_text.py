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


# --- report translation (glossary) -----------------------------------------------------------


@pytest.fixture(scope="module")
def translator():
    from etp.data.text import ReportTranslator, load_glossary

    return ReportTranslator(load_glossary())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "sinusrhythmus lagetyp normal normales ekg 4.46                          unbestÄtigter bericht",
            "sinus rhythm normal axis normal ecg 4.46 unconfirmed report",
        ),
        (
            "sinusrhythmus linkstyp qrs(t) abnorm    inferiorer infarkt     alter unbest.",
            "sinus rhythm left axis deviation qrs(t) abnormal inferior infarction age undetermined",
        ),
        ("sinusrhythmus a-v block i lagetyp normal", "sinus rhythm first degree av block normal axis"),
        (
            "sinusrytm vÄnster el-axel avvikande qrs(t) fÖrlopp",
            "sinus rhythm left axis deviation abnormal qrs(t)",
        ),
        # English reports are only normalised: 'av' and 'in' stay English words
        ("Sinus rhythm. 1st degree AV block.", "sinus rhythm. 1st degree av block."),
        ("", ""),
    ],
)  # fmt: skip
def test_translate_examples(translator, raw, expected):
    assert translator(raw) == expected


def test_translation_matches_whole_words_and_prefers_longer_phrases():
    from etp.data.text import ReportTranslator

    t = ReportTranslator({"infarkt": "infarction", "inferiorer infarkt": "INF-MI", "alt": "old"})
    # 'alter' is not 'alt' + 'er'; the two-word phrase wins over its last word
    assert t("inferiorer infarkt alter infarkt alt") == "INF-MI alter infarction old"
    with pytest.raises(ValueError):
        ReportTranslator({})


def test_glossary_covers_real_german_and_swedish_reports(sample_reports, translator):
    """On the bundled sample's non-English reports, nearly every word ends up English.

    'English' here = a word of an English report in the same sample, or of the glossary's output.
    """
    import re

    from etp.data.text import load_glossary

    words = re.compile(r"[a-zäöüåß]+")
    langs = sample_reports.map(detect_language)
    english = {w for r in sample_reports[langs == "en"] for w in words.findall(normalize_report(r))}
    english |= {w for v in load_glossary().values() for w in words.findall(v)}
    foreign = sample_reports[langs.isin(["de", "sv"])]
    assert len(foreign) >= 60
    out = [w for r in foreign for w in words.findall(translator(r))]
    left = [w for w in out if w not in english]
    assert len(left) / len(out) < 0.02, sorted(set(left))
    # a German or Swedish letter survives only in misspelt words
    assert sum(any(ch in w for ch in "äöüå") for w in out) <= 0.005 * len(out)


def test_glossary_files(tmp_path):
    from etp.data.text import load_glossary, translate_report
    from etp.errors import ConfigError

    good = tmp_path / "g.yaml"
    good.write_text('phrases:\n  "vorhofflimmern": "atrial fibrillation"\n  "LinksschenkelblOck": "lbbb"\n')
    g = load_glossary(good)
    assert g == {"vorhofflimmern": "atrial fibrillation", "linksschenkelblock": "lbbb"}
    assert translate_report("Vorhofflimmern linksschenkelblock", good) == "atrial fibrillation lbbb"
    for text, match in (
        ("phrases: []\n", "non-empty 'phrases:'"),
        ("words: {a: b}\n", "non-empty 'phrases:'"),
        ("phrases: {a: [b]}\n", "must be text"),
        ("phrases: {a: b\n", "not valid YAML"),
    ):
        bad = tmp_path / f"bad{len(text)}.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match) as err:
            load_glossary(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_glossary(tmp_path / "missing.yaml")
