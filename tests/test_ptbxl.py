"""PTB-XL reader (etp.data.ptbxl) on the bundled sample and, when present, ../shared/data."""

from __future__ import annotations

import ast
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etp.data.ptbxl import PTBXLReader
from etp.data.readers import single_label
from etp.errors import ConfigError, DataError


def expected_superclasses(root: Path) -> pd.Series:
    """ecg_id -> sorted superclasses, computed independently with pandas: the diagnostic_class
    of each scp_codes key whose statement has diagnostic == 1 (any likelihood)."""
    db = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    scp = pd.read_csv(root / "scp_statements.csv", index_col=0)
    diag = scp.loc[scp.diagnostic == 1, "diagnostic_class"]
    return db.scp_codes.map(
        lambda s: sorted({diag[k] for k in ast.literal_eval(s) if k in diag.index})
    )


@pytest.fixture(scope="module")
def sample_root(sample_dir) -> Path:
    return sample_dir / "ptb-xl"


@pytest.fixture(scope="module")
def sample_reader(sample_root) -> PTBXLReader:
    return PTBXLReader(sample_root)


def test_sample_records_match_csv(sample_reader, sample_root):
    db = pd.read_csv(sample_root / "ptbxl_database.csv", index_col="ecg_id")
    recs = sample_reader.records()
    assert [int(r.record_id) for r in recs] == sorted(db.index)
    assert sample_reader.missing(recs) == []
    sup = expected_superclasses(sample_root)
    for r in recs:
        row = db.loc[int(r.record_id)]
        assert r.report == row.report  # original text, untouched
        assert r.patient_id == str(int(row.patient_id))
        assert r.fold == row.strat_fold
        assert r.path == sample_root / row.filename_lr and r.fs == 100.0
        assert sorted(r.labels) == sup[int(r.record_id)]
        assert r.labels == [c for c in PTBXLReader.classes if c in r.labels]  # class order
        assert r.extra["scp_codes"] == ast.literal_eval(row.scp_codes)
        assert r.extra["language"] in {"de", "en", "sv", "unknown"}
        fold = row.strat_fold
        assert r.split == ("train" if fold <= 8 else "val" if fold == 9 else "test")


def test_sample_covers_folds_and_classes(sample_reader):
    recs = sample_reader.records()
    assert {r.fold for r in recs} == set(range(1, 11))
    singles = Counter(single_label(r) for r in recs if single_label(r))
    assert set(singles) == set(PTBXLReader.classes)
    assert any(len(r.labels) > 1 for r in recs) and any(not r.labels for r in recs)


def test_read_signal(sample_reader):
    rec = sample_reader.records()[0]
    sig = sample_reader.read_signal(rec)
    assert sig.shape == (12, 1000) and sig.dtype == np.float32 and np.isfinite(sig).all()


def test_configurable_folds(sample_root):
    reader = PTBXLReader(sample_root, train_folds=[1, 2, 3], val_folds=[4], test_folds=[5])
    splits = {r.fold: r.split for r in reader.records()}
    assert splits[2] == "train" and splits[4] == "val" and splits[5] == "test"
    assert splits[9] is None


def test_bad_options(sample_root):
    with pytest.raises(ConfigError, match="fold 8 is in both train_folds and test_folds"):
        PTBXLReader(sample_root, test_folds=[8])
    with pytest.raises(ConfigError, match="fs must be 100 or 500"):
        PTBXLReader(sample_root, fs=250)


def test_500hz_sample_is_partial(sample_root):
    """The sample holds 500 Hz files for two of its 180 records: the others are reported missing."""
    reader = PTBXLReader(sample_root, fs=500)
    recs = reader.records()
    assert recs[0].path.parent.parent.name == "records500"
    missing = reader.missing(recs)
    present = [r.record_id for r in reader.present(recs)]
    assert present == ["16", "30"] and len(missing) == len(recs) - 2
    msg = reader.missing_message(missing, len(recs))
    assert f"{len(recs) - 2} of {len(recs)} listed records have no signal files" in msg
    with pytest.raises(DataError, match="partial download"):
        reader.check_present(recs)
    sig = reader.read_signal(next(r for r in recs if r.record_id == "16"))
    assert sig.shape == (12, 5000)


