"""The pretraining loop shared by every method: ETP (ECG-report CLIP loss) and SimCLR.

What one run does, in order:

1. open the prepared cache (memory-mapped signals, never loaded whole) and select the training
   and validation records; the held-out records (``data.exclude_folds`` and the cache's ``test``
   split) are never read, and record and patient ids are checked to be disjoint from them;
2. ETP: encode every distinct training/validation report once with the frozen text model
   (:func:`etp.text.cache.embed_texts`, cached on disk under ``<cache>/text_emb``) — the
   language model never runs inside the loop, a batch is signal rows plus embedding rows;
3. train with Adam (optional cosine schedule with warm-up) under bf16 autocast, logging to CSV
   (and TensorBoard when installed), validating each epoch, checkpointing at epoch ends and
   every ``checkpoint_every_steps`` steps so that ``resume=True`` continues *exactly*;
4. save ``<out_dir>/model`` (and ``<out_dir>/model-best``, best validation loss) with the cache's
   preprocessing settings and the text model spec, so inference preprocesses identically.

Under ``torchrun`` each process reads its own shard of every epoch's permutation, the model is
wrapped in DistributedDataParallel, the CLIP loss uses negatives from the whole global batch,
and only rank 0 writes files.

Speed on a CPU (``benchmarks/pretrain_speed.md``): batches are read with ``preadv`` straight from
the cache file (:class:`CacheBatches`; resident memory independent of the number of records),
the language model is out of the loop, and the ResNet runs its convolutions as 2-D
channels-last ones (:func:`etp.models.channels_last.enable_channels_last`, same weights,
checked before use).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from etp.config import DataConfig, PretrainConfig, TrainConfig, save_yaml, to_dict
from etp.errors import ConfigError, DataError, TrainingError
from etp.io import atomic_write_json, atomic_write_text
from etp.models.channels_last import enable_channels_last
from etp.train import checkpoint as ckpt

log = logging.getLogger(__name__)

#: columns of ``<out_dir>/train_log.csv`` (one row every ``log_every_steps`` steps)
TRAIN_LOG_COLUMNS = ("step", "epoch", "loss", "lr", "temperature", "samples_per_s")
#: columns of ``<out_dir>/val_log.csv`` (one row per epoch)
VAL_LOG_COLUMNS = ("step", "epoch", "val_loss", "best")

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
MODEL_DIR = "model"
BEST_MODEL_DIR = "model-best"


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


@dataclass
class RecordSelection:
    """Cache row indices of the training, validation and held-out (never read) records."""

    train: np.ndarray
    val: np.ndarray
    held_out: np.ndarray
    dropped_empty_reports: list[str]


def select_records(meta: Any, data: DataConfig) -> RecordSelection:
    """Training / validation / held-out rows of a cache's metadata table.

    Training records come from ``data.train_folds`` when given, else from the ``split`` column
    (``data.train_split``); validation likewise. Held out are the records of
    ``data.exclude_folds`` and, unless ``train_folds`` and ``exclude_folds`` are both given, of
    the cache's ``test`` split (so a fold rotation can train on the cache's default test fold
    while it excludes another): selecting any of them for training
    or validation is a ConfigError, and record ids (and non-empty patient ids) of the selected
    records must not occur among them (DataError otherwise).
    """
    n = len(meta)
    fold = meta["fold"].to_numpy()
    split = meta["split"].astype(str).to_numpy()
    excluded = list(data.exclude_folds or [])
    for name, folds in (("data.train_folds", data.train_folds), ("data.val_folds", data.val_folds)):
        both = sorted(set(folds or []) & set(excluded))
        if both:
            raise ConfigError(f"{name} {folds} overlaps data.exclude_folds {excluded} (fold {both})")
    if data.train_folds is not None:
        if not data.train_folds:
            raise ConfigError("data.train_folds is an empty list (use null to select by split)")
        train_mask = np.isin(fold, data.train_folds)
        train_desc = f"data.train_folds={data.train_folds}"
    else:
        train_mask = split == data.train_split
        train_desc = f"data.train_split={data.train_split!r}"
    if data.val_folds is not None:
        val_mask = np.isin(fold, data.val_folds)
    elif data.val_split:
        val_mask = split == data.val_split
    else:
        val_mask = np.zeros(n, dtype=bool)
    # Selecting by folds with explicit data.exclude_folds (e.g. a fold rotation) makes those folds
    # the held-out set; otherwise the cache's own 'test' split is held out too.
    by_folds = data.train_folds is not None and bool(excluded)
    held_mask = np.isin(fold, excluded) | (np.zeros(n, dtype=bool) if by_folds else split == "test")
    for what, mask in (("training", train_mask), ("validation", val_mask)):
        leak = mask & held_mask
        if leak.any():
            ids = meta["record_id"].to_numpy()[leak][:5].tolist()
            raise ConfigError(
                f"the {what} selection includes {int(leak.sum())} held-out record(s) (in "
                f"data.exclude_folds {excluded} or the cache's 'test' split), e.g. {ids}; "
                "held-out records are never used for pretraining"
            )
    if by_folds and (train_mask & (split == "test")).any():
        log.warning(
            "data.train_folds %s include %d record(s) of the cache's 'test' split; they are "
            "pretrained on (held out are only data.exclude_folds %s)",
            data.train_folds,
            int((train_mask & (split == "test")).sum()),
            excluded,
        )
    both = train_mask & val_mask
    if both.any():
        raise ConfigError(
            f"{int(both.sum())} record(s) are selected for both training and validation; "
            "make data.train_folds/val_folds (or train_split/val_split) disjoint"
        )
    if not train_mask.any():
        raise DataError(
            f"no training records: {train_desc} matches none of the {n} records of the cache"
        )
    train = np.nonzero(train_mask)[0].astype(np.int64)
    val = np.nonzero(val_mask)[0].astype(np.int64)
    held = np.nonzero(held_mask)[0].astype(np.int64)
    if data.max_records is not None:
        if data.max_records < 1:
            raise ConfigError(f"data.max_records must be >= 1, got {data.max_records}")
        train = train[: data.max_records]
    assert_disjoint(meta, np.concatenate([train, val]), held)
    return RecordSelection(train, val, held, [])


def assert_disjoint(meta: Any, used: np.ndarray, held: np.ndarray) -> None:
    """DataError when a used record shares its record id or patient id with a held-out one."""
    if held.size == 0 or used.size == 0:
        return
    rid = meta["record_id"].astype(str).to_numpy()
    common = set(rid[used]) & set(rid[held])
    if common:
        raise DataError(
            f"record id(s) {sorted(common)[:5]} occur both in the pretraining selection and in "
            "the held-out records"
        )
    if "patient_id" in meta.columns:
        pid = meta["patient_id"].astype(str).to_numpy()
        shared = ({p for p in pid[used] if p} & {p for p in pid[held] if p})
        if shared:
            raise DataError(
                f"{len(shared)} patient(s) have records both in the pretraining selection and in "
                f"the held-out records (e.g. patient_id {sorted(shared)[:5]}); the split would "
                "leak test patients into pretraining"
            )


def _drop_empty_reports(meta: Any, sel: RecordSelection, column: str) -> RecordSelection:
    """Remove records without report text from ETP's selection (logged, never silent)."""
    texts = meta[column].astype(str).to_numpy()
    empty = np.char.str_len(np.char.strip(texts.astype(str))) == 0
    if not empty.any():
        return sel
    dropped: list[str] = []
    keep = []
    for idx in (sel.train, sel.val):
        bad = empty[idx]
        dropped.extend(meta["record_id"].astype(str).to_numpy()[idx[bad]].tolist())
        keep.append(idx[~bad])
    if dropped:
        log.warning(
            "%d record(s) have an empty report and are left out of ECG-text pretraining: %s%s",
            len(dropped),
            ", ".join(dropped[:10]),
            " ..." if len(dropped) > 10 else "",
        )
    return RecordSelection(keep[0], keep[1], sel.held_out, dropped)


