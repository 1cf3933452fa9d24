"""Recording the momentum keys a run enqueues, step by step, for ``bank_replay.py``: the stream
of solo-learn's MoCo V2+ (its ``queue`` / ``queue_ptr`` buffers) or of CueCo (its ``KeyQueue``),
as float16 (steps, 2, B, D), L2-normalised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F


def newest_keys(module: Any, batch: int) -> torch.Tensor:
    """The (2, B, D) keys the last training step enqueued."""
    if hasattr(module, "queue_ptr"):  # solo-learn's MoCo V2+: queue (2, D, Q), ptr after them
        end = int(module.queue_ptr) or module.queue.shape[-1]
        keys = module.queue[:, :, end - batch : end].transpose(1, 2)
    else:  # CueCo's KeyQueue
        keys = module.queue.recent(batch).view(2, batch, -1)
    return F.normalize(keys.float(), dim=-1)


class KeyRecorder(pl.Callback):
    """Keeps every optimiser step's keys; :meth:`save` writes them with ``meta``."""

    def __init__(self, batch: int) -> None:
        self.batch, self.stream = batch, []

    def on_train_batch_end(self, trainer: Any, module: Any, *_: Any) -> None:
        self.stream.append(newest_keys(module, self.batch).to(torch.float16).cpu())

    def save(self, path: Path, steps_per_epoch: int, **meta: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = torch.stack(self.stream)
        torch.save({"keys": keys, "steps_per_epoch": steps_per_epoch, **meta}, path)
