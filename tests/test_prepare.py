"""Tests of etp.data.prepare and `etp prepare`: counts, reuse/rebuild, atomicity, bad input."""

from __future__ import annotations

import ast

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from etp.cli import main
from etp.data.cache import load_prepared, read_meta
from etp.data.fingerprint import read_digests
from etp.data.prepare import PrepareConfig, PrepareSummary, prepare_dataset
from etp.data.readers import open_reader
from etp.data.signal import PreprocessConfig, preprocess
from etp.errors import ConfigError, DataError

from conftest import SAMPLE_DIR

PTBXL_SAMPLE = SAMPLE_DIR / "ptb-xl"
DB = "ptbxl_database.csv"


# ------------------------------------------------------------------------------------------
# helpers: small real PTB-XL / manifest folders built from the bundled sample
# ------------------------------------------------------------------------------------------


def make_ptbxl(tmp_path: Path, n: int = 6, name: str = "ptb-xl") -> Path:
    """A PTB-XL folder with the first ``n`` sample records (real files, original layout)."""
    dst = tmp_path / name
    db = pd.read_csv(PTBXL_SAMPLE / DB, dtype=str, keep_default_na=False).iloc[:n]
    (dst / "records100").mkdir(parents=True)
    db.to_csv(dst / DB, index=False)
    shutil.copy(PTBXL_SAMPLE / "scp_statements.csv", dst / "scp_statements.csv")
    for rel in db["filename_lr"]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copy(PTBXL_SAMPLE / (rel + ext), dst / (rel + ext))
    return dst


def rec_path(root: Path, i: int) -> tuple[str, Path]:
    """(ecg_id, WFDB stem) of row ``i`` of a PTB-XL folder."""
    db = pd.read_csv(root / DB, dtype=str, keep_default_na=False)
    return db["ecg_id"].iloc[i], root / db["filename_lr"].iloc[i]


def cfg_for(root: Path, out: Path, **kw: object) -> PrepareConfig:
    return PrepareConfig(
        dataset="ptbxl", root=str(root), out=str(out), **kw  # type: ignore[arg-type]
    )


def truncate(stem: Path) -> None:
    dat = stem.with_name(stem.name + ".dat")
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2])


def eleven_leads(stem: Path) -> None:
    """Rewrite a record with one lead dropped (a valid WFDB record with 11 signals)."""
    sig, fields = wfdb.rdsamp(str(stem))
    wfdb.wrsamp(
        stem.name, fs=fields["fs"], units=fields["units"][:11], sig_name=fields["sig_name"][:11],
        p_signal=sig[:, :11], fmt=["16"] * 11, write_dir=str(stem.parent),
    )  # fmt: skip


def expected_counts(reader_records: list) -> tuple[Counter, int]:
    single = Counter(r.labels[0] for r in reader_records if len(r.labels) == 1)
    return single, sum(single.values())


# ------------------------------------------------------------------------------------------
# the bundled sample
# ------------------------------------------------------------------------------------------


def test_sample_cache_counts_and_info(ptbxl_sample_cache: Path) -> None:
    reader = open_reader("ptbxl", PTBXL_SAMPLE)
    recs = reader.records()
    data = load_prepared(ptbxl_sample_cache)
    info = data.info
    for key in ("dataset", "classes", "fs", "length", "preprocessing", "source", "fingerprint",
                "etp_version", "counts", "created"):  # fmt: skip
        assert key in info, key
    counts = PrepareSummary(**info["counts"])
    single, n_single = expected_counts(recs)
    assert counts.records == len(recs) == len(data) and counts.missing == 0
    assert counts.single_label == n_single
    assert counts.single_label_per_class == {c: single.get(c, 0) for c in reader.classes}
    assert counts.per_split == dict(Counter(r.split for r in recs))
    assert info["source"]["reader_options"] == {}
    # every report round-trips exactly (PTB-XL reports carry runs of spaces, upper-case umlauts)
    assert data.meta["record_id"].tolist() == [r.record_id for r in recs]
    assert data.meta["report"].tolist() == [r.report for r in recs]
    assert any("  " in r.report for r in recs)
    assert data.meta["patient_id"].tolist() == [r.patient_id or "" for r in recs]
    assert set(data.meta["language"]) <= {"de", "en", "sv", "unknown"}


