"""A test that would catch a leak: the rotated benchmark, end to end on the bundled sample, with
spies on every step that reads records, and the assertion that no step of a rotation read that
rotation's test fold; a deliberately leaking split must make the same check fail."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from etp.benchmark import load_benchmark_config

REPO = Path(__file__).resolve().parents[1]

#: the steps whose records are recorded, and which must never include the rotation's test fold
STEPS = (
    "pretraining batches",  # CacheBatches rows (training and validation loss)
    "pretraining reports",  # the report embeddings pretraining reads
    "probe fit and selection",  # the training and validation arrays given to select_readout
    "prompt choice",  # the validation records each prompt variant is scored on to choose one
    "report gallery",  # the reports the via_reports prototypes are built from
)


class Spies:
    """Record ids that each step of each rotation (by test fold) saw."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], set[str]] = defaultdict(set)
        self.rotation: int | None = None  # test fold of the rotation being run
        self.prepared: Any = None
        self.arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(array) -> (array, rows)

    def ids(self, rows: Any) -> set[str]:
        rec = self.prepared.meta["record_id"].astype(str).to_numpy()
        return set(rec[np.asarray(rows, dtype=np.int64)].tolist())

    def saw(self, step: str, rows: Any) -> None:
        assert self.rotation is not None, f"{step} ran outside a rotation"
        self.seen[(self.rotation, step)] |= self.ids(rows)

    def rows_of(self, array: np.ndarray) -> np.ndarray:
        """The cache rows a feature array was extracted from."""
        kept = self.arrays.get(id(array))
        assert kept is not None and kept[0] is array, "an array that extract() did not return"
        return kept[1]

    def install(self, mp: pytest.MonkeyPatch) -> None:
        import etp.benchmark.run as run
        import etp.eval.features as features
        import etp.eval.linear_probe as linear_probe
        import etp.eval.protocol as protocol
        import etp.text.reports as reports
        from etp.data.batches import CacheBatches

        real_obtain, real_getitem = run.obtain_model, CacheBatches.__getitem__
        real_embed, real_extract = reports.report_embeddings, features.extract
        real_select, real_zs = linear_probe.select_readout, protocol._zero_shot
        real_gallery = protocol.training_reports

        def obtain_model(cfg: Any, method: str, seed: int, rot: Any, prepared: Any, *a: Any,
                         **k: Any) -> Any:
            self.rotation, self.prepared = rot.test, prepared  # what follows runs for this one
            return real_obtain(cfg, method, seed, rot, prepared, *a, **k)

        def getitem(ds: Any, positions: list[int]) -> Any:
            x, rows = real_getitem(ds, positions)
            self.saw("pretraining batches", rows.numpy())
            return x, rows

        def report_embeddings(prepared: Any, rows: np.ndarray, *a: Any, **k: Any) -> Any:
            self.saw("pretraining reports", rows)
            return real_embed(prepared, rows, *a, **k)

        def extract(model: Any, prepared: Any, indices: Any = None, *a: Any, **k: Any) -> Any:
            out = real_extract(model, prepared, indices, *a, **k)
            rows = np.arange(len(prepared)) if indices is None else np.asarray(indices)
            self.arrays[id(out)] = (out, rows)
            return out

        def select_readout(classes: Any, config: Any, readouts: Any, *a: Any, **k: Any) -> Any:
            for train, val in readouts.values():
                self.saw("probe fit and selection", self.rows_of(train))
                self.saw("probe fit and selection", self.rows_of(val))
            return real_select(classes, config, readouts, *a, **k)

        def zero_shot(model: Any, prepared: Any, split: Any, s: Any, out: Any, classes: Any,
                      emb: dict[str, np.ndarray], *a: Any) -> Any:
            if "val" in emb:
                self.saw("prompt choice", self.rows_of(emb["val"]))
            return real_zs(model, prepared, split, s, out, classes, emb, *a)

        def training_reports(prepared: Any, split: Any) -> list[str]:
            if split.reports is not None:
                self.saw("report gallery", split.reports)
            return real_gallery(prepared, split)

        mp.setattr(run, "obtain_model", obtain_model)
        mp.setattr(CacheBatches, "__getitem__", getitem)
        mp.setattr(reports, "report_embeddings", report_embeddings)
        mp.setattr(features, "extract", extract)
        mp.setattr(linear_probe, "select_readout", select_readout)
        mp.setattr(protocol, "_zero_shot", zero_shot)
        mp.setattr(protocol, "training_reports", training_reports)

    def test_ids(self, fold: int) -> set[str]:
        return self.ids(self.prepared.select(folds=[fold]))


