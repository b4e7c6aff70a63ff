"""The most frequent report phrasings of each PTB-XL superclass, from records that are never tested.

The zero-shot prompt table (``src/etp/resources/prompts.yaml``) names each class in the words
PTB-XL's reports use. Those words must not come from reports of records that the benchmark
tests, so this script reads only records with ``ecg_id >= 1000`` (:data:`MIN_ECG_ID`): none of
them has a signal in this project's data, so none is ever a test record. It refuses a lower
bound, and drops every row below it right after reading the table, before any report is used.

Groups: (1) each PTB-XL superclass, over single-label records as etp uses them
(:mod:`etp.data.ptbxl`: a record's superclasses are the ``diagnostic_class`` of every diagnostic
statement in its ``scp_codes``, whatever the likelihood; kept when there is exactly one); (2) each
CPSC2018 class, over the records holding the PTB-XL SCP statement of the same finding
(:data:`CPSC_STATEMENTS`; CPSC2018 itself has no reports). Only non-empty reports count; they are
normalised (:func:`etp.data.text.normalize_report`: lower case, whitespace collapsed) and tagged
with :func:`etp.data.text.detect_language`. For each group and language the result lists

* the most frequent whole reports, with counts, and
* the most frequent phrases (runs of 1-6 space-separated words), counted once per report, kept
  when at least half of the reports of that language (of the superclass view: single-label
  reports) holding the phrase belong to the group; a phrase is left out when a longer listed
  phrase holding it has the same count. Each phrase is shown with its English rendering by the
  packaged glossary (``report_glossary.yaml``, itself written from reports of ``ecg_id >= 1000``).

Labels are used only to group the reports. Results go to ``benchmarks/results/prompt_phrases.md``.

    python benchmarks/prompt_phrases.py [--root ../shared/data/ptb-xl] [--top 20]
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
#: lowest ecg_id whose report may be read (records below have signals here: test records)
MIN_ECG_ID = 1000
CLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
LANGUAGES = ("de", "en", "sv", "unknown")
#: CPSC2018 class -> the PTB-XL SCP statement of the same finding
CPSC_STATEMENTS = {
    "Normal": "NORM", "AF": "AFIB", "I-AVB": "1AVB", "LBBB": "CLBBB", "RBBB": "CRBBB",
    "PAC": "PAC", "PVC": "PVC", "STD": "STD_", "STE": "STE_",
}
MAX_WORDS = 6
MIN_SHARE = 0.5


def read_reports(root: Path, min_id: int = MIN_ECG_ID) -> pd.DataFrame:
    """Normalised non-empty reports of the records with ``ecg_id >= min_id``.

    Columns ``ecg_id``, ``codes`` (the record's SCP statements, a frozenset), ``label`` (its
    superclass when it has exactly one, as :mod:`etp.data.ptbxl` derives them, else None),
    ``language`` and ``text``. Raises :class:`etp.errors.ConfigError` when ``min_id`` is below
    :data:`MIN_ECG_ID`, :class:`etp.errors.DataError` for an unreadable table.
    """
    from etp.data.ptbxl import DATABASE_CSV, STATEMENTS_CSV
    from etp.data.readers import read_csv_checked
    from etp.data.text import detect_language, normalize_report
    from etp.errors import ConfigError, DataError

    if min_id < MIN_ECG_ID:
        raise ConfigError(
            f"--min-id {min_id}: reports of records with ecg_id < {MIN_ECG_ID} are never read "
            f"(those records have signals here and may be test records); use {MIN_ECG_ID} or more"
        )
    database = root / DATABASE_CSV
    db = read_csv_checked(database, ["ecg_id", "report", "scp_codes"], "PTB-XL database")
    ids = pd.to_numeric(db["ecg_id"], errors="coerce")
    if ids.isna().any():
        bad = db["ecg_id"][ids.isna()].iloc[0]
        raise DataError(f"{database}: ecg_id {bad!r} is not a number")
    db = db[ids >= min_id]  # nothing of a lower id is used below this line
    assert (pd.to_numeric(db["ecg_id"]) >= MIN_ECG_ID).all()
    statements = read_csv_checked(
        root / STATEMENTS_CSV, ["diagnostic", "diagnostic_class"], "PTB-XL SCP statements",
        index_col=0,
    )
    diag = {
        str(code): str(row["diagnostic_class"])
        for code, row in statements.iterrows()
        if row["diagnostic"] == 1
    }
    rows = []
    for ecg_id, report, raw in zip(db["ecg_id"], db["report"], db["scp_codes"], strict=True):
        try:
            codes = ast.literal_eval(raw) if isinstance(raw, str) else {}
        except (ValueError, SyntaxError):
            raise DataError(f"{database}: ecg_id {ecg_id}: unreadable scp_codes {raw!r}") from None
        if not isinstance(codes, dict):
            raise DataError(f"{database}: ecg_id {ecg_id}: scp_codes is not a dict: {raw!r}")
        text = normalize_report(report) if isinstance(report, str) else ""
        if not text:
            continue
        classes = {diag[str(k)] for k in codes if str(k) in diag}
        label = classes.pop() if len(classes) == 1 else None
        rows.append(
            (int(ecg_id), frozenset(map(str, codes)), label, detect_language(report), text)
        )
    return pd.DataFrame(rows, columns=["ecg_id", "codes", "label", "language", "text"])


def single_label_reports(root: Path, min_id: int = MIN_ECG_ID) -> pd.DataFrame:
    """:func:`read_reports` of the single-label records only."""
    reports = read_reports(root, min_id)
    return reports[reports["label"].notna()].reset_index(drop=True)


def phrases(text: str, max_words: int = MAX_WORDS) -> set[str]:
    """Every run of 1..max_words space-separated words of a normalised report."""
    words = text.split(" ")
    return {
        " ".join(words[i : i + n])
        for n in range(1, max_words + 1)
        for i in range(len(words) - n + 1)
    }


def frequent_phrases(
    texts: Iterable[str], others: Iterable[str], top: int
) -> list[tuple[str, int, float]]:
    """(phrase, reports of the class holding it, share of all reports holding it that are the
    class's), the ``top`` most frequent; see the module docstring for the rules."""
    inside = Counter(p for t in texts for p in phrases(t))
    outside = Counter(p for t in others for p in phrases(t))
    kept = [
        (p, n, n / (n + outside[p]))
        for p, n in inside.items()
        if n >= 2 and n / (n + outside[p]) >= MIN_SHARE
    ]
    kept.sort(key=lambda x: (-x[1], -len(x[0]), x[0]))
    out: list[tuple[str, int, float]] = []
    seen: dict[int, list[str]] = {}  # count -> the phrases with it met so far (longer first)
    for p, n, share in kept:
        same = seen.setdefault(n, [])
        # a shorter phrase adds nothing when a longer one holding it has the same count
        covered = any(f" {p} " in f" {q} " for q in same)
        same.append(p)
        if covered:
            continue
        out.append((p, n, share))
        if len(out) == top:
            break
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _tables(
    mine: pd.DataFrame, rest: pd.DataFrame, lang: str, top: int, translate: Callable[[str], str]
) -> list[str]:
    """Markdown tables of the whole reports and phrases of ``mine`` (against ``rest``)."""
    whole = sorted(Counter(mine["text"]).items(), key=lambda x: (-x[1], x[0]))[:top]
    lines = ["| whole report | count |", "|---|---|"]
    lines += [f"| {_cell(t)} | {n} |" for t, n in whole]
    lines.append("")
    found = frequent_phrases(mine["text"], rest["text"], top)
    if found:
        lines += ["| phrase | reports | share | English (glossary) |", "|---|---|---|---|"]
        lines += [
            f"| {_cell(p)} | {n} | {share:.2f} | {_cell(p if lang == 'en' else translate(p))} |"
            for p, n, share in found
        ]
        lines.append("")
    return lines


def render(reports: pd.DataFrame, top: int, command: str, min_id: int) -> str:
    """The result file for :func:`read_reports`' table."""
    from etp.data.text import ReportTranslator, load_glossary

    translate = ReportTranslator(load_glossary())
    single = reports[reports["label"].notna()]
    counts = ", ".join(f"{c} {int((single['label'] == c).sum())}" for c in CLASSES)
    by_lang = ", ".join(
        f"{lang} {int((single['language'] == lang).sum())}" for lang in LANGUAGES
    )
    lines = [
        "# Frequent report phrasings per PTB-XL superclass (records with ecg_id >= "
        f"{min_id} only)",
        "",
        f"Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  ",
        f"Command: `{command}`  ",
        f"Records: only reports of PTB-XL records with ecg_id >= {min_id} were read (none of them "
        f"has a signal here, so none is ever a test record): {len(reports)} non-empty reports, "
        f"{len(single)} of them of single-label records ({counts}; {by_lang}).",
        "",
        "Reports are lower-cased with whitespace collapsed. *Whole reports*: the most frequent "
        "reports as written. *Phrases*: runs of 1-6 words, counted once per report, kept when "
        f"at least {MIN_SHARE:.0%} of the reports of the language holding them belong to the "
        "group (share); English: the packaged glossary's rendering.",
        "",
        "## PTB-XL superclasses (single-label records)",
        "",
    ]
    for cls in CLASSES:
        for lang in LANGUAGES:
            in_lang = single[single["language"] == lang]
            mine = in_lang[in_lang["label"] == cls]
            if not mine.empty:
                lines += [f"### {cls}, {lang} ({len(mine)} reports)", ""]
                lines += _tables(mine, in_lang[in_lang["label"] != cls], lang, top, translate)
    lines += [
        "## CPSC2018 classes: reports of the PTB-XL records holding the matching SCP statement",
        "",
        "All records (not only single-label ones); share: among all reports of the language.",
        "",
    ]
    for cls, code in CPSC_STATEMENTS.items():
        holds = reports["codes"].map(lambda codes, code=code: code in codes)
        for lang in LANGUAGES:
            in_lang = reports["language"] == lang
            mine = reports[holds & in_lang]
            if not mine.empty:
                lines += [f"### {cls} (SCP {code}), {lang} ({len(mine)} reports)", ""]
                lines += _tables(mine, reports[~holds & in_lang], lang, top, translate)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "ptb-xl"),
                    help="PTB-XL folder with ptbxl_database.csv and scp_statements.csv")
    ap.add_argument("--top", type=int, default=20, help="rows per table")
    ap.add_argument("--min-id", type=int, default=MIN_ECG_ID,
                    help=f"lowest ecg_id read ({MIN_ECG_ID} or more)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "prompt_phrases.md"))
    args = ap.parse_args(argv)

    from etp.errors import EtpError
    from etp.io import atomic_write_text

    try:
        reports = read_reports(Path(args.root), args.min_id)
    except EtpError as exc:
        print(f"prompt_phrases: error: {exc}", file=sys.stderr)
        return 2
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/prompt_phrases.py", *given])
    out = Path(args.out)
    atomic_write_text(out, render(reports, args.top, command, args.min_id))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
