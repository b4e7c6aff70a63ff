"""The ETP model (ECG encoder + projection heads + temperature) and its model directory.

A trained model is saved as a directory::

    model/
      config.json         format + version, etp version, method, ModelConfig, text model spec,
                          preprocessing, text_dim, extra (training summary, ...)
      model.safetensors   the weights (ECG encoder, heads, logit scale)

:func:`load_model_dir` rebuilds the architecture from ``config.json`` and loads the weights
strictly: any missing, unexpected or mis-shaped tensor, a missing file, corrupted JSON or an
unknown format version raises :class:`~etp.errors.ModelError` before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etp.config import ModelConfig, from_dict, to_dict
from etp.data.views import model_views, pooled
from etp.errors import ConfigError, DataError, ModelError
from etp.models.heads import ProjectionHead
from etp.models.resnet1d import ResNet1d18, check_pooling

ENCODERS: dict[str, type[nn.Module]] = {"resnet18_1d": ResNet1d18}
FORMAT = "etp-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: model settings removed from etp, with the only value a directory may still hold for them
#: (the value every model had unless it was a development run; see docs/experiments.md)
REMOVED_MODEL_KEYS: dict[str, Any] = {"pooling": "avg", "text_normalize": False}


class ETPModel(nn.Module):
    """ECG encoder + ECG (and text) projection heads + CLIP logit scale.

    ``text_dim``: width of the frozen text model's vectors; ``None`` builds no text head (an
    objective without a text side). ``method`` is the name of the objective that trained the
    model, recorded in its directory; the architecture does not depend on it.
    """

    def __init__(self, cfg: ModelConfig, text_dim: int | None = None, method: str = "etp") -> None:
        super().__init__()
        if cfg.encoder not in ENCODERS:
            raise ConfigError(f"model.encoder: unknown encoder {cfg.encoder!r} ({list(ENCODERS)})")
        if not cfg.init_temperature > 0:
            raise ConfigError(f"model.init_temperature must be > 0, got {cfg.init_temperature}")
        if text_dim is not None and (isinstance(text_dim, bool) or int(text_dim) < 1):
            raise ConfigError(f"text_dim must be a positive integer, got {text_dim!r}")
        self.cfg = cfg
        self.method = str(method)
        self.text_dim = None if text_dim is None else int(text_dim)
        self.encoder = ENCODERS[cfg.encoder](in_leads=cfg.in_leads)
        self.ecg_head = ProjectionHead(self.encoder.feature_dim("avg"), cfg.embed_dim, cfg.head)
        self.text_head = (
            ProjectionHead(self.text_dim, cfg.embed_dim, cfg.head) if self.text_dim else None
        )
        init = torch.tensor(math.log(1.0 / cfg.init_temperature), dtype=torch.float32)
        if cfg.learn_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    @property
    def feature_dim(self) -> int:
        """Dimension of the encoder features (512 for ResNet18-1D)."""
        return int(self.encoder.out_dim)

    def features(self, x: Tensor, pooling: str = "avg") -> Tensor:
        """Encoder features ``(B, leads, L) -> (B, 512)`` (before the head); ``pooling="avg+max"``
        reads the feature map out as 1024-d (:data:`etp.models.resnet1d.POOLINGS`)."""
        return self.encoder(x, pooling)

    def embed_ecg(self, x: Tensor) -> Tensor:
        """L2-normalised ECG embeddings ``(B, embed_dim)``."""
        return F.normalize(self.ecg_head(self.encoder(x)).float(), dim=-1)

    def embed_text(self, t: Tensor) -> Tensor:
        """L2-normalised text embeddings from frozen text-model vectors ``(B, text_dim)``."""
        if self.text_head is None:
            raise ModelError(f"this {self.method!r} model has no text head (text_dim is None)")
        return F.normalize(self.text_head(t).float(), dim=-1)

    def forward(self, x: Tensor, text: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(ECG embeddings, text embeddings or None).

        Under DDP call the wrapper (``ddp(x, text)``), not ``embed_ecg`` directly, so that
        gradients are synchronised; take the temperature from ``unwrap(ddp).scale()``.
        """
        return self.embed_ecg(x), (None if text is None else self.embed_text(text))

    def scale(self) -> Tensor:
        """The logit scale ``exp(logit_scale)`` = 1/temperature, clamped as in CLIP."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)


def unwrap(model: nn.Module) -> ETPModel:
    """The :class:`ETPModel` inside a DDP and/or ``torch.compile`` wrapper."""
    seen = 0
    while not isinstance(model, ETPModel) and seen < 4:
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
        seen += 1
    if not isinstance(model, ETPModel):
        raise ModelError(f"expected an ETPModel (or a DDP/compiled wrapper), got {type(model)}")
    return model


def _plain(obj: Any, what: str) -> Any:
    """A JSON-serialisable copy of ``obj`` (dataclasses become dicts)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{what} is not JSON-serialisable: {exc}") from None


