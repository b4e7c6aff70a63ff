"""``etp prepare``: read a source once, preprocess every record, write the memory-mapped cache.

:func:`prepare_dataset` lists the source with its reader (:func:`etp.data.readers.open_reader`),
checks which listed records are present, reads and preprocesses each one
(:func:`etp.data.signal.preprocess`) straight into ``signals.npy`` (an ``open_memmap``, so memory
stays flat whatever the dataset size), and writes ``meta.csv`` and ``info.json`` — all inside a
temporary sibling directory that is renamed into place only when complete. A killed run leaves
no cache (or the previous one, untouched); leftovers of dead runs are removed by the next run
(also one that reuses the cache), and worker processes end with the process that started them.
The space of ``signals.npy`` is checked and allocated before it is mapped, so a full disk is a
one-line error naming the cache (exit 2), never a SIGBUS, and the previous cache stays.

The cache's fingerprint hashes the reader options, the preprocessing options and the listing
(each record's metadata and the size and SHA-256 of its signal files). A second ``prepare`` with
the same fingerprint reuses the cache; any change rebuilds it. File digests are remembered in the
cache (``file_digests.json``, keyed by path, size and mtime), so an unchanged dataset is not read
again, and a copied or touched one (new mtimes, same bytes) is read once and still reuses the
cache, and so do the models trained on it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etp import __version__
from etp.config import config_field
from etp.data.build_dir import (
    OWNER_FILE,
    claim_temp,
    die_with_parent,
    remove_stale_temps,
    reserve,
)
from etp.data.cache import (
    CACHE_FORMAT,
    CACHE_VERSION,
    INFO_FILE,
    META_FILE,
    SIGNALS_FILE,
    load_prepared,
    read_info,
    write_meta,
)
from etp.data.fingerprint import (
    DIGESTS_FILE,
    FileDigests,
    base_dir,
    compute_fingerprint,
    jsonable,
    read_digests,
    relpath,
)
from etp.data.readers import DATASETS
from etp.data.records import RecordInfo
from etp.data.signal import N_LEADS, PreprocessConfig, preprocess
from etp.data.signal_io import check_amplitude
from etp.errors import ConfigError, DataError, EtpError
from etp.io import atomic_dir, atomic_write_json, ensure_space

log = logging.getLogger(__name__)

#: PrepareConfig fields that are reader options, and the datasets each applies to
READER_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    # config field: (reader keyword, datasets)
    "fs_source": ("fs", ("ptbxl", "manifest")),
    "classes": ("classes", ("manifest",)),
    "train_folds": ("train_folds", ("ptbxl",)),
    "val_folds": ("val_folds", ("ptbxl",)),
    "test_folds": ("test_folds", ("ptbxl",)),
    "split_seed": ("split_seed", ("cpsc2018", "manifest")),
    "split_fractions": ("split_fractions", ("cpsc2018", "manifest")),
    "split_csv_dir": ("split_csv_dir", ("cpsc2018",)),
    "reference_csv": ("reference_csv", ("cpsc2018",)),
}


_f = config_field


@dataclass
class PrepareConfig:
    """What ``etp prepare`` reads, how it preprocesses, and where it writes."""

    dataset: str = _f("ptbxl", "source format: ptbxl | cpsc2018 | manifest")
    root: str = _f("", "dataset folder (PTB-XL, CPSC2018) or the manifest CSV file")
    out: str = _f("", "cache directory to write (replaced atomically)")
    fs_source: float | None = _f(
        None,
        "PTB-XL: read the 100 Hz or the 500 Hz files (default 100); manifest: sampling rate of "
        "rows without an fs value",
    )
    classes: list[str] | None = _f(
        None, "manifest: class names in order (default: the sorted labels found)"
    )
    train_folds: list[int] | None = _f(None, "PTB-XL: strat_folds of the train split (1-8)")
    val_folds: list[int] | None = _f(None, "PTB-XL: strat_folds of the validation split (9)")
    test_folds: list[int] | None = _f(None, "PTB-XL: strat_folds of the test split (10)")
    split_seed: int | None = _f(
        None, "CPSC2018, manifest without a split column: seed of the stratified split (0)"
    )
    split_fractions: list[float] | None = _f(
        None, "CPSC2018, manifest without a split column: train/val/test fractions (0.7,0.1,0.2)"
    )
    split_csv_dir: str | None = _f(None, "CPSC2018: take the split from CSV files in this folder")
    reference_csv: str | None = _f(
        None, "CPSC2018: REFERENCE.csv path (default: searched under root)"
    )
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    only_present: bool = _f(False, "use only the listed records whose signal files are present")
    skip_bad: bool = _f(
        False, "skip unreadable/invalid records (listed with reasons) instead of failing"
    )
    max_records: int | None = _f(None, "use at most the first N records (debugging)")
    workers: int = _f(1, "worker processes reading and preprocessing records")
    force: bool = _f(False, "rebuild even when a cache with the same fingerprint exists")

    def reader_options(self) -> dict[str, Any]:
        """Keyword options for ``open_reader``; ConfigError for one the dataset does not take."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset: {self.dataset!r} is not one of {', '.join(DATASETS)}")
        opts: dict[str, Any] = {}
        for name, (kw, datasets) in READER_OPTIONS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if self.dataset not in datasets:
                raise ConfigError(
                    f"{name}: applies to {'/'.join(datasets)} only, not to {self.dataset}"
                )
            opts[kw] = tuple(value) if isinstance(value, list) else value
        if self.dataset == "ptbxl" and "fs" in opts:
            if opts["fs"] not in (100, 500):
                raise ConfigError(
                    f"fs_source: PTB-XL has 100 Hz and 500 Hz files, got {opts['fs']}"
                )
            opts["fs"] = int(opts["fs"])
        return opts


