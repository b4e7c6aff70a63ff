"""The prepared cache: memory-mapped signals + metadata table + info with a fingerprint.

Layout of a cache directory written by ``etp prepare`` (:mod:`etp.data.prepare`)::

    signals.npy   float32 (N, 12, L), .npy format, opened with mmap_mode="r"
    meta.csv      one row per record, same order as signals (columns: META_COLUMNS + extras)
    info.json     dataset, classes, fs, length, preprocessing, source options, fingerprint, counts

The directory is written to a temporary sibling and renamed into place, so a cache that exists
is complete; :func:`load_prepared` still checks that the three files agree and raises
:class:`~etp.errors.DataError` otherwise. Reading is a memmap slice: no decoding, no filtering,
which is what makes batches orders of magnitude faster than reading WFDB files
(``benchmarks/cache_speed.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etp.errors import DataError

#: marker in info.json that identifies a directory as an etp cache
CACHE_FORMAT = "etp-prepared-cache"
#: bump when the layout changes; older caches are rebuilt by ``etp prepare``
CACHE_VERSION = 1
SIGNALS_FILE = "signals.npy"
META_FILE = "meta.csv"
INFO_FILE = "info.json"
#: columns every meta.csv has (more may follow)
META_COLUMNS: tuple[str, ...] = (
    "record_id",
    "patient_id",
    "report",
    "report_norm",
    "language",
    "labels",
    "label",
    "fold",
    "split",
    "source",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")


def read_meta(path: Path) -> pd.DataFrame:
    """Read a cache's meta.csv exactly as written (strings kept verbatim, '' never NaN)."""
    try:
        meta = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the cache metadata table ({exc})") from None
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{path}: cache metadata lacks column(s) {missing}")
    try:
        meta["fold"] = meta["fold"].astype(np.int64)
    except ValueError:
        raise DataError(f"{path}: column 'fold' holds non-integers") from None
    return meta


def write_meta(meta: pd.DataFrame, path: Path) -> None:
    """Write meta.csv so that :func:`read_meta` returns every string unchanged."""
    meta.to_csv(path, index=False, quoting=1, lineterminator="\n")  # 1 = csv.QUOTE_ALL


