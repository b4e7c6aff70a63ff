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
import re
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
    if p.is_dir():
        raise DataError(
            f"{where}: {p} is a directory, not an ECG signal file; give a WFDB record (stem or "
            ".hea), a .mat or a .npy file"
        )
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


#: bounds of a header's sampling rate in Hz (ECGs are recorded at 50 Hz to 10 kHz in practice)
FS_RANGE = (1.0, 100_000.0)
#: bounds of a header's ADC gain in ADC units per mV (after its units): 1 unit per mV is the
#: coarsest resolution that still shows an ECG, 1e7 per mV (0.1 nV) finer than any recorder
GAIN_PER_MV_RANGE = (1.0, 1e7)
# range of the stored integers of each WFDB format (for the baseline check)
_FORMAT_BITS = {"8": 8, "16": 16, "61": 16, "80": 8, "160": 16, "24": 24, "32": 32,
                "212": 12, "310": 10, "311": 10, "508": 8, "516": 16, "524": 24}  # fmt: skip


def read_wfdb_header(stem: Path, where: str) -> wfdb.Record:
    """Parse and validate the WFDB header of ``stem``; :class:`DataError` naming the field.

    :mod:`wfdb` silently replaces a sampling rate that is not a positive number by 250 Hz and
    a gain of 0 by 200, and fails with ``list index out of range`` on an empty header, so the
    header text is checked first: the record line (signal count, sampling rate, sample count)
    and every signal line (format, gain, baseline, units).
    """
    hea = _hea(stem)
    if not hea.is_file():
        raise DataError(f"{where}: WFDB header not found: {hea}")
    _check_header_text(hea, where)
    try:
        header = wfdb.rdheader(str(stem))
    except Exception as exc:
        raise DataError(f"{where}: unreadable WFDB header {hea}: {exc}") from exc
    return header


def _check_header_text(hea: Path, where: str) -> None:
    try:
        text = hea.read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        raise DataError(f"{where}: cannot read WFDB header {hea}: {exc.strerror}") from None
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    fix = "fix the header or remove the record"
    if not lines:
        raise DataError(f"{where}: WFDB header {hea} is empty (no record line); {fix}")
    rec = lines[0].split()
    if len(rec) < 2 or not rec[1].isdigit():
        raise DataError(
            f"{where}: WFDB header {hea}: malformed record line {lines[0]!r} (expected "
            f"'NAME N_SIGNALS [FS [N_SAMPLES]]'); {fix}"
        )
    if "/" in rec[0]:
        raise DataError(f"{where}: {hea} is a multi-segment WFDB record, which etp does not read")
    n_sig = int(rec[1])
    if len(rec) > 2:
        fs_text = rec[2].split("/", 1)[0].split("(", 1)[0]
        try:
            fs = float(fs_text)
        except ValueError:
            fs = math.nan
        lo, hi = FS_RANGE
        if not (math.isfinite(fs) and lo <= fs <= hi):
            raise DataError(
                f"{where}: WFDB header {hea}: sampling rate field {rec[2]!r} is not a rate "
                f"between {lo:g} and {hi:g} Hz; {fix}"
            )
    if len(rec) > 3 and not (rec[3].isdigit() and int(rec[3]) > 0):
        raise DataError(
            f"{where}: WFDB header {hea}: sample count field {rec[3]!r} is not a positive "
            f"integer; {fix}"
        )
    sig_lines = lines[1 : 1 + n_sig]
    if len(sig_lines) < n_sig:
        raise DataError(
            f"{where}: WFDB header {hea}: the record line announces {n_sig} signals but "
            f"{len(sig_lines)} signal line(s) follow; {fix}"
        )
    for k, line in enumerate(sig_lines):
        _check_signal_line(line.split(), k, hea, where, fix)


