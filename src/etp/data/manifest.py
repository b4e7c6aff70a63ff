"""A generic paired manifest: pretrain and evaluate on your own ECG-report pairs.

A CSV file, one row per ECG::

    path,report,labels,fs,split,patient_id,record_id
    ecgs/0001,sinus rhythm. normal ecg.,NORM,,train,p17,
    ecgs/0002.npy,atrial fibrillation with rapid ventricular response.,AF;STTC,250,test,p18,

* ``path`` (required): a WFDB record (stem, ``.hea``, or a CinC ``.mat`` with its ``.hea``),
  an original CPSC-style ``.mat``, or a ``.npy`` array (12, N) / (N, 12) in mV, leads in
  order I, II, III, aVR, aVL, aVF, V1-V6. Relative paths are relative to the CSV's folder.
* ``report`` (required): the free-text report (may be empty; kept exactly as written).
* ``labels`` (optional): class names separated by ``;`` or ``,`` (so a class name holds
  neither). A manifest without labels can still be pretrained on; labels are only needed for
  evaluation. A column whose name is close to one of these (``label``, ``Labels``) is an
  error rather than an extra column, so labels are never silently lost.
* ``fs`` (optional): sampling rate in Hz; needed for ``.npy`` (or pass ``fs=`` to the reader);
  for WFDB it is read from the header and must match if given.
* ``split`` (optional): ``train``, ``val``, ``test`` or empty (= not used). Without a ``split``
  column the records present get a seeded, stratified train/val/test split as CPSC2018 does
  (:func:`etp.data.cpsc2018.stratified_split`, default 70/10/20, seed 0), by patient where
  ``patient_id`` is given (all records of a patient land in the same split), stratified by
  each patient's first label.
* ``patient_id``, ``record_id`` (optional): ``record_id`` defaults to the path without its
  extension; ids must be unique. Other columns are kept in ``RecordInfo.extra``.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

from etp.data.cpsc2018 import stratified_split
from etp.data.readers import BaseReader, order_labels, read_csv_checked
from etp.data.records import RecordInfo
from etp.data.signal_io import CPSC_FS, FS_RANGE, read_wfdb_header, signal_files
from etp.data.text import detect_language
from etp.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "report")
OPTIONAL_COLUMNS: tuple[str, ...] = ("labels", "fs", "split", "patient_id", "record_id")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_NAME = "manifest.csv"


class ManifestReader(BaseReader):
    """Records of a manifest CSV (format in the module docstring).

    Args:
        csv_path: the CSV file, or a folder holding ``manifest.csv``.
        classes: the class names in order; labels outside it are a :class:`DataError`.
            Default: the sorted distinct labels of the manifest.
        fs: sampling rate for rows without an ``fs`` value (needed for ``.npy`` files).
        split_seed: seed of the split made when the manifest has no ``split`` column.
        split_fractions: its train/val/test fractions (multiples of 1/100, summing to 1).
    """

    name = "manifest"

    def __init__(
        self,
        csv_path: str | Path,
        classes: Sequence[str] | None = None,
        fs: float | None = None,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    ) -> None:
        p = Path(csv_path).expanduser()
        if not p.exists():
            raise DataError(f"manifest not found: {p}")
        if p.is_dir():
            p = p / DEFAULT_NAME
            if not p.is_file():
                raise DataError(f"manifest folder {p.parent} has no {DEFAULT_NAME}")
        self.csv_path = p
        self.root = p.absolute().parent
        self.default_fs = _positive(fs, f"manifest {p}: fs option") if fs is not None else None
        self._df = read_csv_checked(
            p, REQUIRED_COLUMNS, "manifest", dtype=str, keep_default_na=False
        )
        if len(self._df) == 0:
            raise DataError(f"manifest {p} has no rows")
        _check_column_names(list(self._df.columns), p)
        self.split_seed = int(split_seed)
        self.split_fractions = tuple(float(x) for x in split_fractions)
        stratified_split([], self.split_fractions)  # ConfigError for bad fractions
        self.auto_split = "split" not in self._df.columns
        labels = [_split_labels(v) for v in self._df.get("labels", [""] * len(self._df))]
        if classes is None:
            self.classes = tuple(sorted({lab for labs in labels for lab in labs}))
        else:
            self.classes = tuple(classes)
            known = set(self.classes)
            for i, labs in enumerate(labels):
                bad = [lab for lab in labs if lab not in known]
                if bad:
                    raise DataError(
                        f"manifest {p}: row {i + 2}: unknown label code(s) {bad}; "
                        f"classes are {list(self.classes)}"
                    )
        self._labels = labels
        if not self.classes:
            log.warning(
                "manifest %s has no labels: its cache can be pretrained on, but evaluation "
                "needs a `labels` column", p
            )
        self._records: list[RecordInfo] | None = None

    def records(self) -> list[RecordInfo]:
        """One record per CSV row, in file order."""
        if self._records is None:
            recs = [self._record(i, row) for i, row in enumerate(self._df.to_dict("records"))]
            seen: dict[str, int] = {}
            for i, r in enumerate(recs):
                if r.record_id in seen:
                    raise DataError(
                        f"manifest {self.csv_path}: record_id {r.record_id!r} appears twice "
                        f"(rows {seen[r.record_id] + 2} and {i + 2})"
                    )
                seen[r.record_id] = i
            if self.auto_split:
                self._assign_splits(recs)
            self._records = recs
        return list(self._records)

    def _record(self, i: int, row: dict[str, str]) -> RecordInfo:
        where = f"manifest {self.csv_path}: row {i + 2}"
        raw_path = row["path"].strip()
        if not raw_path:
            raise DataError(f"{where}: empty `path`")
        rel = Path(raw_path)
        path = rel if rel.is_absolute() else self.root / rel
        fs_text = row.get("fs", "").strip()
        fs = _positive(fs_text, f"{where}: `fs`") if fs_text else self.default_fs
        if fs is None:
            fs = _fs_from_file(path, where)
        split = row.get("split", "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{where}: `split` is {row['split']!r}; use train, val, test or empty")
        rid = row.get("record_id", "").strip() or _default_id(rel)
        report = row["report"]
        extra: dict[str, object] = {
            k: v for k, v in row.items() if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS
        }
        extra["language"] = detect_language(report)
        return RecordInfo(
            record_id=rid,
            path=path,
            fs=fs,
            patient_id=row.get("patient_id", "").strip() or None,
            report=report,
            labels=order_labels(self._labels[i], self.classes),
            fold=None,
            split=split,
            extra=extra,
        )


    def _assign_splits(self, recs: list[RecordInfo]) -> None:
        """Seeded, stratified split of the present records, whole patients at a time."""
        groups: dict[str, list[RecordInfo]] = {}
        for r in recs:
            if self.is_present(r):
                key = f"patient:{r.patient_id}" if r.patient_id else f"record:{r.record_id}"
                groups.setdefault(key, []).append(r)
        strata = [g[0].labels[0] if g[0].labels else "" for g in groups.values()]
        splits = stratified_split(strata, self.split_fractions, self.split_seed)
        for group, split in zip(groups.values(), splits):
            for r in group:
                r.split = split


def _split_labels(value: str) -> list[str]:
    return [s.strip() for s in re.split(r"[;,]", str(value)) if s.strip()]


def _check_column_names(columns: list[str], path: Path) -> None:
    """A column named like a known one but not exactly (``label``, ``Labels``) is an error:
    it would otherwise be kept as an extra column and its values silently ignored."""
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    for col in columns:
        if not isinstance(col, str) or col in known:
            continue
        close = difflib.get_close_matches(col.strip().lower(), known, n=1, cutoff=0.8)
        if close:
            raise DataError(
                f"manifest {path}: column {col!r} looks like `{close[0]}` but is not named "
                f"exactly so (column names are lower-case); rename it to `{close[0]}`"
            )


def _default_id(rel: Path) -> str:
    if rel.suffix.lower() in {".hea", ".dat", ".mat", ".npy"}:
        rel = rel.with_suffix("")
    return rel.as_posix()


def _positive(value: object, where: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        x = math.nan
    lo, hi = FS_RANGE
    if not (math.isfinite(x) and lo <= x <= hi):
        raise DataError(
            f"{where} must be a sampling rate between {lo:g} and {hi:g} Hz, got {value!r}"
        )
    return x


def _fs_from_file(path: Path, where: str) -> float:
    """Sampling rate from a WFDB header; 500 Hz for an original CPSC .mat; NaN if the file is
    absent (a missing record is reported as missing, not here)."""
    suffix = path.suffix.lower()
    if suffix == ".npy" or (suffix == "" and path.with_name(path.name + ".npy").is_file()):
        raise DataError(
            f"{where}: {path} is a .npy array without a sampling rate: fill the `fs` column "
            f"(or pass fs= to the reader)"
        )
    if suffix in {".hea", ".dat"} or (suffix == ".mat" and path.with_suffix(".hea").is_file()):
        path = path.with_suffix("")
    elif suffix == ".mat":
        return CPSC_FS
    hea = signal_files(path)[0]
    if not hea.is_file():
        if path.with_name(path.name + ".mat").is_file():
            return CPSC_FS
        return math.nan
    return float(read_wfdb_header(path, where).fs)
