"""The record type that every reader yields, and the canonical lead order.

A reader (PTB-XL, CPSC2018, a user's manifest) turns a source folder into a list of
:class:`RecordInfo` (metadata only, cheap) and reads one record's signal on demand with
:meth:`Reader.read_signal`. Preprocessing and caching (``etp.data.signal``, ``etp.data.cache``)
work on this interface only, so a new source needs a reader and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

#: Canonical 12-lead order used everywhere inside etp (arrays are (12, n_samples)).
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass
class RecordInfo:
    """Metadata of one ECG record, as listed by its source (no signal loaded).

    Attributes:
        record_id: unique id within the source (PTB-XL ``ecg_id`` as string, CPSC ``A0001``).
        path: path of the signal file or WFDB record stem (without extension for WFDB).
        fs: sampling rate of the stored signal in Hz.
        patient_id: patient identifier where the source has one, else ``None``.
        report: free-text report (original text, never modified); ``""`` when the source has none.
        labels: class names of the source's label set (e.g. ``["NORM", "MI"]``); may be empty.
        fold: source fold (PTB-XL ``strat_fold``), else ``None``.
        split: ``"train"``/``"val"``/``"test"`` when known at read time, else ``None``.
        extra: any further source-specific metadata worth keeping (age, sex, scp_codes, ...).
    """

    record_id: str
    path: Path
    fs: float
    patient_id: str | None = None
    report: str = ""
    labels: list[str] = field(default_factory=list)
    fold: int | None = None
    split: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Reader(Protocol):
    """What a data source provides to ``etp prepare``."""

    #: dataset name, e.g. ``"ptbxl"``
    name: str
    #: ordered class names of the source's label set
    classes: tuple[str, ...]

    def records(self) -> list[RecordInfo]:
        """All records the source lists (present or not), in a stable order."""
        ...

    def is_present(self, rec: RecordInfo) -> bool:
        """Whether the record's signal file(s) exist on disk."""
        ...

    def read_signal(self, rec: RecordInfo) -> np.ndarray:
        """The raw signal in mV, float32, shape (12, n_samples), leads in :data:`LEADS` order.

        Raises :class:`etp.errors.DataError` naming the file when it is missing, unreadable,
        truncated, has the wrong number of leads, or holds NaN/inf samples.
        """
        ...
