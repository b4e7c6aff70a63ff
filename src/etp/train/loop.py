"""The one pretraining loop: every objective (:mod:`etp.objectives`) trains through it.

What one run does, in order:

1. open the prepared cache (memory-mapped signals, never loaded whole) and select the training
   and validation records (:func:`etp.data.selection.select_records`): held-out records are never
   read, and record and patient ids are checked to be disjoint from them;
2. for objectives with a text side, build the frozen text model; for those that train on
   reports, embed each distinct report once (:func:`etp.text.cache.embed_texts`, cached on disk
   in the user's cache, :func:`etp.text.cache.default_cache_dir`) — the language model never runs
   inside the loop, a batch is signal rows plus embedding rows;
3. train the objective with Adam (optional cosine schedule with warm-up) under bf16 autocast,
   logging to CSV (and TensorBoard when installed), validating each epoch, checkpointing at
   epoch ends and every ``checkpoint_every_steps`` steps so that ``resume=True`` continues
   *exactly* (objective parts such as a target network included);
4. save ``<out_dir>/model`` (and ``<out_dir>/model-best``, best validation loss) with the cache's
   preprocessing settings and the text model spec, so inference preprocesses identically.

The loop asks the objective what it needs (text, reports, training at all) and for the loss; it
never asks for a method's name. Under ``torchrun`` each process reads its own shard of every
epoch's permutation, the objective is wrapped in DistributedDataParallel, contrastive losses use
negatives from the whole global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from etp.config import PretrainConfig, save_yaml, to_dict
from etp.data.batches import CacheBatches, EpochBatchSampler
from etp.data.selection import patient_codes, pretraining_records
from etp.errors import ConfigError, DataError, TrainingError
from etp.io import atomic_write_json
from etp.models.channels_last import enable_channels_last
from etp.objectives.base import Batch, RunContext
from etp.train import checkpoint as ckpt
from etp.train.logs import CsvLog, LogWindow, tensorboard
from etp.train.settings import validate_config, warn_emulated_bf16

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
# Seeding, schedule
# ----------------------------------------------------------------------------------------------


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
# The run
# ----------------------------------------------------------------------------------------------


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
        self.text_spec: dict[str, Any] | None = None
        self.text_dim: int | None = None
        self.text_emb: Tensor | None = None
        self.text_row: Tensor | None = None
        self.val_loader: DataLoader | None = None
        if self.device.type == "cpu" and hasattr(os, "sched_getaffinity"):
            # more compute threads than usable cores (containers, CPU pinning, several
            # processes per machine) makes every oneDNN kernel wait for descheduled threads
            usable = max(1, len(os.sched_getaffinity(0)) // max(1, dist_info.world_size))
            if torch.get_num_threads() > usable:
                torch.set_num_threads(usable)

    @property
    def name(self) -> str:
        return self.objective_cls.name

    # -- set-up -------------------------------------------------------------------------------

    def _prepare_data(self) -> None:
        from etp.data.cache import load_prepared

        cfg = self.cfg
        self.prepared = load_prepared(cfg.data.cache)
        meta = self.prepared.meta
        self.sel = sel = pretraining_records(meta, cfg.data, self.objective_cls.needs_reports)
        self.patients = torch.from_numpy(patient_codes(meta))
        world, bs = self.dist.world_size, cfg.train.batch_size
        self.local_bs = bs // world
        n_train = int(sel.train.size)
        if not self.objective_cls.trains:
            return
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

    def _text_side(self) -> None:
        """The frozen text model's spec and width; and, for objectives trained on reports, each
        distinct training/validation report embedded once."""
        from etp.text.reports import report_embeddings, text_side

        encoder, self.text_spec = text_side(self.cfg.model, str(self.device))
        self.text_dim = int(encoder.dim)
        if self.objective_cls.needs_reports:
            used = np.concatenate([self.sel.train, self.sel.val])
            self.text_emb, self.text_row = report_embeddings(
                self.prepared, used, encoder, self.text_spec, main=self.main
            )

    def _build_model(self) -> None:
        from etp.models.etp import ETPModel

        t = self.cfg.train
        if self.objective_cls.trains:  # a random initialisation runs no autocast
            warn_emulated_bf16(self.device, t.precision)
        seed_everything(t.seed)
        model = ETPModel(
            self.cfg.model, text_dim=self.text_dim if self.objective_cls.text_head else None,
            method=self.name,
        )
        self.model = model.to(self.device)
        if self.device.type == "cpu" and enable_channels_last(self.model.encoder):
            log.info("ECG encoder runs as 2-D channels-last convolutions (CPU fast path)")
        ctx = RunContext(
            device=self.device, train=t, fs=float(self.prepared.fs), bf16=t.precision == "bf16",
            length=int(self.prepared.length),
        )
        self.objective = self.objective_cls(self.model, self.options, ctx).to(self.device)
        self.objective.setup()
        # augmentations draw from their own generator (saved in checkpoints), one per process
        self.aug_gen = torch.Generator().manual_seed(t.seed * 1_000 + 17 + self.dist.rank)
        if not self.objective_cls.trains:
            return
        step_module: nn.Module = self.objective
        if self.dist.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            step_module = DistributedDataParallel(
                self.objective,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self.step_module = step_module
        # the weights' moving average (each process keeps the same copy: DDP keeps the
        # parameters in sync); it is what validation scores and what is saved as the model
        self.ema: Any = None
        if t.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True
            )
        params = [p for p in self.objective.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        self.total_steps = t.epochs * self.steps_per_epoch
        warmup = int(round(t.warmup_epochs * self.steps_per_epoch))
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t.scheduler, total, warmup)
        )

    def _arch(self) -> dict[str, Any]:
        m = self.cfg.model
        return {
            "method": self.name,
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

    def _loss(
        self, x: Tensor, idx: Tensor, gen: torch.Generator, call: Callable[[Any], Any]
    ) -> tuple[Tensor, dict[str, float]]:
        """(loss, the objective's logs) of one batch (``x`` on the CPU, ``idx`` cache rows) through
        ``call`` (the trained, possibly DDP-wrapped, objective; or the objective on the weight
        average)."""
        if not torch.isfinite(x).all():
            bad = idx[~torch.isfinite(x).flatten(1).all(1)]
            ids = self.prepared.meta["record_id"].astype(str).to_numpy()[bad.numpy()][:5].tolist()
            raise DataError(
                f"the cache {self.cfg.data.cache} holds NaN/inf samples (records {ids}); rebuild "
                "it with `etp prepare --force` (it rejects such records)"
            )
        text = None if self.text_emb is None else self.text_emb[self.text_row[idx]]
        batch = Batch(x=x, rows=idx, generator=gen, text=text, patients=self.patients[idx])
        loss, logs = call(self.objective.inputs(batch))
        if set(logs) != set(self.objective_cls.log_names):
            raise TrainingError(
                f"objective {self.objective_cls.name!r} returned logs {sorted(logs)} but declares "
                f"log_names {list(self.objective_cls.log_names)}; make them the same"
            )
        return loss, logs

    @torch.no_grad()
    def _validate(self) -> float | None:
        if self.val_loader is None:
            return None
        from etp.train.distributed import is_distributed

        if self.ema is not None:
            ema_model = self.ema.module.eval()

            def call(inputs: Any) -> Any:
                return self.objective(inputs, model=ema_model)
        else:
            call = self.step_module
        self.step_module.eval()
        gen = torch.Generator().manual_seed(self.cfg.train.seed + 7919)
        total = torch.zeros(2, dtype=torch.float64)
        for x, idx in self.val_loader:
            loss, _ = self._loss(x, idx, gen, call)
            total += torch.tensor([float(loss) * x.shape[0], x.shape[0]], dtype=torch.float64)
        self.step_module.train()
        if is_distributed():
            import torch.distributed as tdist

            t = total.to(self.device)
            tdist.all_reduce(t)
            total = t.cpu()
        return float(total[0] / total[1]) if total[1] > 0 else None

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
            objective=self.objective.own_state(),
        )
        atomic_write_json(
            self.out / CHECKPOINT_DIR / "last.json",
            {"epoch": pos.epoch, "batch": pos.batch, "step": pos.step},
        )

    def _save_model(self, path: Path, extra: dict[str, Any]) -> None:
        from etp.models.etp import save_model_dir

        ema = getattr(self, "ema", None)
        save_model_dir(
            path,
            self.model if ema is None else ema.module,
            self.cfg.model,
            preprocessing=self.prepared.preprocessing,
            text_spec=self.text_spec,
            extra={
                "method": self.name,
                "objective": {
                    "name": self.name,
                    "options": dataclasses.asdict(self.options),
                    "trained_on_crops": self.objective.trained_on_crops(),
                    "trains_ecg_head": self.objective_cls.trains_ecg_head,
                },
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
        own = self.objective.own_state()
        if own:
            ckpt.load_model_state(path, ckpt.PartView(self.objective, own), payload.get("objective") or {})
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
        cfg = self.cfg
        self.objective_cls, self.options = validate_config(cfg, self.dist.world_size)
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
        if self.objective_cls.text_head:
            self._text_side()
        self._build_model()
        pos = self._resume(last) if resume else ckpt.TrainPosition()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, self.out / "config.yaml")
        if self.objective_cls.trains:
            self._logged_training(pos, resume)
        model_dir = self.out / MODEL_DIR
        if self.main:
            self._save_model(
                model_dir,
                {"epochs": pos.epoch, "steps": pos.step, "best_val_loss": pos.best_val_loss},
            )
            atomic_write_json(
                self.out / "summary.json",
                {
                    "method": self.name,
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

    def _logged_training(self, pos: ckpt.TrainPosition, resume: bool) -> None:
        train_log = val_log = None
        tb = None
        if self.main:
            keep = pos.step if resume else None
            columns = TRAIN_LOG_COLUMNS + self.objective_cls.log_names
            train_log = CsvLog(self.out / "train_log.csv", columns, keep)
            val_log = CsvLog(self.out / "val_log.csv", VAL_LOG_COLUMNS, keep)
            tb = tensorboard(self.out)
        try:
            self._train(pos, train_log, val_log, tb)
        finally:
            for f in (train_log, val_log):
                if f is not None:
                    f.close()
            if tb is not None:
                tb.close()

    def _non_finite(self, value: float, epoch: int, pos: ckpt.TrainPosition) -> TrainingError:
        where = (
            f"at epoch {epoch + 1}, step {pos.step + 1} (batch {pos.batch + 1} of "
            f"{self.steps_per_epoch})"
        )
        last = checkpoint_path(self.out)
        kept = (
            f"the last good checkpoint is kept at {last} (resume from it with --resume after the "
            "change)"
            if last.is_file()
            else "no checkpoint was written before it"
        )
        return TrainingError(
            f"the loss became non-finite ({value}) {where}; training stopped, {kept} — lower "
            "train.lr or use train.precision=fp32"
        )

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
            window = LogWindow(self.objective_cls.log_names)
            t_epoch, epoch_samples = time.perf_counter(), 0
            for x, idx in self.train_loader:
                loss, logs = self._loss(x, idx, self.aug_gen, self.step_module)
                value = float(loss.detach())
                finite = math.isfinite(value)
                if is_distributed():
                    import torch.distributed as tdist

                    flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
                    tdist.all_reduce(flag)
                    finite = float(flag) == 0.0
                if not finite:
                    raise self._non_finite(value, epoch, pos)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                pos.step += 1
                pos.batch += 1
                self.objective.after_step(pos.step, self.total_steps)
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                window.add(value, logs)
                epoch_samples += global_bs
                bar.update(1)
                if pos.step % t.log_every_steps == 0 or pos.batch == self.steps_per_epoch:
                    temperature = self.objective.temperature()
                    row = {
                        "step": pos.step,
                        "epoch": epoch + 1,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "temperature": "" if temperature is None else temperature,
                        **window.flush(global_bs),
                    }
                    sps = row["samples_per_s"]
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{sps:.0f}")
                    if train_log is not None:
                        train_log.write(**row)
                    if tb is not None:
                        for k in ("loss", "lr", "temperature", "samples_per_s", *window.names):
                            if row[k] != "":
                                tb.add_scalar(f"train/{k}", row[k], pos.step)
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