def test_shared_ptbxl_partial_download(shared_data: Path, tmp_path: Path) -> None:
    """The done-criterion: ../shared/data/ptb-xl lists 21,837 records, holds 999."""
    root = shared_data / "ptb-xl"
    # derive the expected numbers from the files, independently of the reader
    db = pd.read_csv(root / DB)
    scp = pd.read_csv(root / "scp_statements.csv", index_col=0)
    diag = scp[scp["diagnostic"] == 1]["diagnostic_class"].to_dict()
    present = db[[(root / (f + ".hea")).is_file() for f in db["filename_lr"]]]
    labels = [{diag[c] for c in ast.literal_eval(s) if c in diag} for s in present["scp_codes"]]
    single = Counter(next(iter(s)) for s in labels if len(s) == 1)

    with pytest.raises(DataError, match=rf"{len(db) - len(present)} of {len(db)}.*--only-present"):
        prepare_dataset(cfg_for(root, tmp_path / "x"))
    s = prepare_dataset(cfg_for(root, tmp_path / "x", only_present=True, workers=2))
    assert (s.records, s.listed, s.missing) == (len(present), len(db), len(db) - len(present))
    assert s.single_label == sum(single.values())
    assert s.single_label_per_class == {c: single.get(c, 0) for c in s.classes}
    # the figures stated in the issue for this partial download
    assert (s.records, s.single_label) == (999, 782)
    assert s.single_label_per_class == {"NORM": 517, "MI": 67, "STTC": 108, "CD": 74, "HYP": 16}


def test_sample_ptbxl_500hz_matches_100hz(ptbxl_sample_cache: Path, tmp_path: Path) -> None:
    """The sample's two 500 Hz records, resampled to 100 Hz by prepare, agree with PTB-XL's own
    100 Hz files of the same recordings (the 500 -> 100 Hz path on real files, no ../shared)."""
    with pytest.raises(DataError, match=r"178 of 180 .*--only-present"):
        prepare_dataset(cfg_for(PTBXL_SAMPLE, tmp_path / "x5", fs_source=500))
    s = prepare_dataset(cfg_for(PTBXL_SAMPLE, tmp_path / "x5", only_present=True, fs_source=500))
    assert (s.records, s.length, s.missing) == (2, 1000, 178)
    hr = load_prepared(tmp_path / "x5")
    assert hr.info["fs"] == 100 and hr.info["source"]["reader_options"] == {"fs": 500}
    lr = load_prepared(ptbxl_sample_cache)
    ids = lr.meta["record_id"].astype(str).tolist()
    for i, rid in enumerate(hr.meta["record_id"].astype(str)):
        a, b = hr.get_batch([i])[0], lr.get_batch([ids.index(rid)])[0]
        assert a.shape == b.shape == (12, 1000)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95, rid


@pytest.mark.slow
def test_shared_ptbxl_500hz(shared_data: Path, tmp_path: Path) -> None:
    s = prepare_dataset(
        cfg_for(shared_data / "ptb-xl", tmp_path / "x5", only_present=True, fs_source=500)
    )
    assert s.records == 500 and s.length == 1000