@dataclass
class PrepareSummary:
    """What ``prepare_dataset`` did (also stored in the cache's info.json as ``counts``)."""

    dataset: str
    out: str
    fingerprint: str
    reused: bool
    records: int
    listed: int
    missing: int
    classes: list[str]
    per_class: dict[str, int]
    single_label: int
    single_label_per_class: dict[str, int]
    per_split: dict[str, int]
    single_label_per_split: dict[str, dict[str, int]]
    skipped: list[dict[str, str]]
    fs: float
    length: int
    seconds: float = 0.0
    #: records kept with a warning (e.g. a flat lead): {"record_id", "warning"}
    warnings: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the ``--json`` output)."""
        return dataclasses.asdict(self)

    def format(self) -> str:
        """Human-readable multi-line summary."""
        head = (
            f"reused existing cache {self.out} (fingerprint {self.fingerprint[:12]} matches)"
            if self.reused
            else f"prepared {self.out} in {self.seconds:.1f} s "
            f"(fingerprint {self.fingerprint[:12]})"
        )
        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))

        lines = [
            head,
            f"dataset {self.dataset}: {self.records} records "
            f"({self.listed} listed, {self.missing} missing, {len(self.skipped)} skipped), "
            f"{self.length} samples at {self.fs:g} Hz",
            f"records per class: {counts(self.per_class)}",
            f"single-label: {self.single_label}: {counts(self.single_label_per_class)}",
            f"per split: {counts(self.per_split)}",
        ]
        for s in self.skipped[:20]:
            lines.append(f"skipped {s['record_id']}: {s['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"... and {len(self.skipped) - 20} more skipped (see --json)")
        for w in self.warnings[:20]:
            lines.append(f"warning: {w['warning']}")
        if len(self.warnings) > 20:
            lines.append(f"... and {len(self.warnings) - 20} more warnings (see --json)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# reading records
# ------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _load_one(
    reader: Any, rec: RecordInfo, pcfg: PreprocessConfig
) -> tuple[np.ndarray, list[str]]:
    """Read, check (:func:`check_amplitude`) and preprocess one record -> (array, warnings);
    every failure becomes a DataError naming it."""
    try:
        raw = reader.read_signal(rec)
        fs = rec.fs
        if isinstance(raw, tuple):  # (signal, fs) form
            raw, fs = raw
        warnings = check_amplitude(raw, f"record {rec.record_id} ({rec.path})")
        return preprocess(raw, fs, pcfg, record_id=rec.record_id), warnings
    except DataError as exc:
        msg = str(exc)
        if rec.record_id not in msg:
            msg = f"record {rec.record_id} ({rec.path}): {msg}"
        raise DataError(msg) from None
    except EtpError:
        raise
    except Exception as exc:  # a library error from deep inside: name the record instead
        raise DataError(
            f"record {rec.record_id} ({rec.path}): cannot read ({type(exc).__name__}: {exc})"
        ) from None


_Item = tuple[int, np.ndarray | None, str | None, list[str]]


def _work_chunk(positions: list[int]) -> list[_Item]:
    """Worker body: preprocess the records at ``positions`` of the forked-in selection."""
    reader, records, pcfg = _WORKER["reader"], _WORKER["records"], _WORKER["pcfg"]
    out: list[_Item] = []
    for i in positions:
        try:
            arr, warnings = _load_one(reader, records[i], pcfg)
            out.append((i, arr, None, warnings))
        except DataError as exc:
            out.append((i, None, str(exc), []))
    return out


def _iter_processed(
    reader: Any, records: list[RecordInfo], pcfg: PreprocessConfig, workers: int
):
    """Yield (position, array or None, error or None, warnings) in order."""
    if workers <= 1 or len(records) < 2 * workers:
        for i, rec in enumerate(records):
            try:
                arr, warnings = _load_one(reader, rec, pcfg)
                yield i, arr, None, warnings
            except DataError as exc:
                yield i, None, str(exc), []
        return
    _WORKER.update(reader=reader, records=records, pcfg=pcfg)
    chunk = 32
    chunks = [list(range(s, min(s + chunk, len(records)))) for s in range(0, len(records), chunk)]
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx,
            initializer=die_with_parent, initargs=(os.getpid(),),
        ) as pool:
            for result in pool.map(_work_chunk, chunks):
                yield from result
    finally:
        _WORKER.clear()


# ------------------------------------------------------------------------------------------
# the cache directory
# ------------------------------------------------------------------------------------------


def _check_out(out: Path) -> dict[str, Any] | None:
    """The existing cache's info at ``out`` (None if absent); refuse to replace a foreign dir."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return None
    try:
        return read_info(out)
    except DataError:
        if (out / INFO_FILE).is_file():
            try:
                if json.loads((out / INFO_FILE).read_text()).get("format") == CACHE_FORMAT:
                    return None  # an old/broken etp cache: ours to replace
            except (OSError, ValueError, AttributeError):
                pass
        raise DataError(
            f"--out {out} exists and is not an etp cache; refusing to replace it "
            f"(choose an empty or new directory)"
        ) from None