def save_model_dir(
    path: str | Path,
    model: nn.Module,
    cfg: ModelConfig | None = None,
    preprocessing: dict[str, Any] | Any = None,
    text_spec: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` (config.json + model.safetensors) atomically; returns the directory."""
    from safetensors.torch import save

    from etp import __version__
    from etp.io import atomic_dir, atomic_write_bytes, atomic_write_json

    net = unwrap(model)
    cfg = cfg if cfg is not None else net.cfg
    if to_dict(cfg) != to_dict(net.cfg):
        raise ModelError("save_model_dir: cfg differs from the config the model was built with")
    if text_spec is not None and net.text_dim is not None and text_spec.get("dim") not in (
        None, net.text_dim,
    ):
        raise ModelError(
            f"save_model_dir: text spec dim {text_spec.get('dim')} != model text_dim {net.text_dim}"
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "etp_version": __version__,
        "method": net.method,
        "model": to_dict(cfg),
        "text_dim": net.text_dim,
        "text_spec": _plain(text_spec, "text_spec"),
        "preprocessing": _plain(preprocessing, "preprocessing"),
        "extra": _plain(extra or {}, "extra"),
        "num_parameters": int(sum(p.numel() for p in net.parameters())),
    }
    out = Path(path)
    with atomic_dir(out) as tmp:
        # serialised in memory, so a full disk is an OSError naming the file (etp.io)
        atomic_write_bytes(tmp / WEIGHTS_FILE, save(state, metadata={"format": FORMAT}))
        atomic_write_json(tmp / CONFIG_FILE, meta)
    return out


def _read_meta(p: Path) -> dict[str, Any]:
    cfg_file = p / CONFIG_FILE
    if not cfg_file.is_file():
        raise ModelError(f"{p}: {CONFIG_FILE} is missing (not an etp model directory?)")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{cfg_file}: corrupted JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{cfg_file}: not an etp model config (format != {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{cfg_file}: unknown format version {version!r} (this etp reads version "
            f"{FORMAT_VERSION}); use the etp version that wrote it"
        )
    for key in ("method", "model", "text_dim"):
        if key not in meta:
            raise ModelError(f"{cfg_file}: missing key {key!r}")
    return meta


def _current_model_keys(cfg_file: Path, model: Any) -> Any:
    """``model`` (config.json's model settings) without the keys etp no longer has; a key that
    holds anything but the behaviour etp kept is a ModelError naming it."""
    if not isinstance(model, dict):
        return model
    out = dict(model)
    for key, kept in REMOVED_MODEL_KEYS.items():
        if key in out:
            value = out.pop(key)
            if value != kept:
                raise ModelError(
                    f"{cfg_file}: model.{key}={value!r} is an option this etp no longer has "
                    f"(only {kept!r} is supported); load the model with etp 0.1.0"
                )
    return out


def _check_state(p: Path, state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Raise ModelError listing every missing / unexpected / mis-shaped tensor."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    dtypes = [
        f"{k}: file {state[k].dtype} vs model {expected[k].dtype}"
        for k in sorted(set(state) & set(expected))
        if state[k].is_floating_point() != expected[k].is_floating_point()
    ]

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    problems = []
    if missing:
        problems.append(f"missing keys: {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {some(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {some(shapes)}")
    if dtypes:
        problems.append(f"dtype mismatches: {some(dtypes)}")
    if problems:
        raise ModelError(
            f"{p}: {WEIGHTS_FILE} does not match the architecture in {CONFIG_FILE} "
            f"({'; '.join(problems)}); nothing was loaded"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"{p}: {WEIGHTS_FILE} has non-finite values in {some(bad)}")


def load_model_dir(path: str | Path, device: str = "cpu") -> "LoadedModel":
    """Load a directory written by :func:`save_model_dir`; strict: ModelError on any mismatch."""
    from safetensors.torch import load_file

    from etp.pretrained import resolve_model, shipped_models

    p = resolve_model(path)
    if not p.exists():
        raise ModelError(
            f"model directory not found: {p} (or the name of a shipped model: "
            f"{', '.join(shipped_models())})"
        )
    if not p.is_dir():
        raise ModelError(f"{p} is not a model directory (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    meta = _read_meta(p)
    cfg_file = p / CONFIG_FILE
    method = str(meta["method"])
    try:
        cfg = from_dict(ModelConfig, _current_model_keys(cfg_file, meta["model"]), prefix="model")
        model = ETPModel(cfg, meta["text_dim"], method)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelError(f"{cfg_file}: {exc}") from None
    weights = p / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{p}: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise ModelError(f"{weights}: cannot read the weights ({exc})") from None
    expected = model.state_dict()
    _check_state(p, state, expected)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return LoadedModel(
        model=model,
        config=cfg,
        method=method,
        preprocessing=meta.get("preprocessing") or {},
        text_spec=meta.get("text_spec"),
        extra=meta.get("extra") or {},
        path=p,
        meta=meta,
    )


#: text lists with at least this many distinct texts (report galleries) are cached by content in
#: the user cache (:func:`etp.zero_shot_defaults.user_cache_dir`) when no cache_dir is given
LARGE_TEXTS = 1000


def _text_cache(texts: Sequence[str], cache_dir: str | Path | None) -> str | Path | None:
    if cache_dir is not None or len(set(texts)) < LARGE_TEXTS:
        return cache_dir
    from etp.zero_shot_defaults import user_cache_dir

    return user_cache_dir()


class LoadedModel:
    """A loaded model directory: numpy-in / numpy-out inference helpers."""

    def __init__(
        self,
        model: ETPModel,
        config: ModelConfig,
        method: str,
        preprocessing: dict[str, Any],
        text_spec: dict[str, Any] | None,
        extra: dict[str, Any],
        path: Path,
        meta: dict[str, Any],
    ) -> None:
        self.model = model
        self.config = config
        self.method = method
        self.preprocessing = preprocessing
        self.text_spec = text_spec
        self.extra = extra
        self.path = path
        self.meta = meta
        self._text_encoder: Any = None
        self._translator: Any = None
        #: test-time views of every ECG (from the training settings; assign to change)
        self.views = model_views(extra)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    @property
    def ecg_head_trained(self) -> bool:
        """False where the objective never trained the ECG projection head (BYOL, SimSiam, CPC,
        TS-TCC read the encoder only): such a model's ECG embeddings mean nothing."""
        return bool((self.extra.get("objective") or {}).get("trains_ecg_head", True))

    def check_ecg_head(self) -> None:
        """A one-line :class:`ModelError` when :attr:`ecg_head_trained` is False."""
        if not self.ecg_head_trained:
            raise ModelError(
                f"{self.path}: this {self.method!r} model's ECG projection head was never "
                "trained (its objective reads the encoder only), so its embeddings mean "
                "nothing; use encoder features instead (model.features(...), or etp embed "
                "--features)"
            )

    @property
    def has_text(self) -> bool:
        """Whether this model can embed texts (has a text head and a text model spec)."""
        return self.model.text_head is not None and self.text_spec is not None

    def _check_ecg(self, x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise DataError(f"expected a numpy array of ECGs, got {type(x).__name__}")
        leads = self.config.in_leads
        if x.ndim != 3 or x.shape[1] != leads or x.shape[2] < 1:
            raise DataError(f"expected ECGs of shape (B, {leads}, L), got {x.shape}")
        from etp.api import check_input_length

        check_input_length(self, x)
        return x

    @property
    def zero_shot_defaults(self) -> Any:
        """The directory's zero-shot defaults (:mod:`etp.zero_shot_defaults`), or None."""
        if not hasattr(self, "_zero_shot_defaults"):
            from etp.zero_shot_defaults import read_defaults

            self._zero_shot_defaults = read_defaults(self.path)
        return self._zero_shot_defaults

    def preprocess(self, signal: Any, fs: float | None = None, pad: bool = False) -> np.ndarray:
        """A raw ECG (:class:`etp.api.ECGSignal`, or a (12, N) mV array with ``fs``) -> the
        (12, L) input this model expects (:func:`etp.api.preprocess`)."""
        from etp.api import preprocess

        return preprocess(signal, self, fs=fs, pad=pad)

    def predict(
        self, inputs: Any, labels: Sequence[str] | None = None, fs: float | None = None,
        dataset: str | None = None, pad: bool = False, reports: Sequence[str] | None = None,
    ) -> Any:
        """Zero-shot probabilities of files, signals or arrays as a DataFrame
        (:func:`etp.api.predict`); default classes: the model's default dataset's."""
        from etp.api import predict

        return predict(self, inputs, labels, fs=fs, dataset=dataset, pad=pad, reports=reports)

    def embed(self, inputs: Any, fs: float | None = None, pad: bool = False) -> np.ndarray:
        """ECG embeddings of files, signals or arrays (:func:`etp.api.embed`)."""
        from etp.api import embed

        return embed(self, inputs, fs=fs, pad=pad)

    @torch.no_grad()
    def _run(
        self, x: Any, fn: Any, batch_size: int, precision: str, embedding: bool,
        pooling: str = "avg",
    ) -> np.ndarray:
        x = self._check_ecg(x)
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        dev = self.device
        outs = []
        for start in range(0, len(x), max(1, int(batch_size))):
            chunk = np.asarray(x[start : start + batch_size], dtype=np.float32)
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(1)
            if not finite.all():
                raise DataError(f"ECG at index {start + int(np.argmin(finite))} has NaN/inf values")
            xb = torch.from_numpy(np.ascontiguousarray(chunk)).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = pooled(fn, xb, self.views, normalise=embedding)
            outs.append(out.float().cpu().numpy())
        if not outs:
            width = self.embed_dim if embedding else self.model.encoder.feature_dim(pooling)
            return np.zeros((0, width), np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)

    def features(
        self, x: Any, batch_size: int = 256, precision: str = "fp32", pooling: str = "avg"
    ) -> np.ndarray:
        """Encoder features ``(B, leads, L) -> (B, 512)`` float32 (for linear probes), averaged
        over :attr:`views`; ``pooling="avg+max"``: 1024-d (:data:`etp.models.resnet1d.POOLINGS`)."""
        check_pooling(pooling)
        fn = partial(self.model.features, pooling=pooling)
        return self._run(x, fn, batch_size, precision, embedding=False, pooling=pooling)

    def embed_ecg(self, x: Any, batch_size: int = 256, precision: str = "fp32") -> np.ndarray:
        """L2-normalised ECG embeddings ``(B, leads, L) -> (B, embed_dim)`` float32, averaged
        over :attr:`views`; refused for a model whose ECG head was never trained."""
        self.check_ecg_head()
        return self._run(x, self.model.embed_ecg, batch_size, precision, embedding=True)

    def text_encoder(self) -> Any:
        """The frozen text encoder named in the model's text spec (built once, lazily)."""
        if self._text_encoder is None:
            if not self.has_text:
                raise ModelError(
                    f"{self.path}: this {self.method!r} model has no text side "
                    "(no text head or no text model recorded)"
                )
            from etp.text.encoder import TextEncoder

            assert self.text_spec is not None
            self._text_encoder = TextEncoder.from_spec(self.text_spec, device=str(self.device))
        return self._text_encoder

    def prepare_texts(self, texts: Sequence[str]) -> list[str]:
        """Texts as the model saw its training reports: translated where it was trained so."""
        from etp.data.text import NO_TRANSLATION, ReportTranslator

        out = list(texts)
        if self.config.report_translation != NO_TRANSLATION:
            glossary = (self.text_spec or {}).get("report_glossary")
            if not isinstance(glossary, dict) or not glossary:
                raise ModelError(
                    f"{self.path}: the model was trained with report_translation="
                    f"{self.config.report_translation!r} but its directory holds no glossary "
                    "(text_spec.report_glossary in config.json)"
                )
            if self._translator is None:
                self._translator = ReportTranslator(glossary)
            out = self._translator.translate(out)
        return out

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], cache_dir: str | Path | None = None) -> np.ndarray:
        """L2-normalised text embeddings ``(n, embed_dim)`` float32 (frozen model + text head)."""
        from etp.text.cache import embed_texts
        from etp.text.encoder import check_texts

        texts = self.prepare_texts(check_texts(texts))
        encoder = self.text_encoder()
        unique, index = embed_texts(texts, encoder, _text_cache(texts, cache_dir))
        t = torch.from_numpy(unique).to(self.device)
        emb = self.model.embed_text(t).float().cpu().numpy()
        return emb[index]

    @torch.no_grad()
    def embed_texts_frozen(
        self, texts: Sequence[str], cache_dir: str | Path | None = None
    ) -> np.ndarray:
        """L2-normalised embeddings ``(n, text_dim)`` of the frozen text model alone (no head),
        after the model's own text preprocessing: the space in which reports are matched to
        class prompts for report prototypes (:func:`etp.eval.zero_shot.report_prototypes`)."""
        from etp.text.cache import embed_texts
        from etp.text.encoder import check_texts

        texts = self.prepare_texts(check_texts(texts))
        unique, index = embed_texts(texts, self.text_encoder(), _text_cache(texts, cache_dir))
        emb = np.asarray(unique, dtype=np.float32)[index]
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def similarity(self, x: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Cosine similarity of each ECG with each text: ``(B, n_texts)``."""
        return self.embed_ecg(x, batch_size) @ self.embed_texts(texts).T

    def zero_shot(self, x: Any, prompts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """CLIP zero-shot class probabilities ``(B, n_prompts)``: softmax of scaled cosines."""
        logits = self.similarity(x, prompts, batch_size) * self.model.scale().detach().item()
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def __repr__(self) -> str:
        return (
            f"LoadedModel(path={str(self.path)!r}, method={self.method!r}, "
            f"views={str(self.views)!r})"
        )


__all__ = ["ETPModel", "LoadedModel", "save_model_dir", "load_model_dir", "unwrap"]
