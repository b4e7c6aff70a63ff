"""Bad input never gives a silently wrong result or a misleading message (issue 20, first part).

Each class is fed real sample records altered on purpose: header fields, signal scaling, labels,
manifests without splits or labels, options outside ECG practice, and the messages for a
directory given as an ECG, a non-UTF-8 CSV, a bad command-line override. Where a cache already
exists, the failed run must leave it byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hardening_helpers import PTBXL, edit_header, make_manifest, prepare, pretrain, snapshot

from etp.data.cache import load_prepared
from etp.data.manifest import ManifestReader
from etp.data.signal import PreprocessConfig
from etp.data.signal_io import ABSURD_MV, FLAT_MV, check_amplitude, read_signal_file
from etp.errors import DataError

STEM = "records100/00000/00016_lr"


@pytest.fixture()
def record(tmp_path: Path) -> Path:
    """A private copy of one real PTB-XL record (stem)."""
    import shutil

    for ext in (".hea", ".dat"):
        shutil.copy(PTBXL / (STEM + ext), tmp_path / ("00016_lr" + ext))
    return tmp_path / "00016_lr"


def _first_signal_line(edit):
    def apply(text: str) -> str:
        lines = text.splitlines()
        lines[1] = edit(lines[1])
        return "\n".join(lines) + "\n"

    return apply


def _record_line(edit):
    def apply(text: str) -> str:
        lines = text.splitlines()
        lines[0] = edit(lines[0].split())
        return "\n".join(lines) + "\n"

    return apply


HEADER_FAULTS = {
    # name: (edit of the header text, expected message)
    "gain zero": (_first_signal_line(lambda s: s.replace("1000.0(0)", "0(0)")), r"ADC gain '0'"),
    "gain negative": (_first_signal_line(lambda s: s.replace("1000.0(0)", "-1000(0)")),
                      r"ADC gain '-1000'"),
    "gain absurd": (_first_signal_line(lambda s: s.replace("1000.0(0)", "1e30(0)")),
                    r"ADC gain '1e30'"),
    "gain tiny": (_first_signal_line(lambda s: s.replace("1000.0(0)", "1e-9(0)")),
                  r"ADC gain '1e-9'"),
    "rate negative": (_record_line(lambda f: " ".join([f[0], f[1], "-500", f[3]])),
                      r"sampling rate field '-500'"),
    "rate text": (_record_line(lambda f: " ".join([f[0], f[1], "fast", f[3]])),
                  r"sampling rate field 'fast'"),
    "rate zero": (_record_line(lambda f: " ".join([f[0], f[1], "0", f[3]])),
                  r"sampling rate field '0'"),
    "sample count": (_record_line(lambda f: " ".join([f[0], f[1], f[2], "-3"])),
                     r"sample count field '-3'"),
    "lead count": (_record_line(lambda f: " ".join([f[0], "14", f[2], f[3]])),
                   r"announces 14 signals but 12 signal line\(s\) follow"),
    "baseline": (_first_signal_line(lambda s: s.replace("(0)", "(70000)")),
                 r"baseline '70000' is not an integer that format 16 can hold"),
    "units": (_first_signal_line(lambda s: s.replace("/mV", "/mmHg")),
              r"unknown physical unit 'mmHg'"),
    "format": (_first_signal_line(lambda s: s.replace(".dat 16 ", ".dat 17 ")),
               r"storage format '17'"),
    "empty": (lambda t: "", r"is empty \(no record line\)"),
    "malformed": (lambda t: "00016_lr\n", r"malformed record line"),
}  # fmt: skip


@pytest.mark.parametrize("fault", sorted(HEADER_FAULTS))
def test_nonsense_header_fields_are_errors_naming_file_and_field(record: Path, fault: str) -> None:
    edit, expected = HEADER_FAULTS[fault]
    read_signal_file(record)  # the real record reads
    edit_header(record, edit)
    with pytest.raises(DataError, match=rf"00016_lr\.hea.*{expected}"):
        read_signal_file(record)


def test_bad_header_in_a_rebuild_keeps_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_manifest(tmp_path, n=6)
    out = tmp_path / "cache"
    assert prepare(manifest, out) == 0
    before = snapshot(out)
    edit_header(tmp_path / "ecgs" / "00016_lr", HEADER_FAULTS["gain zero"][0])
    capsys.readouterr()
    assert prepare(manifest, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "00016_lr.hea: signal I: ADC gain '0'" in err
    assert snapshot(out) == before


# ---- signals that cannot be diagnostic --------------------------------------------------------


def _npy_manifest(folder: Path, scale: np.ndarray | float) -> Path:
    """A manifest of 4 real records as .npy arrays, the first one multiplied by ``scale``
    (a number, or one factor per lead)."""
    folder.mkdir(parents=True, exist_ok=True)
    stems = sorted((PTBXL / "records100" / "00000").glob("*.hea"))[:4]
    rows = ["path,report,labels,fs,split"]
    for i, hea in enumerate(stems):
        sig, _ = read_signal_file(hea.with_suffix(""))
        if i == 0:
            sig = sig * np.asarray(scale, dtype=np.float64).reshape(-1, 1)
        np.save(folder / f"r{i}.npy", sig)
        rows.append(f"r{i}.npy,sinus rhythm,NORM,100,{('train', 'val', 'test', 'train')[i]}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


@pytest.mark.parametrize(
    ("scale", "expected"),
    [(1e20, "absurd amplitude in lead\\(s\\) I"), (1e3, "absurd amplitude"),
     (0.0, "every lead is flat"), (1e-6, "every lead is flat")],
)  # fmt: skip
def test_absurd_or_flat_signals_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scale: float, expected: str
) -> None:
    manifest = _npy_manifest(tmp_path / "m", scale)
    assert prepare(manifest, tmp_path / "cache") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "record r0 (" in err and expected.replace("\\", "") in err.replace("(s)", "(s)")
    assert not (tmp_path / "cache").exists()
    # inference reads files through the same check (eval.features.read_ecg_file)
    from etp.eval.features import read_ecg_file

    with pytest.raises(DataError, match=expected):
        read_ecg_file(tmp_path / "m" / "r0.npy", PreprocessConfig(), fs=100)


def test_a_flat_lead_is_a_warning_that_reaches_the_json_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scale = np.ones(12)
    scale[6] = 0.0  # V1 disconnected
    manifest = _npy_manifest(tmp_path / "m", scale)
    assert prepare(manifest, tmp_path / "cache", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [w["record_id"] for w in summary["warnings"]] == ["r0"]
    assert "flat lead(s) ['V1']" in summary["warnings"][0]["warning"]
    info = json.loads((tmp_path / "cache" / "info.json").read_text())
    assert info["counts"]["warnings"] == summary["warnings"]


def test_amplitude_thresholds_pass_every_real_sample_record() -> None:
    """The documented thresholds leave all bundled real records alone (no false alarms)."""
    for hea in sorted((PTBXL / "records100" / "00000").glob("*.hea"))[:60]:
        sig, _ = read_signal_file(hea.with_suffix(""))
        assert check_amplitude(sig, str(hea)) == []
    assert FLAT_MV < 0.05 < 15 < ABSURD_MV


# ---- labels ------------------------------------------------------------------------------------


def test_comma_separated_labels_are_separate_classes(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=4, labels=["AF,NORM", "NORM", "AF; STTC", "STTC"])
    reader = ManifestReader(manifest)
    assert reader.classes == ("AF", "NORM", "STTC")
    assert [r.labels for r in reader.records()][0] == ["AF", "NORM"]


@pytest.mark.parametrize("bad", ["label", "Labels ", "LABELS", "patient"])
def test_misnamed_column_is_an_error(tmp_path: Path, bad: str) -> None:
    rename = {"labels": bad} if "abel" in bad.lower() else {"split": bad}
    manifest = make_manifest(tmp_path, n=4, rename=rename)
    with pytest.raises(DataError, match=rf"column '{bad.strip()}' looks like `\w+`"):
        ManifestReader(manifest)


def test_manifest_without_labels_prepares_reloads_rebuilds_and_pretrains(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=8, columns=("split",))
    out = tmp_path / "cache"
    assert prepare(manifest, out) == 0
    data = load_prepared(out)
    assert data.classes == () and len(data) == 8
    assert (data.label_index() == -1).all() and data.label_matrix().shape == (8, 0)
    assert prepare(manifest, out) == 0  # reused
    assert prepare(manifest, out, "--force") == 0  # rebuilt
    assert pretrain(out, tmp_path / "run") == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


# ---- manifests without a split column ----------------------------------------------------------


def test_manifest_without_split_gets_a_seeded_stratified_patient_split(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=40, columns=("labels", "patient_id"))
    a = ManifestReader(manifest).records()
    b = ManifestReader(manifest).records()
    c = ManifestReader(manifest, split_seed=1).records()
    assert [r.split for r in a] == [r.split for r in b]
    assert [r.split for r in a] != [r.split for r in c]
    assert {r.split for r in a} == {"train", "val", "test"}
    by_patient: dict[str, set[str]] = {}
    for r in a:
        by_patient.setdefault(str(r.patient_id), set()).add(str(r.split))
    assert all(len(s) == 1 for s in by_patient.values())
    n_test = sum(r.split == "test" for r in a)
    assert 4 <= n_test <= 12  # about 20 % of 40
    # both classes reach the training split
    assert {r.labels[0] for r in a if r.split == "train"} == {"NORM", "ABN"}


def test_manifest_split_options_reach_the_reader_from_the_cli(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=20, columns=("labels",))
    assert prepare(manifest, tmp_path / "c", "--split-fractions", "0.5,0.0,0.5") == 0
    splits = load_prepared(tmp_path / "c").meta["split"].tolist()
    assert set(splits) == {"train", "test"}


# ---- options outside ECG practice ------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "expected"),
    [(("--fs", "100000"), "--fs): 100000 Hz is outside ECG practice"),
     (("--length", "100000"), "--length): 100000 s is longer than")],
)  # fmt: skip
def test_unbounded_sizes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: tuple[str, str], expected: str
) -> None:
    manifest = make_manifest(tmp_path, n=4)
    assert prepare(manifest, tmp_path / "c", *option) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ---- misleading messages ---------------------------------------------------------------------


def test_directory_given_as_ecg_file(tmp_path: Path) -> None:
    (tmp_path / "rec").mkdir()
    with pytest.raises(DataError, match="is a directory, not an ECG signal file"):
        read_signal_file(tmp_path / "rec")


def test_non_utf8_csv_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_manifest(tmp_path, n=4)
    lines = manifest.read_bytes().splitlines()
    lines[3] = lines[3].replace(b",", b" \xfcber,", 1)
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    assert prepare(manifest, tmp_path / "c") == 2
    assert "line 4 (data row 3) is not UTF-8 (byte 0xfc" in capsys.readouterr().err


def test_override_error_blames_the_override_not_the_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from etp.cli import main

    cfg = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    assert main(["pretrain", "--config", str(cfg), "train.epochs=many", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "command-line override train.epochs=many: train.epochs: expected an integer" in err
    assert "quickstart.yaml" not in err


def test_pipe_in_a_label_keeps_the_markdown_table(tmp_path: Path) -> None:
    from etp.eval.report import markdown_table

    table = markdown_table(["class", "AUC"], [["AF|flutter", "0.9"]])
    assert table.splitlines()[2] == "| AF\\|flutter | 0.9 |"


def test_manifest_fs_outside_ecg_practice(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=2)
    text = manifest.read_text().replace("path,report,labels,split", "path,report,labels,split,fs")
    manifest.write_text("\n".join(ln + (",1e9" if i else "") for i, ln in
                                  enumerate(text.strip().splitlines())) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=r"row 2: `fs` must be a sampling rate between 1 and"):
        ManifestReader(manifest).records()
