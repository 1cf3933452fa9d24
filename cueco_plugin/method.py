"""CueCo as a solo-learn method (a ``BaseMomentumMethod``, written like solo-learn's MoCo V2+).

One training step, for the two large crops v1, v2 of a batch of B images per rank:

1. queries ``q_i = normalise(projector(backbone(v_i)))`` and momentum keys
   ``k_i = normalise(momentum_projector(momentum_backbone(v_i)))`` (solo-learn's base classes);
2. L1: solo-learn's ``mocov2plus_loss_func``, symmetric, ``(l(q1, k2, queue[1]) + l(q2, k1,
   queue[0])) / 2``;
3. the keys of every rank are gathered; when the bank's schedule asks for it (end of the warm-up,
   every ``recluster_interval`` steps) it is clustered from them and the queue's real keys;
4. targets: with ``assignment_source: key`` q1 is pulled to the nearest centroid of k2 and q2 to
   that of k1 (L1's positive pairs), with ``query`` each query to its own nearest centroid;
5. L2 (centroid contrast) and L3 (variance-scaled distance), both views averaged, weighted by
   the bank's schedule (0 in the warm-up and freeze windows, then a linear ramp);
6. the local keys are accumulated into the bank with their balanced shares (Sinkhorn over the
   gathered keys and the queue's newest keys, SwAV's equipartition: every centroid is moved by
   an equal share of the keys, so the update cannot feed the populous clusters) and the
   gathered keys enqueued. After each optimiser step
   (``on_train_batch_end``, where solo-learn updates the momentum encoder, so gradient
   accumulation is respected) the bank takes one momentum step, all-reducing the accumulated
   statistics, unless the optimiser skipped the step.

Total: ``lambda_nce L1 + w (lambda_centroid L2 + lambda_variance L3) + lambda_cld L_cld`` plus
solo-learn's online classifier loss on detached features. ``L_cld`` is CLD's cross-view loss with
one group per image, on a head of its own (each rank's batch). The defaults are the CPU screen's
winner (docs/results.md): L1 + 0.8 L_cld, the bank's losses weighted 0 (the bank still runs:
its health and cluster metrics are logged); the paper's reading is ``lambda_centroid: 1,
lambda_variance: 0.1, lambda_cld: 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from solo.losses.mocov2plus import mocov2plus_loss_func
from solo.methods.base import BaseMomentumMethod
from solo.utils.misc import gather, omegaconf_select
from solo.utils.momentum import MomentumUpdater, initialize_momentum_params

from cueco_plugin.bank import CentroidBank
from cueco_plugin.config import add_and_validate_method_kwargs
from cueco_plugin.losses import (
    centroid_contrast_loss,
    cross_view_batch_loss,
    sinkhorn,
    variance_scaled_distance_loss,
)
from cueco_plugin.metrics import cluster_scores, contingency_table


class KeyQueue(nn.Module):
    """MoCo's FIFO queue of keys per view.

    Buffers ``keys`` (V, D, Q), the layout ``mocov2plus_loss_func`` takes, and ``real`` (V, Q),
    which slots hold a real key; the write pointer and fill count are host ints saved through the
    extra state, so enqueueing reads nothing on the host. Starts with random unit vectors, as
    MoCo does.
    """

    keys: torch.Tensor
    real: torch.Tensor

    def __init__(self, num_views: int, dim: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("keys", F.normalize(torch.randn(num_views, dim, size), dim=1))
        self.register_buffer("real", torch.zeros(num_views, size, dtype=torch.bool))
        self.ptr = 0
        self.num_filled = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"ptr": self.ptr, "num_filled": self.num_filled}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.ptr, self.num_filled = int(state["ptr"]), int(state["num_filled"])

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Writes keys (V, N, D) over the oldest ones, wrapping around (only the newest Q if
        N > Q). A key with a NaN or inf keeps the slot's old key."""
        keys = keys[:, -self.size :]
        n = keys.shape[1]
        slots = torch.arange(self.ptr, self.ptr + n, device=keys.device) % self.size
        new = keys.detach().transpose(1, 2).to(self.keys.dtype)  # (V, D, N)
        finite = torch.isfinite(new).all(dim=1)  # (V, N)
        old = self.keys.index_select(2, slots)
        self.keys.index_copy_(2, slots, torch.where(finite.unsqueeze(1), new, old))
        self.real.index_copy_(1, slots, self.real.index_select(1, slots) | finite)
        self.ptr = (self.ptr + n) % self.size
        self.num_filled = min(self.num_filled + n, self.size)

    def filled(self) -> torch.Tensor:
        """The real keys held so far, all views: (N, D); the random initial vectors never
        appear. Reads the mask on the host: for clusterings, not for every step."""
        return self.keys.transpose(1, 2)[self.real]

    def recent(self, count: int) -> torch.Tensor:
        """The ``count`` most recently written real keys of each view: (V * n, D), n <= count."""
        n = min(count, self.num_filled)
        slots = torch.arange(self.ptr - n, self.ptr, device=self.keys.device) % self.size
        return self.keys.index_select(2, slots).permute(0, 2, 1).reshape(-1, self.keys.shape[1])