class PreparedDataset:
    """A loaded cache: read-only memmap of signals, metadata table and info.

    Attributes:
        path: the cache directory.
        signals: read-only ``np.memmap`` float32 (N, 12, L).
        meta: ``pandas.DataFrame`` aligned with ``signals`` (see :data:`META_COLUMNS`).
        info: the parsed info.json.
        classes: the dataset's class names in label order.
        fs: sampling rate of the cached signals (Hz).
        length: samples per record (L).
        fingerprint: hash of source listing + reader and preprocessing options.
    """

    def __init__(self, path: Path, signals: np.memmap, meta: pd.DataFrame, info: dict[str, Any]):
        self.path = Path(path)
        self.signals = signals
        self.meta = meta
        self.info = info
        self.classes: tuple[str, ...] = tuple(info["classes"])
        self.fs = float(info["fs"])
        self.length = int(info["length"])
        self.fingerprint = str(info["fingerprint"])
        self._class_pos = {c: i for i, c in enumerate(self.classes)}
        self._multi_hot = np.zeros((len(meta), len(self.classes)), dtype=np.int64)
        for i, (rid, text) in enumerate(zip(meta["record_id"].tolist(), meta["labels"].tolist())):
            labels = text.split(";") if text else []
            unknown = [lab for lab in labels if lab not in self._class_pos]
            if unknown:
                raise DataError(
                    f"{self.path / META_FILE}: record {rid} has label(s) {unknown} "
                    f"not among the classes {list(self.classes)}"
                )
            self._multi_hot[i, [self._class_pos[lab] for lab in labels]] = 1
        single = self._multi_hot.sum(axis=1) == 1
        first = self._multi_hot.argmax(axis=1) if self.classes else np.zeros(len(meta), np.int64)
        self._single_index = np.where(single, first, -1).astype(np.int64)

    def __len__(self) -> int:
        return int(self.signals.shape[0])

    def __repr__(self) -> str:
        return (
            f"PreparedDataset({str(self.path)!r}, dataset={self.info.get('dataset')!r}, "
            f"n={len(self)}, fs={self.fs:g}, length={self.length})"
        )

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The :class:`~etp.data.signal.PreprocessConfig` dict the signals were made with."""
        return dict(self.info["preprocessing"])

    def _indices(self, indices: Any) -> np.ndarray:
        if indices is None:
            return np.arange(len(self), dtype=np.int64)
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise DataError(f"boolean mask of shape {idx.shape} for {len(self)} records")
            return np.nonzero(idx)[0].astype(np.int64)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"record indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DataError(
                f"record index out of range for {self.path} ({len(self)} records): "
                f"min {idx.min()}, max {idx.max()}"
            )
        return np.where(idx < 0, idx + len(self), idx)

    def get_batch(self, indices: Any) -> np.ndarray:
        """Signals of ``indices`` as a new float32 array (B, 12, L), in the order given.

        Indices are read in sorted order (sequential file access) and put back in place.
        """
        idx = self._indices(indices)
        if idx.size == 0:
            return np.empty((0, self.signals.shape[1], self.length), dtype=np.float32)
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.size, self.signals.shape[1], self.length), dtype=np.float32)
        out[order] = self.signals[idx[order]]
        return out

    def select(
        self,
        split: str | None = None,
        folds: list[int] | None = None,
        exclude_folds: list[int] | None = None,
        single_label: bool = False,
    ) -> np.ndarray:
        """Sorted record indices matching every given filter.

        Args:
            split: keep records whose ``split`` is this (``train``/``val``/``test``).
            folds: keep records whose ``fold`` is one of these.
            exclude_folds: drop records whose ``fold`` is one of these.
            single_label: keep only records with exactly one class (the paper's setting).
        """
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
            mask &= (self.meta["split"] == split).to_numpy()
        fold = self.meta["fold"].to_numpy()
        if folds is not None:
            mask &= np.isin(fold, np.asarray(list(folds), dtype=np.int64))
        if exclude_folds:
            mask &= ~np.isin(fold, np.asarray(list(exclude_folds), dtype=np.int64))
        if single_label:
            mask &= self.label_index() >= 0
        return np.nonzero(mask)[0].astype(np.int64)

    def label_index(self, indices: Any = None) -> np.ndarray:
        """Class index of each record with exactly one class, -1 for the others (int64)."""
        return self._single_index[self._indices(indices)].copy()

    def label_matrix(self, indices: Any = None) -> np.ndarray:
        """Multi-hot labels (n, C) as int64, columns in :attr:`classes` order."""
        return self._multi_hot[self._indices(indices)].copy()

    def reports(self, indices: Any = None, normalized: bool = False) -> list[str]:
        """Report texts of ``indices`` (original, or normalised when ``normalized``)."""
        col = "report_norm" if normalized else "report"
        values = self.meta[col].tolist()
        return [values[i] for i in self._indices(indices)]


def read_info(path: Path) -> dict[str, Any]:
    """Parse and check a cache's info.json (format marker, version, fingerprint)."""
    info_path = Path(path) / INFO_FILE
    if not info_path.is_file():
        raise DataError(
            f"{path}: not a prepared cache (no {INFO_FILE}; incomplete or not written by "
            f"`etp prepare`)"
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{info_path}: unreadable cache info ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
        raise DataError(f"{info_path}: not an etp cache info file (format marker missing)")
    if info.get("format_version") != CACHE_VERSION:
        raise DataError(
            f"{info_path}: cache format version {info.get('format_version')!r}, this etp reads "
            f"version {CACHE_VERSION}; run `etp prepare` again"
        )
    if not info.get("fingerprint"):
        raise DataError(f"{info_path}: cache has no fingerprint (incomplete cache)")
    for key in ("dataset", "classes", "fs", "length", "n_records", "preprocessing"):
        if key not in info:
            raise DataError(f"{info_path}: cache info lacks {key!r}")
    return info


def load_prepared(path: str | os.PathLike[str]) -> PreparedDataset:
    """Open a cache written by ``etp prepare``; DataError if missing, incomplete or inconsistent."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"prepared cache not found: {path} (run `etp prepare` first)")
    info = read_info(path)
    sig_path = path / SIGNALS_FILE
    if not sig_path.is_file():
        raise DataError(f"{path}: cache lacks {SIGNALS_FILE} (incomplete cache)")
    try:
        signals = np.load(sig_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{sig_path}: unreadable signal array ({exc})") from None
    n = int(info["n_records"])
    expected = (n, 12, int(info["length"]))
    if signals.dtype != np.float32 or tuple(signals.shape) != expected:
        raise DataError(
            f"{sig_path}: holds {signals.dtype} {tuple(signals.shape)}, info.json says "
            f"float32 {expected} (incomplete or foreign cache)"
        )
    meta = read_meta(path / META_FILE)
    if len(meta) != n:
        raise DataError(f"{path / META_FILE}: {len(meta)} rows, info.json says {n} records")
    if meta["record_id"].duplicated().any():
        dup = meta["record_id"][meta["record_id"].duplicated()].iloc[0]
        raise DataError(f"{path / META_FILE}: record id {dup!r} occurs more than once")
    return PreparedDataset(path, signals, meta, info)


class CacheDataset:
    """``torch.utils.data.Dataset`` over a cache: item ``i`` -> (signal (12, L) tensor, index).

    Holds only the cache path and the indices; each process (DataLoader worker) opens its own
    memmap on first access, so the dataset pickles cheaply and shares the page cache.
    """

    def __init__(self, prepared: PreparedDataset | str | os.PathLike[str], indices: Any = None):
        if not isinstance(prepared, PreparedDataset):
            prepared = load_prepared(prepared)
        self.path = prepared.path
        self.indices = prepared._indices(indices)
        self._signals: np.ndarray | None = prepared.signals
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.indices.size)

    def _open(self) -> np.ndarray:
        if self._signals is None or self._pid != os.getpid():
            self._signals = np.load(self.path / SIGNALS_FILE, mmap_mode="r")
            self._pid = os.getpid()
        return self._signals

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        idx = int(self.indices[i])
        return torch.from_numpy(np.array(self._open()[idx], dtype=np.float32)), idx

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_signals"] = None  # re-opened lazily in the worker
        return state
