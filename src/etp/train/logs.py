"""The training logs of a run directory: CSV logs that a resume truncates to its checkpoint, and
TensorBoard when it is installed."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from etp.io import atomic_write_text


class CsvLog:
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


class LogWindow:
    """Running sums between two log rows: the mean loss, the objective's own logs (``names``) and
    the samples/s of the steps since the last :meth:`flush`."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._reset()

    def _reset(self) -> None:
        self.loss, self.steps = 0.0, 0
        self.logs = dict.fromkeys(self.names, 0.0)
        self.t0 = time.perf_counter()

    def add(self, loss: float, logs: dict[str, float]) -> None:
        self.loss += loss
        self.steps += 1
        for k, v in logs.items():
            self.logs[k] += float(v)

    def flush(self, batch_size: int) -> dict[str, float]:
        """``loss``, ``samples_per_s`` and each log name, averaged over the window; starts a new one."""
        n = max(self.steps, 1)
        row = {
            "loss": self.loss / n,
            "samples_per_s": self.steps * batch_size / max(time.perf_counter() - self.t0, 1e-9),
            **{k: v / n for k, v in self.logs.items()},
        }
        self._reset()
        return row


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def tensorboard(out_dir: Path) -> Any | None:
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - optional dependency (ImportError and friends)
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


__all__ = ["CsvLog", "tensorboard"]
