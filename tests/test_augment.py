"""ECG augmentations: shape/dtype kept, each one's defining property, determinism, composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from etp.config import TrainConfig
from etp.data import augment as A
from etp.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
#: two real PTB-XL records of the sample bundled in the repository (present on a fresh clone)
RECORDS = [REPO / "data" / "sample" / "ptb-xl" / "records100" / "00000" / f"{i:05d}_lr" for i in (16, 18)]
CANONICAL = [
    "crop_resize",
    "sign_flip",
    "gaussian_noise",
    "amplitude_scale",
    "baseline_wander",
    "lead_mask",
]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ecg() -> torch.Tensor:
    """Two real PTB-XL records at 100 Hz as a (2, 12, 1000) float32 batch (mV)."""
    import wfdb

    sigs = [wfdb.rdsamp(str(path))[0].T for path in RECORDS]
    return torch.from_numpy(np.stack(sigs).astype(np.float32))


# ---------------------------------------------------------------------------- all of them


@pytest.mark.parametrize("name", CANONICAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_kept_and_input_untouched(ecg, name, dtype):
    x = ecg.to(dtype)
    before = x.clone()
    out = A.AUGMENTATIONS[name](x, _gen())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", CANONICAL)
def test_deterministic_given_generator(ecg, name):
    x = ecg.repeat(4, 1, 1)  # 8 samples, so random choices differ between seeds
    fn = A.AUGMENTATIONS[name]
    assert torch.equal(fn(x, _gen(7)), fn(x, _gen(7)))
    assert not torch.equal(fn(x, _gen(7)), fn(x, _gen(8)))


@pytest.mark.parametrize("name", CANONICAL)
def test_works_without_generator_and_on_odd_shapes(name):
    for shape in [(3, 12, 250), (1, 1, 50), (0, 12, 100)]:
        out = A.AUGMENTATIONS[name](torch.randn(shape))
        assert out.shape == shape


@pytest.mark.parametrize("name", CANONICAL)
def test_bad_tensor_is_data_error(name):
    fn = A.AUGMENTATIONS[name]
    with pytest.raises(
        DataError,
        match=rf"{name}: expected a \(batch, leads, length\) tensor, got shape \(12, 100\)",
    ):
        fn(torch.randn(12, 100))
    with pytest.raises(DataError, match=f"{name}: expected a floating tensor"):
        fn(torch.ones(2, 12, 100, dtype=torch.int64))


# ---------------------------------------------------------------------------- crop_resize


def test_crop_of_ramp_is_monotone_and_spans_half_to_all():
    length = 1000
    ramp = torch.arange(length, dtype=torch.float32).expand(64, 12, length).clone()
    out = A.crop_resize(ramp, _gen())
    assert (out.diff(dim=-1) >= -1e-3).all()  # monotone
    span = out[:, 0, -1] - out[:, 0, 0]  # = segment length - 1
    assert (span >= 0.5 * length - 2).all() and (span <= length - 1 + 1e-3).all()
    assert span.std() > 50  # the segment length really varies
    assert (out >= 0).all() and (out <= length - 1).all()
    # every lead of a sample is cropped alike
    assert torch.equal(out, out[:, :1].expand_as(out))


def test_crop_equals_linear_interpolation_of_the_segment(ecg):
    length = ecg.shape[-1]
    ramp = torch.arange(length, dtype=torch.float32).expand(2, 1, length)
    x = torch.cat([ramp, ecg], dim=1)  # lead 0 reveals the segment chosen
    out = A.crop_resize(x, _gen(3))
    for b in range(2):
        start, end = round(out[b, 0, 0].item()), round(out[b, 0, -1].item())
        seg = ecg[b : b + 1, :, start : end + 1]
        expected = F.interpolate(seg, size=length, mode="linear", align_corners=True)[0]
        torch.testing.assert_close(out[b, 1:], expected, atol=1e-4, rtol=1e-4)


def test_crop_full_fraction_is_identity(ecg):
    torch.testing.assert_close(A.crop_resize(ecg, _gen(), min_frac=1.0, max_frac=1.0), ecg)


def test_crop_bad_fractions():
    with pytest.raises(ConfigError, match="crop_resize: need 0 < min_frac <= max_frac <= 1"):
        A.crop_resize(torch.randn(1, 12, 10), _gen(), min_frac=0.9, max_frac=0.5)


# ---------------------------------------------------------------------------- sign_flip


def test_sign_flip_flips_whole_samples_exactly(ecg):
    x = ecg.repeat(32, 1, 1)
    out = A.sign_flip(x, _gen())
    flipped = torch.tensor([torch.equal(o, -s) for o, s in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x, strict=True)])
    assert (flipped ^ kept).all()
    assert 16 <= int(flipped.sum()) <= 48  # p = 0.5 over 64 samples
    assert torch.equal(A.sign_flip(x, _gen(), p=1.0), -x)
    assert torch.equal(A.sign_flip(x, _gen(), p=0.0), x)


# ---------------------------------------------------------------------------- gaussian_noise


def test_noise_std_is_relative_to_each_samples_std(ecg):
    x = torch.cat([ecg, 10 * ecg])  # second pair 10x larger: noise must be too
    out = A.gaussian_noise(x, _gen(), std=0.1)
    noise = (out - x).double()
    expected = 0.1 * x.double().std(dim=(1, 2))
    ratio = noise.std(dim=(1, 2)) / expected
    assert torch.allclose(ratio, torch.ones(4, dtype=torch.float64), atol=0.03)
    assert (noise.mean(dim=(1, 2)).abs() < 0.05 * expected).all()  # zero mean (SE ~0.01)
    # the total variance grows by the expected amount: var(x + n) = var(x) + var(n)
    grown = out.double().var(dim=(1, 2)) / x.double().var(dim=(1, 2))
    assert torch.allclose(grown, torch.full((4,), 1.01, dtype=torch.float64), atol=0.01)
    assert torch.equal(A.gaussian_noise(x, _gen(), std=0.0), x)


# ---------------------------------------------------------------------------- amplitude_scale


def test_amplitude_scale_per_sample(ecg):
    x = ecg.repeat(16, 1, 1)
    out = A.amplitude_scale(x, _gen())
    ratio = out / x
    factor = ratio[:, 0, 0]
    mask = x.abs() > 1e-3
    assert torch.allclose(ratio[mask], factor[:, None, None].expand_as(x)[mask], rtol=1e-5)
    assert (factor >= 0.8).all() and (factor <= 1.2).all() and factor.std() > 0.05


def test_amplitude_scale_per_lead(ecg):
    x = ecg.abs() + 1.0  # no zeros, so the ratio is defined everywhere
    out = A.amplitude_scale(x, _gen(), per_lead=True)
    ratio = out / x
    per_lead = ratio[:, :, :1]
    torch.testing.assert_close(ratio, per_lead.expand_as(ratio))
    assert (per_lead >= 0.8 - 1e-6).all() and (per_lead <= 1.2 + 1e-6).all()
    assert per_lead[0].std() > 0.02  # leads scaled differently


# ---------------------------------------------------------------------------- baseline_wander


def test_wander_is_low_frequency_and_bounded():
    fs, seconds = 100.0, 60  # long enough for >= 3 cycles of the slowest sinusoid
    g = _gen(1)
    x = torch.randn(4, 12, int(fs * seconds), generator=g)
    out = A.baseline_wander(x, _gen(), fs=fs, amplitude=0.5)
    wander = (out - x).double().numpy()
    power = np.abs(np.fft.rfft(wander, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(wander.shape[-1], d=1 / fs)
    assert power[..., freqs > 1.0].sum() < 0.01 * power.sum()
    bound = 0.5 * 2 * x.std(dim=(1, 2), keepdim=True)  # amplitude * n_components * sample std
    assert ((out - x).abs() <= bound + 1e-5).all()
    assert (out - x).abs().max() > 0.05  # it does add something


def test_wander_frequency_follows_fs(ecg):
    """Same seed at 500 Hz (5x the samples) gives the same curve in seconds as at 100 Hz."""
    x100 = ecg
    x500 = ecg.repeat_interleave(5, dim=-1)
    w100 = (A.baseline_wander(x100, _gen(4), fs=100.0) - x100) / x100.std(dim=(1, 2), keepdim=True)
    w500 = (A.baseline_wander(x500, _gen(4), fs=500.0) - x500) / x500.std(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(w500[..., ::5], w100, atol=1e-4, rtol=1e-3)


def test_wander_bad_fs():
    with pytest.raises(ConfigError, match="baseline_wander: fs must be > 0"):
        A.baseline_wander(torch.randn(1, 12, 10), _gen(), fs=0)


# ---------------------------------------------------------------------------- lead_mask


def test_lead_mask_zeros_whole_leads_and_keeps_one(ecg):
    x = ecg.repeat(50, 1, 1) + 1.0  # no real zeros
    out = A.lead_mask(x, _gen())
    zeroed = (out == 0).all(dim=-1)  # (B, 12)
    untouched = (out == x).all(dim=-1)
    assert (zeroed ^ untouched).all()  # every lead either entirely zero or unchanged
    assert (~zeroed).any(dim=1).all()
    assert 0.12 < zeroed.float().mean().item() < 0.28  # p = 0.2
    always = A.lead_mask(x, _gen(), p=1.0)
    assert ((always != 0).any(dim=-1).sum(dim=1) == 1).all()  # exactly one lead survives
    assert torch.equal(A.lead_mask(x, _gen(), p=0.0), x)


def test_lead_mask_bad_p():
    with pytest.raises(ConfigError, match=r"lead_mask: p must be in \[0, 1\]"):
        A.lead_mask(torch.randn(1, 12, 10), _gen(), p=1.5)


# ---------------------------------------------------------------------------- build_augmentation


def test_build_composes_in_order_with_one_generator(ecg):
    names = [
        "crop_resize",
        "amplitude_scale",
        "gaussian_noise",
        "baseline_wander",
        "sign_flip",
        "lead_mask",
    ]
    aug = A.build_augmentation(names, fs=500.0)
    g = _gen(11)
    expected = ecg
    for name in names:
        fn = A.AUGMENTATIONS[name]
        expected = fn(expected, g, fs=500.0) if name == "baseline_wander" else fn(expected, g)
    torch.testing.assert_close(aug(ecg, _gen(11)), expected)
    assert aug.names == tuple(names)


def test_build_accepts_the_config_defaults_and_aliases(ecg):
    aug = A.build_augmentation(TrainConfig().augment)
    assert aug(ecg, _gen()).shape == ecg.shape
    torch.testing.assert_close(
        A.build_augmentation(["noise", "scale", "crop"])(ecg, _gen(2)),
        A.build_augmentation(["gaussian_noise", "amplitude_scale", "crop_resize"])(ecg, _gen(2)),
    )


def test_build_empty_is_identity_copy(ecg):
    out = A.build_augmentation([])(ecg, _gen())
    assert torch.equal(out, ecg) and out is not ecg


def test_build_unknown_name_lists_valid_names():
    with pytest.raises(
        ConfigError, match=r"unknown augmentation 'rotate'; valid names: .*crop_resize.*lead_mask"
    ):
        A.build_augmentation(["sign_flip", "rotate"])


def test_build_rejects_a_bare_string_and_bad_fs():
    with pytest.raises(ConfigError, match="must be a list of names, got 'sign_flip'"):
        A.build_augmentation("sign_flip")
    with pytest.raises(ConfigError, match="fs must be > 0"):
        A.build_augmentation(["baseline_wander"], fs=-1)


def test_build_passes_the_shortest_crop_to_crop_resize():
    """crop_min_frac bounds the segment: 1.0 leaves a record as it is, 0.8 keeps >= 80 % of it."""
    length = 1000
    ramp = torch.arange(length, dtype=torch.float32).expand(64, 12, length).clone()
    torch.testing.assert_close(A.build_augmentation(["crop"], crop_min_frac=1.0)(ramp, _gen()), ramp)
    out = A.build_augmentation(["crop_resize"], crop_min_frac=0.8)(ramp, _gen())
    span = out[:, 0, -1] - out[:, 0, 0]
    assert (span >= 0.8 * length - 2).all() and span.min() < 0.85 * length
    with pytest.raises(ConfigError, match="crop_min_frac must be in"):
        A.build_augmentation(["crop"], crop_min_frac=0.0)
