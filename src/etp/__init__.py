"""etp: ECG-Text Pre-training.

Learn ECG representations by aligning 12-lead ECGs with their free-text reports (CLIP-style),
then use them for linear-probe and zero-shot diagnosis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from etp.models.etp import LoadedModel


def load(path: str, device: str = "cpu") -> "LoadedModel":
    """Load a model: a saved model directory (config JSON + safetensors + preprocessing) or the
    name of a shipped pretrained model (``etp.load("etp-ptbxl-mini")``; :func:`shipped_models`).
    """
    from etp.models.etp import load_model_dir

    return load_model_dir(path, device=device)


def shipped_models() -> list[str]:
    """Names of the pretrained models shipped with etp (loadable with :func:`load`)."""
    from etp.pretrained import shipped_models as names

    return names()


#: public functions of etp.api, imported on first use
_API = ("read_ecg", "preprocess", "predict", "embed", "ECGSignal")

__all__ = ["__version__", "load", "shipped_models", *_API]


def __getattr__(name: str) -> Any:
    """Lazy access to :mod:`etp.api` (``etp.read_ecg``, ``etp.preprocess`` ...)."""
    if name in _API:
        from etp import api

        return getattr(api, name)
    raise AttributeError(name)