def _check_signal_line(f: list[str], k: int, hea: Path, where: str, fix: str) -> None:
    name = " ".join(f[8:]) if len(f) > 8 else f"#{k + 1}"
    at = f"{where}: WFDB header {hea}: signal {name}"
    if len(f) < 2:
        raise DataError(f"{at}: no storage format given; {fix}")
    fmt = re.split(r"[x:+]", f[1], maxsplit=1)[0]
    if fmt not in _FORMAT_BITS:
        raise DataError(
            f"{at}: storage format {f[1]!r} is not a WFDB format etp reads "
            f"({', '.join(sorted(_FORMAT_BITS, key=int))}); {fix}"
        )
    if len(f) < 3:
        return  # no gain: WFDB's default 200 per mV
    m = re.fullmatch(r"([^(/]*)(?:\(([^)]*)\))?(?:/(.*))?", f[2])
    gain_text, base_text, unit = (m.group(1), m.group(2), m.group(3)) if m else (f[2], None, None)
    try:
        gain = float(gain_text)
    except ValueError:
        gain = math.nan
    factor = _UNIT_TO_MV.get((unit or "").strip().lower())
    if factor is None:
        raise DataError(
            f"{at}: unknown physical unit {unit!r} (etp reads {', '.join(['mV', 'uV', 'V'])}); "
            f"{fix}"
        )
    lo, hi = GAIN_PER_MV_RANGE
    per_mv = gain * factor if gain > 0 else math.nan
    if not (math.isfinite(per_mv) and lo <= per_mv <= hi):
        raise DataError(
            f"{at}: ADC gain {gain_text!r} is not a positive gain between {lo:g} and {hi:g} ADC "
            f"units per mV; the signal would come out scaled, inverted or flat; {fix}"
        )
    if base_text is not None:
        bits = _FORMAT_BITS[fmt]
        lim = 2 ** (bits - 1) if fmt not in ("80", "160", "508") else 2**bits
        try:
            base = int(base_text)
        except ValueError:
            base = None
        if base is None or not -lim <= base < lim:
            raise DataError(
                f"{at}: baseline {base_text!r} is not an integer that format {fmt} can hold "
                f"({-lim} to {lim - 1}); {fix}"
            )


def _read_wfdb(stem: Path, fs: float | None, where: str) -> tuple[np.ndarray, float]:
    hea = _hea(stem)
    header = read_wfdb_header(stem, where)
    n_sig = int(header.n_sig or 0)
    if n_sig < len(LEADS):
        raise DataError(
            f"{where}: wrong number of leads: {hea} lists {n_sig} signal(s), "
            f"etp needs the 12 standard leads"
        )
    order = canonical_order(header.sig_name or [], source=str(hea))
    rate = float(header.fs)
    if fs is not None and not math.isclose(float(fs), rate, rel_tol=1e-6):
        raise DataError(
            f"{where}: a sampling rate of {fs:g} Hz was given (e.g. a manifest's `fs`) but {hea} "
            f"says {rate:g} Hz; correct one of them (WFDB records need no rate)"
        )
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


#: a lead whose robust amplitude (99.5th percentile of |x - median|) is below this many mV is
#: flat: no ECG lead is (a disconnected electrode, or a signal in V read as mV)
FLAT_MV = 0.01
#: a lead whose robust amplitude exceeds this many mV is absurd: real ECGs stay below ~15 mV
#: (a signal in uV read as mV, or a wrong gain)
ABSURD_MV = 50.0


def check_amplitude(sig: np.ndarray, where: str) -> list[str]:
    """Check that a (12, N) mV signal can be diagnostic; returns warnings, raises errors.

    Per lead, the robust amplitude is the 99.5th percentile of ``|x - median(x)|`` (so an
    offset or a few spikes do not count). A :class:`DataError` names ``where`` when any lead
    exceeds :data:`ABSURD_MV` or when every lead is below :data:`FLAT_MV` (the model would see
    noise or zeros and answer anyway); some flat leads (a disconnected electrode) are a
    warning, returned as one sentence for the caller to report. ``etp prepare`` and the
    inference file reader both call this.
    """
    x = np.asarray(sig, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        return []
    amp = np.percentile(np.abs(x - np.median(x, axis=1, keepdims=True)), 99.5, axis=1)
    names = list(LEADS) if x.shape[0] == len(LEADS) else [str(i) for i in range(x.shape[0])]
    absurd = [f"{names[i]} ({amp[i]:.3g} mV)" for i in np.flatnonzero(~(amp <= ABSURD_MV))]
    if absurd:
        raise DataError(
            f"{where}: absurd amplitude in lead(s) {', '.join(absurd)}, above the "
            f"{ABSURD_MV:g} mV no ECG reaches: wrong units or ADC gain (e.g. uV read as mV)? "
            "Fix the file's scaling"
        )
    flat = [names[i] for i in np.flatnonzero(amp < FLAT_MV)]
    if len(flat) == len(names):
        raise DataError(
            f"{where}: every lead is flat (amplitude below {FLAT_MV:g} mV): not a diagnostic "
            "ECG (an empty recording, or wrong units or ADC gain, e.g. V read as mV)"
        )
    if flat:
        return [f"{where}: flat lead(s) {flat} (amplitude below {FLAT_MV:g} mV; a "
                "disconnected electrode?)"]
    return []


def _check_finite(sig: np.ndarray, where: str, invalid_hint: str = "") -> None:
    bad = ~np.isfinite(sig)
    if bad.any():
        leads = [LEADS[i] for i in np.flatnonzero(bad.any(axis=1))]
        raise DataError(
            f"{where}: {int(bad.sum())} NaN/inf sample(s){invalid_hint} in lead(s) {leads}"
        )
