"""Read one ECG signal file, whatever its format, into a validated (12, N) mV array.

Formats (chosen from the path):

* **WFDB** record: ``stem``, ``stem.hea``, ``stem.dat`` or - for the PhysioNet/CinC 2020
  redistribution - ``stem.mat`` next to ``stem.hea`` (the ``.mat`` holds ``val`` and is read by
  :mod:`wfdb` through the header's byte offset). PTB-XL and CinC-form CPSC2018 are WFDB.
* **original CPSC2018** ``.mat`` (no ``.hea`` beside it): a MATLAB struct ``ECG`` with field
  ``data`` (12, N) in mV, leads in standard order, 500 Hz.
* **NumPy** ``.npy``: a (12, N) or (N, 12) array in mV, leads in standard order; the sampling
  rate must be given.

Every problem is a :class:`etp.errors.DataError` naming the file (and the record id when
given): missing file, unreadable or truncated file, header and data that disagree (size or
WFDB checksum), a wrong number of leads, unknown units, NaN/inf (or WFDB invalid) samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.io
import wfdb

from etp.data.leads import canonical_order
from etp.data.records import LEADS
from etp.errors import DataError

#: sampling rate of the CPSC2018 recordings (original .mat files carry none)
CPSC_FS = 500.0

# bytes per sample of the WFDB storage formats whose size can be checked up front
_BYTES_PER_SAMPLE = {
    "8": 1.0, "16": 2.0, "61": 2.0, "80": 1.0, "160": 2.0, "24": 3.0, "32": 4.0,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}  # fmt: skip
# WFDB physical units -> factor to mV (no units in a header means mV, the WFDB default)
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "": 1.0}


def read_signal_file(
    path: str | Path, fs: float | None = None, record_id: str | None = None
) -> tuple[np.ndarray, float]:
    """Read and validate one signal; returns ``(signal, fs)``.

    Args:
        path: WFDB record (stem or ``.hea``/``.dat``/``.mat`` with a header beside it),
            original CPSC2018 ``.mat``, or ``.npy``.
        fs: sampling rate in Hz. Required for ``.npy``; for an original CPSC ``.mat`` it
            overrides the default 500 Hz; for WFDB it must equal the header's rate if given.
        record_id: named in error messages together with the file.

    Returns:
        ``signal``: float32 array (12, n_samples) in mV, rows in :data:`LEADS` order;
        ``fs``: its sampling rate in Hz.
    """
    p = Path(path)
    where = f"record {record_id} ({p})" if record_id else str(p)
    kind, target = _detect_format(p, where)
    if kind == "wfdb":
        sig, rate = _read_wfdb(target, fs, where)
    elif kind == "cpsc_mat":
        sig, rate = _read_cpsc_mat(target, fs, where)
    else:
        sig, rate = _read_npy(target, fs, where)
    _check_finite(sig, where)
    return np.ascontiguousarray(sig, dtype=np.float32), rate


def signal_files(path: str | Path) -> list[Path]:
    """The files a signal path stands for, as :func:`read_signal_file` resolves it (for
    presence checks): a WFDB record gives its ``.hea`` and the data files its header names
    (just the ``.hea`` while that is absent or unreadable); a ``.mat``/``.npy`` gives itself."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in {".hea", ".dat"} or (suffix == ".mat" and p.with_suffix(".hea").exists()):
        p = p.with_suffix("")
    elif suffix in {".mat", ".npy"}:
        return [p]
    elif not _hea(p).exists():
        for ext in (".mat", ".npy"):
            if p.with_name(p.name + ext).is_file():
                return [p.with_name(p.name + ext)]
    hea = _hea(p)
    try:
        names = wfdb.rdheader(str(p)).file_name or []
    except Exception:  # absent or unreadable header: the header is all we can name
        return [hea]
    return [hea, *(p.parent / n for n in dict.fromkeys(names))]


