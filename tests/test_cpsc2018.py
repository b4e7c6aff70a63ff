"""CPSC2018 reader (etp.data.cpsc2018): both file forms, label codes, splits; the bundled
sample and, when present, every record of ../shared/data/cpsc2018."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etp.data.cpsc2018 import (
    ABBREVIATION_TO_CLASS,
    CLASSES,
    SNOMED_TO_CLASS,
    CPSC2018Reader,
    parse_dx,
    stratified_split,
)
from etp.errors import ConfigError, DataError

NAMES = {1: "Normal", 2: "AF", 3: "I-AVB", 4: "LBBB", 5: "RBBB", 6: "PAC", 7: "PVC", 8: "STD", 9: "STE"}  # fmt: skip


def reference_labels(csv: Path) -> dict[str, set[str]]:
    """Record -> set of class names, straight from REFERENCE.csv with pandas."""
    ref = pd.read_csv(csv)
    cols = ["First_label", "Second_label", "Third_label"]
    return {
        row.Recording: {NAMES[int(v)] for v in row[cols].dropna()} for _, row in ref.iterrows()
    }


@pytest.fixture(scope="module")
def sample_root(sample_dir) -> Path:
    return sample_dir / "cpsc2018"


@pytest.fixture(scope="module")
def sample_reader(sample_root) -> CPSC2018Reader:
    return CPSC2018Reader(sample_root)


def test_sample_records_and_labels(sample_reader, sample_root):
    recs = sample_reader.records()
    ref = reference_labels(sample_root / "labels" / "REFERENCE.csv")
    assert [r.record_id for r in recs] == sorted(ref)
    assert sample_reader.missing(recs) == []
    for r in recs:
        assert set(r.labels) == ref[r.record_id]
        assert r.labels == [c for c in CLASSES if c in r.labels]
        assert r.patient_id is None and r.report == "" and r.fs == 500.0
    by_id = {r.record_id: r for r in recs}
    assert by_id["A5432"].extra["dx"] == "284470004" and by_id["A5432"].labels == ["PAC"]
    assert by_id["A0043"].extra["dx"] == "AF,RBBB" and by_id["A0043"].labels == ["AF", "RBBB"]
    assert by_id["A1980"].extra["form"] == "original" and by_id["A0002"].extra["form"] == "wfdb"
    singles = Counter(r.labels[0] for r in recs if len(r.labels) == 1)
    assert set(singles) == set(CLASSES) and min(singles.values()) >= 2


def test_read_both_forms(sample_reader):
    for r in sample_reader.records():
        sig = sample_reader.read_signal(r)
        assert sig.shape[0] == 12 and sig.shape[1] >= 5000 and sig.dtype == np.float32


def test_stratified_split_is_seeded(sample_root):
    a = [r.split for r in CPSC2018Reader(sample_root).records()]
    b = [r.split for r in CPSC2018Reader(sample_root).records()]
    c = [r.split for r in CPSC2018Reader(sample_root, split_seed=1).records()]
    assert a == b and a != c
    assert Counter(a) == {"train": 15, "val": 2, "test": 5}


def test_stratified_split_proportions():
    rng = np.random.default_rng(0)
    strata = list(rng.choice(list(CLASSES), size=3000, p=np.full(9, 1 / 9)))
    splits = stratified_split(strata, (0.7, 0.1, 0.2), seed=3)
    assert splits == stratified_split(strata, (0.7, 0.1, 0.2), seed=3)
    counts = Counter(splits)
    assert counts == {"train": 2100, "val": 300, "test": 600}
    for cls in CLASSES:  # stratified: every class close to 70/10/20
        own = Counter(s for s, y in zip(splits, strata) if y == cls)
        n = sum(own.values())
        assert abs(own["test"] - 0.2 * n) <= 1 and abs(own["val"] - 0.1 * n) <= 1
    # small classes still reach the test split
    small = ["a"] * 5 + ["b"] * 5 + ["c"] * 40
    s = stratified_split(small)
    assert {"a", "b", "c"} <= {y for y, sp in zip(small, s) if sp == "test"}
    assert stratified_split(["a", "b", "a"], (0.5, 0.25, 0.25)) is not None
    assert stratified_split([]) == []


def test_bad_fractions(sample_root):
    for bad in [(0.7, 0.2, 0.2), (0.5, 0.5), (0.701, 0.099, 0.2), (1.2, -0.1, -0.1)]:
        with pytest.raises(ConfigError, match="split_fractions"):
            CPSC2018Reader(sample_root, split_fractions=bad)


def test_split_from_csv(sample_root):
    folder = sample_root / "labels" / "merl-split"
    reader = CPSC2018Reader(sample_root, split_csv_dir=folder)
    expected = {}
    for split in ("train", "val", "test"):
        for name in pd.read_csv(folder / f"icbeb_{split}.csv")["filename"]:
            expected[name] = split
    assert {r.record_id: r.split for r in reader.records()} == expected


def test_parse_dx():
    for code, cls in SNOMED_TO_CLASS.items():
        assert parse_dx(code, "x") == [cls]
    for cls in CLASSES:
        assert parse_dx(cls, "x") == [cls]
        assert parse_dx(cls.lower(), "x") == [cls]
    assert parse_dx("RBBB,AF", "x") == ["AF", "RBBB"]
    assert parse_dx("59118001,164889003", "x") == ["AF", "RBBB"]
    assert ABBREVIATION_TO_CLASS["IAVB"] == "I-AVB"
    # the nine classes, each with its main SNOMED-CT code
    main = {"426783006": "Normal", "164889003": "AF", "270492004": "I-AVB", "164909002": "LBBB",
            "59118001": "RBBB", "284470004": "PAC", "164884008": "PVC", "429622005": "STD",
            "164931005": "STE"}  # fmt: skip
    assert {k: SNOMED_TO_CLASS[k] for k in main} == main


# ---- bad input ------------------------------------------------------------------------


def _copy_sample(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _set_dx(root: Path, rid: str, dx: str) -> None:
    hea = root / "wfdb" / f"{rid}.hea"
    lines = [f"#Dx: {dx}" if ln.startswith("#Dx:") else ln for ln in hea.read_text().splitlines()]
    hea.write_text("\n".join(lines) + "\n")


def test_unknown_label_codes(tmp_path, sample_root):
    root = _copy_sample(sample_root, tmp_path / "c")
    _set_dx(root, "A5432", "164934002")  # T-wave abnormal: not a CPSC class
    with pytest.raises(DataError, match=r"record A5432 .*unknown SNOMED-CT code '164934002'"):
        CPSC2018Reader(root).records()
    _set_dx(root, "A5432", "PAC,XYZ")
    with pytest.raises(DataError, match=r"record A5432 .*unknown label code 'XYZ'"):
        CPSC2018Reader(root).records()


def test_header_disagrees_with_reference(tmp_path, sample_root):
    root = _copy_sample(sample_root, tmp_path / "c")
    _set_dx(root, "A0002", "AF")
    with pytest.raises(DataError, match=r"record A0002: labels disagree: .*\['AF'\].*\['Normal'\]"):
        CPSC2018Reader(root).records()


def test_reference_unknown_code(tmp_path, sample_root):
    root = _copy_sample(sample_root, tmp_path / "c")
    ref = root / "labels" / "REFERENCE.csv"
    ref.write_text(ref.read_text().replace("A1980,6,,", "A1980,12,,"))
    with pytest.raises(DataError, match=r"REFERENCE\.csv: record A1980: unknown label code '12'"):
        CPSC2018Reader(root).records()


def test_original_form_needs_reference(tmp_path, sample_root):
    root = _copy_sample(sample_root, tmp_path / "c")
    (root / "labels" / "REFERENCE.csv").unlink()
    with pytest.raises(DataError, match=r"record A1980: original-form file .*A1980\.mat has no"):
        CPSC2018Reader(root).records()
    shutil.rmtree(root / "original-mat")  # WFDB records alone label themselves via #Dx
    assert len(CPSC2018Reader(root).records()) == 20


def test_reference_without_needed_column(tmp_path, sample_root):
    root = _copy_sample(sample_root, tmp_path / "c")
    ref = root / "labels" / "REFERENCE.csv"
    ref.write_text(ref.read_text().replace("First_label", "Label1"))
    with pytest.raises(DataError, match=r"REFERENCE\.csv lacks the column\(s\) \['First_label'\]"):
        CPSC2018Reader(root).records()


def test_missing_root_and_bad_split_csv(tmp_path, sample_root):
    with pytest.raises(DataError, match="CPSC2018 root not found"):
        CPSC2018Reader(tmp_path / "absent")
    with pytest.raises(DataError, match="CPSC2018 split CSV root not found"):
        CPSC2018Reader(sample_root, split_csv_dir=tmp_path / "absent")
    folder = tmp_path / "split"
    shutil.copytree(sample_root / "labels" / "merl-split", folder)
    (folder / "icbeb_test.csv").unlink()
    with pytest.raises(DataError, match=r"expected one CSV whose name contains 'test'"):
        CPSC2018Reader(sample_root, split_csv_dir=folder).records()
    pd.DataFrame({"name": ["A0002"]}).to_csv(folder / "icbeb_test.csv", index=False)
    with pytest.raises(DataError, match=r"icbeb_test\.csv lacks a record column"):
        CPSC2018Reader(sample_root, split_csv_dir=folder).records()
    pd.DataFrame({"filename": ["A0002"]}).to_csv(folder / "icbeb_test.csv", index=False)
    with pytest.raises(DataError, match="record A0002 is in both the"):
        CPSC2018Reader(sample_root, split_csv_dir=folder).records()


def test_listed_but_absent_records(tmp_path, sample_root):
    root = _copy_sample(sample_root, tmp_path / "c")
    for ext in (".hea", ".mat"):
        (root / "wfdb" / f"A0002{ext}").unlink()
    reader = CPSC2018Reader(root)
    recs = reader.records()
    gone = reader.missing(recs)
    assert [r.record_id for r in gone] == ["A0002"] and gone[0].split is None
    assert gone[0].labels == ["Normal"] and gone[0].path == root / "wfdb" / "A0002"
    assert "1 of 22 listed records have no signal files" in reader.missing_message(gone, 22)
    with pytest.raises(DataError, match=r"record A0002 .*not found"):
        reader.read_signal(gone[0])


# ---- the larger real data (skips without ../shared) ------------------------------------


def test_shared_labels_agree_with_reference(shared_data):
    root = shared_data / "cpsc2018"
    reader = CPSC2018Reader(root)
    recs = reader.records()
    ref = reference_labels(root / "labels" / "REFERENCE.csv")
    assert len(recs) == len(ref) == 6877
    present = reader.present(recs)
    on_disk = {p.stem for p in (root / "wfdb").glob("*.hea")} | {
        p.stem for p in (root / "original-mat").glob("*.mat")
    }
    assert {r.record_id for r in present} == on_disk
    for r in present:  # labels from '#Dx:' (abbreviations or SNOMED) and from REFERENCE.csv
        assert set(r.labels) == ref[r.record_id], r.record_id
        assert reader.read_signal(r).shape[0] == 12  # both forms load
    forms = Counter(r.extra["form"] for r in present)
    assert forms == {"wfdb": 61, "original": 10}
    assert {r.split for r in present} == {"train", "val", "test"}
    assert all(r.split is None for r in recs if r not in present)


def test_shared_merl_split(shared_data):
    root = shared_data / "cpsc2018"
    reader = CPSC2018Reader(root, split_csv_dir=root / "labels" / "merl-split")
    counts = Counter(r.split for r in reader.records())
    expected = {s: len(pd.read_csv(root / "labels" / "merl-split" / f"icbeb_{s}.csv"))
                for s in ("train", "val", "test")}  # fmt: skip
    assert counts == expected == {"train": 4950, "val": 551, "test": 1376}