def test_shared_cpsc_both_forms(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "cpsc2018"
    ref = pd.read_csv(root / "labels" / "REFERENCE.csv", dtype=str, keep_default_na=False)
    names = {str(i + 1): c for i, c in enumerate(
        ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE"))}  # fmt: skip
    ref_labels = {
        r.Recording: {names[v] for v in (r.First_label, r.Second_label, r.Third_label) if v}
        for r in ref.itertuples()
    }
    on_disk = {p.stem for p in (root / "wfdb").glob("*.hea")} | {
        p.stem for p in (root / "original-mat").glob("*.mat")
    }
    split_dir = root / "labels" / "merl-split"
    s = prepare_dataset(
        PrepareConfig(dataset="cpsc2018", root=str(root), out=str(tmp_path / "c"),
                      only_present=True, split_csv_dir=str(split_dir))  # fmt: skip
    )
    assert s.records == len(on_disk) and s.missing == len(ref) - len(on_disk)
    data = load_prepared(tmp_path / "c")
    assert set(data.meta["record_id"]) == on_disk
    assert {"A1980", "A5432", "A0001"} <= on_disk
    for rid, labels in zip(data.meta["record_id"], data.meta["labels"]):
        assert set(labels.split(";")) == ref_labels[rid], rid
    assert set(data.meta["split"]) <= {"train", "val", "test"}
    assert np.isfinite(data.get_batch(np.arange(len(data)))).all()


def test_cpsc_sample_cache(cpsc_sample_cache: Path) -> None:
    data = load_prepared(cpsc_sample_cache)
    s = PrepareSummary(**data.info["counts"])
    assert s.records == len(data) >= 20
    assert min(s.per_class.values()) >= 2  # two per class bundled
    # records of 6-60 s all become 10 s at 100 Hz
    assert data.signals.shape[1:] == (12, 1000)


# ------------------------------------------------------------------------------------------
# missing records, reuse / rebuild
# ------------------------------------------------------------------------------------------


def test_missing_records_need_only_present(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path)
    rid, stem = rec_path(root, 2)
    stem.with_name(stem.name + ".dat").unlink()
    with pytest.raises(DataError, match=rf"1 of 6 listed.*record {rid}.*--only-present"):
        prepare_dataset(cfg_for(root, tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    s = prepare_dataset(cfg_for(root, tmp_path / "c", only_present=True))
    assert (s.records, s.missing, s.listed) == (5, 1, 6)
    assert rid not in set(load_prepared(tmp_path / "c").meta["record_id"])


def test_reuse_and_rebuild(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_ptbxl(tmp_path)
    out = tmp_path / "c"
    first = prepare_dataset(cfg_for(root, out))
    assert not first.reused and first.records == 6
    sig = out / "signals.npy"
    stamp = sig.stat().st_mtime_ns

    again = prepare_dataset(cfg_for(root, out))
    assert again.reused and again.fingerprint == first.fingerprint
    assert sig.stat().st_mtime_ns == stamp
    assert again.single_label_per_class == first.single_label_per_class

    # CLI says it reused
    assert main(["prepare", "--dataset", "ptbxl", "--root", str(root), "--out", str(out)]) == 0
    assert "reused existing cache" in capsys.readouterr().out

    # a change of preprocessing rebuilds
    z = prepare_dataset(cfg_for(root, out, preprocess=PreprocessConfig(normalize="zscore")))
    assert not z.reused and z.fingerprint != first.fingerprint
    assert load_prepared(out).preprocessing["normalize"] == "zscore"
    # ... and so does a change of reader options
    f = prepare_dataset(cfg_for(root, out, val_folds=[1], train_folds=[2, 3, 4, 5, 6, 7, 8]))
    assert not f.reused and len({f.fingerprint, z.fingerprint, first.fingerprint}) == 3
    base = prepare_dataset(cfg_for(root, out))
    assert not base.reused and base.fingerprint == first.fingerprint

    # a touched signal file (same bytes, new mtime: a copy, a checkout) is re-read once and
    # the cache reused; the memo then holds the new mtime
    _, stem = rec_path(root, 0)
    dat = stem.with_name(stem.name + ".dat")
    os.utime(dat, ns=(dat.stat().st_atime_ns, dat.stat().st_mtime_ns + 10**9))
    touched = prepare_dataset(cfg_for(root, out))
    assert touched.reused and touched.fingerprint == first.fingerprint
    memo = read_digests(out)
    assert memo[os.path.relpath(dat, root)][1] == dat.stat().st_mtime_ns
    # changed bytes of the same size are read again (here they fail the header's checksum),
    # and the failed rebuild leaves the cache as it was
    orig = dat.read_bytes()
    raw = bytearray(orig)
    raw[100] ^= 0xFF
    dat.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum"):
        prepare_dataset(cfg_for(root, out))
    dat.write_bytes(orig)
    restored = prepare_dataset(cfg_for(root, out))
    assert restored.reused and restored.fingerprint == first.fingerprint

    # an edited report in the metadata CSV rebuilds, and the new text is in the cache
    db = pd.read_csv(root / DB, dtype=str, keep_default_na=False)
    db.loc[1, "report"] = "  neuer   Bericht\tmit Ü  "
    db.to_csv(root / DB, index=False)
    edited = prepare_dataset(cfg_for(root, out))
    assert not edited.reused
    assert read_meta(out / "meta.csv")["report"].iloc[1] == "  neuer   Bericht\tmit Ü  "

    forced = prepare_dataset(cfg_for(root, out, force=True))
    assert not forced.reused and forced.fingerprint == edited.fingerprint


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=3)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not an etp cache; refusing"):
        prepare_dataset(cfg_for(root, foreign))
    assert (foreign / "thesis.tex").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        prepare_dataset(cfg_for(root, tmp_path / "afile"))


# ------------------------------------------------------------------------------------------
# atomicity: a prepare killed mid-run never leaves a cache that loads
# ------------------------------------------------------------------------------------------

_SLOW_PREPARE = """
import sys, time
import etp.data.prepare as P
from etp.data.signal import PreprocessConfig
orig, n = P.preprocess, [0]
def slow(*a, **k):
    n[0] += 1
    if n[0] == 3:
        print("STARTED", flush=True)
    if n[0] >= 3:
        time.sleep(0.3)
    return orig(*a, **k)
P.preprocess = slow
P.prepare_dataset(P.PrepareConfig(dataset="ptbxl", root=sys.argv[1], out=sys.argv[2],
                                  preprocess=PreprocessConfig(normalize=sys.argv[3])))
"""


def _kill_mid_prepare(root: Path, out: Path, normalize: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREPARE, str(root), str(out), normalize],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "STARTED"
        time.sleep(0.2)
        assert proc.poll() is None, "prepare finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_killed_prepare_leaves_no_valid_cache(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=8)
    out = tmp_path / "cache"
    _kill_mid_prepare(root, out, "none")
    with pytest.raises(DataError):
        load_prepared(out)
    leftovers = list(tmp_path.glob(".cache.*.tmp"))
    assert leftovers, "the killed run should have been writing into a temporary directory"
    # the next run builds a complete cache and removes the dead run's leftovers
    s = prepare_dataset(cfg_for(root, out))
    assert s.records == 8 and len(load_prepared(out)) == 8
    assert not list(tmp_path.glob(".cache.*.tmp"))


def test_killed_rebuild_keeps_previous_cache(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=8)
    out = tmp_path / "cache"
    first = prepare_dataset(cfg_for(root, out))
    before = load_prepared(out).get_batch(np.arange(8))
    _kill_mid_prepare(root, out, "zscore")  # an interrupted rebuild with other options
    data = load_prepared(out)
    assert data.fingerprint == first.fingerprint
    np.testing.assert_array_equal(data.get_batch(np.arange(8)), before)
    assert prepare_dataset(cfg_for(root, out)).reused


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_missing_root_and_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="root not found.*nowhere"):
        prepare_dataset(cfg_for(tmp_path / "nowhere", tmp_path / "c"))
    root = make_ptbxl(tmp_path, n=2)
    (root / DB).unlink()
    with pytest.raises(DataError, match=f"not found.*{DB}"):
        prepare_dataset(cfg_for(root, tmp_path / "c"))


def test_csv_without_needed_column(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=2)
    db = pd.read_csv(root / DB, dtype=str, keep_default_na=False)
    db.drop(columns=["scp_codes"]).to_csv(root / DB, index=False)
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['scp_codes'\]"):
        prepare_dataset(cfg_for(root, tmp_path / "c"))


def test_unknown_label(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=3)
    db = pd.read_csv(root / DB, dtype=str, keep_default_na=False)
    db.loc[1, "scp_codes"] = "{'XYZ': 100.0}"
    db.to_csv(root / DB, index=False)
    with pytest.raises(DataError, match=rf"ecg_id {db.loc[1, 'ecg_id']}.*unknown SCP code 'XYZ'"):
        prepare_dataset(cfg_for(root, tmp_path / "c"))


@pytest.mark.parametrize(
    "breaker, match",
    [(truncate, r"truncated|size|bytes|short"), (eleven_leads, r"lead")],
    ids=["truncated", "wrong-leads"],
)
def test_bad_record_names_it(tmp_path: Path, breaker, match: str) -> None:
    root = make_ptbxl(tmp_path, n=4)
    rid, stem = rec_path(root, 1)
    breaker(stem)
    with pytest.raises(DataError, match=rf"(?s)record {rid}.*({match}).*--skip-bad"):
        prepare_dataset(cfg_for(root, tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_header_data_mismatch(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=3)
    rid, stem = rec_path(root, 0)
    hea = stem.with_name(stem.name + ".hea")
    lines = hea.read_text().splitlines()
    first = lines[0].split()
    first[3] = str(int(first[3]) * 2)  # header claims twice the samples the .dat holds
    hea.write_text("\n".join([" ".join(first), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=rf"record {rid}"):
        prepare_dataset(cfg_for(root, tmp_path / "c"))


def test_skip_bad_lists_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_ptbxl(tmp_path, n=6)
    bad = {}
    for i, breaker in ((1, truncate), (4, eleven_leads)):
        rid, stem = rec_path(root, i)
        breaker(stem)
        bad[rid] = breaker
    out = tmp_path / "c"
    s = prepare_dataset(cfg_for(root, out, skip_bad=True))
    assert s.records == 4 and [x["record_id"] for x in s.skipped] == list(bad)
    assert all(rid in x["reason"] for rid, x in zip(bad, s.skipped))
    data = load_prepared(out)
    assert len(data) == 4 and not set(bad) & set(data.meta["record_id"])
    good = [r for r in open_reader("ptbxl", root).records() if r.record_id not in bad]
    reader = open_reader("ptbxl", root)
    np.testing.assert_array_equal(
        data.get_batch([3])[0], preprocess(reader.read_signal(good[3]), good[3].fs)
    )
    # the CLI's JSON summary lists them too
    rc = main(["prepare", "--dataset", "ptbxl", "--root", str(root), "--out", str(out),
               "--skip-bad", "--json"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["reused"] is True
    assert [x["record_id"] for x in summary["skipped"]] == list(bad)
    # human summary names them
    main(["prepare", "--dataset", "ptbxl", "--root", str(root), "--out", str(out), "--skip-bad"])
    text = capsys.readouterr().out
    assert all(f"skipped {rid}:" in text for rid in bad)


def test_all_bad_and_empty_selection(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=2)
    stems = [rec_path(root, i)[1] for i in range(2)]
    for stem in stems:
        truncate(stem)
    with pytest.raises(DataError, match="no records left.*all 2 selected records are bad"):
        prepare_dataset(cfg_for(root, tmp_path / "c", skip_bad=True))
    for stem in stems:
        stem.with_name(stem.name + ".dat").unlink()
    with pytest.raises(DataError, match="no records to prepare.*2 listed, 0 present"):
        prepare_dataset(cfg_for(root, tmp_path / "c", only_present=True))


def test_manifest_npy_odd_text_and_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "mine"
    folder.mkdir()
    x250 = (rng.standard_normal((12, 2000)) * 0.2).astype(np.float32)  # 8 s at 250 Hz
    np.save(folder / "a.npy", x250)
    np.save(folder / "b.npy", x250.T.copy())  # (N, 12) is accepted too
    _, stem = rec_path(make_ptbxl(tmp_path, n=1), 0)
    reports = ["  Sinus rhythm,   normal ECG.  ", "vorhofflimmern\tmit\nzeilenumbruch", ""]
    man = pd.DataFrame({
        "path": ["a.npy", "b.npy", os.path.relpath(stem, folder)],
        "report": reports, "labels": ["NORM", "AF;NORM", ""], "fs": ["250", "250", ""],
    })  # fmt: skip
    man.to_csv(folder / "manifest.csv", index=False)
    out = tmp_path / "c"
    s = prepare_dataset(PrepareConfig(dataset="manifest", root=str(folder / "manifest.csv"),
                                      out=str(out)))  # fmt: skip
    assert s.records == 3 and s.classes == ["AF", "NORM"] and s.single_label == 1
    data = load_prepared(out)
    assert data.meta["report"].tolist() == reports
    np.testing.assert_array_equal(data.get_batch([0])[0], preprocess(x250, 250.0))
    np.testing.assert_array_equal(data.get_batch([1])[0], data.get_batch([0])[0])
    assert data.meta["source"].tolist()[:2] == ["a.npy", "b.npy"]

    bad = x250.copy()
    bad[2, 100] = np.nan
    np.save(folder / "a.npy", bad)
    with pytest.raises(DataError, match=r"(?s)a\.npy.*(NaN|nan).*--skip-bad"):
        prepare_dataset(PrepareConfig(dataset="manifest", root=str(folder), out=str(out)))
    with pytest.raises(DataError, match=r"unknown label code\(s\) \['AF'\]"):
        prepare_dataset(PrepareConfig(dataset="manifest", root=str(folder), out=str(out),
                                      classes=["NORM", "MI"]))  # fmt: skip


def test_config_errors(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=2)
    with pytest.raises(ConfigError, match="fs_source: applies to ptbxl/manifest only"):
        prepare_dataset(PrepareConfig(dataset="cpsc2018", root=str(root), out="x", fs_source=500))
    with pytest.raises(ConfigError, match="fs_source: PTB-XL has 100 Hz and 500 Hz"):
        prepare_dataset(cfg_for(root, tmp_path / "c", fs_source=250))
    with pytest.raises(ConfigError, match="split_seed: applies to cpsc2018/manifest only"):
        prepare_dataset(cfg_for(root, tmp_path / "c", split_seed=1))
    with pytest.raises(ConfigError, match="dataset: 'mimic'"):
        prepare_dataset(PrepareConfig(dataset="mimic", root=str(root), out="x"))
    with pytest.raises(ConfigError, match="max_records"):
        prepare_dataset(cfg_for(root, tmp_path / "c", max_records=0))


def test_workers_and_max_records(tmp_path: Path) -> None:
    root = make_ptbxl(tmp_path, n=8)
    one = prepare_dataset(cfg_for(root, tmp_path / "one"))
    two = prepare_dataset(cfg_for(root, tmp_path / "two", workers=2))
    assert one.fingerprint == two.fingerprint
    a, b = load_prepared(tmp_path / "one"), load_prepared(tmp_path / "two")
    np.testing.assert_array_equal(np.asarray(a.signals), np.asarray(b.signals))
    assert a.meta.equals(b.meta)
    few = prepare_dataset(cfg_for(root, tmp_path / "few", max_records=3))
    assert few.records == 3


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------


def test_cli_json_and_human(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_ptbxl(tmp_path, n=5)
    args = ["prepare", "--dataset", "ptbxl", "--root", str(root), "--out", str(tmp_path / "c"),
            "--bandpass", "none", "--normalize", "zscore", "--length", "5", "--crop", "start"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("records", "per_class", "single_label_per_class", "per_split", "missing",
                "skipped", "fingerprint", "reused"):  # fmt: skip
        assert key in summary, key
    assert summary["records"] == 5 and summary["reused"] is False and summary["length"] == 500
    pre = load_prepared(tmp_path / "c").preprocessing
    assert pre["bandpass"] is None and pre["normalize"] == "zscore" and pre["crop"] == "start"
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "reused existing cache" in text and "5 records" in text and "single-label" in text


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["prepare", "--dataset", "ptbxl", "--root", str(tmp_path / "nope"),
               "--out", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("etp prepare: error:") and "nope" in err
    root = make_ptbxl(tmp_path, n=2)
    rc = main(["prepare", "--dataset", "cpsc2018", "--root", str(root), "--out",
               str(tmp_path / "c"), "--fs-source", "500"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "fs_source" in err
    rc = main(["prepare", "--dataset", "ptbxl", "--root", str(root), "--out",
               str(tmp_path / "c"), "--bandpass", "40,0.5"])  # fmt: skip
    assert rc == 2 and "preprocess.bandpass" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--dataset", "ptbxl", "--root", str(root), "--out", "x",
              "--bandpass", "1,2,3"])  # fmt: skip
    assert exc.value.code == 2


def test_cli_subprocess_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "etp.cli", "prepare", "--dataset", "ptbxl", "--root",
         str(tmp_path / "missing"), "--out", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr





def test_prepare_config_from_dict() -> None:
    from etp.config import from_dict

    cfg = from_dict(PrepareConfig, {"dataset": "ptbxl", "root": "r", "out": "o", "fs_source": 500,
                                    "preprocess": {"fs": 250, "bandpass": None}})  # fmt: skip
    assert cfg.preprocess == PreprocessConfig(fs=250.0, bandpass=None)
    assert cfg.reader_options() == {"fs": 500}
    with pytest.raises(ConfigError, match="preprocess.normalise"):
        from_dict(PrepareConfig, {"preprocess": {"normalise": "zscore"}})