def _hea(stem: Path) -> Path:
    return stem.with_name(stem.name + ".hea")


def _detect_format(p: Path, where: str) -> tuple[str, Path]:
    suffix = p.suffix.lower()
    if suffix == ".npy":
        if not p.is_file():
            raise DataError(f"{where}: signal file not found: {p}")
        return "npy", p
    if suffix in {".hea", ".dat"}:
        return "wfdb", p.with_suffix("")
    if suffix == ".mat":
        if p.with_suffix(".hea").is_file():
            return "wfdb", p.with_suffix("")
        if not p.is_file():
            raise DataError(f"{where}: signal file not found: {p}")
        return "cpsc_mat", p
    # a stem without extension: WFDB first, then the other forms
    if _hea(p).is_file():
        return "wfdb", p
    for ext, kind in ((".mat", "cpsc_mat"), (".npy", "npy")):
        cand = p.with_name(p.name + ext)
        if cand.is_file():
            return kind, cand
    raise DataError(
        f"{where}: signal file not found: looked for {p}.hea (WFDB), {p}.mat and {p}.npy"
    )


def _read_wfdb(stem: Path, fs: float | None, where: str) -> tuple[np.ndarray, float]:
    hea = _hea(stem)
    if not hea.is_file():
        raise DataError(f"{where}: WFDB header not found: {hea}")
    try:
        header = wfdb.rdheader(str(stem))
    except Exception as exc:
        raise DataError(f"{where}: unreadable WFDB header {hea}: {exc}") from exc
    n_sig = int(header.n_sig or 0)
    if n_sig < len(LEADS):
        raise DataError(
            f"{where}: wrong number of leads: {hea} lists {n_sig} signal(s), "
            f"etp needs the 12 standard leads"
        )
    order = canonical_order(header.sig_name or [], source=str(hea))
    if not header.fs or header.fs <= 0:
        raise DataError(f"{where}: {hea} gives no valid sampling rate")
    rate = float(header.fs)
    if fs is not None and not math.isclose(float(fs), rate, rel_tol=1e-6):
        raise DataError(f"{where}: sampling rate {fs} Hz was expected but {hea} says {rate} Hz")
    if header.sig_len is not None and header.sig_len <= 0:
        raise DataError(f"{where}: {hea} describes an empty signal (0 samples)")
    _check_wfdb_sizes(header, stem, where)
    try:
        rec = wfdb.rdrecord(str(stem), physical=False)
        phys = rec.dac(expanded=False, return_res=64)
    except Exception as exc:
        raise DataError(f"{where}: unreadable WFDB signal {stem}: {exc}") from exc
    sig = np.asarray(phys, dtype=np.float64).T[order]
    _check_finite(sig, where, invalid_hint=" (WFDB invalid-sample markers)")
    _check_checksums(rec, order, hea, where)
    units = rec.units or [""] * n_sig
    scale = []
    for i in order:
        unit = (units[i] or "").strip()
        factor = _UNIT_TO_MV.get(unit.lower())
        if factor is None:
            raise DataError(f"{where}: unknown physical unit {unit!r} of lead {rec.sig_name[i]}")
        scale.append(factor)
    sig = sig * np.asarray(scale)[:, None]
    return sig.astype(np.float32), rate


