"""A Lightning callback that records what each rank of a CueCo run holds, for the tests.

Stock ``main_pretrain.py`` builds its own Trainer callbacks, and only rank 0 writes checkpoints
and logs. Lightning loads extra callbacks from the ``lightning.pytorch.callbacks_factory``
entry-point group in every process; the tests register :func:`factory` there (a dist-info
folder on ``PYTHONPATH`` of the subprocess), so every rank saves its own view of the run to
``$CUECO_PROBE_DIR/rank<global_rank>.pt`` at the end of training: its global and local rank and
node, the centroid bank, the key queue, the step counter, and per step the epoch, the sample
indexes of its batch and the values of the metrics as that rank saw them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

WATCHED = (
    "train_nce_loss",
    "train_centroid_loss",
    "train_variance_loss",
    "train_live_clusters",
    "train_usage_entropy",
    "train_mean_variance",
    "train_feature_std",
)


class RankProbe(Callback):
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {k: float(metrics[k]) for k in WATCHED if k in metrics}
        row["loss"] = float(outputs["loss"]) if isinstance(outputs, dict) else math.nan
        row["epoch"] = trainer.current_epoch
        row["indexes"] = batch[0].tolist()  # solo-learn's batch: [indexes, views, targets]
        self.steps.append(row)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state: dict[str, Any] = {
            "rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "steps": self.steps,
        }
        for name, attr in (("bank", "bank"), ("queue", "queue"), ("backbone", "backbone")):
            module = getattr(pl_module, attr, None)
            if module is not None:
                state[name] = dict(module.state_dict())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")


def factory() -> list[Callback]:
    out_dir = os.environ.get("CUECO_PROBE_DIR")
    return [RankProbe(Path(out_dir))] if out_dir else []
