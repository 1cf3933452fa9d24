"""CueCo as a solo-learn method (a ``BaseMomentumMethod``, written like solo-learn's MoCo V2+).

One training step, for the two large crops v1, v2 of a batch:

1. online queries ``q_i = normalise(projector(backbone(v_i)))`` and momentum keys
   ``k_i = normalise(momentum_projector(momentum_backbone(v_i)))`` (solo-learn's base classes);
2. L1: solo-learn's ``mocov2plus_loss_func``, symmetric: ``(l(q1, k2, queue[1]) + l(q2, k1,
   queue[0])) / 2``;
3. the centroid bank is (re-)seeded when it asks for it, from the gathered keys of this step and
   the real keys already in the queue (never the queue's random initial vectors);
4. assignments: with ``assignment_source: key`` the target of q1 is the nearest centroid of k2
   and the target of q2 that of k1 (the pairing of L1's positives); with ``query`` each query's
   own nearest centroid (detached);
5. L2 (centroid contrast) and L3 (variance-scaled distance) on both views, averaged; they are off
   (0) while the bank is frozen after a (re-)seeding;
6. the local keys of both views and their assignments are accumulated into the bank; the gathered
   keys are enqueued. After each optimiser step (``on_train_batch_end``, where solo-learn updates
   the momentum encoder, so gradient accumulation is respected) the bank takes one momentum step,
   all-reducing the accumulated statistics across ranks.

Total loss: ``lambda_nce * L1 + lambda_centroid * L2 + lambda_variance * L3`` plus solo-learn's
online classifier loss (on detached features).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from solo.losses.mocov2plus import mocov2plus_loss_func
from solo.methods.base import BaseMomentumMethod
from solo.utils.misc import gather, omegaconf_select
from solo.utils.momentum import initialize_momentum_params

from cueco_plugin.centroids import CentroidBank
from cueco_plugin.cluster_metrics import cluster_metrics
from cueco_plugin.key_queue import KeyQueue
from cueco_plugin.losses import centroid_contrast_loss, variance_scaled_distance_loss
from cueco_plugin.method_config import add_and_validate_method_kwargs, check_queue_size


def _projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo V2+'s two-layer MLP projector."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


def swap_views(assignments: torch.Tensor) -> torch.Tensor:
    """``[a(k1); a(k2)] -> [a(k2); a(k1)]``: with ``assignment_source: key`` the target cluster
    of each query is that of the *other* view's key, the same pairing as L1's positives.

    Args:
        assignments: (2B,) the clusters of the keys of view 1 then view 2.

    Returns:
        (2B,) the targets of the queries of view 1 then view 2.
    """
    return assignments.roll(shifts=assignments.shape[0] // 2)


def _gather_variable_length(x: torch.Tensor) -> torch.Tensor:
    """Concatenates a 1-D tensor of any per-rank length from every rank (rank order).

    Used once per validation epoch (reads the lengths on the host), never in a training step.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    world = dist.get_world_size()
    length = torch.tensor([x.numel()], device=x.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    padded = x.new_zeros(max(sizes))
    padded[: x.numel()] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class CueCo(BaseMomentumMethod):
    def __init__(self, cfg: omegaconf.DictConfig):
        """Implements CueCo, Cluster Contrast (Giakoumoglou and Stathaki, ICIP 2025,
        https://arxiv.org/abs/2507.12359): MoCo V2+ instance contrast with a queue plus a
        momentum-updated centroid bank pulling each query towards its cluster.

        Extra cfg settings:
            method_kwargs:
                proj_hidden_dim (int): hidden units of the projector MLP. Default 2048.
                proj_output_dim (int): D, projected feature dimension. Default 256.
                temperature (float): softmax temperature of L1 (InfoNCE). Default 0.2.
                queue_size (int): keys kept per view in the MoCo queue; a positive multiple of
                    the global batch (batch_size x devices x num_nodes). Default 65536.
                num_clusters (int): K centroids, >= 2. Default 100.
                centroid_temperature (float): softmax temperature of L2. Default 0.1.
                lambda_nce (float): weight of L1, >= 0. Default 1.0.
                lambda_centroid (float): weight of L2, >= 0. Default 1.0.
                lambda_variance (float): weight of L3, >= 0 (not all three 0). Default 0.1.
                centroid_momentum (float): beta1 of the centroid and usage update, in [0, 1).
                    Default 0.99.
                variance_momentum (float): beta2 of the per-cluster variance update, in [0, 1).
                    Default 0.99.
                variance_scaling (str): L3's scaling of the squared distance by the cluster
                    variance: "divide" | "multiply" | "none". Default "divide".
                variance_eps (float): added to the variance in "divide", > 0. Default 1e-4.
                min_variance (float): floor of the bank's running variances, >= 0; a cluster
                    seeded with < 2 members gets the overall variance. Default 1e-3.
                assignment_source (str): "key" (the target of q1 is the cluster of k2 and
                    vice versa) or "query" (each query's own nearest centroid). Default "key".
                freeze_iters (int): optimiser steps after each (re-)seeding with the cluster
                    losses off, >= 0, < reset_interval unless reset_interval is 0. Default 313.
                reset_interval (int): re-seed the bank every this many optimiser steps; 0 seeds
                    once. Default 1000.
                dead_cluster_steps (int): revive a cluster with no member for this many steps;
                    0 never revives. Default 100.
                lloyd_iters (int): Lloyd iterations after k-means++ when seeding. Default 10.
        """

        super().__init__(cfg)

        mk = cfg.method_kwargs
        self.temperature: float = float(mk.temperature)
        self.queue_size: int = int(mk.queue_size)
        self.centroid_temperature: float = float(mk.centroid_temperature)
        self.lambda_nce: float = float(mk.lambda_nce)
        self.lambda_centroid: float = float(mk.lambda_centroid)
        self.lambda_variance: float = float(mk.lambda_variance)
        self.variance_scaling: str = str(mk.variance_scaling)
        self.variance_eps: float = float(mk.variance_eps)
        self.assignment_source: str = str(mk.assignment_source)

        proj_hidden_dim: int = mk.proj_hidden_dim
        proj_output_dim: int = mk.proj_output_dim

        # projector and momentum projector
        self.projector = _projector(self.features_dim, proj_hidden_dim, proj_output_dim)
        self.momentum_projector = _projector(self.features_dim, proj_hidden_dim, proj_output_dim)
        initialize_momentum_params(self.projector, self.momentum_projector)

        # MoCo queue of past keys, one per view: buffer (2, D, queue_size)
        self.key_queue = KeyQueue(num_views=2, dim=proj_output_dim, size=self.queue_size)

        # centroid bank (a submodule: its buffers and schedule counters are checkpointed)
        self.bank = CentroidBank(
            num_clusters=mk.num_clusters,
            dim=proj_output_dim,
            centroid_momentum=mk.centroid_momentum,
            variance_momentum=mk.variance_momentum,
            min_variance=mk.min_variance,
            freeze_iters=mk.freeze_iters,
            reset_interval=mk.reset_interval,
            dead_cluster_steps=mk.dead_cluster_steps,
            lloyd_iters=mk.lloyd_iters,
            normalize=True,
            seed=int(omegaconf_select(cfg, "seed", 0) or 0),
        )

        # validation: nearest-centroid predictions and labels of the current epoch
        self._val_cluster_preds: list[torch.Tensor] = []
        self._val_cluster_targets: list[torch.Tensor] = []

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Adds CueCo's defaults under ``method_kwargs`` and validates every key.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.

        Raises:
            ValueError: naming the key, the bad value and what is allowed.
        """

        cfg.momentum = omegaconf_select(cfg, "momentum", {})
        cfg = super(CueCo, CueCo).add_and_assert_specific_cfg(cfg)
        return add_and_validate_method_kwargs(cfg)

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Adds projector parameters together with parent's learnable parameters.

        Returns:
            List[dict]: list of learnable parameters.
        """

        extra_learnable_params = [{"name": "projector", "params": self.projector.parameters()}]
        return super().learnable_params + extra_learnable_params

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        """Adds (projector, momentum_projector) to the parent's momentum pairs.

        Returns:
            List[Tuple[Any, Any]]: list of momentum pairs.
        """

        extra_momentum_pairs = [(self.projector, self.momentum_projector)]
        return super().momentum_pairs + extra_momentum_pairs

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Online backbone and projector; adds the L2-normalised query ``z`` (B, D)."""

        out = super().forward(X)
        z = F.normalize(self.projector(out["feats"]), dim=-1)
        out.update({"z": z})
        return out

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Momentum backbone and projector; adds the L2-normalised key ``z`` (B, D)."""

        out = super().momentum_forward(X)
        z = F.normalize(self.momentum_projector(out["feats"]), dim=-1)
        out.update({"z": z})
        return out

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Checks the queue size against the real global batch (the world size is known now)."""
        super().on_fit_start()
        world = self.trainer.world_size
        check_queue_size(self.queue_size, self.batch_size * world, f"{self.batch_size} x {world}")

    def on_train_start(self) -> None:
        """Starts the optimiser-step detector at the trainer's step and restores tau on resume.

        solo-learn resets ``last_step`` to 0; on a resumed run with gradient accumulation the
        first micro-batch would then look like an optimiser step (an extra momentum and bank
        update). Starting from ``global_step`` keeps a resumed run equal to an uninterrupted one.
        """
        super().on_train_start()
        self.last_step = self.trainer.global_step
        if self.trainer.global_step > 0:
            # tau is a plain attribute of solo-learn's MomentumUpdater, not checkpointed: put it
            # back where the uninterrupted run has it after this many steps
            self.momentum_updater.update_tau(
                cur_step=self.trainer.global_step,
                max_steps=self.trainer.estimated_stepping_batches,
            )

    @torch.no_grad()
    def _seed_bank(self, keys: torch.Tensor) -> None:
        """Seeds the bank from this step's gathered keys (N, D) plus the queue's real keys."""
        features = torch.cat([keys.float(), self.key_queue.filled_keys().float()])
        self.bank.seed(features)

    def _cluster_losses(
        self, queries: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2 and L3 of queries (2B, D) against their target clusters (2B,); both views in one
        batch, so each loss is the mean of the two views' losses."""
        l2 = centroid_contrast_loss(
            queries,
            self.bank.centroids,
            targets,
            self.centroid_temperature,
            check_range=False,
        )
        l3 = variance_scaled_distance_loss(
            queries,
            self.bank.centroids,
            self.bank.variances,
            targets,
            scaling=self.variance_scaling,  # type: ignore[arg-type]
            eps=self.variance_eps,
            check_range=False,
        )
        return l2, l3

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for CueCo reusing BaseMomentumMethod training step.

        Args:
            batch (Sequence[Any]): a batch of data in the format of [img_indexes, [X], Y],
                where [X] is a list of size self.num_large_crops containing batches of images.
            batch_idx (int): index of the batch.

        Returns:
            torch.Tensor: lambda-weighted sum of L1, L2, L3 plus the classification loss.
        """

        out = super().training_step(batch, batch_idx)
        class_loss = out["loss"]
        q1, q2 = out["z"]
        k1, k2 = out["momentum_z"]

        # ------- L1: MoCo V2+ contrastive loss, symmetric -------
        queue = self.key_queue.queue.clone().detach()
        nce_loss = (
            mocov2plus_loss_func(q1, k2, queue[1], self.temperature)
            + mocov2plus_loss_func(q2, k1, queue[0], self.temperature)
        ) / 2

        gathered = torch.stack((gather(k1), gather(k2)))  # (2, world x B, D)

        # ------- centroid bank: (re-)seed from real keys (host-side schedule, no sync) -------
        if self.bank.needs_seed:
            self._seed_bank(gathered.reshape(-1, gathered.shape[-1]))

        # ------- assignments and cluster losses -------
        local_keys = torch.cat((k1, k2))
        key_assign = self.bank.assign(local_keys)  # (2B,): [clusters of k1, clusters of k2]
        queries = torch.cat((q1, q2))
        if self.assignment_source == "key":
            # q1 -> cluster of k2, q2 -> cluster of k1 (L1's positive pairs)
            targets = swap_views(key_assign)
        else:
            targets = self.bank.assign(queries.detach())

        if self.bank.losses_active:
            centroid_loss, variance_loss = self._cluster_losses(queries, targets)
        else:
            centroid_loss = variance_loss = nce_loss.new_zeros(())

        # ------- bank statistics of this micro-batch (LOCAL keys; step() all-reduces) -------
        self.bank.accumulate(local_keys, key_assign)

        # ------- update queue -------
        self.key_queue.enqueue(gathered)

        loss = (
            self.lambda_nce * nce_loss
            + self.lambda_centroid * centroid_loss
            + self.lambda_variance * variance_loss
        )

        self._log_training(nce_loss, centroid_loss, variance_loss, queries)
        return loss + class_loss

    def _log_training(
        self,
        nce_loss: torch.Tensor,
        centroid_loss: torch.Tensor,
        variance_loss: torch.Tensor,
        queries: torch.Tensor,
    ) -> None:
        """Per-step losses; cluster health on the steps Lightning writes to its loggers
        (``log_every_n_steps``), so the other steps skip those kernels and ``self.log`` calls.
        No host sync: every value stays a tensor."""
        self.log_dict(
            {
                "train_nce_loss": nce_loss,
                "train_centroid_loss": centroid_loss,
                "train_variance_loss": variance_loss,
            },
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            sync_dist=True,
        )
        trainer = self._trainer
        # Lightning's own "write to the loggers on this step" decision (every log_every_n_steps)
        if trainer is not None and not getattr(
            trainer._logger_connector, "should_update_logs", True
        ):
            return
        bank = self.bank
        window = max(bank.dead_cluster_steps, 1)
        live = ((bank.num_updates - bank.last_active) < window).sum().float()
        usage = bank.usage / bank.usage.sum().clamp_min(1e-12)
        entropy = -(usage * usage.clamp_min(1e-12).log()).sum() / math.log(bank.num_clusters)
        feature_std = queries.detach().float().std(dim=0).mean()
        self.log("train_live_clusters", live, on_step=True, on_epoch=False, prog_bar=True)
        # the bank is identical on every rank: no sync needed for its statistics
        self.log_dict(
            {
                "train_usage_entropy": entropy,
                "train_mean_variance": bank.variances.mean(),
                "train_cluster_losses_active": float(bank.losses_active),
            },
            on_step=True,
            on_epoch=False,
        )
        self.log("train_feature_std", feature_std, on_step=True, on_epoch=False, sync_dist=True)

    def on_train_batch_end(self, outputs: dict[str, Any], batch: Sequence[Any], batch_idx: int):
        """After an optimiser step: solo-learn's momentum update, then one bank step.

        ``trainer.global_step`` only grows on the micro-batch that stepped the optimiser, so with
        gradient accumulation the bank moves once per optimiser step, from the statistics of all
        its micro-batches.
        """
        optimiser_stepped = self.trainer.global_step > self.last_step
        super().on_train_batch_end(outputs, batch, batch_idx)
        if optimiser_stepped and self.bank.seeded:
            self.bank.step()

    # ------------------------------------------------------------------ validation
    def base_validation_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """solo-learn's validation forward, plus each image's nearest centroid (from its online
        projection ``z``) for the bank's unsupervised classification metrics."""
        out = super().base_validation_step(X, targets)
        if self.bank.seeded and not (self._trainer is not None and self.trainer.sanity_checking):
            self._val_cluster_preds.append(self.bank.assign(out["z"].detach()))
            self._val_cluster_targets.append(targets.detach())
        return out

    def on_validation_epoch_end(self):
        """solo-learn's metrics, then ``val_cluster_acc`` (one-to-one Hungarian),
        ``val_cluster_acc_m2o`` (many-to-one) and ``val_cluster_nmi`` over every rank's
        validation images with a label (>= 0)."""
        super().on_validation_epoch_end()
        local_preds, local_labels = self._val_cluster_preds, self._val_cluster_targets
        self._val_cluster_preds, self._val_cluster_targets = [], []
        # the same decision on every rank (no rank may skip the gathers below)
        if self.trainer.sanity_checking or not self.bank.seeded:
            return
        empty = self.bank.counts.new_zeros(0)
        preds = _gather_variable_length(torch.cat(local_preds) if local_preds else empty)
        labels = _gather_variable_length(torch.cat(local_labels).long() if local_labels else empty)
        keep = labels >= 0
        preds, labels = preds[keep].cpu(), labels[keep].cpu()
        if labels.numel() == 0:
            return
        scores = cluster_metrics(preds.numpy(), labels.numpy())
        # identical on every rank (computed from the gathered predictions); sync_dist only
        # averages equal values, once per validation epoch
        self.log_dict(
            {
                "val_cluster_acc": scores["acc"],
                "val_cluster_acc_m2o": scores["acc_m2o"],
                "val_cluster_nmi": scores["nmi"],
            },
            sync_dist=True,
        )