def _check_wfdb_sizes(header: wfdb.Record, stem: Path, where: str) -> None:
    """Missing, truncated or oversized data files (header and data disagree)."""
    by_file: dict[str, list[int]] = {}
    for i, name in enumerate(header.file_name or []):
        by_file.setdefault(name, []).append(i)
    for name, chans in by_file.items():
        f = stem.parent / name
        if not f.is_file():
            raise DataError(f"{where}: signal data file not found: {f} (named in {_hea(stem)})")
        bps = _BYTES_PER_SAMPLE.get(str(header.fmt[chans[0]]))
        if bps is None or header.sig_len is None:
            continue
        n_all = len(header.file_name)
        spf = sum(int((header.samps_per_frame or [1] * n_all)[c] or 1) for c in chans)
        offset = int((header.byte_offset or [0] * n_all)[chans[0]] or 0)
        expected = offset + math.ceil(header.sig_len * spf * bps)
        actual = f.stat().st_size
        what = f"{header.sig_len} samples x {len(chans)} signals in format {header.fmt[chans[0]]}"
        if actual < expected:
            raise DataError(
                f"{where}: truncated signal file {f}: {actual} bytes, the header describes "
                f"{expected} ({what})"
            )
        slack = 0 if bps.is_integer() else 2
        if actual > expected + slack:
            raise DataError(
                f"{where}: header/data mismatch: {f} has {actual} bytes but {_hea(stem)} "
                f"describes {expected} ({what})"
            )


def _check_checksums(rec: wfdb.Record, order: list[int], hea: Path, where: str) -> None:
    if not rec.checksum:
        return
    sums = np.asarray(rec.d_signal, dtype=np.int64).sum(axis=0) % 65536
    for i in order:
        want = rec.checksum[i]
        if want is not None and int(sums[i]) != int(want) % 65536:
            raise DataError(
                f"{where}: header/data mismatch: lead {rec.sig_name[i]} fails the checksum in "
                f"{hea} (data sums to {int(sums[i])}, header says {int(want) % 65536})"
            )


def _read_cpsc_mat(path: Path, fs: float | None, where: str) -> tuple[np.ndarray, float]:
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise DataError(f"{where}: unreadable or truncated .mat file {path}: {exc}") from exc
    if "ECG" not in mat:
        if "val" in mat:
            raise DataError(
                f"{where}: {path} holds a WFDB-form `val` array but its header "
                f"{path.with_suffix('.hea')} is missing"
            )
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{where}: {path} has no struct `ECG` (variables: {keys})")
    ecg = mat["ECG"]
    try:
        data = np.asarray(ecg["data"].flat[0], dtype=np.float64)
    except Exception as exc:
        raise DataError(f"{where}: {path}: struct ECG has no numeric field `data`") from exc
    sig = _as_leads_first(data, where, str(path))
    return sig, float(fs) if fs is not None else CPSC_FS


def _read_npy(path: Path, fs: float | None, where: str) -> tuple[np.ndarray, float]:
    if fs is None or not fs > 0:
        raise DataError(
            f"{where}: {path} is a .npy array, which carries no sampling rate: give fs "
            f"(e.g. an `fs` column in the manifest)"
        )
    try:
        arr = np.load(str(path), allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{where}: unreadable or truncated .npy file {path}: {exc}") from exc
    if not isinstance(arr, np.ndarray) or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise DataError(f"{where}: {path} does not hold a real-valued numeric array")
    return _as_leads_first(arr.astype(np.float64), where, str(path)), float(fs)


def _as_leads_first(arr: np.ndarray, where: str, name: str) -> np.ndarray:
    n = len(LEADS)
    if arr.ndim != 2:
        raise DataError(f"{where}: {name} holds an array of shape {arr.shape}; expected (12, N)")
    if arr.shape[0] != n and arr.shape[1] == n:
        arr = arr.T
    if arr.shape[0] != n:
        raise DataError(
            f"{where}: wrong number of leads: {name} holds shape {arr.shape}; expected "
            f"(12, N) or (N, 12)"
        )
    if arr.shape[1] == 0:
        raise DataError(f"{where}: {name} holds an empty signal (0 samples)")
    return arr


def _check_finite(sig: np.ndarray, where: str, invalid_hint: str = "") -> None:
    bad = ~np.isfinite(sig)
    if bad.any():
        leads = [LEADS[i] for i in np.flatnonzero(bad.any(axis=1))]
        raise DataError(
            f"{where}: {int(bad.sum())} NaN/inf sample(s){invalid_hint} in lead(s) {leads}"
        )