def _summarise(
    cfg: PrepareConfig,
    classes: list[str],
    meta: pd.DataFrame,
    listed: int,
    missing: int,
    skipped: list[dict[str, str]],
    fingerprint: str,
    out: Path,
) -> PrepareSummary:
    per_class: Counter[str] = Counter()
    single: Counter[str] = Counter()
    single_split: dict[str, Counter[str]] = {}
    for labels, split in zip(meta["labels"], meta["split"]):
        labs = labels.split(";") if labels else []
        per_class.update(labs)
        if len(labs) == 1:
            single[labs[0]] += 1
            single_split.setdefault(split or "none", Counter())[labs[0]] += 1
    splits = Counter(s or "none" for s in meta["split"])
    return PrepareSummary(
        dataset=cfg.dataset,
        out=str(out),
        fingerprint=fingerprint,
        reused=False,
        records=int(len(meta)),
        listed=int(listed),
        missing=int(missing),
        classes=list(classes),
        per_class={c: int(per_class.get(c, 0)) for c in classes},
        single_label=int(sum(single.values())),
        single_label_per_class={c: int(single.get(c, 0)) for c in classes},
        per_split={k: int(v) for k, v in sorted(splits.items())},
        single_label_per_split={
            s: {c: int(cnt.get(c, 0)) for c in classes} for s, cnt in sorted(single_split.items())
        },
        skipped=skipped,
        fs=float(cfg.preprocess.fs),
        length=int(cfg.preprocess.n_samples),
    )


