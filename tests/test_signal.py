"""Tests of etp.data.signal: resampling, band-pass, crop/pad, normalisation, bad input."""

from __future__ import annotations

import dataclasses


import numpy as np
import pytest
import wfdb

from etp.data.signal import PreprocessConfig, describe, preprocess
from etp.errors import ConfigError, DataError

from conftest import SAMPLE_DIR, SHARED_DATA


def _real_record() -> tuple[np.ndarray, float]:
    """A real 100 Hz PTB-XL record (12, N) in mV from the bundled sample or ../shared/data."""
    for root in (SAMPLE_DIR / "ptb-xl", SHARED_DATA / "ptb-xl"):
        heads = sorted((root / "records100").glob("*/*_lr.hea"))
        if heads:
            sig, fields = wfdb.rdsamp(str(heads[0].with_suffix("")))
            return sig.T.astype(np.float32), float(fields["fs"])
    pytest.skip("no real PTB-XL record found")


def _sines(freqs_amps: list[tuple[float, float]], fs: float, seconds: float) -> np.ndarray:
    t = np.arange(int(round(fs * seconds))) / fs
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in freqs_amps)
    return np.tile(x, (12, 1)).astype(np.float32)


def test_real_record_defaults() -> None:
    x, fs = _real_record()
    y = preprocess(x, fs)
    assert y.shape == (12, 1000) and y.dtype == np.float32
    assert np.isfinite(y).all()
    # amplitudes stay in mV (no normalisation by default): a few mV at most, not unit variance
    assert 0.005 < float(np.abs(y).max()) < 20


def _real_pair() -> tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]]:
    """The same PTB-XL recording at 500 Hz and at 100 Hz (needs records500/ somewhere)."""
    for root in (SAMPLE_DIR / "ptb-xl", SHARED_DATA / "ptb-xl"):
        for hea in sorted((root / "records500").glob("*/*_hr.hea"))[:1]:
            lr = root / "records100" / hea.parent.name / hea.name.replace("_hr", "_lr")
            if lr.is_file():
                out = []
                for h in (hea, lr):
                    sig, fields = wfdb.rdsamp(str(h.with_suffix("")))
                    out.append((sig.T.astype(np.float32), float(fields["fs"])))
                return out[0], out[1]
    pytest.skip("no PTB-XL record with both 500 Hz and 100 Hz files found")


def test_resample_500_to_100_matches_100hz_file() -> None:
    (hr, fs_hr), (lr, fs_lr) = _real_pair()
    assert (fs_hr, fs_lr) == (500.0, 100.0)
    a = preprocess(hr, fs_hr)
    b = preprocess(lr, fs_lr)
    assert a.shape == b.shape == (12, 1000)
    # same recording: the 500 Hz file resampled agrees with PTB-XL's own 100 Hz version
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("fs_in", [500.0, 360.0, 257.0, 100.0, 50.0])
def test_resample_any_rational_rate(fs_in: float) -> None:
    x = _sines([(2.0, 1.0)], fs_in, 10)
    y = preprocess(x, fs_in, PreprocessConfig(bandpass=None))
    assert y.shape == (12, 1000)
    ref = _sines([(2.0, 1.0)], 100.0, 10)
    assert np.abs(y[:, 50:-50] - ref[:, 50:-50]).max() < 0.05


def test_bandpass_removes_baseline_and_high_frequency() -> None:
    fs = 100.0
    x = _sines([(10.0, 1.0)], fs, 10)
    drift = _sines([(0.05, 2.0)], fs, 10) + 1.5  # offset + slow wander
    noise = _sines([(48.0, 0.5)], fs, 10)
    y = preprocess(x + drift + noise, fs)
    mid = slice(200, 800)
    assert np.abs(y[:, mid] - x[:, mid]).max() < 0.1
    # no filter: everything kept
    y0 = preprocess(x + drift, fs, PreprocessConfig(bandpass=None))
    np.testing.assert_allclose(y0, x + drift, atol=1e-5)


def test_bandpass_upper_edge_clamped_below_nyquist() -> None:
    cfg = PreprocessConfig(fs=50.0)  # Nyquist 25 Hz < 40 Hz default edge
    y = preprocess(_sines([(5.0, 1.0)], 500.0, 10), 500.0, cfg)
    assert y.shape == (12, 500) and np.isfinite(y).all()
    lowpass_only = PreprocessConfig(bandpass=[0.0, 40.0])
    x = _sines([(5.0, 1.0)], 100.0, 10) + 3.0
    assert abs(float(preprocess(x, 100.0, lowpass_only)[:, 300:700].mean()) - 3.0) < 0.05


