"""Open a data source by name, and what every reader shares (presence checks, CSV checks).

``open_reader("ptbxl" | "cpsc2018" | "manifest", root, **options)`` returns a reader that
follows :class:`etp.data.records.Reader`. Readers list every record their source *lists*,
present or not, because real downloads are often partial (``../shared/data/ptb-xl`` lists
21,837 records but holds the signals of ecg_id 1-999 only). A caller that wants only what is on
disk uses :meth:`BaseReader.missing` / :meth:`BaseReader.present`, and
:meth:`BaseReader.missing_message` says how many are missing in words a user can act on::

    reader = open_reader("ptbxl", "../shared/data/ptb-xl")
    recs = reader.records()
    gone = reader.missing(recs)
    if gone:
        print(reader.missing_message(gone, len(recs)))   # "... 20838 of 21837 ... missing ..."
        recs = reader.present(recs)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from etp.data.records import RecordInfo
from etp.data.signal_io import read_signal_file, signal_files
from etp.errors import ConfigError, DataError

#: dataset names accepted by :func:`open_reader` (and ``etp prepare --dataset``)
DATASETS: tuple[str, ...] = ("ptbxl", "cpsc2018", "manifest")
_ALIASES = {"ptb-xl": "ptbxl", "ptb_xl": "ptbxl", "cpsc": "cpsc2018", "cpsc-2018": "cpsc2018"}


class BaseReader:
    """Shared behaviour of the readers: presence checks and signal reading.

    Subclasses set :attr:`name`, :attr:`classes` and :attr:`root` and implement
    :meth:`records`; they may override :meth:`is_present` with a faster check.
    """

    name: str = ""
    classes: tuple[str, ...] = ()
    root: Path

    def records(self) -> list[RecordInfo]:
        """All records the source lists (present or not), in a stable order."""
        raise NotImplementedError

    def is_present(self, rec: RecordInfo) -> bool:
        """Whether the record's signal file(s) exist on disk (not whether they are valid)."""
        return all(f.is_file() for f in signal_files(rec.path))

    def read_signal(self, rec: RecordInfo) -> np.ndarray:
        """The record's validated signal: float32 (12, n) mV in canonical lead order."""
        sig, _ = read_signal_file(rec.path, fs=rec.fs, record_id=rec.record_id)
        return sig

    def missing(self, records: Iterable[RecordInfo] | None = None) -> list[RecordInfo]:
        """The listed records (default: all of :meth:`records`) whose signal files are absent."""
        recs = self.records() if records is None else records
        return [r for r in recs if not self.is_present(r)]

    def present(self, records: Iterable[RecordInfo] | None = None) -> list[RecordInfo]:
        """The listed records (default: all of :meth:`records`) whose signal files exist."""
        recs = self.records() if records is None else records
        return [r for r in recs if self.is_present(r)]

    def missing_message(
        self,
        missing: Sequence[RecordInfo],
        n_listed: int,
        hint: str = "pass --only-present to use only the records present",
    ) -> str:
        """One clear sentence about a partial download: how many are missing, an example, and
        what to do (``hint``)."""
        n_missing = len(missing)
        if not n_missing:
            return f"{self.name}: all {n_listed} listed records are present under {self.root}"
        first = missing[0]
        example = ", ".join(str(f) for f in signal_files(first.path)[:2])
        return (
            f"{self.name}: {n_missing} of {n_listed} listed records have no signal files under "
            f"{self.root} (first: record {first.record_id}, expected {example}); "
            f"{n_listed - n_missing} are present. This looks like a partial download: {hint}, "
            f"or complete the download."
        )

    def check_present(self, records: Sequence[RecordInfo] | None = None) -> None:
        """Raise :class:`DataError` with :meth:`missing_message` if any record is missing."""
        recs = self.records() if records is None else list(records)
        gone = self.missing(recs)
        if gone:
            raise DataError(self.missing_message(gone, len(recs)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"


def single_label(rec: RecordInfo) -> str | None:
    """The record's class in the single-label view (exactly one class), else ``None``."""
    return rec.labels[0] if len(rec.labels) == 1 else None


def order_labels(labels: Iterable[str], classes: Sequence[str]) -> list[str]:
    """Distinct labels in the order of ``classes`` (all labels must be in ``classes``)."""
    found = set(labels)
    return [c for c in classes if c in found]


def require_dir(root: str | Path, what: str) -> Path:
    """``root`` as a Path; :class:`DataError` if it is not an existing directory."""
    p = Path(root).expanduser()
    if not p.exists():
        raise DataError(f"{what} root not found: {p}")
    if not p.is_dir():
        raise DataError(f"{what} root is not a directory: {p}")
    return p


def read_csv_checked(
    path: str | Path, required: Sequence[str], what: str, **kwargs: object
) -> pd.DataFrame:
    """Read a CSV; :class:`DataError` naming the file if it is missing, unreadable or lacks a
    required column."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} not found: {p}")
    try:
        df = pd.read_csv(p, **kwargs)  # type: ignore[arg-type]
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {p}: {_not_utf8(p, exc)}") from None
    except Exception as exc:
        raise DataError(f"{what} {p} cannot be read as CSV: {exc}") from exc
    df.columns = [c.strip() if isinstance(c, str) else c for c in df.columns]
    cols = set(df.columns) | ({df.index.name} if df.index.name else set())
    lacking = [c for c in required if c not in cols]
    if lacking:
        raise DataError(
            f"{what} {p} lacks the column(s) {lacking} (columns found: {list(df.columns)})"
        )
    return df


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where a CSV stops being UTF-8 (line number, as a row count of the file), and the fix."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        lines = []
    for n, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            snippet = line[max(0, bad.start - 20) : bad.end + 20].decode("utf-8", "replace")
            return (
                f"line {n} (data row {n - 1}) is not UTF-8 (byte {line[bad.start]:#04x} in "
                f"...{snippet}...); save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
            )
    return f"not UTF-8 ({exc}); save the file as UTF-8"


def open_reader(dataset: str, root: str | Path, **options: object) -> BaseReader:
    """Reader for ``dataset`` (``"ptbxl"``, ``"cpsc2018"`` or ``"manifest"``) at ``root``.

    ``root`` is the dataset folder (PTB-XL: the folder with ``ptbxl_database.csv``; CPSC2018:
    the folder holding the records and ``REFERENCE.csv``), or for ``"manifest"`` the CSV file
    itself or a folder with a ``manifest.csv``. ``options`` go to the reader's constructor
    (e.g. ``fs=500`` for PTB-XL, ``split_csv_dir=...`` for CPSC2018).

    Raises:
        ConfigError: unknown dataset name or option.
        DataError: missing root, missing CSV, CSV lacking a needed column.
    """
    from etp.data.cpsc2018 import CPSC2018Reader
    from etp.data.manifest import ManifestReader
    from etp.data.ptbxl import PTBXLReader

    key = str(dataset).strip().lower()
    key = _ALIASES.get(key, key)
    classes: dict[str, type[BaseReader]] = {
        "ptbxl": PTBXLReader,
        "cpsc2018": CPSC2018Reader,
        "manifest": ManifestReader,
    }
    if key not in classes:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    cls = classes[key]
    params = inspect.signature(cls.__init__).parameters
    allowed = [n for n in params if n not in ("self", "root", "csv_path")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for dataset {key!r}; valid options: {allowed}"
        )
    return cls(root, **options)  # type: ignore[arg-type]
