"""Frozen-encoder outputs for evaluation: extract once, batched, optionally bf16, cached.

:func:`extract` runs a model over records of a prepared cache and returns either the encoder
features (``kind="features"``, (n, 512) — what the linear probe sees) or the normalised ECG
embeddings in the shared ECG-text space (``kind="embedding"`` — zero-shot and retrieval).

With ``cache_dir`` the result is stored as ``<kind>-<key>.npy``, the key being a hash of the model
weights (:func:`model_fingerprint`), the output kind, the data cache's fingerprint, the record
indices and the precision: a second evaluation of the same model skips the forward passes, and a
retrained model never reuses stale features.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from etp.data.views import Views, pooled
from etp.errors import ConfigError
from etp.io import atomic_path
from etp.models.resnet1d import check_pooling

log = logging.getLogger(__name__)

Kind = Literal["features", "embedding"]


def torch_module(model: Any) -> torch.nn.Module:
    """The ``nn.Module`` of a :class:`~etp.models.etp.LoadedModel` or of a raw ``ETPModel``."""
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "model", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected an ETPModel or a LoadedModel, got {type(model).__name__}")
    return module


def model_fingerprint(model: Any) -> str:
    """SHA-256 of a model's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(torch_module(model).state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _device_of(module: torch.nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def inference_module(model: Any, bf16: bool = False) -> torch.nn.Module:
    """The model's module in eval mode for inference; with ``bf16`` a bfloat16 *copy*.

    The weights are cast once instead of on every call as under ``torch.autocast``; on CPU both
    run at about the same speed, 2-2.5x fp32, and the copy's encoder also takes the channels-last
    fast path (:func:`~etp.models.channels_last.enable_channels_last`, about 10 % more ECGs/s;
    ``benchmarks/inference_speed.py``). The original model stays fp32 and unchanged.
    """
    from etp.models.channels_last import enable_channels_last

    module = torch_module(model)
    if not bf16:
        return module
    out = copy.deepcopy(module)
    encoder = getattr(out, "encoder", None)
    if encoder is not None and _device_of(out).type == "cpu":
        enable_channels_last(encoder)
    return out.to(torch.bfloat16).eval()


def views_of(model: Any, views: Views | None = None) -> Views:
    """``views`` if given, else the model's own (a LoadedModel's; the record as it is for a raw
    module)."""
    if views is not None:
        return views
    own = getattr(model, "views", None)
    return own if isinstance(own, Views) else Views()


def run_batches(
    model: Any,
    batches: Iterable[np.ndarray],
    kind: Kind = "embedding",
    bf16: bool = False,
    views: Views | None = None,
    pooling: str = "avg",
) -> np.ndarray:
    """Apply the model to numpy batches (B, 12, L); concatenated float32 outputs (n, D).

    ``kind="features"``: encoder features (read out by ``pooling``,
    :data:`etp.models.resnet1d.POOLINGS`); ``"embedding"``: normalised ECG embeddings; either
    averaged over ``views`` (default: the model's, :func:`views_of`).
    """
    views = views_of(model, views)
    _check_readout(kind, pooling)
    if kind == "embedding" and hasattr(model, "check_ecg_head"):  # a loaded model directory
        model.check_ecg_head()
    module = inference_module(model, bf16)
    fn = partial(module.features, pooling=pooling) if kind == "features" else module.embed_ecg
    device = _device_of(module)
    dtype = torch.bfloat16 if bf16 else torch.float32
    was_training = module.training
    module.eval()
    outs: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for batch in batches:
                x = torch.as_tensor(np.ascontiguousarray(batch), dtype=torch.float32)
                out = pooled(fn, x.to(device=device, dtype=dtype), views, kind == "embedding")
                outs.append(out.float().cpu().numpy())
    finally:
        module.train(was_training)
    if not outs:
        raise ValueError("no records to run the model on")
    return np.concatenate(outs).astype(np.float32, copy=False)


def embed_arrays(
    model: Any,
    x: np.ndarray,
    kind: Kind = "embedding",
    batch_size: int = 256,
    bf16: bool = False,
    views: Views | None = None,
    pooling: str = "avg",
) -> np.ndarray:
    """:func:`run_batches` over an in-memory array (n, 12, L)."""
    if len(x) == 0:
        raise ValueError("no records to run the model on")
    batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    return run_batches(model, batches, kind, bf16, views, pooling)