def _copy_tables(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copyfile(src / name, dst / name)
    return dst


def test_missing_root_and_csv(tmp_path, sample_root):
    with pytest.raises(DataError, match="PTB-XL root not found"):
        PTBXLReader(tmp_path / "absent")
    root = _copy_tables(sample_root, tmp_path / "p")
    (root / "scp_statements.csv").unlink()
    with pytest.raises(DataError, match=r"PTB-XL SCP statements not found: .*scp_statements\.csv"):
        PTBXLReader(root)
    with pytest.raises(DataError, match=r"PTB-XL database not found: .*ptbxl_database\.csv"):
        PTBXLReader(tmp_path)


def test_csv_without_needed_column(tmp_path, sample_root):
    root = _copy_tables(sample_root, tmp_path / "p")
    db = pd.read_csv(root / "ptbxl_database.csv")
    db.drop(columns=["scp_codes"]).to_csv(root / "ptbxl_database.csv", index=False)
    with pytest.raises(DataError, match=r"ptbxl_database\.csv lacks the column\(s\) \['scp_codes"):
        PTBXLReader(root)


def test_unknown_and_malformed_scp_codes(tmp_path, sample_root):
    root = _copy_tables(sample_root, tmp_path / "p")
    db = pd.read_csv(root / "ptbxl_database.csv")
    first = db.ecg_id.iloc[0]
    db.loc[0, "scp_codes"] = "{'NORM': 100.0, 'XYZ': 0.0}"
    db.to_csv(root / "ptbxl_database.csv", index=False)
    with pytest.raises(DataError, match=rf"ecg_id {first}: unknown SCP code 'XYZ'"):
        PTBXLReader(root).records()
    db.loc[0, "scp_codes"] = "{'NORM': 100.0"
    db.to_csv(root / "ptbxl_database.csv", index=False)
    with pytest.raises(DataError, match=rf"ecg_id {first}: unreadable scp_codes"):
        PTBXLReader(root).records()


# ---- the larger real data (skips without ../shared) ------------------------------------


@pytest.fixture(scope="module")
def shared_reader(shared_data) -> PTBXLReader:
    return PTBXLReader(shared_data / "ptb-xl")


def test_shared_present_records_and_counts(shared_reader, shared_data):
    root = shared_data / "ptb-xl"
    recs = shared_reader.records()
    db = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    assert len(recs) == len(db)
    present = shared_reader.present(recs)
    on_disk = db[[(root / f"{f}.hea").is_file() and (root / f"{f}.dat").is_file()
                  for f in db.filename_lr]]  # fmt: skip
    assert [int(r.record_id) for r in present] == sorted(on_disk.index)
    sup = expected_superclasses(root).loc[on_disk.index]
    expected = Counter(s[0] for s in sup if len(s) == 1)
    got = Counter(single_label(r) for r in present if single_label(r))
    assert got == expected
    # the figures stated in the issue for this data (ids 1-999)
    assert len(present) == 999 and sum(got.values()) == 782
    assert got == {"NORM": 517, "STTC": 108, "CD": 74, "MI": 67, "HYP": 16}
    msg = shared_reader.missing_message(shared_reader.missing(recs), len(recs))
    assert f"{len(db) - 999} of {len(db)} listed records have no signal files" in msg


def test_shared_500hz(shared_data):
    reader = PTBXLReader(shared_data / "ptb-xl", fs=500)
    present = reader.present()
    assert len(present) == 500
    sig = reader.read_signal(present[0])
    assert sig.shape == (12, 5000)
