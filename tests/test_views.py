"""Test-time views (etp.data.views): parsing, crops, averaging, and the defaults models get."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from etp.config import ModelConfig
from etp.data.augment import crop_resize
from etp.data.views import TRAINED_CROP, Views, model_views, pooled
from etp.errors import ConfigError
from etp.eval.features import extract, run_batches
from etp.models.etp import ETPModel, load_model_dir, save_model_dir


def test_parse_and_text_round_trip() -> None:
    assert Views.parse("1") == Views() and Views().identity and str(Views()) == "1"
    assert Views.parse("3") == Views(3, TRAINED_CROP) == Views.parse(" 3 x 0.75 ")
    assert Views.parse(str(Views(5, 0.6))) == Views(5, 0.6)
    assert Views.parse("1x0.8") == Views(1, 0.8) and not Views(1, 0.8).identity


@pytest.mark.parametrize(
    "text, match",
    [("0", ">= 1"), ("three", "N or NxF"), ("3x0", r"\(0, 1\]"), ("3x1.5", r"\(0, 1\]"),
     ("3x1", "all be the same"), ("-1", "N or NxF")],
)
def test_bad_views_are_clear_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Views.parse(text)


def test_segments_are_evenly_spaced_inside_the_record() -> None:
    assert Views(3, 0.75).segments(1000) == [(0, 750), (125, 750), (250, 750)]
    assert Views(1, 0.5).segments(1000) == [(250, 500)]  # one crop: the centre
    for n in (2, 4, 7):
        segs = Views(n, 0.6).segments(999)
        assert segs[0][0] == 0 and segs[-1][0] + segs[-1][1] == 999 and len(segs) == n


def test_crops_stretch_each_segment_back_to_the_full_length() -> None:
    x = torch.randn(4, 12, 200)
    views = Views(3, 0.75)
    crops = list(views.crops(x))
    assert len(crops) == 3 and all(c.shape == x.shape for c in crops)
    for crop, (start, seg) in zip(crops, views.segments(200)):
        assert torch.equal(crop[:, :, 0], x[:, :, start])  # end points kept
        assert torch.allclose(crop[:, :, -1], x[:, :, start + seg - 1], atol=1e-6)
        want = F.interpolate(x[:, :, start : start + seg], 200, mode="linear", align_corners=True)
        assert torch.allclose(crop, want, atol=1e-6)
    assert [c is x for c in Views().crops(x)] == [True]
    # the augmentation's full-length "crop" is the record itself, as a 100 % view is
    assert torch.equal(crop_resize(x, torch.Generator().manual_seed(0), 1.0, 1.0), x)
    with pytest.raises(ConfigError, match="cannot be cropped"):
        list(views.crops(torch.zeros(1, 12, 1)))


def test_pooled_averages_views_and_renormalises_embeddings() -> None:
    x = torch.randn(5, 12, 100)
    fn = lambda t: t.mean(-1)  # noqa: E731 - (B, 12) "features"
    views = Views(2, 0.5)
    parts = torch.stack([fn(c) for c in views.crops(x)])
    assert torch.allclose(pooled(fn, x, views, normalise=False), parts.mean(0), atol=1e-6)
    emb = pooled(lambda t: F.normalize(fn(t), dim=-1), x, views, normalise=True)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.equal(pooled(fn, x, Views(), normalise=False), fn(x))


@pytest.mark.parametrize(
    "train, want",
    [
        (None, Views()),
        ({"method": "etp", "etp_augment": False, "augment": ["crop"]}, Views()),  # the paper's
        ({"method": "etp", "etp_augment": True, "augment": ["crop", "noise"]}, Views(3, 0.75)),
        ({"method": "etp", "ssl_weight": 1.0, "augment": ["crop_resize"]}, Views(3, 0.75)),
        ({"method": "etp", "etp_augment": True, "augment": ["noise", "scale"]}, Views()),
        ({"method": "simclr", "augment": ["crop", "sign_flip"]}, Views(3, 0.75)),
        # the middle of a narrower trained range
        ({"method": "simclr", "augment": ["crop"], "crop_min_frac": 0.8}, Views(3, 0.9)),
    ],
)
def test_model_views_of_directories_written_before_objectives(train: dict | None, want: Views) -> None:
    assert model_views(None if train is None else {"train": train}) == want


@pytest.mark.parametrize(
    "crops, train, want",
    [
        (False, {"augment": ["crop"]}, Views()),
        (True, {"augment": ["crop"]}, Views(3, 0.75)),
        (True, {"augment": ["crop"], "crop_min_frac": 0.8}, Views(3, 0.9)),
        # what the objective recorded wins over the legacy training keys
        (False, {"method": "simclr", "augment": ["crop"]}, Views()),
    ],
)
def test_model_views_follow_what_the_objective_recorded(crops: bool, train: dict, want: Views) -> None:
    extra = {"train": train, "objective": {"name": "x", "trained_on_crops": crops}}
    assert model_views(extra) == want


def test_loaded_model_and_extract_use_the_models_views(tmp_path) -> None:
    torch.manual_seed(0)
    net = ETPModel(ModelConfig(), 16, "etp").eval()
    extra = {"train": {"augment": ["crop", "scale"]}, "objective": {"trained_on_crops": True}}
    loaded = load_model_dir(save_model_dir(tmp_path / "m", net, extra=extra))
    assert loaded.views == Views(3, 0.75)
    x = np.random.default_rng(0).normal(size=(6, 12, 1000)).astype(np.float32)
    with torch.no_grad():
        per_view = torch.stack([net.features(c) for c in Views(3, 0.75).crops(torch.from_numpy(x))])
        single = net.features(torch.from_numpy(x)).numpy()
    assert np.allclose(loaded.features(x), per_view.mean(0).numpy(), atol=1e-4)
    assert np.allclose(run_batches(loaded, [x], "features"), per_view.mean(0).numpy(), atol=1e-4)
    assert np.allclose(run_batches(loaded, [x], "features", views=Views()), single, atol=1e-4)
    emb = loaded.embed_ecg(x)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    loaded.views = Views()
    assert np.allclose(loaded.features(x), single, atol=1e-4)


class _Prepared:
    def __init__(self, x: np.ndarray) -> None:
        self.signals, self.fingerprint = x, "fp"

    def __len__(self) -> int:
        return len(self.signals)

    def get_batch(self, idx: np.ndarray) -> np.ndarray:
        return self.signals[np.asarray(idx)]


def test_feature_cache_is_keyed_by_views(tmp_path) -> None:
    torch.manual_seed(0)
    net = ETPModel(ModelConfig(), 16, "etp")
    data = _Prepared(np.random.default_rng(1).normal(size=(4, 12, 300)).astype(np.float32))
    plain = extract(net, data, kind="features", cache_dir=tmp_path)
    crops = extract(net, data, kind="features", cache_dir=tmp_path, views=Views(3, 0.75))
    assert len(list(tmp_path.glob("features-*.npy"))) == 2 and not np.allclose(plain, crops)
    again = extract(net, data, kind="features", cache_dir=tmp_path, views=Views(3, 0.75))
    assert np.array_equal(crops, again)
