"""Reading batches of a prepared cache for training: whole batches of rows per read, a seeded
permutation per epoch that a resumed run replays, sharded over processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from etp.errors import DataError


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


__all__ = ["CacheBatches", "EpochBatchSampler"]