def test_zscore_per_lead_and_flat_lead() -> None:
    x, fs = _real_record()
    x = x.copy()
    x[3] = 0.0
    y = preprocess(x, fs, PreprocessConfig(normalize="zscore"))
    live = [i for i in range(12) if i != 3]
    np.testing.assert_allclose(y[live].mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(y[live].std(axis=1), 1, atol=1e-3)
    assert not y[3].any()


def test_crop_center_and_start() -> None:
    fs = 100.0
    ramp = np.tile(np.arange(3000, dtype=np.float32), (12, 1))  # 30 s
    cfg = PreprocessConfig(bandpass=None)
    c = preprocess(ramp, fs, cfg)
    assert c[0, 0] == 1000 and c[0, -1] == 1999
    s = preprocess(ramp, fs, dataclasses.replace(cfg, crop="start"))
    assert s[0, 0] == 0 and s[0, -1] == 999


def test_pad_end_and_center() -> None:
    fs = 100.0
    x = np.ones((12, 600), dtype=np.float32)  # 6 s, like the shortest CPSC2018 records
    cfg = PreprocessConfig(bandpass=None)
    e = preprocess(x, fs, cfg)
    assert e[:, :600].all() and not e[:, 600:].any()
    c = preprocess(x, fs, dataclasses.replace(cfg, pad="center"))
    assert not c[:, :200].any() and c[:, 200:800].all() and not c[:, 800:].any()


def test_zscore_ignores_padding() -> None:
    x = _sines([(3.0, 2.0)], 100.0, 6) + 1.0
    y = preprocess(x, 100.0, PreprocessConfig(bandpass=None, normalize="zscore"))
    np.testing.assert_allclose(y[:, :600].std(axis=1), 1, atol=1e-3)
    assert not y[:, 600:].any()


@pytest.mark.parametrize("fs", [0, -100, float("nan"), "abc"])
def test_bad_sampling_rate(fs: object) -> None:
    x = np.zeros((12, 1000), dtype=np.float32)
    with pytest.raises(DataError, match="rec7.*sampling rate"):
        preprocess(x, fs, record_id="rec7")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(11, 1000), (1000, 12), (12,), (2, 12, 100)])
def test_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match=r"A0001.*expected shape \(12, n_samples\)"):
        preprocess(np.zeros(shape, dtype=np.float32), 100.0, record_id="A0001")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf(value: float) -> None:
    x, fs = _real_record()
    x = x.copy()
    x[4, 10] = value
    with pytest.raises(DataError, match=r"00042.*NaN/inf.*\[4\]"):
        preprocess(x, fs, record_id="00042")


def test_too_short() -> None:
    x = np.zeros((12, 300), dtype=np.float32)
    with pytest.raises(DataError, match="R1.*shorter than preprocess.min_length_s=5"):
        preprocess(x, 100.0, PreprocessConfig(min_length_s=5.0), record_id="R1")
    with pytest.raises(DataError, match="R2.*too few to band-pass"):
        preprocess(np.zeros((12, 10), dtype=np.float32), 100.0, record_id="R2")
    with pytest.raises(DataError, match="R3.*too short"):
        preprocess(np.zeros((12, 1), dtype=np.float32), 100.0, record_id="R3")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"fs": 0}, "preprocess.fs"),
        ({"length_s": -1}, "preprocess.length_s"),
        ({"bandpass": [40.0, 0.5]}, "preprocess.bandpass"),
        ({"bandpass": [0.5]}, "preprocess.bandpass"),
        ({"bandpass": [60.0, 80.0]}, "preprocess.bandpass"),
        ({"filter_order": 0}, "preprocess.filter_order"),
        ({"normalize": "minmax"}, "preprocess.normalize"),
        ({"crop": "random"}, "preprocess.crop"),
        ({"pad": "start"}, "preprocess.pad"),
        ({"min_length_s": 20.0}, "preprocess.min_length_s"),
    ],
)
def test_config_validation(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        PreprocessConfig(**kwargs)


def test_config_roundtrip_and_describe() -> None:
    cfg = PreprocessConfig(fs=500.0, bandpass=None, normalize="zscore")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert PreprocessConfig.from_dict({"fs": 250}).n_samples == 2500
    with pytest.raises(ConfigError, match="preprocess.fss"):
        PreprocessConfig.from_dict({"fss": 100})
    table = describe()
    for f in dataclasses.fields(PreprocessConfig):
        assert f"`{f.name}`" in table
    assert "open" in table


def test_input_not_modified_and_deterministic() -> None:
    x, fs = _real_record()
    before = x.copy()
    a = preprocess(x, fs)
    b = preprocess(x, fs)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(a, b)



