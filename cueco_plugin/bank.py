"""The centroid bank: K unit centroids with running per-cluster variances, updated by momentum
from the keys, re-clustered on a schedule.

Schedule, in optimiser steps (one :meth:`CentroidBank.step` each): the first ``warmup_iters``
steps are pure L1 and the bank is empty; then the method seeds it (:meth:`CentroidBank.cluster`,
k-means++ and Lloyd on the queue's real keys and the batch); every ``recluster_interval`` steps
it is re-clustered (Lloyd warm-started from the current centroids, or a fresh k-means++ with
``recluster_init: kmeans++``, the paper's "reset"); the cluster losses are off for
``freeze_iters`` steps after each clustering and ramp up linearly over ``ramp_iters`` steps after
the first. In between, every step moves each centroid towards the mean of the keys weighted by
their balanced shares ``w_ij`` (the method's Sinkhorn codes, equal mass per cluster):
``c_j <- normalise(beta1 c_j + (1 - beta1) sum_i w_ij k_i / sum_i w_ij)``, ``var_j <- beta2 var_j
+ (1 - beta2) sum_i w_ij ||k_i - c_j||^2 / sum_i w_ij``. With hard nearest-centroid means instead
(``weights=None``, the paper's reading) the populous clusters take the keys of their neighbours
and the usage collapses (docs/results.md, the bank replay). Usage, ``last_active`` and the
epoch's health count each key's nearest centroid; clusters without members for
``dead_cluster_steps`` steps are revived by splitting a populous one.

All tensor state lives in buffers and the schedule counters in the module's extra state, so the
bank is saved and restored with the model's ``state_dict`` (Lightning checkpoints included).
Under ``torch.distributed`` each step all-reduces one (K, D + 3) statistics tensor and each
clustering broadcasts rank 0's result, so every rank holds the same bank as one process that saw
the global batch. The per-step path (``assign``, ``accumulate``, ``step``) has no Python loop over
samples or clusters and reads no tensor value on the host.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

RECLUSTER_INITS: tuple[str, ...] = ("warm", "kmeans++")
#: a healthy bank, over an epoch of its momentum updates: at least this share of the K clusters
#: had a member ...
LIVE_FLOOR = 0.5
#: ... and the normalised entropy of the clusters' member shares is at least this (1 = even),
ENTROPY_FLOOR = 0.8
#: judged only over an epoch that counted at least this many keys per cluster (the tail of a
#: resumed epoch or the epoch of the first seeding can be too few to say)
MIN_KEYS_PER_CLUSTER = 4


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N,) int64: ``argmin_j ||x - c_j||^2 = argmin_j ||c_j||^2 - 2 x.c_j``."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        x, c = features.float(), centroids.float()
        return (c.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * (x @ c.T)).argmin(dim=1)


def cluster_statistics(
    features: torch.Tensor,
    assignments: torch.Tensor,
    centroids: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cluster weighted sums of the finite features, their weight, weighted squared
    distances and member counts.

    Args:
        features: (N, D); rows with a NaN or inf are left out (masked on the device).
        assignments: (N,) int64 in [0, K), each row's nearest centroid (its member count).
        centroids: (K, D) the assignments refer to.
        weights: (N, K) non-negative share of each row per cluster (e.g. balanced Sinkhorn
            codes), or None: all of a row to its assigned cluster.

    Returns:
        (K, D + 3) float32: ``[:D]`` weighted feature sums, ``[D]`` weights, ``[D + 1]`` weighted
        sums of ``||x - c_j||^2``, ``[D + 2]`` member counts. One tensor, so one all-reduce
        suffices.
    """
    x = features.float()
    finite = torch.isfinite(x).all(dim=1, keepdim=True)
    x = torch.where(finite, x, 0.0)
    c = centroids.float()
    k = c.shape[0]
    ones = finite.float()
    counts = x.new_zeros(k, 1).index_add_(0, assignments, ones)
    if weights is None:
        sq_dist = (x - c.index_select(0, assignments)).pow(2).sum(dim=1, keepdim=True)
        rows = torch.cat([x, ones, sq_dist], dim=1) * finite
        return torch.cat(
            [rows.new_zeros(k, rows.shape[1]).index_add_(0, assignments, rows), counts], 1
        )
    w = torch.where(finite, weights.float(), 0.0)  # (N, K); NaN * 0 would stay NaN
    with torch.autocast(device_type=x.device.type, enabled=False):  # float32 under AMP
        sq = (x.pow(2).sum(1, keepdim=True) - 2.0 * (x @ c.T) + c.pow(2).sum(1)).clamp_min_(0.0)
        return torch.cat([w.T @ x, w.sum(0).unsqueeze(1), (w * sq).sum(0).unsqueeze(1), counts], 1)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007) on the device of ``x``, N >= k.

    Each draw samples a row with probability proportional to its squared distance to the
    nearest centroid chosen so far (inverse-CDF sampling, all on the device). Runs once per
    clustering, not per step.

    Args:
        x: (N, D) float32. k: number of centroids. generator: on ``x.device``.

    Returns:
        (k, D) rows of ``x``; where every remaining distance is zero the draw is uniform.
    """
    n = x.shape[0]
    x_sq = x.pow(2).sum(dim=1)
    chosen = x.new_empty(k, x.shape[1])
    min_sq = torch.full_like(x_sq, float("inf"))
    idx = torch.randint(n, (1,), generator=generator, device=x.device)
    for j in range(k):
        if j > 0:
            cdf = torch.cumsum(min_sq.double(), dim=0)
            total = cdf[-1:]
            u = torch.rand(1, generator=generator, device=x.device, dtype=torch.float64)
            by_distance = torch.searchsorted(cdf, u * total, right=True).clamp_max_(n - 1)
            idx = torch.where(total > 0, by_distance, (u * n).long().clamp_max_(n - 1))
        chosen[j] = x.index_select(0, idx)[0]
        c = chosen[j]
        sq = (x_sq - 2.0 * (x @ c) + c.pow(2).sum()).clamp_min_(0.0)
        min_sq = torch.minimum(min_sq, sq.index_fill_(0, idx, 0.0))
    return chosen


def lloyd_step(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """One spherical Lloyd iteration: (N, D), (K, D) -> (K, D) unit centroids; a cluster left
    empty keeps its previous centroid."""
    stats = cluster_statistics(x, nearest_centroid(x, centroids), centroids)
    sums, counts = stats[:, :-3], stats[:, -1:]
    return torch.where(counts > 0, F.normalize(sums, dim=1), centroids)


class CentroidBank(nn.Module):
    """Centroids, running variances, usage and the clustering schedule of CueCo.

    Arguments are ``method_kwargs`` of the same names (validated by ``cueco_plugin.config``);
    ``seed`` keys the k-means++ and revival noise (the same on every rank).
    """

    centroids: torch.Tensor
    variances: torch.Tensor
    usage: torch.Tensor
    last_active: torch.Tensor
    epoch_counts: torch.Tensor

    def __init__(
        self,
        num_clusters: int,
        dim: int,
        centroid_momentum: float,
        variance_momentum: float,
        min_variance: float,
        warmup_iters: int,
        freeze_iters: int,
        ramp_iters: int,
        recluster_interval: int,
        recluster_init: str,
        dead_cluster_steps: int,
        lloyd_iters: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.dim = dim
        self.centroid_momentum = centroid_momentum
        self.variance_momentum = variance_momentum
        self.min_variance = min_variance
        self.warmup_iters = warmup_iters
        self.freeze_iters = freeze_iters
        self.ramp_iters = ramp_iters
        self.recluster_interval = recluster_interval
        self.recluster_init = recluster_init
        self.dead_cluster_steps = dead_cluster_steps
        self.lloyd_iters = lloyd_iters
        self.seed_value = seed

        k = num_clusters
        self.register_buffer("centroids", torch.zeros(k, dim))
        self.register_buffer("variances", torch.ones(k))
        # EMA (beta1) of the share of each global batch assigned to each cluster
        self.register_buffer("usage", torch.full((k,), 1.0 / k))
        # the step at which each cluster last had a member (or was revived)
        self.register_buffer("last_active", torch.zeros(k, dtype=torch.long))
        # (K, D + 3) statistics of this rank since the last step(): a plain attribute, since
        # DDP's buffer broadcast would overwrite per-rank state held in a buffer
        self._pending: torch.Tensor | None = None
        # members per cluster over every rank since reset_epoch() (the epoch's health); not
        # checkpointed: a run resumed mid-epoch counts from its resume
        self.register_buffer("epoch_counts", torch.zeros(k), persistent=False)
        # schedule counters: host-side ints (no sync to read), saved via extra state
        self.num_updates = 0
        self.num_clusterings = 0
        self.last_cluster_update = 0
        self.seed_update = 0

    def _apply(self, fn: Any, recurse: bool = True) -> CentroidBank:
        """Moves with the model but keeps float32 state under ``.half()`` / bf16 casts: a 1 %
        momentum step would vanish in half-precision rounding."""
        kept = {n: b for n, b in self._buffers.items() if b is not None and b.is_floating_point()}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != torch.float32:  # not rounded through half precision on the way
                self._buffers[name] = old.to(device=new.device, dtype=torch.float32)
        return self

    def get_extra_state(self) -> dict[str, int]:
        return {
            "num_updates": self.num_updates,
            "num_clusterings": self.num_clusterings,
            "last_cluster_update": self.last_cluster_update,
            "seed_update": self.seed_update,
        }

    def set_extra_state(self, state: dict[str, int]) -> None:
        for name, value in state.items():
            setattr(self, name, int(value))

    # ------------------------------------------------------------------ schedule (host ints)
    @property
    def seeded(self) -> bool:
        return self.num_clusterings > 0

    @property
    def wants_clustering(self) -> bool:
        """True at the end of the warm-up (until seeded) and every ``recluster_interval``
        steps after the last clustering."""
        if not self.seeded:
            return self.num_updates >= self.warmup_iters
        since = self.num_updates - self.last_cluster_update
        return self.recluster_interval > 0 and since >= self.recluster_interval

    @property
    def losses_active(self) -> bool:
        """Seeded and past the freeze window of the last clustering."""
        return self.seeded and self.num_updates - self.last_cluster_update >= self.freeze_iters

    @property
    def loss_weight(self) -> float:
        """Factor on L2 and L3: 0 while inactive, then a linear ramp to 1 over ``ramp_iters``
        steps from the first active step."""
        if not self.losses_active:
            return 0.0
        if self.ramp_iters == 0:
            return 1.0
        done = self.num_updates - (self.seed_update + self.freeze_iters) + 1
        return min(1.0, max(done, 1) / self.ramp_iters)

    # ------------------------------------------------------------------ per step
    @torch.no_grad()
    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centroid: (N, D) -> (N,) int64."""
        return nearest_centroid(features, self.centroids)

    @torch.no_grad()
    def accumulate(
        self,
        features: torch.Tensor,
        assignments: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Adds this rank's keys (N, D), their nearest clusters (N,) and optionally their
        balanced shares (N, K) to the pending statistics (:func:`cluster_statistics`);
        :meth:`step` applies them once per optimiser step. Non-finite keys are left out."""
        stats = cluster_statistics(features, assignments, self.centroids, weights)
        self._pending = stats if self._pending is None else self._pending + stats

    @torch.no_grad()
    def step(self, skipped: torch.Tensor | None = None) -> None:
        """One optimiser step: advances the schedule and, once seeded, applies the pending
        statistics (all-reduced across ranks) as a momentum update, then revives dead clusters.

        Args:
            skipped: () bool on the device, True when the optimiser skipped this step (e.g.
                fp16's GradScaler found inf gradients): the bank then does not move. Applied
                with ``torch.where``, so it costs no host sync.
        """
        self.num_updates += 1
        stats, self._pending = self._pending, None
        if not self.seeded:
            return
        if stats is None:
            stats = self.centroids.new_zeros(self.num_clusters, self.dim + 3)
        if _dist_ready():
            dist.all_reduce(stats)
        if skipped is not None:
            stats = torch.where(skipped, 0.0, stats)
        sums, mass, sq_sums, counts = stats[:, :-3], stats[:, -3], stats[:, -2], stats[:, -1]
        moving = mass > 0
        moved = F.normalize(
            torch.lerp(
                self.centroids,
                sums / mass.clamp_min(1e-12).unsqueeze(1),
                1.0 - self.centroid_momentum,
            ),
            dim=1,
        )
        self.centroids.copy_(torch.where(moving.unsqueeze(1), moved, self.centroids))
        batch_var = torch.where(moving, sq_sums / mass.clamp_min(1e-12), self.variances)
        self.variances.lerp_(batch_var, 1.0 - self.variance_momentum).clamp_min_(self.min_variance)
        share = torch.where(counts.sum() > 0, counts / counts.sum().clamp_min(1.0), self.usage)
        self.usage.lerp_(share, 1.0 - self.centroid_momentum)
        self.epoch_counts.add_(counts)
        has = counts > 0
        self.last_active.masked_fill_(has, self.num_updates)
        if self.dead_cluster_steps > 0 and self.num_updates % self.revive_check_interval == 0:
            self._revive_dead_clusters(counts)

    @property
    def revive_check_interval(self) -> int:
        """Dead clusters are looked for every ``max(1, dead_cluster_steps // 10)`` steps: at
        most 10 % late, and most steps skip the revival's kernels."""
        return max(1, self.dead_cluster_steps // 10)

    def _revive_dead_clusters(self, counts: torch.Tensor) -> None:
        """Replaces each dead centroid by a copy of a populous one perturbed by about one donor
        standard deviation (FAISS-style), vectorised. Donors are the clusters with the most
        members this step, in order; the noise comes from a generator keyed by (seed, step), so
        every rank draws the same and a resumed run draws what the uninterrupted one did."""
        live = counts > 0
        dead = ((self.num_updates - self.last_active) >= self.dead_cluster_steps) & live.any()
        order = torch.argsort(counts, descending=True, stable=True)
        rank_among_dead = (torch.cumsum(dead.long(), dim=0) - 1).clamp_min(0)
        donor = order.index_select(0, rank_among_dead % live.sum().clamp_min(1))
        gen = torch.Generator(device=self.centroids.device)
        gen.manual_seed(self.seed_value * 1_000_003 + 7919 * self.num_updates + 1)
        noise = torch.randn(self.centroids.shape, generator=gen, device=self.centroids.device)
        donor_var = self.variances.index_select(0, donor)
        std = donor_var.div(self.dim).sqrt().unsqueeze(1)
        revived = F.normalize(
            torch.addcmul(self.centroids.index_select(0, donor), noise, std), dim=1
        )
        self.centroids.copy_(torch.where(dead.unsqueeze(1), revived, self.centroids))
        self.variances.copy_(torch.where(dead, donor_var, self.variances))
        self.last_active.masked_fill_(dead, self.num_updates)

    def health(self, assignments: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cluster-health values for logging (tensors, no sync).

        Args:
            assignments: (N,) int64 clusters of the current global batch's keys.

        Returns:
            ``live_clusters`` (clusters with at least one member in ``assignments``; a revived
            cluster without members does not count), ``usage_entropy`` (normalised entropy of
            the running usage, 1 = uniform) and ``mean_variance``.
        """
        members = torch.zeros(self.num_clusters, device=assignments.device)
        usage = self.usage / self.usage.sum().clamp_min(1e-12)
        entropy = -(usage * usage.clamp_min(1e-12).log()).sum() / math.log(self.num_clusters)
        return {
            "live_clusters": members.index_fill_(0, assignments, 1.0).sum(),
            "usage_entropy": entropy,
            "mean_variance": self.variances.mean(),
        }

    def epoch_health(self) -> dict[str, torch.Tensor]:
        """The clusters the momentum update met since :meth:`reset_epoch` (tensors, no sync):
        ``epoch_live_clusters`` (with at least one member) and ``epoch_usage_entropy`` (the
        normalised entropy of their member shares, 1 = even, 0 = one cluster)."""
        counts = self.epoch_counts
        share = counts / counts.sum().clamp_min(1.0)
        entropy = -(share * share.clamp_min(1e-12).log()).sum() / math.log(self.num_clusters)
        return {"epoch_live_clusters": (counts > 0).sum().float(), "epoch_usage_entropy": entropy}

    def reset_epoch(self) -> None:
        self.epoch_counts.zero_()

    def collapse_message(self, health: dict[str, torch.Tensor]) -> str | None:
        """What is below the floors in :meth:`epoch_health`'s values (read on the host), or
        None for a healthy bank or an epoch with fewer than ``MIN_KEYS_PER_CLUSTER`` K keys."""
        if float(self.epoch_counts.sum()) < MIN_KEYS_PER_CLUSTER * self.num_clusters:
            return None
        live, entropy = int(health["epoch_live_clusters"]), float(health["epoch_usage_entropy"])
        floor = math.ceil(LIVE_FLOOR * self.num_clusters)
        if live >= floor and entropy >= ENTROPY_FLOOR:
            return None
        return (
            f"{live} of {self.num_clusters} clusters had a member (floor {floor}) and the usage "
            f"entropy is {entropy:.3f} (floor {ENTROPY_FLOOR})"
        )

    # ------------------------------------------------------------------ clustering
    @torch.no_grad()
    def cluster(self, features: torch.Tensor) -> bool:
        """Seeds or re-clusters the bank from real features (N, D), e.g. the queue's keys and
        the batch's. Non-finite rows are dropped. Runs once per clustering, not per step.

        The first clustering and ``recluster_init: kmeans++`` start from k-means++; later ones
        (``warm``) from the current centroids, so cluster j stays cluster j. Then
        ``lloyd_iters`` Lloyd steps; each variance becomes its cluster's mean squared distance
        (the overall one for clusters with fewer than two members). Under ``torch.distributed``
        rank 0's result is broadcast (every rank passes the same gathered features anyway).

        Returns:
            False, leaving the bank unchanged, when fewer than K finite features are given
            (the caller retries on a later step); True otherwise.
        """
        x = features.detach().float()
        x = F.normalize(x[torch.isfinite(x).all(dim=1)], dim=1)
        if x.shape[0] < self.num_clusters:
            return False
        warm = self.seeded and self.recluster_init == "warm"
        with torch.autocast(device_type=x.device.type, enabled=False):
            if warm:
                centroids = self.centroids.clone()
            else:
                gen = torch.Generator(device=x.device)
                gen.manual_seed(self.seed_value * 7_368_787 + self.num_clusterings)
                centroids = kmeans_plus_plus(x, self.num_clusters, gen)
            for _ in range(self.lloyd_iters):
                centroids = lloyd_step(x, centroids)
            assignments = nearest_centroid(x, centroids)
            stats = cluster_statistics(x, assignments, centroids)
            counts, sq_sums = stats[:, -1], stats[:, -2]
            overall = sq_sums.sum() / counts.sum()
            variances = torch.where(counts >= 2, sq_sums / counts.clamp_min(1.0), overall)
            variances = variances.clamp_min(max(self.min_variance, 1e-8))
            packed = torch.cat([centroids, variances[:, None]], dim=1)
            if _dist_ready():
                dist.broadcast(packed, src=0)
        self.centroids.copy_(packed[:, : self.dim])
        self.variances.copy_(packed[:, self.dim])
        if not warm:
            self.usage.fill_(1.0 / self.num_clusters)
            self.last_active.fill_(self.num_updates)
        if not self.seeded:
            self.seed_update = self.num_updates
        self._pending = None
        self.last_cluster_update = self.num_updates
        self.num_clusterings += 1
        return True

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, dim={self.dim}, warmup_iters={self.warmup_iters}, "
            f"recluster_interval={self.recluster_interval} ({self.recluster_init}), "
            f"freeze_iters={self.freeze_iters}, ramp_iters={self.ramp_iters}"
        )