def _check_readout(kind: str, pooling: str) -> None:
    check_pooling(pooling)
    if kind != "features" and pooling != "avg":
        raise ConfigError(f"pooling {pooling!r} reads out encoder features, not {kind!r}s")


def cache_key(
    model_fp: str,
    kind: str,
    data_fp: str,
    indices: np.ndarray,
    bf16: bool,
    views: str = "1",
    pooling: str = "avg",
) -> str:
    """Hash that names a cached feature file."""
    h = hashlib.sha256()
    h.update(f"{model_fp}|{kind}|{data_fp}|bf16={bf16}|".encode())
    if views != "1":  # the record as it is keeps the keys of caches written before views
        h.update(f"views={views}|".encode())
    if pooling != "avg":  # as do average-pooled features (written before the readouts)
        h.update(f"pooling={pooling}|".encode())
    h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def extract(
    model: Any,
    prepared: Any,
    indices: np.ndarray | None = None,
    kind: Kind = "embedding",
    batch_size: int = 256,
    bf16: bool = False,
    cache_dir: str | Path | None = None,
    views: Views | None = None,
    pooling: str = "avg",
) -> np.ndarray:
    """Features or embeddings (n, D) float32 of ``prepared``'s records ``indices`` (all if None).

    Args:
        model: a :class:`~etp.models.etp.LoadedModel` or an ``ETPModel``.
        prepared: a :class:`~etp.data.cache.PreparedDataset`.
        indices: record indices, in the order wanted.
        kind: ``"features"`` (encoder output) or ``"embedding"`` (projected, normalised).
        batch_size: records per forward pass.
        bf16: bfloat16 autocast (CPU or GPU).
        cache_dir: where to keep ``<kind>-<key>.npy`` (None: no caching).
        views: test-time views averaged per record (default: the model's, :func:`views_of`).
        pooling: readout of the encoder's feature map for ``kind="features"``
            (:data:`etp.models.resnet1d.POOLINGS`: ``"avg"`` 512-d, ``"avg+max"`` 1024-d).
    """
    views = views_of(model, views)
    if kind not in ("features", "embedding"):
        raise ValueError(f"kind must be 'features' or 'embedding', got {kind!r}")
    _check_readout(kind, pooling)
    idx = np.arange(len(prepared)) if indices is None else np.asarray(indices, dtype=np.int64)
    path: Path | None = None
    if cache_dir is not None:
        key = cache_key(
            model_fingerprint(model), kind, str(prepared.fingerprint), idx, bf16, str(views),
            pooling,
        )
        path = Path(cache_dir) / f"{kind}-{key}.npy"
        if path.is_file():
            try:
                out = np.load(path)
                if out.shape[0] == idx.size:
                    log.debug("reusing %s", path)
                    return out
            except (OSError, ValueError):
                log.warning("ignoring unreadable feature cache %s", path)
    if idx.size == 0:
        raise ValueError("no records selected")
    batches = (prepared.get_batch(idx[i : i + batch_size]) for i in range(0, idx.size, batch_size))
    out = run_batches(model, batches, kind=kind, bf16=bf16, views=views, pooling=pooling)
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out)
    return out


def model_preprocess_config(model: Any) -> Any:
    """The :class:`~etp.data.signal.PreprocessConfig` a loaded model was trained with."""
    from etp.data.signal import PreprocessConfig
    from etp.errors import ConfigError, ModelError

    raw = getattr(model, "preprocessing", None)
    where = getattr(model, "path", "model")
    if not raw:
        raise ModelError(f"{where}: the model directory records no preprocessing settings")
    try:
        return PreprocessConfig.from_dict(dict(raw))
    except ConfigError as exc:
        raise ModelError(
            f"{where}: invalid preprocessing settings in the model directory ({exc})"
        ) from None


