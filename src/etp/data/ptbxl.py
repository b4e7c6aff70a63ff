"""PTB-XL reader.

Dataset facts (PTB-XL 1.0.1 / 1.0.3, PhysioNet):

* 21,837 clinical 12-lead ECGs of 10 s from 18,885 patients (Physikalisch-Technische
  Bundesanstalt, recorded 1989-1996); leads I, II, III, AVR, AVL, AVF, V1-V6.
* Signals in WFDB format 16 (16-bit, gain 1000/mV) at 500 Hz (``records500/``, ``*_hr``) and
  downsampled to 100 Hz (``records100/``, ``*_lr``): ``filename_hr`` / ``filename_lr`` columns.
* ``ptbxl_database.csv``: one row per ECG (``ecg_id``, ``patient_id``, age, sex, the free-text
  ``report`` - 70.9 % German, 27.9 % English, 1.2 % Swedish -, ``scp_codes`` as a dict of SCP
  statement -> likelihood, ``strat_fold`` 1-10, ...). ``scp_statements.csv``: the 71 SCP
  statements; ``diagnostic == 1`` statements map to 5 superclasses (``diagnostic_class``):
  NORM (normal ECG), MI (myocardial infarction), STTC (ST/T change), CD (conduction
  disturbance), HYP (hypertrophy).
* Labels here follow the benchmark practice of Strodthoff et al. (2021): a record's
  superclasses are the ``diagnostic_class`` of every diagnostic statement in its ``scp_codes``,
  whatever its likelihood value (0 included). The *single-label view* keeps records with
  exactly one superclass, as the ETP paper does.
* Recommended split: ``strat_fold`` 1-8 train, 9 validation, 10 test (folds 9 and 10 were
  validated by a cardiologist and hold each patient's records in one fold). Folds are options
  here, so small data can rotate them.
* License: Creative Commons Attribution 4.0 (CC BY 4.0). Cite: Wagner, P., Strodthoff, N.,
  Bousseljot, R.-D., Kreiseler, D., Lunze, F. I., Samek, W., Schaeffter, T. "PTB-XL, a large
  publicly available electrocardiography dataset." Scientific Data 7, 154 (2020),
  https://doi.org/10.1038/s41597-020-0495-6; and PhysioNet (Goldberger et al., 2000).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from etp.data.readers import BaseReader, order_labels, read_csv_checked, require_dir
from etp.data.records import RecordInfo
from etp.data.text import detect_language
from etp.errors import ConfigError, DataError

DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
_FILENAME_COLUMN = {100: "filename_lr", 500: "filename_hr"}


class PTBXLReader(BaseReader):
    """Records of a PTB-XL folder (see the module docstring for the dataset's facts).

    Args:
        root: folder with ``ptbxl_database.csv``, ``scp_statements.csv``, ``records100/`` and/or
            ``records500/`` (the layout of the PhysioNet download).
        fs: 100 (``records100``) or 500 (``records500``).
        train_folds, val_folds, test_folds: ``strat_fold`` values of each split (disjoint);
            records of a fold in none of them get ``split=None``.

    Each :class:`RecordInfo` has ``record_id`` = ecg_id, ``patient_id``, the original
    ``report``, ``labels`` (superclasses in :attr:`classes` order), ``fold`` = strat_fold,
    ``split``, ``path`` = the WFDB record stem, and ``extra`` with ``scp_codes`` (dict),
    ``language``, ``age``, ``sex`` and ``filename``.
    """

    name = "ptbxl"
    classes = SUPERCLASSES

    def __init__(
        self,
        root: str | Path,
        fs: int = 100,
        train_folds: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
        val_folds: Sequence[int] = (9,),
        test_folds: Sequence[int] = (10,),
    ) -> None:
        self.root = require_dir(root, "PTB-XL")
        if fs not in _FILENAME_COLUMN:
            raise ConfigError(f"PTB-XL fs must be 100 or 500 (records100/records500), not {fs!r}")
        self.fs = int(fs)
        self.fold_split = _fold_to_split(train_folds, val_folds, test_folds)
        self.database_csv = self.root / DATABASE_CSV
        self.statements_csv = self.root / STATEMENTS_CSV
        self._records: list[RecordInfo] | None = None
        # read and check both tables now, so a bad root fails at open time
        self._db = read_csv_checked(
            self.database_csv,
            ["ecg_id", "patient_id", "report", "scp_codes", "strat_fold", _FILENAME_COLUMN[fs]],
            "PTB-XL database",
        )
        self._diag = self._diagnostic_classes()

    def _diagnostic_classes(self) -> dict[str, str | None]:
        """SCP code -> superclass (None for non-diagnostic statements)."""
        scp = read_csv_checked(
            self.statements_csv, ["diagnostic", "diagnostic_class"], "PTB-XL SCP statements",
            index_col=0,
        )
        out: dict[str, str | None] = {}
        for code, row in scp.iterrows():
            cls = None
            if row["diagnostic"] == 1:
                cls = row["diagnostic_class"]
                if cls not in self.classes:
                    raise DataError(
                        f"{self.statements_csv}: statement {code} has diagnostic_class {cls!r}, "
                        f"not one of {list(self.classes)}"
                    )
            out[str(code)] = cls
        return out

    def records(self) -> list[RecordInfo]:
        """All records of ``ptbxl_database.csv`` (present or not), ordered by ecg_id."""
        if self._records is None:
            self._records = [self._record(row) for row in self._db.itertuples(index=False)]
            self._records.sort(key=lambda r: int(r.record_id))
        return list(self._records)

    def _record(self, row: Any) -> RecordInfo:
        ecg_id = int(row.ecg_id)
        where = f"{self.database_csv}: ecg_id {ecg_id}"
        raw = row.scp_codes
        try:
            codes = ast.literal_eval(raw) if isinstance(raw, str) else {}
        except (ValueError, SyntaxError) as exc:
            raise DataError(f"{where}: unreadable scp_codes {raw!r}") from exc
        if not isinstance(codes, dict):
            raise DataError(f"{where}: scp_codes is not a dict: {raw!r}")
        for code in codes:
            if code not in self._diag:
                raise DataError(
                    f"{where}: unknown SCP code {code!r} (not in {self.statements_csv})"
                )
        labels = order_labels(
            (c for c in (self._diag[k] for k in codes) if c is not None), self.classes
        )
        try:
            fold = int(row.strat_fold)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: bad strat_fold {row.strat_fold!r}") from exc
        filename = getattr(row, _FILENAME_COLUMN[self.fs])
        if not isinstance(filename, str) or not filename:
            raise DataError(f"{where}: empty {_FILENAME_COLUMN[self.fs]}")
        report = row.report if isinstance(row.report, str) else ""
        return RecordInfo(
            record_id=str(ecg_id),
            path=self.root / filename,
            fs=float(self.fs),
            patient_id=_id_str(row.patient_id),
            report=report,
            labels=labels,
            fold=fold,
            split=self.fold_split.get(fold),
            extra={
                "scp_codes": {str(k): float(v) for k, v in codes.items()},
                "language": detect_language(report),
                "age": _num(getattr(row, "age", None)),
                "sex": _num(getattr(row, "sex", None)),
                "filename": filename,
            },
        )

    def is_present(self, rec: RecordInfo) -> bool:
        """Both WFDB files (``.hea`` and ``.dat``) of the record exist."""
        stem = Path(rec.path)
        return (
            stem.with_name(stem.name + ".hea").is_file()
            and stem.with_name(stem.name + ".dat").is_file()
        )


def _fold_to_split(
    train: Sequence[int], val: Sequence[int], test: Sequence[int]
) -> dict[int, str]:
    out: dict[int, str] = {}
    for split, folds in (("train", train), ("val", val), ("test", test)):
        for f in folds:
            if isinstance(f, bool) or not isinstance(f, int):
                raise ConfigError(f"PTB-XL {split}_folds must hold integers, got {f!r}")
            if f in out:
                raise ConfigError(
                    f"PTB-XL fold {f} is in both {out[f]}_folds and {split}_folds; "
                    f"splits must be disjoint"
                )
            out[f] = split
    return out


def _id_str(value: object) -> str | None:
    """``15709.0`` -> ``"15709"``; NaN/empty -> None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _num(value: object) -> float | None:
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