class ForeachMomentumUpdater(MomentumUpdater):
    """solo-learn's EMA update ``mp <- tau mp + (1 - tau) op`` as three multi-tensor kernels
    instead of about three per parameter; the same roundings, so the same numbers."""

    @torch.no_grad()
    def update(self, online_net: nn.Module, momentum_net: nn.Module) -> None:
        momentum = [p.data for p in momentum_net.parameters()]
        online = [p.data for p in online_net.parameters()]
        torch._foreach_mul_(momentum, self.cur_tau)
        torch._foreach_add_(momentum, torch._foreach_mul(online, 1 - self.cur_tau))


def _projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo V2+'s two-layer MLP projector."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def swap_views(x: torch.Tensor) -> torch.Tensor:
    """``[x(k1); x(k2)] -> [x(k2); x(k1)]`` along dim 0: the target of each query is that of
    the *other* view's key, the pairing of L1's positives. (2B, ...) -> (2B, ...)."""
    return x.roll(shifts=x.shape[0] // 2, dims=0)


class CueCo(BaseMomentumMethod):
    def __init__(self, cfg: omegaconf.DictConfig):
        """CueCo, Cluster Contrast (Giakoumoglou and Stathaki, ICIP 2025, arXiv 2507.12359):
        MoCo V2+ instance contrast with a queue plus a momentum-updated centroid bank pulling
        each query towards its cluster. Every option under ``method_kwargs``, its default and
        what it allows: ``cueco_plugin.config.CUECO_DEFAULTS`` and docs/options.md.
        """
        super().__init__(cfg)
        self.momentum_updater = ForeachMomentumUpdater(
            cfg.momentum.base_tau, cfg.momentum.final_tau
        )
        mk = cfg.method_kwargs
        self.mk = mk
        dim = mk.proj_output_dim
        self.projector = _projector(self.features_dim, mk.proj_hidden_dim, dim)
        self.momentum_projector = _projector(self.features_dim, mk.proj_hidden_dim, dim)
        initialize_momentum_params(self.projector, self.momentum_projector)
        self.queue = KeyQueue(num_views=2, dim=dim, size=mk.queue_size)
        seed = int(omegaconf_select(cfg, "seed", 0) or 0)
        self.bank = CentroidBank(
            num_clusters=mk.num_clusters,
            dim=dim,
            centroid_momentum=mk.centroid_momentum,
            variance_momentum=mk.variance_momentum,
            min_variance=mk.min_variance,
            warmup_iters=mk.warmup_iters,
            freeze_iters=mk.freeze_iters,
            ramp_iters=mk.ramp_iters,
            recluster_interval=mk.recluster_interval,
            recluster_init=mk.recluster_init,
            dead_cluster_steps=mk.dead_cluster_steps,
            lloyd_iters=mk.lloyd_iters,
            seed=seed,
        )
        # CLD's head (normalised in _cld_loss); only when on, so that no unused parameter meets
        # DDP and checkpoints without it are unchanged
        self.cld_head = nn.Linear(self.features_dim, mk.cld_dim) if mk.lambda_cld > 0 else None
        # the queue and the bank are replicated by construction (built from all-gathered keys
        # and all-reduced statistics, clusterings broadcast): DDP need not broadcast them from
        # rank 0 before every forward, 128 MiB at Q = 65536, D = 256 (once: on_fit_start)
        self._ddp_params_and_buffers_to_ignore = self.replicated_buffer_names()
        self.collapse_floor = mk.collapse_threshold / math.sqrt(dim)
        self._deferred_seed_reported = False
        self._skipped: torch.Tensor | None = None
        self._val_table: torch.Tensor | None = None
        if mk.compile_backbones:  # in place: the state dict keys and checkpoints stay the same
            self.backbone.compile(mode=mk.compile_mode)
            self.momentum_backbone.compile(mode=mk.compile_mode)

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """solo-learn's momentum defaults, then CueCo's defaults and checks (ValueErrors naming
        the key, the bad value and what is allowed), then the auto-resume decision: the newest
        complete checkpoint whose saved config matches (``cueco_plugin.runs``). The model is
        built before ``main_pretrain.py`` reads ``auto_resume``, the last point to decide it."""
        from cueco_plugin.runs import resolve_auto_resume

        cfg.momentum = omegaconf_select(cfg, "momentum", {})
        cfg = super(CueCo, CueCo).add_and_assert_specific_cfg(cfg)
        return resolve_auto_resume(add_and_validate_method_kwargs(cfg))

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        extra = [{"name": "projector", "params": self.projector.parameters()}]
        if self.cld_head is not None:
            extra.append({"name": "cld_head", "params": self.cld_head.parameters()})
        return super().learnable_params + extra

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        return super().momentum_pairs + [(self.projector, self.momentum_projector)]

    def replicated_buffer_names(self) -> list[str]:
        """The queue's and the bank's buffers, by their names in the method's state dict."""
        return [
            f"{prefix}.{name}"
            for prefix, module in (("queue", self.queue), ("bank", self.bank))
            for name, _ in module.named_buffers()
        ]

    def on_fit_start(self) -> None:
        """Rank 0's queue and bank once to every rank (DDP skips them, see ``__init__``)."""
        super().on_fit_start()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            buffers = dict(self.named_buffers())
            for name in self._ddp_params_and_buffers_to_ignore:
                torch.distributed.broadcast(buffers[name], src=0)

    def configure_callbacks(self) -> list[Any]:
        """The run-management callbacks (run folders, atomic checkpoints, interrupts)."""
        from cueco_plugin.runs import run_callbacks

        return run_callbacks(self.cfg)

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Online backbone and projector; adds the L2-normalised query ``z`` (B, D)."""
        out = super().forward(X)
        out["z"] = F.normalize(self.projector(out["feats"]), dim=-1)
        return out

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        """Momentum backbone and projector; adds the L2-normalised key ``z`` (B, D)."""
        out = super().momentum_forward(X)
        out["z"] = F.normalize(self.momentum_projector(out["feats"]), dim=-1)
        return out

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        """Starts the optimiser-step detector at the trainer's step and restores tau on resume
        (solo-learn resets ``last_step`` to 0 and does not checkpoint tau)."""
        super().on_train_start()
        self.last_step = self.trainer.global_step
        if self.trainer.global_step > 0:
            self.momentum_updater.update_tau(
                cur_step=self.trainer.global_step, max_steps=self.trainer.estimated_stepping_batches
            )

    def _cluster(self, gathered: torch.Tensor) -> None:
        """(Re-)clusters the bank from the gathered keys (N, D) and the queue's real keys;
        defers (with one message) while fewer than K real keys exist."""
        if self.bank.cluster(torch.cat([gathered, self.queue.filled().float()])):
            return
        if not self._deferred_seed_reported:
            self._deferred_seed_reported = True
            rank_zero_warn(
                f"CueCo: seeding of the {self.bank.num_clusters} centroids deferred at step "
                f"{self.bank.num_updates}: only {gathered.shape[0] + int(self.queue.real.sum())} "
                "real keys so far (need at least num_clusters); the cluster losses stay off "
                "until the queue holds enough"
            )

    def _codes(self, gathered: torch.Tensor) -> torch.Tensor:
        """Balanced soft assignments (2, N, K) of the gathered keys (2, N, D): Sinkhorn over
        them and the queue's ``sinkhorn_queue_keys`` most recent keys, so every centroid gets
        an equal share (SwAV's equipartition); the same on every rank."""
        keys = gathered.reshape(-1, gathered.shape[-1]).float()
        recent = self.queue.recent(self.mk.sinkhorn_queue_keys // 2)
        with torch.autocast(device_type=keys.device.type, enabled=False):  # float32 scores
            scores = torch.cat([keys, recent.float()]) @ self.bank.centroids.float().T
        # a non-finite key (left out of the bank's statistics) must not make every code NaN
        scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
        soft = sinkhorn(scores, self.mk.sinkhorn_epsilon, self.mk.sinkhorn_iters)
        return soft[: keys.shape[0]].view(*gathered.shape[:2], soft.shape[1])

    def _targets(self, q: torch.Tensor, assign: torch.Tensor, local: slice) -> torch.Tensor:
        """The clusters (2B,) the queries (2B, D) are pulled to, from the gathered keys'
        clusters (2, N); ``local`` selects this rank's rows."""
        if self.mk.assignment_source == "query":
            return self.bank.assign(q.detach())
        return swap_views(assign[:, local].reshape(-1))

    def _nce_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Symmetric L1 of queries (2B, D) and keys (2B, D): solo-learn's
        ``mocov2plus_loss_func`` on each view against the other view's key queue."""
        (q1, q2), (k1, k2) = q.chunk(2), k.chunk(2)
        tau = self.mk.temperature
        queue = self.queue.keys.clone().detach()  # saved for a backward after the enqueue
        loss = mocov2plus_loss_func(q1, k2, queue[1], tau)
        return (loss + mocov2plus_loss_func(q2, k1, queue[0], tau)) / 2

    def loss_terms(
        self, q: torch.Tensor, k: torch.Tensor, gathered: torch.Tensor, local: slice
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor]:
        """Steps 3-6 of the module docstring for one micro-batch.

        Args:
            q: (2B, D) queries ``[q1; q2]``. k: (2B, D) keys ``[k1; k2]``.
            gathered: (2, N, D) every rank's keys per view. local: this rank's rows of N.

        Returns:
            L1, L2, L3 (scalars), the schedule's weight on L2 and L3, and the gathered keys'
            clusters (2, N) (-1 before the bank is seeded).
        """
        bank, mk = self.bank, self.mk
        if bank.wants_clustering:  # host-side schedule: no sync
            self._cluster(gathered.reshape(-1, gathered.shape[-1]).float())
        weight = bank.loss_weight
        if bank.seeded:
            assign = bank.assign(gathered.reshape(-1, gathered.shape[-1])).view(2, -1)
        else:
            assign = gathered.new_full(gathered.shape[:2], -1, dtype=torch.long)

        nce_loss = self._nce_loss(q, k)
        if weight > 0:  # a loss weighted 0 is computed for its log only, without a graph
            targets = self._targets(q, assign, local)
            grad = torch.is_grad_enabled()
            with torch.set_grad_enabled(grad and mk.lambda_centroid > 0):
                centroid_loss = centroid_contrast_loss(
                    q, bank.centroids, targets, mk.centroid_temperature
                )
            with torch.set_grad_enabled(grad and mk.lambda_variance > 0):
                variance_loss = variance_scaled_distance_loss(
                    q, bank.centroids, bank.variances, targets, mk.variance_scaling, mk.variance_eps
                )
        else:
            centroid_loss = variance_loss = nce_loss.new_zeros(())

        if bank.seeded:  # the keys' balanced shares move the centroids; their clusters count
            codes = self._codes(gathered)  # (2, N, K), the same on every rank
            shares = codes[:, local].reshape(-1, codes.shape[-1])
            bank.accumulate(k, assign[:, local].reshape(-1), shares)
        self.queue.enqueue(gathered)
        return nce_loss, centroid_loss, variance_loss, weight, assign

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for CueCo reusing BaseMomentumMethod training step.

        Args:
            batch: ``[img_indexes, [X1, X2], Y]``, each view (B, C, H, W).
            batch_idx: index of the batch.

        Returns:
            The weighted sum of L1, L2, L3 plus the online classifier's loss.
        """
        out = super().training_step(batch, batch_idx)
        q = torch.cat(out["z"])  # (2B, D): [q1; q2]
        k = torch.cat(out["momentum_z"])  # (2B, D): [k1; k2]
        b = q.shape[0] // 2
        # one all-gather of both views: (world x B, 2D) -> (2, world x B, D)
        gathered = gather(torch.cat((k[:b], k[b:]), dim=1)).view(-1, 2, k.shape[1]).transpose(0, 1)
        local = slice(self.global_rank * b, (self.global_rank + 1) * b)

        nce_loss, centroid_loss, variance_loss, weight, assign = self.loss_terms(
            q, k, gathered, local
        )
        mk = self.mk
        # a term weighted 0 stays out of the sum (0 x inf would be NaN)
        terms = ((mk.lambda_centroid, centroid_loss), (mk.lambda_variance, variance_loss))
        cluster = [lam * term for lam, term in terms if lam > 0]
        loss = mk.lambda_nce * nce_loss
        if cluster:
            loss = loss + weight * sum(cluster[1:], cluster[0])
        if self.cld_head is not None:
            cld_loss = self._cld_loss(out["feats"])
            loss = loss + mk.lambda_cld * cld_loss
            self.log("train_cld_loss", cld_loss, on_step=True, on_epoch=False)
        self._log_training(nce_loss, centroid_loss, variance_loss, weight, gathered, assign)
        return loss + out["loss"]

    def _cld_loss(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """CLD's cross-view loss of this rank's two views (backbone features (B, F) each),
        projected by ``cld_head`` and L2-normalised, one group per image."""
        v1, v2 = (F.normalize(self.cld_head(f), dim=-1) for f in feats[:2])
        return cross_view_batch_loss(v1, v2, self.mk.cld_temperature)

    def _is_logging_step(self) -> bool:
        """Whether Lightning writes this step's values to its loggers (every
        ``log_every_n_steps`` optimiser steps), from the trainer's public attributes."""
        n = self.trainer.log_every_n_steps
        return n > 0 and (self.trainer.global_step + 1) % n == 0

    def _log_training(
        self,
        nce_loss: torch.Tensor,
        centroid_loss: torch.Tensor,
        variance_loss: torch.Tensor,
        weight: float,
        gathered: torch.Tensor,
        assign: torch.Tensor,
    ) -> None:
        """Per-step losses (this rank's, no all-reduce per step); on logging steps the bank's
        health and the spread of the gathered keys (the same on every rank, so no sync either),
        and the collapse check."""
        self.log_dict(
            {
                "train_nce_loss": nce_loss,
                "train_centroid_loss": centroid_loss,
                "train_variance_loss": variance_loss,
            },
            on_step=True,
            on_epoch=False,
        )
        if self._trainer is None or not self._is_logging_step():
            return
        feature_std = gathered.float().std(dim=1).mean()
        if self.bank.seeded:
            health = self.bank.health(assign.view(-1))
        else:  # the warm-up: no clusters yet
            health = {"live_clusters": 0.0, "usage_entropy": 0.0, "mean_variance": 0.0}
        health = {f"train_{name}": value for name, value in health.items()}
        health["train_cluster_weight"] = weight
        health["train_feature_std"] = feature_std
        self.log_dict(health, on_step=True, on_epoch=False)
        if self.collapse_floor > 0 and float(feature_std) < self.collapse_floor:
            message = (
                f"CueCo: feature collapse at step {self.trainer.global_step}: the keys' mean "
                f"per-dimension std is {float(feature_std):.2e}, below "
                f"method_kwargs.collapse_threshold / sqrt(D) = {self.collapse_floor:.2e}"
            )
            if self.mk.stop_on_collapse:
                raise RuntimeError(message + " (stop_on_collapse: True)")
            rank_zero_warn(message)

    def on_train_epoch_start(self) -> None:
        self.bank.reset_epoch()

    def on_train_epoch_end(self) -> None:
        """Logs the clusters the bank's update met this epoch (``train_epoch_live_clusters``,
        ``train_epoch_usage_entropy``) and warns, or with ``stop_on_collapse`` stops, when they
        fall below the bank's floors (:data:`cueco_plugin.bank.LIVE_FLOOR` of K, usage entropy
        :data:`cueco_plugin.bank.ENTROPY_FLOOR`). One host read per epoch; the same values on
        every rank (the counts are all-reduced), so every rank decides alike."""
        if not self.bank.seeded or float(self.bank.epoch_counts.sum()) == 0:
            return
        health = self.bank.epoch_health()
        self.log_dict({f"train_{name}": value for name, value in health.items()})
        message = self.bank.collapse_message(health)
        if message is not None:
            message = f"CueCo: cluster collapse in epoch {self.current_epoch}: {message}"
            if self.mk.stop_on_collapse:
                raise RuntimeError(message + " (stop_on_collapse: True)")
            rank_zero_warn(message)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Remembers, as a device tensor, whether fp16's GradScaler found inf gradients and will
        skip this step (read from the scaler after Lightning's unscale, no host sync)."""
        super().on_before_optimizer_step(optimizer)
        scaler = getattr(self.trainer.strategy.precision_plugin, "scaler", None)
        state = scaler._per_optimizer_states.get(id(optimizer)) if scaler is not None else None
        found = state.get("found_inf_per_device") if state else None
        self._skipped = torch.stack(list(found.values())).sum() > 0 if found else None

    def on_train_batch_end(self, outputs: dict[str, Any], batch: Sequence[Any], batch_idx: int):
        """After an optimiser step: solo-learn's momentum update, then one bank step.

        ``trainer.global_step`` only grows on the micro-batch that stepped the optimiser, so with
        gradient accumulation the bank moves once per optimiser step, from all its micro-batches.
        """
        optimiser_stepped = self.trainer.global_step > self.last_step
        super().on_train_batch_end(outputs, batch, batch_idx)
        if optimiser_stepped:
            self.bank.step(skipped=self._skipped)
            self._skipped = None

    # ------------------------------------------------------------------ validation
    def base_validation_step(self, X: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """solo-learn's validation forward, plus the (cluster, class) counts of the images'
        nearest centroids (from their online projections) for the bank's classification."""
        out = super().base_validation_step(X, targets)
        if self.bank.seeded and not (self._trainer is not None and self.trainer.sanity_checking):
            table = contingency_table(
                self.bank.assign(out["z"]), targets, self.bank.num_clusters, self.num_classes
            )
            self._val_table = table if self._val_table is None else self._val_table + table
        return out

    def on_validation_epoch_end(self):
        """solo-learn's metrics, then ``val_cluster_acc`` (one-to-one Hungarian),
        ``val_cluster_acc_m2o`` (many-to-one) and ``val_cluster_nmi`` from the contingency table
        summed over every rank (one all-reduce per validation epoch)."""
        super().on_validation_epoch_end()
        table, self._val_table = self._val_table, None
        if self.trainer.sanity_checking or not self.bank.seeded:  # the same on every rank
            return
        if table is None:
            table = torch.zeros(
                self.bank.num_clusters, self.num_classes, dtype=torch.long, device=self.device
            )
        table = self.trainer.strategy.reduce(table, reduce_op="sum")
        if int(table.sum()) == 0:
            return
        scores = cluster_scores(table)
        self.log_dict({f"val_cluster_{name}": value for name, value in scores.items()})
