"""Which cached records a pretraining run reads: training, validation, and the held-out records
it must never read (checked by record and patient id).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from etp.config import DataConfig
from etp.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class RecordSelection:
    """Cache row indices of the training, validation and held-out (never read) records."""

    train: np.ndarray
    val: np.ndarray
    held_out: np.ndarray
    dropped_empty_reports: list[str]


def select_records(meta: Any, data: DataConfig) -> RecordSelection:
    """Training / validation / held-out rows of a cache's metadata table.

    Training records come from ``data.train_folds`` when given, else from the ``split`` column
    (``data.train_split``); validation likewise. Held out are the records of
    ``data.exclude_folds`` and, unless ``train_folds`` and ``exclude_folds`` are both given, of
    the cache's ``test`` split (so a fold rotation can train on the cache's default test fold
    while it excludes another): selecting any of them for training
    or validation is a ConfigError, and record ids (and non-empty patient ids) of the selected
    records must not occur among them (DataError otherwise).
    """
    n = len(meta)
    fold = meta["fold"].to_numpy()
    split = meta["split"].astype(str).to_numpy()
    excluded = list(data.exclude_folds or [])
    for name, folds in (("data.train_folds", data.train_folds), ("data.val_folds", data.val_folds)):
        both = sorted(set(folds or []) & set(excluded))
        if both:
            raise ConfigError(f"{name} {folds} overlaps data.exclude_folds {excluded} (fold {both})")
    if data.train_folds is not None:
        if not data.train_folds:
            raise ConfigError("data.train_folds is an empty list (use null to select by split)")
        train_mask = np.isin(fold, data.train_folds)
        train_desc = f"data.train_folds={data.train_folds}"
    else:
        train_mask = split == data.train_split
        train_desc = f"data.train_split={data.train_split!r}"
    if data.val_folds is not None:
        val_mask = np.isin(fold, data.val_folds)
    elif data.val_split:
        val_mask = split == data.val_split
    else:
        val_mask = np.zeros(n, dtype=bool)
    # Selecting by folds with explicit data.exclude_folds (e.g. a fold rotation) makes those folds
    # the held-out set; otherwise the cache's own 'test' split is held out too.
    by_folds = data.train_folds is not None and bool(excluded)
    held_mask = np.isin(fold, excluded) | (np.zeros(n, dtype=bool) if by_folds else split == "test")
    for what, mask in (("training", train_mask), ("validation", val_mask)):
        leak = mask & held_mask
        if leak.any():
            ids = meta["record_id"].to_numpy()[leak][:5].tolist()
            raise ConfigError(
                f"the {what} selection includes {int(leak.sum())} held-out record(s) (in "
                f"data.exclude_folds {excluded} or the cache's 'test' split), e.g. {ids}; "
                "held-out records are never used for pretraining"
            )
    if by_folds and (train_mask & (split == "test")).any():
        log.warning(
            "data.train_folds %s include %d record(s) of the cache's 'test' split; they are "
            "pretrained on (held out are only data.exclude_folds %s)",
            data.train_folds,
            int((train_mask & (split == "test")).sum()),
            excluded,
        )
    both = train_mask & val_mask
    if both.any():
        raise ConfigError(
            f"{int(both.sum())} record(s) are selected for both training and validation; "
            "make data.train_folds/val_folds (or train_split/val_split) disjoint"
        )
    if not train_mask.any():
        raise DataError(
            f"no training records: {train_desc} matches none of the {n} records of the cache"
        )
    train = np.nonzero(train_mask)[0].astype(np.int64)
    val = np.nonzero(val_mask)[0].astype(np.int64)
    held = np.nonzero(held_mask)[0].astype(np.int64)
    if data.max_records is not None:
        if data.max_records < 1:
            raise ConfigError(f"data.max_records must be >= 1, got {data.max_records}")
        train = train[: data.max_records]
    assert_disjoint(meta, np.concatenate([train, val]), held)
    return RecordSelection(train, val, held, [])


def assert_disjoint(meta: Any, used: np.ndarray, held: np.ndarray) -> None:
    """DataError when a used record shares its record id or patient id with a held-out one."""
    if held.size == 0 or used.size == 0:
        return
    rid = meta["record_id"].astype(str).to_numpy()
    common = set(rid[used]) & set(rid[held])
    if common:
        raise DataError(
            f"record id(s) {sorted(common)[:5]} occur both in the pretraining selection and in "
            "the held-out records"
        )
    if "patient_id" in meta.columns:
        pid = meta["patient_id"].astype(str).to_numpy()
        shared = ({p for p in pid[used] if p} & {p for p in pid[held] if p})
        if shared:
            raise DataError(
                f"{len(shared)} patient(s) have records both in the pretraining selection and in "
                f"the held-out records (e.g. patient_id {sorted(shared)[:5]}); the split would "
                "leak test patients into pretraining"
            )


def drop_empty_reports(meta: Any, sel: RecordSelection, column: str) -> RecordSelection:
    """Remove records without report text from ETP's selection (logged, never silent)."""
    texts = meta[column].astype(str).to_numpy()
    empty = np.char.str_len(np.char.strip(texts.astype(str))) == 0
    if not empty.any():
        return sel
    dropped: list[str] = []
    keep = []
    for idx in (sel.train, sel.val):
        bad = empty[idx]
        dropped.extend(meta["record_id"].astype(str).to_numpy()[idx[bad]].tolist())
        keep.append(idx[~bad])
    if dropped:
        log.warning(
            "%d record(s) have an empty report and are left out of ECG-text pretraining: %s%s",
            len(dropped),
            ", ".join(dropped[:10]),
            " ..." if len(dropped) > 10 else "",
        )
    return RecordSelection(keep[0], keep[1], sel.held_out, dropped)


def pretraining_records(meta: Any, data: DataConfig, needs_reports: bool) -> RecordSelection:
    """:func:`select_records`, less the records without a report where the objective reads
    reports (:func:`drop_empty_reports`): the records a pretraining run trains and validates on."""
    sel = select_records(meta, data)
    return drop_empty_reports(meta, sel, "report") if needs_reports else sel


def patient_codes(meta: Any) -> np.ndarray:
    """An integer per record's patient (records of one patient share it; -1: none given)."""
    codes = np.full(len(meta), -1, dtype=np.int64)
    if "patient_id" in meta.columns:
        pid = meta["patient_id"].fillna("").astype(str).str.strip().to_numpy()
        known = pid != ""
        if known.any():
            _, inverse = np.unique(pid[known], return_inverse=True)
            codes[known] = inverse
    return codes


__all__ = [
    "RecordSelection",
    "assert_disjoint",
    "drop_empty_reports",
    "patient_codes",
    "pretraining_records",
    "select_records",
]
