"""Generic paired manifest (etp.data.manifest), built in a temporary folder around real sample
records of every supported form."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etp.data.manifest import ManifestReader
from etp.data.signal_io import read_signal_file
from etp.errors import DataError

PTB = "ptb-xl/records100/00000/00016_lr"


@pytest.fixture()
def manifest_dir(tmp_path, sample_dir) -> Path:
    """A folder with real ECGs in every form and a manifest.csv pairing them with reports."""
    ecgs = tmp_path / "ecgs"
    ecgs.mkdir()
    for ext in (".hea", ".dat"):
        shutil.copyfile(sample_dir / f"{PTB}{ext}", ecgs / f"00016_lr{ext}")
    for ext in (".hea", ".mat"):
        shutil.copyfile(sample_dir / "cpsc2018" / "wfdb" / f"A0043{ext}", ecgs / f"A0043{ext}")
    shutil.copyfile(sample_dir / "cpsc2018" / "original-mat" / "A1980.mat", ecgs / "A1980.mat")
    sig, _ = read_signal_file(ecgs / "A0043")
    np.save(ecgs / "own.npy", sig[:, :2500].T)  # (N, 12) orientation
    rows = [
        {"path": "ecgs/00016_lr", "report": "sinusrhythmus  normales ekg", "labels": "NORM",
         "fs": "", "split": "train", "patient_id": "p1", "site": "a"},
        {"path": "ecgs/A0043.hea", "report": "Atrial fibrillation. RBBB.", "labels": "AF; RBBB",
         "fs": "500", "split": "test", "patient_id": "", "site": "b"},
        {"path": "ecgs/A1980.mat", "report": "", "labels": "", "fs": "", "split": "",
         "patient_id": "p2", "site": ""},
        {"path": str(ecgs / "own.npy"), "report": "sinusrytm vÄnster el-axel", "labels": "NORM",
         "fs": "250", "split": "VAL", "patient_id": "p2", "site": ""},
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_records(manifest_dir):
    reader = ManifestReader(manifest_dir / "manifest.csv")
    assert reader.classes == ("AF", "NORM", "RBBB")
    recs = reader.records()
    assert [r.record_id for r in recs] == [
        "ecgs/00016_lr", "ecgs/A0043", "ecgs/A1980", str(manifest_dir / "ecgs" / "own")
    ]  # fmt: skip
    assert [r.fs for r in recs] == [100.0, 500.0, 500.0, 250.0]
    assert [r.labels for r in recs] == [["NORM"], ["AF", "RBBB"], [], ["NORM"]]
    assert [r.split for r in recs] == ["train", "test", None, "val"]
    assert [r.patient_id for r in recs] == ["p1", None, "p2", "p2"]
    assert recs[0].report == "sinusrhythmus  normales ekg"  # kept as written
    assert [r.extra["language"] for r in recs] == ["de", "en", "unknown", "sv"]
    assert recs[1].extra["site"] == "b"
    assert reader.missing(recs) == []
    shapes = [reader.read_signal(r).shape for r in recs]
    assert shapes == [(12, 1000), (12, 7500), (12, 5000), (12, 2500)]


def test_folder_and_fixed_classes(manifest_dir):
    reader = ManifestReader(manifest_dir, classes=["NORM", "AF", "RBBB", "HYP"])
    assert reader.records()[1].labels == ["AF", "RBBB"]
    with pytest.raises(DataError, match=r"row 3: unknown label code\(s\) \['AF'\]"):
        ManifestReader(manifest_dir, classes=["NORM", "RBBB"])


def test_record_id_column_and_reader_fs(manifest_dir):
    df = pd.read_csv(manifest_dir / "manifest.csv", dtype=str, keep_default_na=False)
    df["record_id"] = ["a", "b", "c", "d"]
    df.loc[3, "fs"] = ""
    df.to_csv(manifest_dir / "m2.csv", index=False)
    recs = ManifestReader(manifest_dir / "m2.csv", fs=250).records()
    assert [r.record_id for r in recs] == ["a", "b", "c", "d"] and recs[3].fs == 250.0


def _write(folder: Path, text: str) -> Path:
    p = folder / "m.csv"
    p.write_text(text)
    return p


def test_missing_csv_and_columns(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        ManifestReader(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="has no manifest.csv"):
        ManifestReader(tmp_path)
    with pytest.raises(DataError, match=r"m\.csv lacks the column\(s\) \['report'\]"):
        ManifestReader(_write(tmp_path, "path,text\na,b\n"))
    with pytest.raises(DataError, match="has no rows"):
        ManifestReader(_write(tmp_path, "path,report\n"))


def test_bad_rows(manifest_dir):
    base = "path,report,fs,split\n"
    with pytest.raises(DataError, match=r"row 2: empty `path`"):
        ManifestReader(_write(manifest_dir, base + ",x,,\n")).records()
    with pytest.raises(DataError, match=r"row 2: `fs` must be a sampling rate between 1 and"):
        ManifestReader(_write(manifest_dir, base + "ecgs/00016_lr,x,-5,\n")).records()
    with pytest.raises(DataError, match=r"row 2: `split` is 'holdout'"):
        ManifestReader(_write(manifest_dir, base + "ecgs/00016_lr,x,,holdout\n")).records()
    with pytest.raises(DataError, match=r"row 2: .*own\.npy is a \.npy array without a sampling"):
        ManifestReader(_write(manifest_dir, base + "ecgs/own.npy,x,,\n")).records()
    with pytest.raises(DataError, match=r"record_id 'ecgs/00016_lr' appears twice \(rows 2 and 3"):
        ManifestReader(
            _write(manifest_dir, base + "ecgs/00016_lr,x,,\necgs/00016_lr.hea,y,,\n")
        ).records()


def test_missing_and_mismatched_files(manifest_dir):
    reader = ManifestReader(
        _write(manifest_dir, "path,report,fs\necgs/gone,x,\necgs/00016_lr,y,500\n")
    )
    gone, ptb = reader.records()
    assert reader.missing() == [gone]
    assert "1 of 2 listed records have no signal files" in reader.missing_message([gone], 2)
    with pytest.raises(DataError, match=r"record ecgs/gone .*not found"):
        reader.read_signal(gone)
    with pytest.raises(DataError, match=r"record ecgs/00016_lr .*500 Hz was given .* says 100 Hz"):
        reader.read_signal(ptb)


def test_shipped_example_manifest_gets_a_patient_split() -> None:
    from conftest import SAMPLE_DIR

    reader = ManifestReader(SAMPLE_DIR / "manifest-example.csv")
    recs = reader.records()
    assert len(recs) == 24 and reader.auto_split and reader.missing() == []
    assert {r.split for r in recs} == {"train", "val", "test"}
    assert len({r.split for r in recs if r.patient_id == "8727"}) == 1
    assert set(reader.classes) == {"NORM", "MI", "STTC", "CD", "HYP"}
