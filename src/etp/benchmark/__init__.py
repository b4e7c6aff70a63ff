"""``etp benchmark``, one command for the paper's tables: pretrain (or reuse) -> linear probe ->
zero-shot -> retrieval.

``etp benchmark --config configs/benchmark-ptbxl.yaml`` runs, for every method (ETP, SimCLR,
random init), every seed and every *rotation*, the whole protocol, then pools and writes
``results.md`` (Tables 1-3 in the paper's layout, mean ± std over seeds and bootstrap 95 % CIs),
``results.json`` and PNG plots.

Honesty is structural here:

* A rotation names one test fold and one validation fold; the pretraining of that rotation gets
  the test fold as ``data.exclude_folds`` (the training loop asserts that no record or patient of
  it is read), and the validation fold is the only data used for model selection (best epoch by
  validation loss, linear-probe epochs and weight decay, the zero-shot prompt variant).
* Test predictions are computed once per rotation, after every choice is made, and are only
  pooled and scored at the end.

With ``rotate_folds: true`` every fold is the test fold once (out-of-fold predictions pooled),
which is what small data needs: PTB-XL ids 1-999 hold ~100 records per fold.

Layout: :mod:`~etp.benchmark.config` (the config and its checks), :mod:`~etp.benchmark.runs`
(rotations, pretraining configs, model reuse), :mod:`~etp.benchmark.run` (orchestration),
:mod:`~etp.benchmark.render` (results.md and plots). Evaluation and aggregation are
:mod:`etp.eval.protocol` and :mod:`etp.eval.aggregate`, shared with ``etp evaluate``.
"""

from etp.benchmark.config import (
    BenchmarkConfig,
    TransferTarget,
    check_dev_folds,
    load_benchmark_config,
    validate,
)
from etp.benchmark.run import prepare, run_benchmark
from etp.benchmark.runs import (
    DEFAULT_METHODS,
    Rotation,
    obtain_model,
    pretrain_config,
    rotations,
    seeds_of,
)

__all__ = [
    "DEFAULT_METHODS",
    "BenchmarkConfig",
    "Rotation",
    "TransferTarget",
    "check_dev_folds",
    "load_benchmark_config",
    "obtain_model",
    "prepare",
    "pretrain_config",
    "rotations",
    "run_benchmark",
    "seeds_of",
    "validate",
]