def read_ecg_file(
    path: str | Path, pcfg: Any, fs: float | None = None, pad: bool = False,
    warnings: list[str] | None = None,
) -> np.ndarray:
    """Read one ECG file and preprocess it exactly like the model's training data -> (12, L).

    WFDB records (also CinC ``.hea`` + ``.mat``) carry their sampling rate (``fs`` is ignored for
    them) and are resampled to the model's; an original CPSC2018 ``.mat`` is 500 Hz unless ``fs``
    says otherwise. A ``.npy`` array carries no rate: without ``fs``
    it is accepted only when it already has the model's input length (taken to be at the model's
    rate), else a :class:`~etp.errors.DataError` asks for ``--fs``. A record shorter than the
    model's input is an error naming the file unless ``pad`` (zero-padding, as in training).
    Amplitude warnings (a flat lead) are logged and appended to ``warnings`` when given.
    """
    from etp.data.signal_io import read_signal_file
    from etp.errors import DataError

    p = Path(path)
    is_npy = p.suffix.lower() == ".npy" or (
        not p.suffix
        and not p.with_name(p.name + ".hea").exists()
        and p.with_name(p.name + ".npy").exists()
    )
    has_header = (
        p.suffix.lower() in (".hea", ".dat")
        or p.with_suffix(".hea").exists()
        or (not p.suffix and p.with_name(p.name + ".hea").exists())
    )
    if has_header:
        fs = None  # a WFDB header gives the rate; --fs is for files without one
    if is_npy and fs is None:
        sig, rate = read_signal_file(p, fs=pcfg.fs)
        if sig.shape[1] != pcfg.n_samples:
            raise DataError(
                f"{p}: a .npy array carries no sampling rate, and its {sig.shape[1]} samples are "
                f"not the model's input ({pcfg.n_samples} samples = {pcfg.length_s:g} s at "
                f"{pcfg.fs:g} Hz); pass its sampling rate with --fs HZ"
            )
        log.info(
            "%s: no --fs given; %d samples taken as %g s at the model's %g Hz",
            p,
            sig.shape[1],
            pcfg.length_s,
            pcfg.fs,
        )
    else:
        sig, rate = read_signal_file(p, fs=fs)
    return preprocess_signal(sig, rate, pcfg, str(p), pad=pad, warnings=warnings)


def preprocess_signal(
    sig: np.ndarray, rate: float, pcfg: Any, where: str, pad: bool = False,
    pad_hint: str = "pass --pad", warnings: list[str] | None = None,
) -> np.ndarray:
    """A raw (12, N) mV signal at ``rate`` Hz -> the model's (12, L) input (``pcfg``).

    A record shorter than the model's input is a :class:`~etp.errors.DataError` naming
    ``where`` unless ``pad`` (zero-padding, as in training). Amplitude warnings
    (:func:`~etp.data.signal_io.check_amplitude`: a flat lead) are logged and, when ``warnings``
    is a list, appended to it, so that outputs can carry them beside the record's result.
    """
    from etp.data.signal import preprocess
    from etp.data.signal_io import check_amplitude
    from etp.errors import DataError

    duration = sig.shape[1] / rate
    # one sample of slack: 10 s at 500 Hz -> 100 Hz may differ by rounding
    if not pad and duration < pcfg.length_s - 1.0 / min(rate, pcfg.fs) - 1e-9:
        raise DataError(
            f"{where}: the record is {duration:.2f} s long, shorter than the model's "
            f"{pcfg.length_s:g}-s input; {pad_hint} to zero-pad it (as training pads short "
            "records)"
        )
    for warning in check_amplitude(sig, where):  # absurd or all-flat signals raise
        log.warning("%s", warning)
        if warnings is not None:
            warnings.append(warning)
    return preprocess(sig, rate, pcfg, record_id=where)


def read_ecg_files(
    paths: list[str | Path], pcfg: Any, fs: float | None = None, pad: bool = False,
    warnings: list[list[str]] | None = None,
) -> np.ndarray:
    """:func:`read_ecg_file` for each path -> (n, 12, L) float32 (the first bad file raises);
    ``warnings``, when a list, gets each file's list of amplitude warnings."""
    if not paths:
        return np.zeros((0, 12, pcfg.n_samples), dtype=np.float32)
    rows = []
    for p in paths:
        found: list[str] = []
        rows.append(read_ecg_file(p, pcfg, fs=fs, pad=pad, warnings=found))
        if warnings is not None:
            warnings.append(found)
    return np.stack(rows).astype(np.float32)
