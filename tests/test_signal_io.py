"""Reading signal files (etp.data.signal_io): real formats, and every broken-file case built in a
temporary folder from real sample files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from etp.data.records import LEADS
from etp.data.signal_io import read_signal_file, signal_files
from etp.errors import DataError

PTB_ID = "00016_lr"  # a PTB-XL record of the bundled sample


@pytest.fixture(scope="module")
def ptb_dir(sample_dir) -> Path:
    return sample_dir / "ptb-xl" / "records100" / "00000"


@pytest.fixture(scope="module")
def cinc_dir(sample_dir) -> Path:
    return sample_dir / "cpsc2018" / "wfdb"


@pytest.fixture(scope="module")
def orig_dir(sample_dir) -> Path:
    return sample_dir / "cpsc2018" / "original-mat"


def _copy(src_dir: Path, stem: str, dst: Path, exts=(".hea", ".dat")) -> Path:
    for ext in exts:
        shutil.copyfile(src_dir / (stem + ext), dst / (stem + ext))
        (dst / (stem + ext)).chmod(0o644)
    return dst / stem


def _edit_header(stem: Path, fn) -> None:
    hea = stem.with_name(stem.name + ".hea")
    hea.write_text(fn(hea.read_text()))


# ---- real formats -------------------------------------------------------------------------


def test_ptbxl_wfdb_matches_wfdb(ptb_dir):
    sig, fs = read_signal_file(ptb_dir / PTB_ID)
    assert fs == 100.0 and sig.shape == (12, 1000) and sig.dtype == np.float32
    ref = wfdb.rdrecord(str(ptb_dir / PTB_ID)).p_signal.T  # PTB-XL stores leads in LEADS order
    np.testing.assert_allclose(sig, ref, atol=1e-6)
    for variant in (f"{PTB_ID}.hea", f"{PTB_ID}.dat"):
        np.testing.assert_array_equal(read_signal_file(ptb_dir / variant)[0], sig)


def test_cinc_mat_matches_val(cinc_dir):
    val = scipy.io.loadmat(cinc_dir / "A0002.mat")["val"]
    for variant in ("A0002", "A0002.hea", "A0002.mat"):
        sig, fs = read_signal_file(cinc_dir / variant)
        assert fs == 500.0 and sig.shape == val.shape == (12, 5000)
        np.testing.assert_allclose(sig, val / 1000.0, atol=1e-6)  # gain 1000/mV


def test_original_cpsc_mat(orig_dir):
    data = scipy.io.loadmat(orig_dir / "A1980.mat")["ECG"]["data"][0, 0]
    sig, fs = read_signal_file(orig_dir / "A1980.mat")
    assert fs == 500.0 and sig.shape == data.shape and data.shape[0] == 12
    np.testing.assert_allclose(sig, data, rtol=1e-6)
    assert read_signal_file(orig_dir / "A1980", fs=250)[1] == 250.0  # stem works, fs overrides


def test_npy_both_orientations(tmp_path, cinc_dir):
    sig, _ = read_signal_file(cinc_dir / "A0002")
    np.save(tmp_path / "a.npy", sig)
    np.save(tmp_path / "b.npy", sig.T.astype(np.float64))
    for name in ("a.npy", "b.npy", "a"):
        out, fs = read_signal_file(tmp_path / name, fs=500)
        assert fs == 500.0 and out.dtype == np.float32
        np.testing.assert_array_equal(out, sig)


def test_leads_reordered_to_canonical(tmp_path, cinc_dir):
    sig, _ = read_signal_file(cinc_dir / "A0002")
    perm = [11, 3, 0, 7, 5, 1, 10, 2, 9, 4, 6, 8]
    names = [LEADS[i].lower() for i in perm]  # "avr", "v6", ... in a shuffled order
    wfdb.wrsamp("shuf", fs=500, units=["mV"] * 12, sig_name=names, p_signal=sig[perm].T,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=str(tmp_path))  # fmt: skip
    out, _ = read_signal_file(tmp_path / "shuf")
    np.testing.assert_allclose(out, sig, atol=1e-6)


def test_microvolt_units_are_converted(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    _edit_header(stem, lambda t: t.replace("/mV", "/uV"))
    np.testing.assert_allclose(
        read_signal_file(stem)[0], read_signal_file(ptb_dir / PTB_ID)[0] / 1000, atol=1e-9
    )


def test_signal_files(ptb_dir, cinc_dir, orig_dir, tmp_path):
    assert [p.name for p in signal_files(ptb_dir / PTB_ID)] == [f"{PTB_ID}.hea", f"{PTB_ID}.dat"]
    assert [p.name for p in signal_files(cinc_dir / "A0002.mat")] == ["A0002.hea", "A0002.mat"]
    assert signal_files(orig_dir / "A1980.mat") == [orig_dir / "A1980.mat"]
    assert signal_files(tmp_path / "nothing") == [tmp_path / "nothing.hea"]
    np.save(tmp_path / "arr.npy", np.zeros((12, 10), np.float32))
    assert signal_files(tmp_path / "arr") == [tmp_path / "arr.npy"]
    assert signal_files(orig_dir / "A1980") == [orig_dir / "A1980.mat"]


# ---- bad input: each names the file (and record) and says what is wrong ----------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"record R1 \(.*nope\).*not found"):
        read_signal_file(tmp_path / "nope", record_id="R1")
    with pytest.raises(DataError, match="not found"):
        read_signal_file(tmp_path / "nope.npy", fs=100)
    with pytest.raises(DataError, match="not found"):
        read_signal_file(tmp_path / "nope.mat")


def test_missing_data_file(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path, exts=(".hea",))
    with pytest.raises(DataError, match=rf"data file not found: .*{PTB_ID}\.dat"):
        read_signal_file(stem)


def test_truncated_dat(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    dat = tmp_path / f"{PTB_ID}.dat"
    dat.write_bytes(dat.read_bytes()[:10000])
    with pytest.raises(DataError, match=rf"truncated signal file .*{PTB_ID}\.dat: 10000 bytes"):
        read_signal_file(stem, record_id="16")


def test_truncated_cinc_mat(tmp_path, cinc_dir):
    stem = _copy(cinc_dir, "A0002", tmp_path, exts=(".hea", ".mat"))
    mat = tmp_path / "A0002.mat"
    mat.write_bytes(mat.read_bytes()[:50000])
    with pytest.raises(DataError, match=r"truncated signal file .*A0002\.mat"):
        read_signal_file(stem)


def test_truncated_original_mat(tmp_path, orig_dir):
    mat = tmp_path / "A1980.mat"
    mat.write_bytes((orig_dir / "A1980.mat").read_bytes()[:20000])
    with pytest.raises(DataError, match=r"unreadable or truncated \.mat file .*A1980\.mat"):
        read_signal_file(mat)


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((12, 1000), np.float32))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"unreadable or truncated \.npy file .*x\.npy"):
        read_signal_file(tmp_path / "x.npy", fs=100)


def test_header_sig_len_disagrees_with_data(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    _edit_header(stem, lambda t: t.replace(" 12 100 1000", " 12 100 900", 1))
    with pytest.raises(DataError, match=r"header/data mismatch: .* has 24000 bytes .*21600"):
        read_signal_file(stem)
    _edit_header(stem, lambda t: t.replace(" 12 100 900", " 12 100 1100", 1))
    with pytest.raises(DataError, match="truncated"):
        read_signal_file(stem)


def test_corrupted_data_fails_checksum(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    dat = tmp_path / f"{PTB_ID}.dat"
    raw = bytearray(dat.read_bytes())
    raw[1000:1010] = bytes(10)  # same size, different samples
    dat.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"header/data mismatch: lead .* fails the checksum"):
        read_signal_file(stem)


def test_eleven_leads(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)

    def drop_v6(text: str) -> str:
        lines = text.splitlines()
        lines[0] = lines[0].replace(" 12 ", " 11 ", 1)
        return "\n".join(line for line in lines if not line.endswith(" V6")) + "\n"

    _edit_header(stem, drop_v6)
    with pytest.raises(DataError, match=rf"wrong number of leads: .*{PTB_ID}\.hea lists 11"):
        read_signal_file(stem)


def test_duplicate_lead_name(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    _edit_header(stem, lambda t: t.replace(" V6\n", " V5\n"))
    with pytest.raises(DataError, match=rf"{PTB_ID}\.hea: lead V5 appears twice"):
        read_signal_file(stem)


def test_wrong_leads_in_arrays(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((11, 500), np.float32))
    with pytest.raises(DataError, match=r"wrong number of leads: .*x\.npy holds shape \(11, 500\)"):
        read_signal_file(tmp_path / "x.npy", fs=100)
    np.save(tmp_path / "y.npy", np.zeros((12, 5, 5), np.float32))
    with pytest.raises(DataError, match="expected"):
        read_signal_file(tmp_path / "y.npy", fs=100)
    scipy.io.savemat(tmp_path / "z.mat", {"ECG": {"data": np.zeros((8, 500))}})
    with pytest.raises(DataError, match=r"wrong number of leads: .*z\.mat"):
        read_signal_file(tmp_path / "z.mat")


def test_invalid_samples_in_wfdb(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    dat = tmp_path / f"{PTB_ID}.dat"
    d = np.fromfile(dat, dtype="<i2").reshape(-1, 12)
    d[100:103, 4] = -32768  # WFDB's invalid-sample marker for format 16 -> NaN
    d.tofile(dat)
    with pytest.raises(DataError, match=r"3 NaN/inf sample\(s\) .*in lead\(s\) \['aVL'\]"):
        read_signal_file(stem, record_id="16")


def test_nan_and_inf_in_npy_and_mat(tmp_path, orig_dir):
    arr = np.ones((12, 500), np.float32)
    arr[2, 7] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(DataError, match=r"nan\.npy: 1 NaN/inf sample\(s\) in lead\(s\) \['III'\]"):
        read_signal_file(tmp_path / "nan.npy", fs=100)
    arr[2, 7] = np.inf
    np.save(tmp_path / "inf.npy", arr)
    with pytest.raises(DataError, match="NaN/inf"):
        read_signal_file(tmp_path / "inf.npy", fs=100)
    mat = scipy.io.loadmat(orig_dir / "A1980.mat")
    mat["ECG"]["data"][0, 0][11, 10:20] = np.nan
    scipy.io.savemat(tmp_path / "A1980.mat", {"ECG": mat["ECG"]})
    with pytest.raises(DataError, match=r"A1980\.mat: 10 NaN/inf sample\(s\) in lead\(s\) \['V6"):
        read_signal_file(tmp_path / "A1980.mat")


def test_unreadable_header(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    (tmp_path / f"{PTB_ID}.hea").write_text("this is not a header\n")
    with pytest.raises(DataError, match=rf"WFDB header .*{PTB_ID}\.hea: malformed record line"):
        read_signal_file(stem)


def test_unknown_unit(tmp_path, ptb_dir):
    stem = _copy(ptb_dir, PTB_ID, tmp_path)
    _edit_header(stem, lambda t: t.replace("/mV", "/furlong"))
    with pytest.raises(DataError, match="unknown physical unit 'furlong'"):
        read_signal_file(stem)


def test_fs_mismatch_and_npy_without_fs(tmp_path, ptb_dir):
    with pytest.raises(DataError, match="sampling rate of 500 Hz was given .* says 100 Hz"):
        read_signal_file(ptb_dir / PTB_ID, fs=500)
    np.save(tmp_path / "x.npy", np.zeros((12, 100), np.float32))
    with pytest.raises(DataError, match=r"x\.npy is a \.npy array, which carries no sampling rate"):
        read_signal_file(tmp_path / "x.npy")


def test_cinc_mat_without_header_and_foreign_mat(tmp_path, cinc_dir):
    shutil.copyfile(cinc_dir / "A0002.mat", tmp_path / "A0002.mat")
    with pytest.raises(DataError, match=r"WFDB-form `val` array but its header .*A0002\.hea"):
        read_signal_file(tmp_path / "A0002.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"foo": np.zeros(3)})
    with pytest.raises(DataError, match=r"other\.mat has no struct `ECG` \(variables: \['foo'\]\)"):
        read_signal_file(tmp_path / "other.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"unreadable or truncated \.mat file .*junk\.mat"):
        read_signal_file(tmp_path / "junk.mat")
