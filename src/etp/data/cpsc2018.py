"""CPSC2018 reader (China Physiological Signal Challenge 2018), both distributed forms.

Dataset facts:

* 6,877 standard 12-lead ECGs (records ``A0001``-``A6877``) of 6-60 s at 500 Hz, from 11
  hospitals; 9 classes: Normal, AF (atrial fibrillation), I-AVB (first-degree AV block), LBBB,
  RBBB (left/right bundle branch block), PAC (premature atrial contraction), PVC (premature
  ventricular contraction), STD (ST depression), STE (ST elevation). 476 records carry 2-3
  labels; 6,400 a single one. No patient ids are published.
* **Original form** (CPSC 2018 / ICBEB): ``A0001.mat`` with a MATLAB struct ``ECG`` (``sex``,
  ``age``, ``data`` (12, N) float in mV, leads I, II, III, aVR, aVL, aVF, V1-V6), labels in
  ``REFERENCE.csv`` (``Recording,First_label,Second_label,Third_label``, codes 1 Normal,
  2 AF, 3 I-AVB, 4 LBBB, 5 RBBB, 6 PAC, 7 PVC, 8 STD, 9 STE).
* **PhysioNet/CinC Challenge 2020 form**: WFDB ``A0001.hea`` + ``A0001.mat`` (``val`` int16
  (12, N), gain 1000/mV); the header's ``#Dx:`` line holds the labels, as CPSC abbreviations
  (``RBBB``, ``AF,RBBB``) in early releases and as SNOMED-CT codes (``59118001``) later.
  :data:`SNOMED_TO_CLASS` maps the codes the Challenge scores as these classes (including the
  synonyms it scores as equal, e.g. 713427006 complete RBBB, 63593006 SVPB, 17338001 VPB).
* Citation: Liu F. et al. "An open access database for evaluating the algorithms of
  electrocardiogram rhythm and morphology abnormality detection." J. Med. Imaging Health
  Inform. 8(7):1368-1373 (2018); Perez Alday E. A. et al. "Classification of 12-lead ECGs: the
  PhysioNet/Computing in Cardiology Challenge 2020." Physiol. Meas. 41:124003 (2020). The
  Challenge 2020 data is released under CC BY 4.0.

Splits: either a seeded, stratified train/val/test split (default 70/10/20) over the records
present on disk, or one read from CSV files (e.g. ``labels/merl-split/icbeb_{train,val,test}.csv``
with a ``filename`` column).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from etp.data.readers import BaseReader, order_labels, read_csv_checked, require_dir
from etp.data.records import RecordInfo
from etp.data.signal_io import CPSC_FS, read_wfdb_header
from etp.errors import ConfigError, DataError

CLASSES: tuple[str, ...] = ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
#: REFERENCE.csv label code -> class
REFERENCE_CODES: dict[int, str] = {i + 1: c for i, c in enumerate(CLASSES)}
#: SNOMED-CT code (PhysioNet/CinC 2020-2021 headers) -> class
SNOMED_TO_CLASS: dict[str, str] = {
    "426783006": "Normal",  # sinus rhythm (NSR)
    "164889003": "AF",  # atrial fibrillation
    "270492004": "I-AVB",  # 1st degree AV block
    "164909002": "LBBB",  # left bundle branch block
    "733534002": "LBBB",  # complete left bundle branch block
    "59118001": "RBBB",  # right bundle branch block
    "713427006": "RBBB",  # complete right bundle branch block
    "284470004": "PAC",  # premature atrial contraction
    "63593006": "PAC",  # supraventricular premature beats
    "164884008": "PVC",  # ventricular ectopics (CPSC's PVC in the 2020 release)
    "427172004": "PVC",  # premature ventricular contractions
    "17338001": "PVC",  # ventricular premature beats
    "429622005": "STD",  # ST depression
    "164931005": "STE",  # ST elevation
}
#: label abbreviations in ``#Dx:`` -> class (the CPSC names, and the Challenge's abbreviations
#: of the same SNOMED codes); matched case-insensitively
ABBREVIATION_TO_CLASS: dict[str, str] = {
    **{c.upper(): c for c in CLASSES},
    "NSR": "Normal", "SNR": "Normal", "IAVB": "I-AVB", "CLBBB": "LBBB", "CRBBB": "RBBB",
    "SVPB": "PAC", "VEB": "PVC", "VPB": "PVC",
}  # fmt: skip
_SPLIT_WORDS = {"train": ("train",), "val": ("val", "dev"), "test": ("test",)}
_ID_COLUMNS = ("filename", "Recording", "record_id", "record")


class CPSC2018Reader(BaseReader):
    """Records of a CPSC2018 folder in either form (see the module docstring).

    Args:
        root: folder searched (recursively) for WFDB records (``*.hea``), original ``*.mat``
            files without a header beside them, and ``REFERENCE.csv`` (``labels/``, the root,
            or anywhere below).
        split_seed: seed of the stratified split.
        split_fractions: train/val/test fractions (multiples of 1/100, summing to 1).
        split_csv_dir: take the split from CSV files in this folder instead: one file whose
            name contains ``train``, one with ``val`` and one with ``test``, each with a
            record-id column (``filename``, ``Recording`` or ``record_id``; ``A0001``,
            ``A0001.mat`` or a path). Records in none of them get ``split=None``.
        reference_csv: explicit path of ``REFERENCE.csv`` (else searched under ``root``).

    Records: every record listed in ``REFERENCE.csv`` or found on disk, ordered by id.
    ``labels`` are in :attr:`classes` order; for a WFDB record they come from ``#Dx:`` and
    must agree with ``REFERENCE.csv`` when that lists the record. ``patient_id`` is None,
    ``report`` is empty (CPSC has no reports), ``extra`` holds ``form`` (``"wfdb"`` /
    ``"original"``), ``dx`` (the raw ``#Dx:`` text), ``age``, ``sex`` (WFDB form), and
    ``language`` (``"unknown"``). The stratified split uses the records present on disk, so
    it is the same on every run with the same files and seed; on a partial download it
    differs from the split the full data would give.
    """

    name = "cpsc2018"
    classes = CLASSES

    def __init__(
        self,
        root: str | Path,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        split_csv_dir: str | Path | None = None,
        reference_csv: str | Path | None = None,
    ) -> None:
        self.root = require_dir(root, "CPSC2018")
        self.split_seed = int(split_seed)
        self.split_fractions = _check_fractions(split_fractions)
        self.split_csv_dir = Path(split_csv_dir) if split_csv_dir is not None else None
        if self.split_csv_dir is not None:
            require_dir(self.split_csv_dir, "CPSC2018 split CSV")
        self.reference_csv = self._find_reference(reference_csv)
        self._records: list[RecordInfo] | None = None

    # ---- discovery -------------------------------------------------------------------
    def _find_reference(self, explicit: str | Path | None) -> Path | None:
        if explicit is not None:
            p = Path(explicit)
            if not p.is_file():
                raise DataError(f"CPSC2018 REFERENCE.csv not found: {p}")
            return p
        for cand in (self.root / "labels" / "REFERENCE.csv", self.root / "REFERENCE.csv"):
            if cand.is_file():
                return cand
        found = sorted(self.root.rglob("REFERENCE.csv"))
        return found[0] if found else None

    def _scan(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """Record id -> WFDB stem, and record id -> original .mat, found under root."""
        wfdb_stems: dict[str, Path] = {}
        for hea in sorted(self.root.rglob("*.hea")):
            rid = hea.stem
            if rid in wfdb_stems:
                raise DataError(
                    f"CPSC2018 record {rid} found twice: {wfdb_stems[rid]}.hea and {hea}"
                )
            wfdb_stems[rid] = hea.with_suffix("")
        originals: dict[str, Path] = {}
        for mat in sorted(self.root.rglob("*.mat")):
            if mat.with_suffix(".hea").exists():
                continue
            rid = mat.stem
            if rid in originals:
                raise DataError(f"CPSC2018 record {rid} found twice: {originals[rid]} and {mat}")
            originals[rid] = mat
        return wfdb_stems, originals

    def _read_reference(self) -> dict[str, list[str]]:
        if self.reference_csv is None:
            return {}
        ref = read_csv_checked(
            self.reference_csv, ["Recording", "First_label"], "CPSC2018 REFERENCE.csv",
            dtype=str, keep_default_na=False,
        )
        label_cols = [c for c in ref.columns if c != "Recording"]
        out: dict[str, list[str]] = {}
        for row in ref.itertuples(index=False):
            rid = str(row.Recording).strip()
            labels = []
            for col in label_cols:
                val = str(getattr(row, col)).strip()
                if not val:
                    continue
                try:
                    code = int(float(val))
                except ValueError:
                    code = -1
                if code not in REFERENCE_CODES:
                    raise DataError(
                        f"{self.reference_csv}: record {rid}: unknown label code {val!r} in "
                        f"{col} (expected 1-9: {REFERENCE_CODES})"
                    )
                labels.append(REFERENCE_CODES[code])
            if not labels:
                raise DataError(f"{self.reference_csv}: record {rid} has no label")
            if rid in out:
                raise DataError(f"{self.reference_csv}: record {rid} is listed twice")
            out[rid] = labels
        return out

    # ---- records ---------------------------------------------------------------------
    def records(self) -> list[RecordInfo]:
        """Every record listed in REFERENCE.csv or found on disk (present or not), by id."""
        if self._records is None:
            self._records = self._build_records()
        return list(self._records)

    def _build_records(self) -> list[RecordInfo]:
        wfdb_stems, originals = self._scan()
        reference = self._read_reference()
        default_dir = self._default_dir(wfdb_stems, originals)
        recs: list[RecordInfo] = []
        for rid in sorted(set(reference) | set(wfdb_stems) | set(originals)):
            if rid in wfdb_stems:
                recs.append(self._wfdb_record(rid, wfdb_stems[rid], reference.get(rid)))
            elif rid in originals:
                recs.append(self._original_record(rid, originals[rid], reference.get(rid)))
            else:  # listed, not on disk: point where the others are
                recs.append(self._make(rid, default_dir / rid, CPSC_FS, reference[rid], {}))
        if not recs:
            raise DataError(
                f"CPSC2018: no records under {self.root} (no *.hea, no *.mat, no REFERENCE.csv)"
            )
        self._assign_splits(recs)
        return recs

    def _default_dir(self, wfdb_stems: dict[str, Path], originals: dict[str, Path]) -> Path:
        parents = Counter(p.parent for p in [*wfdb_stems.values(), *originals.values()])
        if parents:
            return parents.most_common(1)[0][0]
        return self.root / "wfdb" if (self.root / "wfdb").is_dir() else self.root

    def _make(
        self, rid: str, path: Path, fs: float, labels: list[str], extra: dict[str, object]
    ) -> RecordInfo:
        return RecordInfo(
            record_id=rid,
            path=path,
            fs=fs,
            patient_id=None,
            report="",
            labels=order_labels(labels, self.classes),
            fold=None,
            split=None,
            extra={"language": "unknown", **extra},
        )

    def _wfdb_record(self, rid: str, stem: Path, ref_labels: list[str] | None) -> RecordInfo:
        hea = stem.with_suffix(".hea")
        header = read_wfdb_header(stem, f"record {rid}")
        comments = _comments(header.comments or [])
        dx = comments.get("dx")
        if dx is None and ref_labels is None:
            raise DataError(
                f"record {rid}: {hea} has no '#Dx:' line and REFERENCE.csv does not list it"
            )
        labels = ref_labels
        if dx is not None:
            hdr_labels = parse_dx(dx, f"record {rid} ({hea})")
            if ref_labels is not None and set(hdr_labels) != set(ref_labels):
                raise DataError(
                    f"record {rid}: labels disagree: {hea} says '#Dx: {dx}' = {hdr_labels}, "
                    f"{self.reference_csv} says {ref_labels}"
                )
            labels = hdr_labels
        assert labels is not None
        fs = float(header.fs) if header.fs else CPSC_FS
        extra: dict[str, object] = {"form": "wfdb", "dx": dx or ""}
        extra["age"] = _num(comments.get("age"))
        extra["sex"] = comments.get("sex") or None
        return self._make(rid, stem, fs, labels, extra)

    def _original_record(self, rid: str, mat: Path, ref_labels: list[str] | None) -> RecordInfo:
        if ref_labels is None:
            where = self.reference_csv or f"a REFERENCE.csv under {self.root}"
            raise DataError(
                f"record {rid}: original-form file {mat} has no labels in {where} "
                f"(its labels live only in REFERENCE.csv)"
            )
        return self._make(rid, mat, CPSC_FS, ref_labels, {"form": "original"})

    def is_present(self, rec: RecordInfo) -> bool:
        """The WFDB pair (``.hea`` + ``.mat``) or the original ``.mat`` exists."""
        p = Path(rec.path)
        if p.suffix == ".mat":
            return p.is_file()
        return p.with_name(p.name + ".hea").is_file() and p.with_name(p.name + ".mat").is_file()

    # ---- splits ----------------------------------------------------------------------
    def _assign_splits(self, recs: list[RecordInfo]) -> None:
        if self.split_csv_dir is not None:
            by_id = self._splits_from_csv(self.split_csv_dir)
            for r in recs:
                r.split = by_id.get(r.record_id)
            return
        present = [r for r in recs if self.is_present(r)]
        strata = [r.labels[0] for r in present]
        splits = stratified_split(strata, self.split_fractions, self.split_seed)
        for r, split in zip(present, splits):
            r.split = split

    def _splits_from_csv(self, folder: Path) -> dict[str, str]:
        csvs = sorted(folder.glob("*.csv"))
        by_id: dict[str, str] = {}
        for split, words in _SPLIT_WORDS.items():
            hits = [p for p in csvs if _split_of(p.stem) == split]
            if len(hits) != 1:
                raise DataError(
                    f"CPSC2018 split CSV folder {folder}: expected one CSV whose name contains "
                    f"{words[0]!r} for the {split} split, found {[p.name for p in hits]} "
                    f"(files: {[p.name for p in csvs]})"
                )
            df = read_csv_checked(hits[0], [], f"CPSC2018 {split} split CSV", dtype=str,
                                  keep_default_na=False)
            col = next((c for c in _ID_COLUMNS if c in df.columns), None)
            if col is None:
                raise DataError(
                    f"CPSC2018 {split} split CSV {hits[0]} lacks a record column "
                    f"(one of {list(_ID_COLUMNS)}; columns found: {list(df.columns)})"
                )
            for val in df[col]:
                rid = Path(str(val).strip()).stem
                if not rid:
                    continue
                if rid in by_id and by_id[rid] != split:
                    raise DataError(
                        f"CPSC2018 split CSVs in {folder}: record {rid} is in both the "
                        f"{by_id[rid]} and the {split} split"
                    )
                by_id[rid] = split
        return by_id


def parse_dx(dx: str, where: str) -> list[str]:
    """Classes of a ``#Dx:`` value (``"AF,RBBB"``, ``"284470004"``), in :data:`CLASSES`
    order; :class:`DataError` naming ``where`` and the code for an unknown code."""
    out = []
    for code in (c.strip() for c in re.split(r"[,;]", dx)):
        if not code:
            continue
        cls = SNOMED_TO_CLASS.get(code) if code.isdigit() else ABBREVIATION_TO_CLASS.get(
            code.upper()
        )
        if cls is None:
            kind = "SNOMED-CT code" if code.isdigit() else "label code"
            raise DataError(
                f"{where}: unknown {kind} {code!r} in '#Dx: {dx}' (known: CPSC labels "
                f"{list(CLASSES)} and SNOMED-CT codes {sorted(SNOMED_TO_CLASS)})"
            )
        out.append(cls)
    if not out:
        raise DataError(f"{where}: empty '#Dx:' line")
    return order_labels(out, CLASSES)


def stratified_split(
    strata: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> list[str]:
    """Seeded stratified train/val/test assignment (one split name per item).

    Items are dealt into ``k`` stratified folds with :class:`sklearn.model_selection.
    StratifiedKFold` (``k`` = the smallest number of folds that expresses the fractions
    exactly, e.g. 10 for 70/10/20); 20 % of the folds, evenly spaced, become test, 10 % val
    and the rest train. StratifiedKFold balances each class over the folds and keeps the fold
    sizes equal, so even a class with two records gets a sensible split. Where sklearn refuses
    (fewer items than folds, or no class with at least ``k`` items, as in the bundled sample)
    the items, shuffled with the seed and sorted by class, are dealt round-robin into the
    folds, which is the same allocation.
    """
    fr = _check_fractions(fractions)
    k = max(_n_folds(fr), 2)  # sklearn needs two folds at least
    n = len(strata)
    if n == 0:
        return []
    fold = np.empty(n, dtype=int)
    y = np.asarray(strata)
    if n >= k and max(Counter(strata).values()) >= k:
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class < n_splits"
            for f, (_, test_idx) in enumerate(skf.split(np.zeros(n), y)):
                fold[test_idx] = f
    else:  # too few for sklearn: deal the class-sorted, shuffled items round-robin
        perm = np.random.default_rng(seed).permutation(n)
        order = perm[np.argsort(y[perm], kind="stable")]
        fold[order] = np.arange(n) % k
    # test and val folds evenly spaced over the k folds: each class fills consecutive folds,
    # so any class with at least k / n_test records reaches the test split
    n_val, n_test = round(fr[1] * k), round(fr[2] * k)
    test_folds = {j * k // n_test for j in range(n_test)}
    rest = [f for f in range(k) if f not in test_folds]
    val_folds = {rest[(2 * j + 1) * len(rest) // (2 * n_val)] for j in range(n_val)}
    return ["test" if f in test_folds else "val" if f in val_folds else "train" for f in fold]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        fr = tuple(float(x) for x in fractions)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"split_fractions must be three numbers, got {fractions!r}") from exc
    if len(fr) != 3 or any(x < 0 for x in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"split_fractions must be three non-negative train/val/test fractions summing to 1, "
            f"got {fractions!r}"
        )
    _n_folds(fr)
    return fr  # type: ignore[return-value]


def _n_folds(fr: tuple[float, ...]) -> int:
    for k in range(1, 101):
        if all(math.isclose(x * k, round(x * k), abs_tol=1e-6) for x in fr):
            return k
    raise ConfigError(f"split_fractions must be multiples of 0.01, got {fr}")


def _split_of(stem: str) -> str | None:
    """Which split a CSV file name stands for (``icbeb_train`` -> ``"train"``)."""
    for word in re.split(r"[^a-z]+", stem.lower()):
        for split, prefixes in _SPLIT_WORDS.items():
            if word.startswith(prefixes):
                return split
    return None


def _comments(lines: Sequence[str]) -> dict[str, str]:
    """WFDB header comments ``Key: value`` -> {key.lower(): value}."""
    out = {}
    for line in lines:
        key, sep, val = line.partition(":")
        if sep:
            out[key.strip().lower()] = val.strip()
    return out


def _num(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x
