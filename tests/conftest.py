"""Shared test fixtures: the bundled real sample and (when present) the larger shared data."""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: the real sample bundled in the repo (PTB-XL subset, CPSC2018 subset), always present
SAMPLE_DIR = REPO / "data" / "sample"
#: the larger real data beside the checkout; tests that need it skip when it is absent
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))
# text embeddings (etp.text.cache.default_cache_dir) go to a directory of this test session,
# shared by the commands the tests run as subprocesses, never to the user's cache
os.environ["ETP_CACHE_DIR"] = tempfile.mkdtemp(prefix="etp-test-cache-")


@functools.cache
def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat_lead_npy(tmp_path: Path, lead: int = 6) -> tuple[Path, np.ndarray]:
    """The bundled PTB-XL record 16 (100 Hz) with one lead zeroed (default V1, a disconnected
    electrode), saved as ``(1000, 12)`` ``.npy``; returns (path, the signal)."""
    import wfdb

    sig, _ = wfdb.rdsamp(str(SAMPLE_DIR / "ptb-xl" / "records100" / "00000" / "00016_lr"))
    sig[:, lead] = 0.0
    path = tmp_path / "flat_lead.npy"
    np.save(path, sig)
    return path, sig


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """Root of the bundled real sample."""
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; skips the test when it is not there."""
    if not (SHARED_DATA / "ptb-xl" / "ptbxl_database.csv").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- prepared caches of the bundled sample (owner H2: etp.data.prepare / etp.data.cache) -------


@pytest.fixture(scope="session")
def ptbxl_sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache dir prepared from the bundled PTB-XL sample (100 Hz files, default preprocessing:
    100 Hz, 10 s = 1000 samples, band-pass 0.5-40 Hz, mV). Open it with
    ``etp.data.cache.load_prepared``; treat it as read-only (it is shared by the session)."""
    from etp.data.prepare import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "ptbxl-sample"
    prepare_dataset(PrepareConfig(dataset="ptbxl", root=str(SAMPLE_DIR / "ptb-xl"), out=str(out)))
    return out


@pytest.fixture(scope="session")
def cpsc_sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache dir prepared from the bundled CPSC2018 sample (both file forms present; records
    listed but not bundled are left out; default preprocessing: 500 -> 100 Hz, centre crop /
    zero pad to 10 s). Read-only, shared by the session."""
    from etp.data.prepare import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "cpsc-sample"
    prepare_dataset(
        PrepareConfig(
            dataset="cpsc2018", root=str(SAMPLE_DIR / "cpsc2018"), out=str(out), only_present=True
        )
    )
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One compute thread for a test module: tiny batches gain nothing from two, and on a busy
    machine a second oneDNN thread that gets descheduled stalls every kernel."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