# ----------------------------------------------------------------------------------------------
# Reading batches
# ----------------------------------------------------------------------------------------------


class CacheBatches:
    """Batch-level dataset over a prepared cache: ``ds[positions] -> (x (B, 12, L), rows (B,))``.

    ``positions`` index ``indices`` (the selected cache rows); ``rows`` are the cache rows read.
    Each record is read with ``os.preadv`` straight into the batch buffer instead of through the
    memory map: repeated epochs are still served by the OS page cache, but the pages are not
    mapped into the process, so its resident memory stays the same whatever the number of
    records (touched memmap pages would count as the process's RSS). Only the rows asked for
    are ever read. Pickles without its file handle, so DataLoader workers open their own.
    """

    def __init__(self, prepared: Any, indices: np.ndarray) -> None:
        signals = prepared.signals
        if not isinstance(signals, np.memmap) or not signals.flags.c_contiguous:
            raise DataError(f"{prepared.path}: signals are not a C-ordered memory-mapped array")
        self.path = Path(signals.filename)
        self.offset = int(signals.offset)
        self.row_shape = tuple(int(d) for d in signals.shape[1:])
        self.row_bytes = int(np.prod(self.row_shape)) * signals.dtype.itemsize
        self.n_rows = int(signals.shape[0])
        self.indices = np.asarray(indices, dtype=np.int64)
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return int(self.indices.size)

    def _open(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __getitem__(self, positions: list[int]) -> tuple[Tensor, Tensor]:
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        out = np.empty((rows.size, *self.row_shape), dtype=np.float32)
        fd = self._open()
        for j in np.argsort(rows, kind="stable"):  # ascending file offsets
            view = memoryview(out[j]).cast("B")
            got = os.preadv(fd, [view], self.offset + int(rows[j]) * self.row_bytes)
            if got != self.row_bytes:
                raise DataError(
                    f"{self.path}: record row {int(rows[j])} is truncated ({got} of "
                    f"{self.row_bytes} bytes); prepare the cache again"
                )
        return torch.from_numpy(out), torch.from_numpy(rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------
# Sampling, seeding, schedule
# ----------------------------------------------------------------------------------------------


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions: a seeded permutation per epoch, sharded over processes.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run replays the same
    permutation and :meth:`set_epoch` with ``start_batch`` skips the batches already done.
    Incomplete batches are dropped (contrastive batches must be full), and every process gets
    the same number of batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0
        self.num_batches = (n // world_size) // batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``'s permutation, starting at batch ``start_batch``."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=gen)
        else:
            perm = torch.arange(self.n)
        per_rank = self.n // self.world_size
        mine = perm[: per_rank * self.world_size][self.rank :: self.world_size]
        bs = self.batch_size
        for b in range(self.start_batch, self.num_batches):
            yield mine[b * bs : (b + 1) * bs].tolist()

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, kind: str, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (``none``: 1; ``cosine``: warm-up+cosine)."""
    if kind == "none":
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


# ----------------------------------------------------------------------------------------------
# Model step (what DistributedDataParallel wraps)
# ----------------------------------------------------------------------------------------------


class ContrastiveStep(nn.Module):
    """``forward`` of one training step: ECG (and text) embeddings and the logit scale.

    DDP only synchronises gradients of computations run through ``forward``, so the model's
    ``embed_ecg``/``embed_text``/``scale`` calls are routed through this wrapper.
    """

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: Tensor, text: Tensor | None = None) -> tuple[Tensor, ...]:
        if self.method == "etp":
            return self.model.embed_ecg(x), self.model.embed_text(text), self.model.scale()
        return (self.model.embed_ecg(x),)


# ----------------------------------------------------------------------------------------------
# Logs
# ----------------------------------------------------------------------------------------------


class _CsvLog:
    """Append-only CSV log; on resume, rows after the checkpoint's step are discarded."""

    def __init__(self, path: Path, columns: tuple[str, ...], keep_until_step: int | None) -> None:
        self.path = path
        self.columns = columns
        rows: list[dict[str, str]] = []
        if keep_until_step is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= keep_until_step]
        lines = [",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")
        self._fh = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)

    def write(self, **values: Any) -> None:
        self._writer.writerow([_fmt(values.get(c, "")) for c in self.columns])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _tensorboard(out_dir: Path) -> Any | None:
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - optional dependency (ImportError and friends)
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def uses_augmentation(t: TrainConfig) -> bool:
    """Whether a run with training settings ``t`` augments its ECGs (SimCLR views, ETP's
    ``etp_augment``, or ETP's two-view ``ssl_weight`` term)."""
    from etp.data.augment import trains_on_augmented

    return trains_on_augmented(t.method, t.etp_augment, t.ssl_weight)


def validate_config(cfg: PretrainConfig, world_size: int = 1) -> None:
    """Reject settings the loop cannot run with, naming the key."""
    t = cfg.train
    if not cfg.data.cache:
        raise ConfigError("data.cache is not set: give the prepared cache directory (`etp prepare`)")
    if t.batch_size < 2:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: a contrastive loss needs at least 2 samples per "
            "batch (the other samples are the negatives)"
        )
    if t.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by the {world_size} processes"
        )
    if t.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {t.epochs}")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise ConfigError(f"train.lr must be a positive finite number, got {t.lr}")
    if t.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers must be >= 0, got {t.num_workers}")
    if t.checkpoint_every_steps < 0:
        raise ConfigError(f"train.checkpoint_every_steps must be >= 0, got {t.checkpoint_every_steps}")
    if t.log_every_steps < 1:
        raise ConfigError(f"train.log_every_steps must be >= 1, got {t.log_every_steps}")
    if t.warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}")
    if not 0.0 <= t.soft_targets <= 1.0:
        raise ConfigError(f"train.soft_targets must be in [0, 1], got {t.soft_targets}")
    if t.soft_target_temperature <= 0:
        raise ConfigError(
            f"train.soft_target_temperature must be > 0, got {t.soft_target_temperature}"
        )
    if t.ssl_weight < 0:
        raise ConfigError(f"train.ssl_weight must be >= 0, got {t.ssl_weight}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.simclr_temperature <= 0:
        raise ConfigError(f"train.simclr_temperature must be > 0, got {t.simclr_temperature}")
    if not 0.0 < t.crop_min_frac <= 1.0:
        raise ConfigError(f"train.crop_min_frac must be in (0, 1], got {t.crop_min_frac}")
    if uses_augmentation(t):
        from etp.data.augment import build_augmentation

        try:
            build_augmentation(list(t.augment))  # unknown names fail before any data is read
        except ConfigError as exc:
            raise ConfigError(f"train.augment: {exc}") from None


def checkpoint_path(out_dir: str | Path) -> Path:
    """Where a run in ``out_dir`` keeps its latest checkpoint."""
    return Path(out_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Run a pretraining and return the saved model directory ``<out_dir>/model``.

    ``resume=True`` continues from ``<out_dir>/checkpoints/last.pt`` exactly where it stopped
    (same config required); without it, an out_dir that already holds a checkpoint is refused,
    and so is one holding a finished run unless ``overwrite`` (:mod:`etp.train.rundir`, which
    also locks out_dir for the run).
    Raises ConfigError / DataError / ModelError for bad input, TrainingError when the loss
    becomes non-finite (the last good checkpoint is kept).
    """
    from etp.train.distributed import barrier, cleanup, init_distributed
    from etp.train.rundir import claim_run_dir

    dist_info = init_distributed(cfg.train.device)
    try:
        out, main = cfg.train.out_dir, dist_info.rank == 0
        with claim_run_dir(out, checkpoint=checkpoint_path(out), resume=resume,
                           overwrite=overwrite, main=main):
            barrier()  # rank 0 has checked (and with overwrite cleared) out_dir
            result = _Run(cfg, dist_info).run(resume)
    except BaseException:
        if dist_info.is_distributed:
            cleanup()  # no barrier: the other processes may never get here
        raise
    if dist_info.is_distributed:
        cleanup(sync=True)
    return result


class _Run:
    """State of one pretraining run (kept in one object so the loop reads top to bottom)."""

    def __init__(self, cfg: PretrainConfig, dist_info: Any) -> None:
        self.cfg = cfg
        self.dist = dist_info
        self.device: torch.device = dist_info.device
        self.main = dist_info.rank == 0
        self.out = Path(cfg.train.out_dir)
        self.method = cfg.train.method
        self.text_spec: dict[str, Any] | None = None
        self.text_dim: int | None = None
        self.text_emb: Tensor | None = None
        self.text_row: Tensor | None = None
        if self.device.type == "cpu" and hasattr(os, "sched_getaffinity"):
            # more compute threads than usable cores (containers, CPU pinning, several
            # processes per machine) makes every oneDNN kernel wait for descheduled threads
            usable = max(1, len(os.sched_getaffinity(0)) // max(1, dist_info.world_size))
            if torch.get_num_threads() > usable:
                torch.set_num_threads(usable)

    # -- set-up -------------------------------------------------------------------------------

    def _prepare_data(self) -> None:
        from etp.data.cache import load_prepared

        cfg = self.cfg
        self.prepared = load_prepared(cfg.data.cache)
        meta = self.prepared.meta
        sel = select_records(meta, cfg.data)
        self.text_column = "report_norm" if cfg.model.text_normalize else "report"
        if self.method == "etp":
            sel = _drop_empty_reports(meta, sel, self.text_column)
        self.sel = sel
        world, bs = self.dist.world_size, cfg.train.batch_size
        self.local_bs = bs // world
        n_train = int(sel.train.size)
        if (n_train // world) // self.local_bs == 0:
            raise DataError(
                f"{n_train} training record(s) in {cfg.data.cache} are fewer than "
                f"train.batch_size={bs}; incomplete batches are dropped (a contrastive batch "
                "must be full), so no batch would be formed — lower train.batch_size or select "
                "more records"
            )
        self.train_set = CacheBatches(self.prepared, sel.train)
        self.sampler = EpochBatchSampler(
            n_train, self.local_bs, cfg.train.seed, self.dist.rank, world, shuffle=True
        )
        self.steps_per_epoch = self.sampler.num_batches
        n_val = int(sel.val.size)
        val_local = min(self.local_bs, n_val // world)
        self.val_loader: DataLoader | None = None
        if val_local * world >= 2:
            val_set = CacheBatches(self.prepared, sel.val)
            val_sampler = EpochBatchSampler(
                n_val, val_local, cfg.train.seed, self.dist.rank, world, shuffle=False
            )
            self.val_loader = self._loader(val_set, val_sampler, workers=0)
        elif n_val:
            log.warning("only %d validation record(s): validation loss is skipped", n_val)
        self.train_loader = self._loader(self.train_set, self.sampler, cfg.train.num_workers)
        log.info(
            "%s: %d training / %d validation records (%d held out, never read), %d steps/epoch",
            cfg.data.cache,
            n_train,
            n_val,
            sel.held_out.size,
            self.steps_per_epoch,
        )

    def _loader(self, dataset: Any, sampler: Sampler, workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            sampler=sampler,  # yields whole batches of positions; the dataset reads them at once
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            # the workers' base seed comes from this generator, not from the global RNG
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
        )

    def _text_embeddings(self) -> None:
        """ETP: embed each distinct training/validation report once with the frozen text model."""
        from etp.data.text import ReportTranslator, translation_glossary
        from etp.text.cache import embed_texts
        from etp.text.encoder import TextEncoder
        from etp.train.distributed import barrier

        m = self.cfg.model
        encoder = TextEncoder(
            m.text_model, pooling=m.text_pooling, max_length=m.text_max_length, device=str(self.device)
        )
        self.text_dim = int(encoder.dim)
        self.text_spec = dict(encoder.spec)
        used = np.concatenate([self.sel.train, self.sel.val])
        texts = self.prepared.meta[self.text_column].astype(str).to_numpy()[used].tolist()
        glossary = translation_glossary(m.report_translation)
        if glossary is not None:
            texts = ReportTranslator(glossary).translate(texts)
            # the glossary travels with the model so that prompts are translated the same way
            self.text_spec["report_glossary"] = glossary
        # beside the signal cache when it is writable, else in the run directory
        cache_dir = Path(self.cfg.data.cache) / "text_emb"
        if not os.access(cache_dir if cache_dir.is_dir() else cache_dir.parent, os.W_OK):
            cache_dir = self.out / "text_emb"
        # rank 0 encodes (and fills the on-disk cache) first; the others then read it
        if not self.main:
            barrier()
        t0 = time.perf_counter()
        ids = self.prepared.meta["record_id"].astype(str).to_numpy()[used].tolist()
        emb, index = embed_texts(texts, encoder, cache_dir=cache_dir, ids=ids)
        if self.main:
            barrier()
            log.info(
                "text embeddings: %d reports, %d distinct, dim %d (%.1f s)",
                len(texts),
                emb.shape[0],
                emb.shape[1],
                time.perf_counter() - t0,
            )
        del encoder
        row = np.full(len(self.prepared), -1, dtype=np.int64)
        row[used] = np.asarray(index, dtype=np.int64)
        self.text_emb = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
        self.text_row = torch.from_numpy(row)

    def _build_model(self) -> None:
        from etp.models.etp import ETPModel

        seed_everything(self.cfg.train.seed)
        model = ETPModel(self.cfg.model, text_dim=self.text_dim, method=self.method)
        if self.method != "etp":
            # SimCLR has its own fixed temperature; the CLIP logit scale must not be trained
            for name, p in model.named_parameters():
                if name.startswith("logit_scale") or name.startswith("text_head"):
                    p.requires_grad_(False)
        elif self.cfg.train.freeze_text_head:
            for name, p in model.named_parameters():
                if name.startswith("text_head"):
                    p.requires_grad_(False)
        self.model = model.to(self.device)
        if self.device.type == "cpu" and enable_channels_last(self.model.encoder):
            log.info("ECG encoder runs as 2-D channels-last convolutions (CPU fast path)")
        step_module: nn.Module = ContrastiveStep(self.model, self.method)
        if self.dist.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            step_module = DistributedDataParallel(
                step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self.step_module = step_module
        # the weights' moving average (each process keeps the same copy: DDP keeps the
        # parameters in sync); it is what validation scores and what is saved as the model
        self.ema: Any = None
        self.eval_step: nn.Module = step_module
        if self.cfg.train.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model,
                multi_avg_fn=get_ema_multi_avg_fn(self.cfg.train.ema_decay),
                use_buffers=True,
            )
            self.eval_step = ContrastiveStep(self.ema.module, self.method)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            params, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay
        )
        t = self.cfg.train
        total = t.epochs * self.steps_per_epoch
        warmup = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t.scheduler, total, warmup)
        )
        self.ssl_loss: nn.Module | None = None
        if self.method == "etp":
            from etp.losses.clip import ClipLoss

            self.loss_fn: nn.Module = ClipLoss(t.soft_targets, t.soft_target_temperature)
            if t.ssl_weight > 0:
                from etp.losses.simclr import NTXentLoss

                self.ssl_loss = NTXentLoss(temperature=t.simclr_temperature)
        else:
            from etp.losses.simclr import NTXentLoss

            self.loss_fn = NTXentLoss(temperature=t.simclr_temperature)
        self.augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
        if uses_augmentation(t):
            from etp.data.augment import build_augmentation

            self.augment = build_augmentation(
                list(t.augment), fs=self.prepared.fs, crop_min_frac=t.crop_min_frac
            )
        # augmentations draw from their own generator (saved in checkpoints), one per process
        self.aug_gen = torch.Generator().manual_seed(t.seed * 1_000 + 17 + self.dist.rank)

    def _arch(self) -> dict[str, Any]:
        m = self.cfg.model
        return {
            "method": self.method,
            "encoder": m.encoder,
            "in_leads": m.in_leads,
            "embed_dim": m.embed_dim,
            "head": m.head,
            "text_dim": self.text_dim,
            "signal_length": self.prepared.length,
        }

    def _data_info(self) -> dict[str, Any]:
        return {
            "cache": str(self.cfg.data.cache),
            "fingerprint": self.prepared.fingerprint,
            "n_train": int(self.sel.train.size),
            "n_val": int(self.sel.val.size),
            "world_size": self.dist.world_size,
        }

    # -- one batch ----------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return torch.autocast(
            device_type=self.device.type,
            dtype=torch.bfloat16,
            enabled=self.cfg.train.precision == "bf16",
        )

    def _loss(
        self, x: Tensor, idx: Tensor, gen: torch.Generator, step: nn.Module | None = None
    ) -> Tensor:
        """Loss of one batch (``x`` on the CPU, ``idx`` cache rows) through ``step`` (default:
        the trained module)."""
        step = self.step_module if step is None else step
        if self.method == "etp":
            if self.augment is not None and self.cfg.train.ssl_weight == 0:
                x = self.augment(x, gen)
            assert self.text_emb is not None and self.text_row is not None
            text = self.text_emb[self.text_row[idx]]
            if self.cfg.train.ssl_weight > 0:
                return self._loss_two_views(x, text, gen, step)
            x = x.to(self.device, non_blocking=True)
            text = text.to(self.device, non_blocking=True)
            with self._autocast():
                ecg_z, text_z, scale = step(x, text)
            return self.loss_fn(ecg_z.float(), text_z.float(), scale.float(), text)
        assert self.augment is not None
        v1, v2 = self.augment(x, gen), self.augment(x, gen)
        views = torch.cat([v1, v2]).to(self.device, non_blocking=True)
        with self._autocast():
            (z,) = step(views)
        z1, z2 = z.float().chunk(2)
        return self.loss_fn(z1, z2)

    def _loss_two_views(
        self, x: Tensor, text: Tensor, gen: torch.Generator, step: nn.Module
    ) -> Tensor:
        """ETP + NT-Xent: both augmented views matched to the report, and to each other."""
        assert self.augment is not None and self.ssl_loss is not None
        views = torch.cat([self.augment(x, gen), self.augment(x, gen)])
        views = views.to(self.device, non_blocking=True)
        text = text.to(self.device, non_blocking=True)
        with self._autocast():
            ecg_z, text_z, scale = step(views, text)  # 2n ECGs, n reports
        e1, e2 = ecg_z.float().chunk(2)
        t_z, scale = text_z.float(), scale.float()
        clip = 0.5 * (self.loss_fn(e1, t_z, scale, text) + self.loss_fn(e2, t_z, scale, text))
        return clip + self.cfg.train.ssl_weight * self.ssl_loss(e1, e2)

    @torch.no_grad()
    def _validate(self) -> float | None:
        if self.val_loader is None:
            return None
        from etp.train.distributed import is_distributed

        self.eval_step.eval()
        gen = torch.Generator().manual_seed(self.cfg.train.seed + 7919)
        total = torch.zeros(2, dtype=torch.float64)
        for x, idx in self.val_loader:
            loss = self._loss(x, idx, gen, self.eval_step)
            total += torch.tensor([float(loss) * x.shape[0], x.shape[0]], dtype=torch.float64)
        self.step_module.train()
        if is_distributed():
            import torch.distributed as tdist

            t = total.to(self.device)
            tdist.all_reduce(t)
            total = t.cpu()
        return float(total[0] / total[1]) if total[1] > 0 else None

    def _temperature(self) -> float:
        if self.method == "etp":
            return float(1.0 / self.model.scale().detach().float().cpu())
        return float(self.cfg.train.simclr_temperature)

    # -- saving -------------------------------------------------------------------------------

    def _save_checkpoint(self, pos: ckpt.TrainPosition) -> None:
        if not self.main:
            return
        ckpt.save_checkpoint(
            checkpoint_path(self.out),
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            position=pos,
            config=to_dict(self.cfg),
            arch=self._arch(),
            generators={"augment": self.aug_gen},
            data=self._data_info(),
            ema=self.ema,
        )
        atomic_write_json(
            self.out / CHECKPOINT_DIR / "last.json",
            {"epoch": pos.epoch, "batch": pos.batch, "step": pos.step},
        )

    def _save_model(self, path: Path, extra: dict[str, Any]) -> None:
        from etp.models.etp import save_model_dir

        save_model_dir(
            path,
            self.model if self.ema is None else self.ema.module,
            self.cfg.model,
            preprocessing=self.prepared.preprocessing,
            text_spec=self.text_spec,
            extra={
                "method": self.method,
                "data": self._data_info(),
                "dataset": self.prepared.info.get("dataset"),
                "classes": list(self.prepared.classes),
                "train": to_dict(self.cfg.train),
                **extra,
            },
        )

    def _resume(self, path: Path) -> ckpt.TrainPosition:
        payload = ckpt.load_checkpoint(path)
        ckpt.check_resume_config(
            path, payload["config"], to_dict(self.cfg), defaults=to_dict(PretrainConfig())
        )
        ckpt.check_arch(path, payload["arch"], self._arch())
        saved_fp = payload.get("data", {}).get("fingerprint")
        if saved_fp and saved_fp != self.prepared.fingerprint:
            raise DataError(
                f"cannot resume from {path}: the cache {self.cfg.data.cache} changed since the "
                f"checkpoint (fingerprint {saved_fp} -> {self.prepared.fingerprint})"
            )
        saved_world = payload.get("data", {}).get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise ConfigError(
                f"cannot resume from {path}: it was written by {saved_world} process(es), this "
                f"run has {self.dist.world_size} (the data order depends on it)"
            )
        ckpt.load_model_state(path, self.model, payload["model"])
        if self.ema is not None:
            if payload.get("ema") is None:
                raise ConfigError(f"cannot resume from {path}: it holds no weight average")
            ckpt.load_model_state(path, self.ema, payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scheduler") is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        ckpt.restore_rng(payload["rng"], {"augment": self.aug_gen})
        pos = ckpt.position_of(payload)
        log.info("resuming from %s: epoch %d, batch %d, step %d", path, pos.epoch + 1, pos.batch, pos.step)
        return pos

    # -- the loop -----------------------------------------------------------------------------

    def run(self, resume: bool) -> Path:
        cfg, t = self.cfg, self.cfg.train
        validate_config(cfg, self.dist.world_size)
        last = checkpoint_path(self.out)
        if last.exists() and not resume:
            raise ConfigError(
                f"{self.out} already holds a checkpoint ({last}); pass --resume to continue it, "
                "--overwrite to start again, or choose another train.out_dir"
            )
        if resume and not last.exists():
            log.warning("no checkpoint in %s: starting from scratch", self.out)
            resume = False
        self._prepare_data()
        if self.method == "etp":
            self._text_embeddings()
        self._build_model()
        pos = self._resume(last) if resume else ckpt.TrainPosition()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, self.out / "config.yaml")
        train_log = val_log = None
        tb = None
        if self.main:
            keep = pos.step if resume else None
            train_log = _CsvLog(self.out / "train_log.csv", TRAIN_LOG_COLUMNS, keep)
            val_log = _CsvLog(self.out / "val_log.csv", VAL_LOG_COLUMNS, keep)
            tb = _tensorboard(self.out)
        try:
            self._train(pos, train_log, val_log, tb)
        finally:
            for f in (train_log, val_log):
                if f is not None:
                    f.close()
            if tb is not None:
                tb.close()
        model_dir = self.out / MODEL_DIR
        if self.main:
            self._save_model(
                model_dir,
                {"epochs": pos.epoch, "steps": pos.step, "best_val_loss": pos.best_val_loss},
            )
            atomic_write_json(
                self.out / "summary.json",
                {
                    "method": self.method,
                    "epochs": pos.epoch,
                    "steps": pos.step,
                    "best_val_loss": pos.best_val_loss,
                    "dropped_empty_reports": self.sel.dropped_empty_reports,
                    "model": str(model_dir),
                    **self._data_info(),
                    **pos.extra,
                },
            )
            log.info("saved the model to %s", model_dir)
        from etp.train.distributed import barrier

        barrier()
        return model_dir

    def _train(self, pos: ckpt.TrainPosition, train_log: Any, val_log: Any, tb: Any) -> None:
        from tqdm.auto import tqdm

        from etp.train.distributed import is_distributed

        t = self.cfg.train
        world = self.dist.world_size
        global_bs = self.local_bs * world
        every = t.checkpoint_every_steps
        self.step_module.train()
        for epoch in range(pos.epoch, t.epochs):
            start = pos.batch if epoch == pos.epoch else 0
            self.sampler.set_epoch(epoch, start)
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=start,
                desc=f"epoch {epoch + 1}/{t.epochs}",
                disable=not (t.progress and self.main),
                dynamic_ncols=True,
                leave=False,
            )
            window_loss, window_steps = 0.0, 0
            t_window = time.perf_counter()
            t_epoch, epoch_samples = time.perf_counter(), 0
            for x, idx in self.train_loader:
                loss = self._loss(x, idx, self.aug_gen)
                value = float(loss.detach())
                finite = math.isfinite(value)
                if is_distributed():
                    import torch.distributed as tdist

                    flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
                    tdist.all_reduce(flag)
                    finite = float(flag) == 0.0
                if not finite:
                    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
                    if bad.any():  # the input, not the optimisation, is at fault
                        ids = self.prepared.meta["record_id"].to_numpy()[idx[bad].numpy()]
                        raise DataError(
                            f"the cache {self.cfg.data.cache} holds NaN/inf samples (records "
                            f"{ids[:5].tolist()}); rebuild it with `etp prepare --force`"
                        )
                    last = checkpoint_path(self.out)
                    kept = (f"the last good checkpoint is kept at {last}" if last.exists()
                            else "no checkpoint was written yet")
                    raise TrainingError(
                        f"the loss became non-finite ({value}) at epoch {epoch + 1}, step "
                        f"{pos.step + 1} (batch {pos.batch + 1} of {self.steps_per_epoch}); "
                        f"training stopped, {kept} — lower train.lr or use "
                        "train.precision=fp32"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                pos.step += 1
                pos.batch += 1
                window_loss += value
                window_steps += 1
                epoch_samples += global_bs
                bar.update(1)
                if pos.step % t.log_every_steps == 0 or pos.batch == self.steps_per_epoch:
                    now = time.perf_counter()
                    sps = window_steps * global_bs / max(now - t_window, 1e-9)
                    row = {
                        "step": pos.step,
                        "epoch": epoch + 1,
                        "loss": window_loss / window_steps,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "temperature": self._temperature(),
                        "samples_per_s": sps,
                    }
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{sps:.0f}")
                    if train_log is not None:
                        train_log.write(**row)
                    if tb is not None:
                        for k in ("loss", "lr", "temperature", "samples_per_s"):
                            tb.add_scalar(f"train/{k}", row[k], pos.step)
                    window_loss, window_steps, t_window = 0.0, 0, time.perf_counter()
                if every and pos.step % every == 0 and pos.batch < self.steps_per_epoch:
                    self._save_checkpoint(pos)
            bar.close()
            epoch_s = time.perf_counter() - t_epoch
            val = self._validate()
            improved = val is not None and (
                pos.best_val_loss is None or val < pos.best_val_loss
            )
            if improved:
                pos.best_val_loss = val
                if self.main:
                    self._save_model(
                        self.out / BEST_MODEL_DIR,
                        {"epochs": epoch + 1, "steps": pos.step, "val_loss": val},
                    )
            if self.main:
                if val is not None and val_log is not None:
                    val_log.write(step=pos.step, epoch=epoch + 1, val_loss=val, best=int(improved))
                    if tb is not None:
                        tb.add_scalar("val/loss", val, pos.step)
                log.info(
                    "epoch %d/%d: %d steps, %.0f samples/s%s",
                    epoch + 1,
                    t.epochs,
                    pos.step,
                    epoch_samples / max(epoch_s, 1e-9),
                    f", val loss {val:.4f}" if val is not None else "",
                )
            pos.epoch, pos.batch = epoch + 1, 0
            self._save_checkpoint(pos)
