"""The reader factory and the shared presence checks (etp.data.readers)."""

from __future__ import annotations

import pytest

from etp.data.cpsc2018 import CPSC2018Reader
from etp.data.manifest import ManifestReader
from etp.data.ptbxl import PTBXLReader
from etp.data.readers import DATASETS, open_reader, single_label
from etp.data.records import RecordInfo
from etp.errors import ConfigError, DataError


def test_open_each_dataset(sample_dir, tmp_path):
    assert isinstance(open_reader("ptbxl", sample_dir / "ptb-xl"), PTBXLReader)
    assert isinstance(open_reader("PTB-XL", str(sample_dir / "ptb-xl")), PTBXLReader)
    cpsc = open_reader("cpsc2018", sample_dir / "cpsc2018", split_seed=2)
    assert isinstance(cpsc, CPSC2018Reader) and cpsc.split_seed == 2
    (tmp_path / "manifest.csv").write_text("path,report\nx,y\n")
    assert isinstance(open_reader("manifest", tmp_path), ManifestReader)
    assert DATASETS == ("ptbxl", "cpsc2018", "manifest")


def test_options_reach_the_reader(sample_dir):
    reader = open_reader("ptbxl", sample_dir / "ptb-xl", fs=500, test_folds=[10], val_folds=[])
    assert reader.fs == 500 and 9 not in reader.fold_split


def test_unknown_dataset_and_option(sample_dir):
    with pytest.raises(ConfigError, match=r"unknown dataset 'mimic'; choose one of"):
        open_reader("mimic", sample_dir)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['seed'\] for dataset 'ptbxl'"):
        open_reader("ptbxl", sample_dir / "ptb-xl", seed=1)


def test_missing_root_and_csv(tmp_path):
    with pytest.raises(DataError, match="PTB-XL root not found"):
        open_reader("ptbxl", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"PTB-XL database not found: .*ptbxl_database\.csv"):
        open_reader("ptbxl", tmp_path)
    with pytest.raises(DataError, match="CPSC2018 root not found"):
        open_reader("cpsc2018", tmp_path / "nowhere")
    with pytest.raises(DataError, match="CPSC2018: no records"):
        open_reader("cpsc2018", tmp_path).records()
    with pytest.raises(DataError, match="manifest not found"):
        open_reader("manifest", tmp_path / "m.csv")


def test_present_missing_and_message(sample_dir):
    reader = open_reader("ptbxl", sample_dir / "ptb-xl")
    recs = reader.records()
    stem = sample_dir / "ptb-xl" / "records100" / "99000" / "99999_lr"
    ghost = RecordInfo(record_id="99999", path=stem, fs=100.0)
    listed = [*recs, ghost]
    assert reader.missing(listed) == [ghost]
    assert reader.present(listed) == recs
    msg = reader.missing_message([ghost], len(listed))
    assert f"1 of {len(listed)} listed records" in msg and "99999_lr.hea" in msg
    assert "--only-present" in msg
    assert "custom hint" in reader.missing_message([ghost], 2, hint="custom hint")
    reader.check_present(recs)
    with pytest.raises(DataError, match="record 99999"):
        reader.check_present(listed)


def test_single_label():
    rec = RecordInfo(record_id="1", path=None, fs=100.0, labels=["MI"])  # type: ignore[arg-type]
    assert single_label(rec) == "MI"
    rec.labels = ["MI", "CD"]
    assert single_label(rec) is None
    rec.labels = []
    assert single_label(rec) is None
