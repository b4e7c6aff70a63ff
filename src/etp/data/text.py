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
