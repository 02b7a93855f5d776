"""What a run tells the world: ``metrics.csv``, optional TensorBoard, a progress bar or plain log lines.

Only rank 0 reports. ``metrics.csv`` is rewritten whole and atomically each epoch from the rows kept in the training
state, so after a resume it holds exactly the epochs of the checkpoint plus the new ones.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from msresnet.engine.checkpoint import atomic_write_bytes
from msresnet.errors import UserError

METRIC_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "images_per_s",
    "seconds",
)


def log(message: str) -> None:
    """One plain line on stderr (flushed, so it shows up in redirected logs at once)."""
    print(message, file=sys.stderr, flush=True)


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically (re)write ``metrics.csv`` with one row per finished epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


class TensorBoardLog:
    """Scalars to ``RUN/tensorboard`` (requires the ``tensorboard`` extra)."""

    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("tensorboard is not installed: pip install 'msresnet[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(directory))

    def scalars(self, values: dict[str, float], step: int, prefix: str) -> None:
        """Log ``prefix/name`` for every number in ``values``."""
        for k, v in values.items():
            if isinstance(v, (int, float)) and v is not None:
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class StepReporter:
    """A rich progress bar when stderr is a terminal, otherwise a log line every ``log_every`` steps."""

    def __init__(self, enabled: bool, log_every: int, tty: bool | None = None) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._bar = None
        self._task = None
        self._last_log = time.perf_counter()

    def start_epoch(self, epoch: int, epochs: int, total_steps: int, done_steps: int) -> None:
        """Begin reporting epoch ``epoch`` (1-based) with ``done_steps`` of ``total_steps`` already done."""
        self.epoch, self.epochs, self.total = epoch, epochs, total_steps
        if not (self.enabled and self.tty):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=total_steps, completed=done_steps, stats="")

    def step(self, step_in_epoch: int, global_step: int, loss: float, acc: float, images_per_s: float) -> None:
        """Report the running loss/accuracy after a step."""
        if not self.enabled:
            return
        stats = f"loss {loss:.4f}  acc {acc:.3f}  {images_per_s:,.0f} img/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=step_in_epoch, stats=stats)
        elif global_step % self.log_every == 0:
            log(f"epoch {self.epoch}/{self.epochs} step {step_in_epoch}/{self.total} (global {global_step}): {stats}")

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Close the bar and print the epoch summary line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.enabled:
            val = (
                "" if row.get("val_acc") is None else f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}"
            )
            log(
                f"epoch {row['epoch']}/{self.epochs}: train_loss {row['train_loss']:.4f}  "
                f"train_acc {row['train_acc']:.4f}{val}  lr {row['lr']:.3g}  "
                f"{row['images_per_s']:,.0f} img/s  {row['seconds']:.1f}s"
            )

    def close(self) -> None:
        """Stop the bar if one is running (on errors and interrupts)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