def _meta_row(rec: RecordInfo, base: Path) -> dict[str, Any]:
    from etp.data.text import detect_language, normalize_report

    report = rec.report or ""
    labels = list(rec.labels)
    language = rec.extra.get("language") if rec.extra else None
    return {
        "record_id": str(rec.record_id),
        "patient_id": "" if rec.patient_id is None else str(rec.patient_id),
        "report": report,
        "report_norm": normalize_report(report),
        "language": str(language) if language else detect_language(report),
        "labels": ";".join(labels),
        "label": labels[0] if len(labels) == 1 else "",
        "fold": -1 if rec.fold is None else int(rec.fold),
        "split": rec.split or "",
        "source": relpath(rec.path, base),
        "fs_source": float(rec.fs),
    }


def prepare_dataset(
    cfg: PrepareConfig, reader: Any = None, progress: bool = False
) -> PrepareSummary:
    """Build (or reuse) the cache described by ``cfg``; returns what was done.

    Args:
        cfg: the prepare configuration.
        reader: an already-built reader to use instead of ``open_reader(cfg.dataset, cfg.root)``.
        progress: show a progress bar on stderr.

    Raises:
        DataError: missing root/CSV (from the reader), listed records missing without
            ``only_present``, a bad record without ``skip_bad``, an empty selection, or an
            ``out`` directory that is not an etp cache.
    """
    t0 = time.perf_counter()
    if not cfg.root:
        raise ConfigError("root: give the dataset folder (or manifest CSV) to prepare")
    if not cfg.out:
        raise ConfigError("out: give the cache directory to write")
    if cfg.max_records is not None and cfg.max_records < 1:
        raise ConfigError(f"max_records: must be >= 1, got {cfg.max_records}")
    if cfg.workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {cfg.workers}")
    cfg.preprocess.validate()
    options = cfg.reader_options()
    root = Path(cfg.root)
    out = Path(cfg.out)
    if reader is None:
        if not root.exists():
            raise DataError(f"dataset root not found: {root}")
        from etp.data.readers import open_reader

        reader = open_reader(cfg.dataset, str(root), **options)

    listing = list(reader.records())
    present = [rec for rec in listing if reader.is_present(rec)]
    missing = len(listing) - len(present)
    if missing and not cfg.only_present:
        absent = [rec for rec in listing if not reader.is_present(rec)]
        if hasattr(reader, "missing_message"):
            raise DataError(reader.missing_message(absent, len(listing)))
        raise DataError(
            f"{missing} of {len(listing)} records listed in {root} have no signal files "
            f"(e.g. {', '.join(r.record_id for r in absent[:3])}; a partial download?); pass "
            f"--only-present to prepare the {len(present)} records that are present"
        )
    selected = present[: cfg.max_records] if cfg.max_records else present
    if not selected:
        raise DataError(
            f"no records to prepare in {root}: {len(listing)} listed, {len(present)} present"
            + (f", max_records={cfg.max_records}" if cfg.max_records else "")
        )
    ids = [rec.record_id for rec in selected]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise DataError(f"record id {dup!r} is listed more than once in {root}")

    existing = _check_out(out)
    remove_stale_temps(out)  # also when the cache is reused below
    known = read_digests(out) if existing is not None else {}
    digests: FileDigests = {}
    fingerprint = compute_fingerprint(cfg, options, selected, len(listing), known, digests)
    summary: PrepareSummary | None = None
    if existing is not None and existing.get("fingerprint") == fingerprint and not cfg.force:
        try:
            load_prepared(out)
        except DataError as exc:
            log.warning("existing cache at %s is unusable (%s); rebuilding", out, exc)
        else:
            try:
                summary = PrepareSummary(**existing["counts"])
            except (TypeError, KeyError):
                summary = None
        if summary is not None:
            if digests != known:  # new mtimes, same bytes: remember, so they are not re-read
                atomic_write_json(out / DIGESTS_FILE, digests)
            summary.reused = True
            summary.out = str(out)
            summary.seconds = time.perf_counter() - t0
            log.info("reusing cache %s (fingerprint %s)", out, fingerprint[:12])
            return summary

    classes = list(reader.classes)
    base = base_dir(root)
    pcfg = cfg.preprocess
    n, length = len(selected), pcfg.n_samples
    skipped: list[dict[str, str]] = []
    keep: list[int] = []
    flagged: list[dict[str, str]] = []
    row_bytes = N_LEADS * length * np.dtype(np.float32).itemsize
    ensure_space(out / SIGNALS_FILE, n * row_bytes)  # before anything is written
    with atomic_dir(out) as tmp, claim_temp(tmp):
        partial = tmp / "signals.partial.npy"
        sig = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.float32, shape=(n, N_LEADS, length)
        )
        reserve(partial, sig.offset + n * row_bytes)
        items = _iter_processed(reader, selected, pcfg, cfg.workers)
        if progress:
            from tqdm import tqdm

            items = tqdm(items, total=n, desc=f"prepare {cfg.dataset}", unit="rec")
        for i, arr, err, warns in items:
            flagged += [{"record_id": selected[i].record_id, "warning": w} for w in warns]
            if err is not None:
                if not cfg.skip_bad:
                    raise DataError(f"{err} (pass --skip-bad to skip bad records)")
                skipped.append({"record_id": selected[i].record_id, "reason": err})
                continue
            sig[len(keep)] = arr
            keep.append(i)
        if not keep:
            raise DataError(
                f"no records left in {root}: all {n} selected records are bad "
                f"(first: {skipped[0]['reason']})"
            )
        sig.flush()
        del sig
        if len(keep) == n:
            os.replace(partial, tmp / SIGNALS_FILE)
        else:  # drop the unused tail rows
            src = np.load(partial, mmap_mode="r")
            dst = np.lib.format.open_memmap(
                tmp / SIGNALS_FILE, mode="w+", dtype=np.float32, shape=(len(keep), N_LEADS, length)
            )
            reserve(tmp / SIGNALS_FILE, dst.offset + len(keep) * row_bytes)
            step = 1024
            for s in range(0, len(keep), step):
                e = min(s + step, len(keep))
                dst[s:e] = src[s:e]
            dst.flush()
            del dst, src
            partial.unlink()
        with open(tmp / SIGNALS_FILE, "rb+") as fh:
            os.fsync(fh.fileno())

        meta = pd.DataFrame([_meta_row(selected[i], base) for i in keep])
        write_meta(meta, tmp / META_FILE)
        summary = _summarise(cfg, classes, meta, len(listing), missing, skipped, fingerprint, out)
        summary.warnings = flagged
        summary.seconds = round(time.perf_counter() - t0, 3)
        info = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_VERSION,
            "dataset": cfg.dataset,
            "classes": classes,
            "fs": float(pcfg.fs),
            "length": int(length),
            "n_records": len(keep),
            "preprocessing": pcfg.to_dict(),
            "source": {
                "root": str(root.resolve()),
                "reader_options": jsonable(options),
                "only_present": cfg.only_present,
                "skip_bad": cfg.skip_bad,
                "max_records": cfg.max_records,
            },
            "fingerprint": fingerprint,
            "etp_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "counts": summary.to_dict(),
        }
        atomic_write_json(tmp / DIGESTS_FILE, digests)
        (tmp / OWNER_FILE).unlink()
        atomic_write_json(tmp / INFO_FILE, info)  # written last: marks the directory complete
    log.info("prepared %s: %d records in %.1f s", out, len(keep), summary.seconds)
    return summary