def check_no_leak(spies: Spies, steps: tuple[str, ...] = STEPS) -> None:
    """AssertionError naming each (rotation, step) that read a record of the rotation's test
    fold."""
    leaks = []
    for (fold, step), ids in sorted(spies.seen.items()):
        if step in steps:
            bad = ids & spies.test_ids(fold)
            if bad:
                leaks.append(f"{step} of rotation test{fold}: {len(bad)} test records")
    assert not leaks, "; ".join(leaks)


def _config(tmp_path: Path, sample_dir: Path, cache: Path) -> Any:
    return load_benchmark_config(
        str(REPO / "configs" / "quickstart-benchmark.yaml"),
        [
            f"out_dir={tmp_path / 'results'}",
            f"work_dir={tmp_path / 'work'}",
            f"prepare.root={sample_dir / 'ptb-xl'}",
            f"prepare.out={cache}",  # the session's prepared sample (reused, not rebuilt)
            "methods=[etp]",
            "rotate_folds=true",
            "rotation_folds=[10,5]",  # two rotations: test 10 / val 9, test 5 / val 4
            "dev_folds=[5]",
            "transfer={}",
            "retrieval=false",
            "plots=false",
            "pretrain.train.epochs=1",
            "pretrain.train.batch_size=8",
            "pretrain.train.warmup_epochs=0",
            "pretrain.train.num_workers=0",  # the spies see every batch (no worker processes)
            "pretrain.train.precision=fp32",  # bf16 convolutions are slow on CPU
            "pretrain.data.max_records=48",  # a few steps: which records, not how well
            "precision=fp32",
            "views=1",
            "probe.cv_folds=0",  # the weight decay chosen on the validation fold
            "probe.weight_decays=[1.0,0.01]",
            "probe.pooling=[avg]",
            "bootstrap=20",
        ],
    )


@pytest.fixture
def spies() -> Iterator[Spies]:
    mp = pytest.MonkeyPatch()
    s = Spies()
    s.install(mp)
    try:
        yield s
    finally:
        mp.undo()


def test_no_step_of_a_rotation_reads_its_test_fold(
    tmp_path: Path, sample_dir: Path, ptbxl_sample_cache: Path, one_torch_thread: None,
    spies: Spies,
) -> None:
    from etp.benchmark import run_benchmark

    cfg = _config(tmp_path, sample_dir, ptbxl_sample_cache)
    results = run_benchmark(cfg, command=["etp", "benchmark", "(leak test)"])
    # every step ran in both rotations, so the check below had something to catch
    for fold in (10, 5):
        for step in STEPS:
            assert spies.seen[(fold, step)], f"{step} never ran in rotation test{fold}"
        # ... and the validation fold was read where it should be (the spies see real records)
        rows = spies.prepared.select(folds=[fold - 1])
        val = spies.ids(rows[spies.prepared.label_index(rows) >= 0])  # the single-label ones
        assert val == spies.seen[(fold, "prompt choice")]
        assert val & spies.seen[(fold, "probe fit and selection")]
    check_no_leak(spies)
    # the figures over the clean folds (test fold 10; fold 5 is a declared development fold)
    assert results["ptbxl"]["clean_test_folds"] == [10]
    assert results["ptbxl"]["clean"]["n_test"] < results["ptbxl"]["n_test"]

    # a leaking split: each rotation's validation split (and the report gallery) hold its test
    # records; the same run, reusing the models, must fail the same check
    import etp.benchmark.run as run

    real_split = run.fold_split

    def leaking_split(prepared: Any, train: Any, val: int, test: int) -> Any:
        split = real_split(prepared, train, val, test)
        split.val = np.concatenate([split.val, split.test])
        split.reports = np.concatenate([split.reports, split.retrieval])
        return split

    leaky = Spies()
    mp = pytest.MonkeyPatch()
    leaky.install(mp)  # on top of the first spies: these record the second run only
    mp.setattr(run, "fold_split", leaking_split)
    try:
        run_benchmark(cfg, command=["etp", "benchmark", "(leak test, leaking)"])
    finally:
        mp.undo()
    for step in ("probe fit and selection", "prompt choice", "report gallery"):
        with pytest.raises(AssertionError, match=f"{step} of rotation test10"):
            check_no_leak(leaky, (step,))
    with pytest.raises(AssertionError, match="rotation test5"):
        check_no_leak(leaky)
