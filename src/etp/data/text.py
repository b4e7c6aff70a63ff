"""Report text: a documented normalisation step and a language tag.

PTB-XL reports are real clinical free text. They mix German (most), English and Swedish, write
umlauts as upper-case letters inside otherwise lower-case words (``unvollstÄndiger``, ``fÜr``,
``vÄnster``) and carry runs of spaces from the original fixed-width report layout. Readers
always keep the original text in :attr:`etp.data.records.RecordInfo.report`;
:func:`normalize_report` is a separate, selectable step, and :func:`detect_language` tags each
report so that results can be broken down by language.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

#: upper-case letters that PTB-XL writes inside lower-case words instead of ä, ö, ü, å
_UPPER_UMLAUTS = "ÄÖÜÅ"
_UMLAUT_IN_WORD = re.compile(
    rf"(?<=[a-zäöüåß])[{_UPPER_UMLAUTS}]|[{_UPPER_UMLAUTS}](?=[a-zäöüåß])"
)
_WHITESPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"[a-zäöüåß]+")


def normalize_report(
    text: str, *, lowercase: bool = True, umlauts: bool = True, whitespace: bool = True
) -> str:
    """Normalised copy of a report (the original is never changed).

    Steps, in this order (each can be switched off):

    1. ``umlauts``: repair upper-case umlauts that touch a lower-case letter
       (``unvollstÄndiger`` -> ``unvollständiger``, ``fÜr`` -> ``für``, ``vÄnster`` ->
       ``vänster``, ``Überleitung`` -> ``überleitung``); any text is first put in Unicode NFC
       form so that a decomposed ``A`` + combining diaeresis is treated like ``Ä``.
    2. ``lowercase``: lower-case the whole text (this alone also fixes the umlauts).
    3. ``whitespace``: collapse every run of whitespace (spaces, tabs, newlines) to one space
       and strip both ends.

    Spelling is not changed otherwise (``ueberdrehter`` stays as written) and nothing is removed.
    """
    out = unicodedata.normalize("NFC", text)
    if umlauts:
        out = _UMLAUT_IN_WORD.sub(lambda m: m.group(0).lower(), out)
    if lowercase:
        out = out.lower()
    if whitespace:
        out = _WHITESPACE.sub(" ", out).strip()
    return out


# Marker words chosen from the PTB-XL reports (normalised form). A word counts for a language
# only if it is not also common in the other two (e.g. "infarkt", "normal", "hemiblock",
# "anterior" are left out).
_MARKERS: dict[str, frozenset[str]] = {
    "de": frozenset(
        """sinusrhythmus sinusbradykardie sinustachykardie sinusarrhythmie linkstyp rechtstyp
        lagetyp steiltyp indifferenztyp überdrehter ueberdrehter normales sonst abnorm abnormes
        abnormales unspezifisches unspezifische unspezifischer wahrscheinlich möglich
        myokardschaden ischämie linksbelastung linkshypertrophie rechtsschenkelblock
        linksschenkelblock schenkelblock unvollständiger vollständiger vorhofflimmern
        vorhofflattern bericht unbestätigter und oder mit bei ableitungen periphere
        niederspannung verdacht auf extrasystole extrasystolen ventrikuläre supraventrikuläre
        leitungsstörung verbreiterung alter unbest nach über für mässige kein keine nicht ist
        hebung senkung negativ abgeflacht biphasisch zweigipfliges fehlende pathologisches
        lagetypen überleitung vorhof herzfrequenz linksanteriorer intraventrikuläre
        anteriorer inferiorer septaler lateraler anteroseptaler anterolateraler arrhythmie
        bradykardie grades schrittmacher pathologisch grenzbefund knotenrhythmus
        leitungsstoerung ruhe zur zum""".split()
    ),
    "sv": frozenset(
        """sinusrytm vänster höger såsom vid avvikande förlopp förändring förändringar ischemi
        eller normalt belastning myokardaffektion skänkelblock sänkning ej bör övervägas
        kammarhypertrofi myokardskada ålder bestämmbar extrasystoli misstänkt förmaksflimmer
        ospecifikt ospecifik förlängd sannolikt äldre högersidigt vänstersidigt inkomplett låga
        eljest våg möjligen gammal kan inga för uteslutas och med av på inget säkert
        patologiskt sinusbradykardi sinustachykardi arytmi rytm fladder extraslag slag axel
        amplituder extremitetsavledningarna förmak färsk regelbunden kammarfrekvens
        impulsutbredning retledningshinder bröstavledningarnas förskjuten främre""".split()
    ),
    "en": frozenset(
        """rhythm the and with of is are left right axis deviation atrial ventricular
        fibrillation flutter bundle branch possible probable probably consistent otherwise ecg
        waves wave segments segment depressed depression elevated elevation inverted inversion
        nonspecific non specific infarction ischaemia ischemia hypertrophy premature
        contraction contractions beats query low high voltage voltages may be due to leads
        lead changes old age undetermined suggests suggestive cannot excluded likely unusual
        enlargement prolonged interval abnormality this there no evidence compared tracing
        incomplete complete fascicular heart rate trace only requested""".split()
    ),
}
_SCRIPT_MARKERS = {"ß": "de", "ü": "de", "å": "sv"}


def detect_language(text: str) -> str:
    """Language of a report: ``"de"``, ``"en"``, ``"sv"`` or ``"unknown"``.

    A keyword heuristic made for ECG reports (not a general language identifier): the
    normalised text's words are counted against short lists of marker words typical of
    German, Swedish and English ECG reports (``sinusrhythmus``/``linkstyp``/``und``,
    ``sinusrytm``/``vänster``/``eller``, ``sinus rhythm``/``the``/``left``...), and ``ß``/``ü``
    (German only) or ``å`` (Swedish only) count as one extra marker each. The language with
    the most markers wins; no marker at all, or a tie, gives ``"unknown"``.
    """
    norm = normalize_report(text)
    if not norm:
        return "unknown"
    scores = {lang: 0 for lang in _MARKERS}
    for tok in _TOKEN.findall(norm):
        for lang, words in _MARKERS.items():
            if tok in words:
                scores[lang] += 1
    for ch, lang in _SCRIPT_MARKERS.items():
        if ch in norm:
            scores[lang] += 1
    best = max(scores.values())
    winners = [lang for lang, s in scores.items() if s == best]
    if best == 0 or len(winners) > 1:
        return "unknown"
    return winners[0]


#: the glossary shipped with etp (German and Swedish ECG statements -> English)
BUILTIN_GLOSSARY = "builtin"


@lru_cache(maxsize=8)
def _load_glossary_file(path: str) -> tuple[tuple[str, str], ...]:
    import yaml

    from etp.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"report glossary {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"report glossary {path}: not valid YAML ({exc})") from None
    phrases = doc.get("phrases") if isinstance(doc, dict) else None
    if not isinstance(phrases, dict) or not phrases:
        raise ConfigError(f"report glossary {path}: needs a non-empty 'phrases:' mapping")
    bad = [k for k, v in phrases.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"report glossary {path}: keys and values must be text; bad key(s) {bad[:5]}")
    normalised = ((normalize_report(k), v) for k, v in phrases.items())
    return tuple((k, v) for k, v in normalised if k)


def load_glossary(source: str | Path = BUILTIN_GLOSSARY) -> dict[str, str]:
    """Phrase -> English mapping from ``source``: ``"builtin"`` or a YAML file with ``phrases:``.

    Keys are normalised like reports (:func:`normalize_report`), so a glossary may be written
    with either spelling of the umlauts.
    """
    if str(source) == BUILTIN_GLOSSARY:
        from importlib.resources import files

        path = str(files("etp.resources").joinpath("report_glossary.yaml"))
    else:
        path = str(Path(source).expanduser().resolve())
    return dict(_load_glossary_file(path))


#: ``model.report_translation`` value that turns translation off
NO_TRANSLATION = "none"


def translation_glossary(setting: str) -> dict[str, str] | None:
    """The glossary a ``model.report_translation`` setting selects (None for ``"none"``).

    What pretraining stores in the model directory; a bad setting is a ConfigError naming the key.
    """
    from etp.errors import ConfigError

    if setting == NO_TRANSLATION:
        return None
    try:
        return load_glossary(setting)
    except ConfigError as exc:
        raise ConfigError(f"model.report_translation={setting!r}: {exc}") from None


class ReportTranslator:
    """Phrase-table translation of non-English ECG reports into English.

    Why: the packaged text model (MiniLM) is English-only, while most PTB-XL reports are German;
    the same finding written in two languages lands far apart in its embedding space, which
    splits the contrastive targets and puts German reports far from English prompts. ECG reports
    are formulaic (device statements), so a glossary of a few hundred phrases covers nearly all
    words. English reports are returned normalised but otherwise unchanged; a non-English word
    the glossary lacks is kept as written.
    """

    def __init__(self, glossary: Mapping[str, str]) -> None:
        if not glossary:
            raise ValueError("ReportTranslator needs a non-empty glossary")
        self.glossary = {normalize_report(k): v for k, v in glossary.items()}
        keys = sorted(self.glossary, key=len, reverse=True)
        alternation = "|".join(re.escape(k) for k in keys)
        # whole words only: no letter or digit may touch a match on either side
        self._pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)")

    def __call__(self, text: str) -> str:
        """English text for one report (normalised; the input is never changed)."""
        norm = normalize_report(text)
        if detect_language(text) == "en":
            return norm
        out = self._pattern.sub(lambda m: self.glossary[m.group(0)], norm)
        return _WHITESPACE.sub(" ", out).strip()

    def translate(self, texts: list[str] | tuple[str, ...]) -> list[str]:
        """:meth:`__call__` over a list (each distinct text translated once)."""
        memo: dict[str, str] = {}
        return [memo[t] if t in memo else memo.setdefault(t, self(t)) for t in texts]


def translate_report(text: str, glossary: str | Path | Mapping[str, str] = BUILTIN_GLOSSARY) -> str:
    """English version of one report with the given glossary (see :class:`ReportTranslator`)."""
    table = glossary if isinstance(glossary, Mapping) else load_glossary(glossary)
    return ReportTranslator(table)(text)
