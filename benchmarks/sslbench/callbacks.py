"""Lightning callbacks of the harness: step timing and memory, a kNN probe at every epoch end,
a progress bar per method, and a wall-clock deadline.

Timing reads the clock at every ``on_train_batch_start`` (after ``torch.cuda.synchronize()`` on
CUDA), so one interval covers a whole iteration: waiting for data, the forward and backward pass,
the optimiser step, the module's ``on_train_batch_end`` (momentum and centroid-bank updates) and
Lightning's own bookkeeping. Intervals that span an epoch boundary (which hold the epoch-end
evaluation) are dropped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def current_rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class StepTimer(pl.Callback):
    """Wall-clock time of every training iteration, and peak memory while training.

    Args:
        warmup_steps: iterations at the start of training (of this fit call) left out of
            :attr:`intervals` (compilation, cudnn autotuning, worker start-up).
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.intervals: list[float] = []  # seconds per iteration, after warm-up
        self.peak_rss = 0
        self.rss_at_start = 0
        self._last: float | None = None
        self._seen = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.rss_at_start = self.peak_rss = current_rss_bytes()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        _sync(pl_module.device)
        now = time.perf_counter()
        if self._last is not None:
            self._seen += 1
            if self._seen > self.warmup_steps:
                self.intervals.append(now - self._last)
        self._last = now

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if pl_module.device.type != "cuda" and batch_idx % 4 == 0:
            self.peak_rss = max(self.peak_rss, current_rss_bytes())

    def peak_memory(self, device: torch.device) -> tuple[float, str]:
        """(MiB, what was measured)."""
        if device.type == "cuda":
            return (
                torch.cuda.max_memory_allocated(device) / 2**20,
                "torch.cuda.max_memory_allocated",
            )
        return self.peak_rss / 2**20, "peak RSS of the main process (sampled every 4 steps)"


class EpochKNN(pl.Callback):
    """kNN top-1 of the frozen online backbone on small subsets at every training epoch end.

    Args:
        evaluate: called with the module, returns the kNN top-1 (percent).
    """

    def __init__(self, evaluate: Callable[[pl.LightningModule], float]) -> None:
        self.evaluate = evaluate
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        was_training = pl_module.training
        start = time.perf_counter()
        acc = self.evaluate(pl_module)
        pl_module.train(was_training)
        self.history.append(
            {
                "epoch": trainer.current_epoch + 1,
                "step": trainer.global_step,
                "knn_top1": acc,
                "eval_seconds": time.perf_counter() - start,
            }
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class StepProgressBar(pl.Callback):
    """One tqdm bar per method over all its optimiser steps, with loss, images/s and the last
    epoch-end kNN in the postfix."""

    def __init__(self, desc: str, batch_size: int, knn: EpochKNN, timer: StepTimer) -> None:
        self.desc = desc
        self.batch_size = batch_size
        self.knn = knn
        self.timer = timer
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            initial=trainer.global_step,
            desc=self.desc,
            unit="step",
            leave=True,
            mininterval=0.1 if interactive else 15.0,  # few lines in a log file
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        if batch_idx % 10 == 0:
            post: dict[str, Any] = {"ep": trainer.current_epoch + 1}
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor):
                post["loss"] = f"{float(loss):.3f}"  # one sync every 10 steps, display only
            if self.timer.intervals:
                recent = sorted(self.timer.intervals[-20:])
                post["img/s"] = f"{self.batch_size / recent[len(recent) // 2]:.0f}"
            if self.knn.history:
                post["knn"] = f"{self.knn.history[-1]['knn_top1']:.1f}"
            self.bar.set_postfix(post)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.on_train_end(trainer, pl_module)


class Deadline(pl.Callback):
    """Stops training once ``time.monotonic()`` passes ``deadline``: at the next batch end, or,
    with ``at_epoch_end`` (used when checkpointing, so that every checkpoint holds whole
    epochs and a resumed run trains exactly the missing ones), at the end of the epoch."""

    def __init__(self, deadline: float | None, at_epoch_end: bool = False) -> None:
        self.deadline = deadline
        self.at_epoch_end = at_epoch_end
        self.stopped_at_step: int | None = None

    def _check(self, trainer: pl.Trainer) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            if self.stopped_at_step is None:
                self.stopped_at_step = trainer.global_step
            trainer.should_stop = True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.at_epoch_end:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_epoch_end and trainer.current_epoch + 1 < (trainer.max_epochs or 0):
            self._check(trainer)
