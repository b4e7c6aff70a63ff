"""A cache's fingerprint: reader and preprocessing options plus every selected record's metadata
and the content (SHA-256) of its signal files, remembered by size and mtime so unchanged files
are not read again. A cache is rebuilt exactly when its fingerprint changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etp.data.cache import CACHE_VERSION
from etp.data.records import RecordInfo

if TYPE_CHECKING:
    from etp.data.prepare import PrepareConfig

#: the files a record's signal may consist of
_SIGNAL_SUFFIXES = (".hea", ".dat", ".mat", ".npy")


def _signal_files(path: Path) -> list[Path]:
    """Files making up one record's signal (WFDB header + data, .mat, .npy)."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in _SIGNAL_SUFFIXES else p
    files = {stem.with_name(stem.name + ext) for ext in _SIGNAL_SUFFIXES}
    files.add(p)
    return sorted(f for f in files if f.is_file())


def base_dir(root: Path) -> Path:
    return root if root.is_dir() else root.parent


def relpath(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(Path(path), base)
    except ValueError:  # different drive
        return str(path)


DIGESTS_FILE = "file_digests.json"

#: digest memo: relative path -> [size, mtime_ns, sha256 hex]
FileDigests = dict[str, list[Any]]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path, base: Path, known: FileDigests, seen: FileDigests) -> list[Any]:
    """``[relative path, size, sha256]`` of one signal file, hashed only when ``known`` (the
    memo of the previous run) has no entry with the same size and mtime; the entry goes to
    ``seen`` (the memo to write back)."""
    rel = relpath(path, base)
    st = path.stat()
    memo = known.get(rel)
    if memo is not None and memo[:2] == [st.st_size, st.st_mtime_ns]:
        digest = str(memo[2])
    else:
        digest = _sha256(path)
    seen[rel] = [st.st_size, st.st_mtime_ns, digest]
    return [rel, st.st_size, digest]


def read_digests(out: Path) -> FileDigests:
    """The digest memo kept in cache ``out`` (empty when absent or unreadable)."""
    try:
        data = json.loads((Path(out) / DIGESTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, list) and len(v) == 3 and isinstance(v[2], str)
    }


def _record_key(
    rec: RecordInfo, base: Path, known: FileDigests, seen: FileDigests
) -> list[Any]:
    """Everything about a record that ends up in the cache, plus its files' size and digest."""
    stats = [file_digest(f, base, known, seen) for f in _signal_files(rec.path)]
    return [
        rec.record_id,
        relpath(rec.path, base),
        float(rec.fs),
        rec.patient_id,
        rec.report,
        list(rec.labels),
        rec.fold,
        rec.split,
        rec.extra.get("language"),
        stats,
    ]


def jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def compute_fingerprint(
    cfg: "PrepareConfig",
    reader_options: dict[str, Any],
    records: list[RecordInfo],
    n_listed: int,
    known: FileDigests | None = None,
    seen: FileDigests | None = None,
) -> str:
    """SHA-256 of reader + preprocessing options and the listing of the selected records.

    Signal files enter by content; ``known`` is a digest memo (:func:`read_digests`) that spares
    re-reading unchanged files, and ``seen``, when given, receives the memo of this listing.
    """
    known = {} if known is None else known
    seen = {} if seen is None else seen
    h = hashlib.sha256()
    head = {
        "cache_version": CACHE_VERSION,
        "dataset": cfg.dataset,
        "reader_options": jsonable(reader_options),
        "preprocess": cfg.preprocess.to_dict(),
        "only_present": cfg.only_present,
        "skip_bad": cfg.skip_bad,
        "max_records": cfg.max_records,
        "n_listed": n_listed,
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    base = base_dir(Path(cfg.root))
    for rec in records:
        h.update(b"\n")
        h.update(json.dumps(_record_key(rec, base, known, seen), default=str).encode())
    return h.hexdigest()
