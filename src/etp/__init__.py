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
    """Load a saved etp model directory (config JSON + safetensors + preprocessing)."""
    from etp.models.etp import load_model_dir

    return load_model_dir(path, device=device)


__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:  # pragma: no cover - lazy attribute access
    raise AttributeError(name)
