"""The public Python API: read ECG files, preprocess them for a model, predict.

::

    import etp
    model = etp.load("etp-ptbxl-mini")                   # a shipped model, or a model directory
    ecg = etp.read_ecg("A0002.hea")                      # WFDB, CinC .mat, CPSC .mat, .npy + fs
    probs = model.predict(["A0002.hea"])                 # DataFrame: one row per input

Inputs of :meth:`LoadedModel.predict` / :meth:`LoadedModel.embed` (and :func:`model_inputs`) are
file paths, :class:`ECGSignal` objects, or numpy arrays: a raw array (12, N) or (n, 12, N) in mV
needs its sampling rate ``fs`` and is preprocessed like the model's training data; an array
without ``fs`` is taken to be preprocessed already and must have exactly the model's input
length. Anything else is an error that says what was expected, never a silent result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from etp.data.records import LEADS
from etp.errors import DataError

PathLike = str | Path


@dataclass(frozen=True)
class ECGSignal:
    """A raw 12-lead ECG: ``signal`` (12, N) float32 in mV, rows in ``leads`` order (I, II, III,
    aVR, aVL, aVF, V1-V6), sampled at ``fs`` Hz; ``source`` names where it came from."""

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...] = LEADS
    source: str | None = None

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.signal.shape[1] / self.fs

    def __repr__(self) -> str:
        return (f"ECGSignal({len(self.leads)} leads, {self.signal.shape[1]} samples at "
                f"{self.fs:g} Hz = {self.duration_s:.1f} s, source={self.source!r})")


def read_ecg(path: PathLike, fs: float | None = None) -> ECGSignal:
    """Read one ECG file into an :class:`ECGSignal` (leads in canonical order, mV).

    WFDB records (stem, ``.hea``, or CinC ``.hea`` + ``.mat``) carry their rate; an original
    CPSC2018 ``.mat`` is 500 Hz unless ``fs`` says otherwise; a ``.npy`` array (12, N) needs
    ``fs``. Raises :class:`~etp.errors.DataError` naming the file for anything unreadable.
    """
    from etp.data.signal_io import read_signal_file

    p = Path(path)
    if p.suffix.lower() == ".npy" and fs is None:
        raise DataError(f"{p}: a .npy array carries no sampling rate; pass fs=HZ")
    sig, rate = read_signal_file(p, fs=fs)
    return ECGSignal(sig, float(rate), LEADS, str(p))


def preprocess(signal: ECGSignal | np.ndarray, model: Any, fs: float | None = None,
               pad: bool = False, warnings: list[str] | None = None) -> np.ndarray:
    """One raw ECG -> the (12, L) float32 input ``model`` expects, with the preprocessing the
    model was trained with (its directory's settings). ``signal``: an :class:`ECGSignal`, or a
    (12, N) mV array with ``fs``. A record shorter than the input is an error unless ``pad``.
    Amplitude warnings (a flat lead) are logged and appended to ``warnings`` when given."""
    from etp.eval.features import model_preprocess_config, preprocess_signal

    pcfg = model_preprocess_config(model)
    if isinstance(signal, ECGSignal):
        sig, rate, where = signal.signal, signal.fs, signal.source or "signal"
    else:
        if fs is None:
            raise DataError("preprocess: a raw array needs its sampling rate: pass fs=HZ")
        sig, rate, where = np.asarray(signal), float(fs), "signal"
    return preprocess_signal(
        sig, rate, pcfg, where, pad=pad, pad_hint="pass pad=True", warnings=warnings
    )


def _input_spec(model: Any) -> tuple[int, str]:
    from etp.eval.features import model_preprocess_config

    pcfg = model_preprocess_config(model)
    return pcfg.n_samples, f"{pcfg.length_s:g} s at {pcfg.fs:g} Hz"


def check_input_length(model: Any, x: np.ndarray) -> None:
    """DataError unless ``x`` (B, 12, L) has the model's input length L (its preprocessing)."""
    if not getattr(model, "preprocessing", None):
        return  # a model directory without preprocessing settings: any length
    n, spec = _input_spec(model)
    if x.shape[-1] != n:
        guess = ""
        if x.shape[-1] > n and x.shape[-1] % n == 0:
            guess = f" (a {x.shape[-1] // n}x higher sampling rate?)"
        raise DataError(
            f"ECG array of shape {tuple(x.shape)}: the model expects preprocessed ECGs of "
            f"{n} samples ({spec}), got {x.shape[-1]}{guess}; give raw signals with their rate "
            "(model.predict(x, fs=HZ), model.preprocess(x, fs=HZ)) to have them resampled and "
            "preprocessed"
        )


def model_inputs(
    model: Any, items: Any, fs: float | None = None, pad: bool = False,
    warnings: dict[str, list[str]] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Inputs (see the module doc) -> ``(x (n, 12, L) float32, names)`` ready for the model;
    ``warnings``, when a dict, gets ``{name: [warning, ...]}`` for inputs that raised amplitude
    warnings (a flat lead)."""
    sink: dict[str, list[str]] = {} if warnings is None else warnings

    def note(name: str, found: list[str]) -> None:
        if found:
            sink.setdefault(name, []).extend(found)

    from etp.eval.features import model_preprocess_config, read_ecg_file

    if isinstance(items, (str, Path, ECGSignal)):
        items = [items]
    if isinstance(items, np.ndarray):
        arr = items[None] if items.ndim == 2 else items
        if arr.ndim != 3 or arr.shape[1] != 12:
            raise DataError(
                f"expected an ECG array (12, N) or (n, 12, N), got shape {tuple(items.shape)}"
            )
        names = [f"array[{i}]" for i in range(len(arr))]
        if fs is None:
            check_input_length(model, arr)
            return np.asarray(arr, dtype=np.float32), names
        out = []
        for a, name in zip(arr, names):
            found: list[str] = []
            out.append(preprocess(a, model, fs=fs, pad=pad, warnings=found))
            note(name, found)
        return np.stack(out).astype(np.float32), names
    if not isinstance(items, Sequence) or not items:
        raise DataError(
            f"expected file paths, ECGSignal objects or numpy arrays, got {type(items).__name__}"
        )
    pcfg = model_preprocess_config(model)
    rows: list[np.ndarray] = []
    names: list[str] = []
    for i, item in enumerate(items):
        found: list[str] = []
        if isinstance(item, (str, Path)):
            names.append(str(item))
            rows.append(read_ecg_file(item, pcfg, fs=fs, pad=pad, warnings=found))
        elif isinstance(item, ECGSignal):
            names.append(item.source or f"signal[{i}]")
            rows.append(preprocess(item, model, pad=pad, warnings=found))
        elif isinstance(item, np.ndarray):
            inner: dict[str, list[str]] = {}
            x, _ = model_inputs(
                model, item if item.ndim == 3 else item[None], fs=fs, pad=pad, warnings=inner
            )
            rows.extend(x)
            names.extend(f"array[{i}]" for _ in range(len(x)))
            found = [w for ws in inner.values() for w in ws]
        else:
            raise DataError(f"input {i}: expected a path, an ECGSignal or an array, "
                            f"got {type(item).__name__}")
        note(names[-1], found)
    return np.stack(rows).astype(np.float32), names


def predict(
    model: Any,
    items: Any,
    labels: Sequence[str] | None = None,
    fs: float | None = None,
    dataset: str | None = None,
    pad: bool = False,
    reports: Sequence[str] | None = None,
) -> Any:
    """Zero-shot class probabilities as a pandas DataFrame (one row per input, one column per
    class; ``prediction`` column last). ``df.attrs["warnings"]``: ``{input: [warning, ...]}``
    for inputs with amplitude warnings (a flat lead), also logged.

    ``labels``: class names (free text, or codes/names of ``dataset``); default: the classes of
    ``dataset``, else of the model's default dataset. Prompts: the model's shipped zero-shot
    variant (:mod:`etp.zero_shot_defaults`); ``reports`` gives a report gallery for report
    prototypes of free-text labels.
    """
    import pandas as pd

    from etp.errors import ConfigError, ModelError
    from etp.eval.zero_shot import load_prompt_table, zero_shot_scores
    from etp.zero_shot_defaults import merge_labels, resolve_zero_shot

    if not model.has_text:
        raise ModelError(f"{model.path}: this {model.method!r} model has no text side; "
                         "zero-shot prediction needs an ETP model")
    table = load_prompt_table()
    defaults = model.zero_shot_defaults
    if labels is None:
        dataset = dataset or (defaults.dataset if defaults is not None else None)
        if dataset is None:
            raise ConfigError("predict: give labels=[...] (this model stores no default classes)")
        classes = table.classes(dataset)
    else:
        classes = merge_labels(list(labels), "labels")
    warnings: dict[str, list[str]] = {}
    x, names = model_inputs(model, items, fs=fs, pad=pad, warnings=warnings)
    emb = model.embed_ecg(x)
    resolved = resolve_zero_shot(model, classes, dataset, table, reports=reports)
    scale = float(model.model.scale().detach())
    _, probs = zero_shot_scores(emb, resolved.class_emb, scale)
    df = pd.DataFrame(probs, index=pd.Index(names, name="input"), columns=classes)
    df["prediction"] = [classes[int(k)] for k in probs.argmax(axis=1)]
    df.attrs["prompts"] = resolved.description
    df.attrs["warnings"] = warnings
    return df


def embed(model: Any, items: Any, fs: float | None = None, pad: bool = False) -> np.ndarray:
    """L2-normalised ECG embeddings (n, embed_dim) of paths, signals or arrays."""
    x, _ = model_inputs(model, items, fs=fs, pad=pad)
    return model.embed_ecg(x)


__all__ = ["ECGSignal", "read_ecg", "preprocess", "predict", "embed", "model_inputs"]
