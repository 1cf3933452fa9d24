"""The centroid bank: K centroids with running per-cluster variances, updated by momentum.

All tensor state lives in buffers and the schedule counters in the module's extra state, so the
whole bank is saved and restored with the model's ``state_dict`` (Lightning checkpoints included).

Under ``torch.distributed`` every rank ends each :meth:`CentroidBank.update` with the same bank as
one process that saw the whole global batch: the per-cluster sums, counts and squared distances
are packed into one (K, D + 2) tensor and all-reduced once. :meth:`CentroidBank.seed` computes on
rank 0 and broadcasts.

``assign`` and ``update`` contain no Python loop over samples or clusters and never read a tensor
value on the host, so they add no host-device synchronisation to a training step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value >= 1)
    if not ok:
        allowed = "an integer >= 0 (0 disables it)" if allow_zero else "an integer >= 1"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_momentum(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (Euclidean) for each row of ``features``.

    Args:
        features: (N, D).
        centroids: (K, D).

    Returns:
        (N,) int64. ``argmin_j ||x - c_j||^2 = argmin_j (||c_j||^2 - 2 x.c_j)``.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        x, c = features.float(), centroids.float()
        scores = c.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * (x @ c.T)
        return scores.argmin(dim=1)


def cluster_statistics(
    features: torch.Tensor, assignments: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Per-cluster sums of features, member counts and squared distances to the centroid.

    Args:
        features: (N, D) float.
        assignments: (N,) int64 in [0, K).
        centroids: (K, D) the centroids ``assignments`` refer to.

    Returns:
        (K, D + 2) float32: columns ``[:D]`` the feature sums, ``[D]`` the counts and
        ``[D + 1]`` the sums of ``||x - c_a||^2``. One tensor, so one all-reduce suffices.
    """
    rows = _statistic_rows(features, assignments, centroids)
    stats = rows.new_zeros(centroids.shape[0], rows.shape[1])
    return stats.index_add_(0, assignments, rows)


def _statistic_rows(
    features: torch.Tensor, assignments: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """(N, D + 2) float32 rows ``[x, 1, ||x - c_a||^2]`` that :func:`cluster_statistics` sums."""
    x = features.float()
    sq_dist = (x - centroids.float().index_select(0, assignments)).pow(2).sum(dim=1, keepdim=True)
    return torch.cat([x, torch.ones_like(sq_dist), sq_dist], dim=1)


class CentroidBank(nn.Module):
    """K centroids in the (normalised) projector space, a scalar running variance per cluster,
    usage statistics and the re-seeding schedule.

    Args:
        num_clusters: K, >= 1.
        dim: feature dimension D, >= 1.
        centroid_momentum: beta1 in ``c_j <- normalise(beta1 c_j + (1 - beta1) mean_j)``.
        variance_momentum: beta2 in ``var_j <- beta2 var_j + (1 - beta2) mean_j ||k - c_j||^2``
            (distances to the centroid the keys were assigned against, before its update).
        initial_variance: variance of every cluster before the first seeding, > 0.
        min_variance: floor of every running variance (>= 0). Keeps L3's ``"divide"`` scaling
            from exploding on a cluster that happens to be very tight; at seeding a cluster
            with fewer than two members gets the overall variance.
        freeze_iters: number of updates after each (re-)seeding during which
            :attr:`losses_active` is False while the bank settles. 0 disables.
        reset_interval: re-seed every this many updates (:attr:`needs_seed` turns True).
            0 disables periodic re-seeding (the bank is still seeded once).
        dead_cluster_steps: a cluster with no member for this many consecutive updates is
            revived by splitting a populous cluster (FAISS-style: a copy of the donor centroid
            perturbed by about one donor standard deviation). 0 disables revival. Checked every
            ``max(1, dead_cluster_steps // 10)`` updates.
        lloyd_iters: Lloyd iterations after k-means++ seeding in :meth:`seed`.
        normalize: keep centroids on the unit sphere (spherical k-means); True for CueCo,
            whose features are L2-normalised.
        seed: base seed for seeding and revival noise; every rank must use the same.
    """

    centroids: torch.Tensor
    variances: torch.Tensor
    usage: torch.Tensor
    counts: torch.Tensor
    last_active: torch.Tensor

    def __init__(
        self,
        num_clusters: int,
        dim: int,
        centroid_momentum: float = 0.99,
        variance_momentum: float = 0.99,
        initial_variance: float = 1.0,
        min_variance: float = 1e-3,
        freeze_iters: int = 313,
        reset_interval: int = 1000,
        dead_cluster_steps: int = 100,
        lloyd_iters: int = 10,
        normalize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_positive_int("num_clusters", num_clusters)
        _check_positive_int("dim", dim)
        _check_momentum("centroid_momentum", centroid_momentum)
        _check_momentum("variance_momentum", variance_momentum)
        if (
            not isinstance(initial_variance, (int, float))
            or isinstance(initial_variance, bool)
            or not 0 < initial_variance < float("inf")
        ):
            raise ValueError(
                f"initial_variance must be a positive finite number, got {initial_variance!r}"
            )
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        _check_positive_int("freeze_iters", freeze_iters, allow_zero=True)
        _check_positive_int("reset_interval", reset_interval, allow_zero=True)
        _check_positive_int("dead_cluster_steps", dead_cluster_steps, allow_zero=True)
        _check_positive_int("lloyd_iters", lloyd_iters, allow_zero=True)
        if reset_interval and freeze_iters >= reset_interval:
            raise ValueError(
                f"freeze_iters ({freeze_iters}) must be smaller than reset_interval "
                f"({reset_interval}), or the cluster losses would never be on"
            )

        self.num_clusters = num_clusters
        self.dim = dim
        self.centroid_momentum = float(centroid_momentum)
        if (
            not isinstance(min_variance, (int, float))
            or isinstance(min_variance, bool)
            or not 0 <= min_variance < float("inf")
        ):
            raise ValueError(f"min_variance must be a finite number >= 0, got {min_variance!r}")
        self.variance_momentum = float(variance_momentum)
        self.initial_variance = float(initial_variance)
        self.min_variance = float(min_variance)
        self.freeze_iters = freeze_iters
        self.reset_interval = reset_interval
        self.dead_cluster_steps = dead_cluster_steps
        self.lloyd_iters = lloyd_iters
        self.normalize = normalize
        self.seed_value = int(seed)

        # placeholder until seed(): deterministic, never used for a loss (losses_active is False)
        placeholder = torch.randn(
            num_clusters, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float32
        )
        if normalize:
            placeholder = F.normalize(placeholder, dim=1)
        self.register_buffer("centroids", placeholder)
        self.register_buffer(
            "variances", torch.full((num_clusters,), self.initial_variance, dtype=torch.float32)
        )
        # EMA (momentum beta1) of the fraction of each global batch assigned to each cluster
        self.register_buffer(
            "usage", torch.full((num_clusters,), 1.0 / num_clusters, dtype=torch.float32)
        )
        # members since the last seeding, and the update index at which each last had one
        self.register_buffer("counts", torch.zeros(num_clusters, dtype=torch.long))
        self.register_buffer("last_active", torch.zeros(num_clusters, dtype=torch.long))
        # (K, D + 2) statistics accumulated since the last step() (micro-batches), None at step
        # boundaries. A plain attribute, not a buffer: each rank holds its own until step()
        # all-reduces them (DDP's per-forward buffer broadcast would overwrite them otherwise).
        self._pending: torch.Tensor | None = None

        # schedule counters: host-side ints (no sync to read them), saved via extra state
        self.num_updates = 0
        self.last_seed_update = 0
        self.num_seeds = 0

    def _apply(self, fn: Any, recurse: bool = True) -> CentroidBank:
        """Moves with the model (``.to(device)``) but keeps its state in float32 under
        ``.half()`` / ``.to(torch.bfloat16)`` / true half-precision training: a 1 % momentum
        step would vanish in fp16/bf16 rounding."""
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    # ------------------------------------------------------------------ schedule
    @property
    def seeded(self) -> bool:
        return self.num_seeds > 0

    @property
    def needs_seed(self) -> bool:
        """True before the first seeding and every ``reset_interval`` updates after a seeding."""
        if not self.seeded:
            return True
        return self.reset_interval > 0 and self.updates_since_seed >= self.reset_interval

    @property
    def updates_since_seed(self) -> int:
        return self.num_updates - self.last_seed_update

    @property
    def losses_active(self) -> bool:
        """Whether the cluster losses should be on: seeded and past the freeze window."""
        return self.seeded and self.updates_since_seed >= self.freeze_iters

    def get_extra_state(self) -> dict[str, int]:
        return {
            "num_updates": self.num_updates,
            "last_seed_update": self.last_seed_update,
            "num_seeds": self.num_seeds,
        }

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.num_updates = int(state["num_updates"])
        self.last_seed_update = int(state["last_seed_update"])
        self.num_seeds = int(state["num_seeds"])

    # ------------------------------------------------------------------ hot path
    def _check_features(self, features: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"features must have shape (B, {self.dim}), got {tuple(features.shape)}"
            )
        if not features.is_floating_point():
            raise ValueError(
                f"features must be a floating-point tensor, got dtype {features.dtype}"
            )

    @torch.no_grad()
    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centroid by Euclidean distance. features (B, D) -> (B,) int64."""
        self._check_features(features)
        return nearest_centroid(features, self.centroids)

    @torch.no_grad()
    def update(
        self,
        features: torch.Tensor,
        assignments: torch.Tensor,
        check_range: bool | None = None,
    ) -> torch.Tensor:
        """Momentum update of centroids, variances and usage from one (local) batch:
        :meth:`accumulate` then :meth:`step`.

        Under ``torch.distributed`` the per-cluster statistics are all-reduced first, so pass
        each rank's *local* features: the result equals one process seeing the global batch.
        Clusters without members keep their centroid and variance. Clusters dead for
        ``dead_cluster_steps`` updates are revived afterwards.

        Args:
            features: (B, D) key features.
            assignments: (B,) int64, from :meth:`assign`.
            check_range: as in :meth:`accumulate`.

        Returns:
            (K,) float32 member counts of this global batch (for logging).
        """
        self.accumulate(features, assignments, check_range)
        return self.step()

    @torch.no_grad()
    def accumulate(
        self,
        features: torch.Tensor,
        assignments: torch.Tensor,
        check_range: bool | None = None,
    ) -> None:
        """Adds one (local) batch's per-cluster statistics to the pending sums, without moving
        the bank; :meth:`step` applies them. With gradient accumulation, call this on every
        micro-batch and :meth:`step` once per optimiser step, so no key is lost.

        Args:
            features: (B, D) key features.
            assignments: (B,) int64 in [0, K).
            check_range: check ``0 <= assignments < K``, which reads tensor values (a host
                sync on an accelerator). ``None``: only for CPU tensors.
        """
        if not self.seeded:
            raise RuntimeError("CentroidBank.update() called before seed(): seed the bank first")
        self._check_features(features)
        if assignments.shape != (features.shape[0],) or assignments.dtype != torch.int64:
            raise ValueError(
                f"assignments must be int64 with shape ({features.shape[0]},), got "
                f"{assignments.dtype} {tuple(assignments.shape)}"
            )
        if check_range is None:
            check_range = assignments.device.type == "cpu"
        if check_range and assignments.numel() > 0:
            lo, hi = int(assignments.min()), int(assignments.max())
            if lo < 0 or hi >= self.num_clusters:
                raise ValueError(
                    f"assignments contain {lo if lo < 0 else hi}, outside the allowed range "
                    f"[0, {self.num_clusters - 1}] for num_clusters={self.num_clusters}"
                )
        with torch.autocast(device_type=features.device.type, enabled=False):
            if self._pending is None or self._pending.device != self.centroids.device:
                self._pending = cluster_statistics(features, assignments, self.centroids)
            else:
                rows = _statistic_rows(features, assignments, self.centroids)
                self._pending.index_add_(0, assignments, rows)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Applies the pending statistics (all-reduced under ``torch.distributed``) as one
        momentum update, revives dead clusters and advances the update counter.

        Returns:
            (K,) float32 member counts of the applied global batch.
        """
        if not self.seeded:
            raise RuntimeError("CentroidBank.step() called before seed(): seed the bank first")
        stats, self._pending = self._pending, None
        if stats is None or stats.device != self.centroids.device:  # nothing accumulated
            stats = self.centroids.new_zeros(self.num_clusters, self.dim + 2)
        if _dist_ready():
            dist.all_reduce(stats)
        sums, counts, sq_sums = stats[:, :-2], stats[:, -2], stats[:, -1]
        self.num_updates += 1
        self._apply_statistics(sums, counts, sq_sums)
        if self.dead_cluster_steps > 0 and self.num_updates % self.revive_check_interval == 0:
            self._revive_dead_clusters(counts)
        return counts

    @property
    def revive_check_interval(self) -> int:
        """Dead clusters are looked for every this many updates, ``max(1, dead_cluster_steps //
        10)``: a cluster is revived at most 10 % late, and most steps skip the ~35 small kernels
        of the revival (a host-side decision: no sync, the same on every rank and on resume)."""
        return max(1, self.dead_cluster_steps // 10)

    def _apply_statistics(
        self, sums: torch.Tensor, counts: torch.Tensor, sq_sums: torch.Tensor
    ) -> None:
        # few, fused kernels: lerp(a, b, w) = a + w (b - a) is the momentum update
        has = counts > 0
        denom = counts.clamp_min(1.0)
        b1, b2 = self.centroid_momentum, self.variance_momentum
        moved = torch.lerp(self.centroids, sums / denom.unsqueeze(1), 1.0 - b1)
        if self.normalize:
            moved = F.normalize(moved, dim=1)
        self.centroids.copy_(torch.where(has.unsqueeze(1), moved, self.centroids))
        # empty clusters: lerp(v, v, w) = v exactly
        self.variances.lerp_(torch.where(has, sq_sums / denom, self.variances), 1.0 - b2)
        self.variances.clamp_min_(self.min_variance)
        self.usage.lerp_(counts / counts.sum().clamp_min(1.0), 1.0 - b1)
        self.counts.add_(counts.long())
        self.last_active.masked_fill_(has, self.num_updates)

    def _revive_dead_clusters(self, counts: torch.Tensor) -> None:
        """Replaces each dead centroid by a perturbed copy of a populous one, vectorised.

        Donors are the live clusters with the most members this step, in order (cycling when
        more clusters are dead than alive); the perturbation is
        Gaussian with a total variance equal to the donor's variance, drawn from a generator
        keyed by (seed, update index), so every rank draws the same and resumes are exact.
        """
        live = counts > 0
        # no live cluster this step (an empty global batch): nobody to split, revive nothing
        dead = ((self.num_updates - self.last_active) >= self.dead_cluster_steps) & live.any()
        order = torch.argsort(counts, descending=True, stable=True)
        # the i-th dead cluster splits the (i mod L)-th most populous of the L live clusters
        rank_among_dead = (torch.cumsum(dead.long(), dim=0) - 1).clamp_min(0)
        donor = order.index_select(0, rank_among_dead % live.sum().clamp_min(1))
        gen = torch.Generator(device=self.centroids.device)
        gen.manual_seed(self.seed_value * 1_000_003 + 7919 * self.num_updates + 1)
        noise = torch.randn(self.centroids.shape, generator=gen, device=self.centroids.device)
        donor_var = self.variances.index_select(0, donor)
        std = donor_var.div(self.dim).sqrt_().unsqueeze(1)
        revived = torch.addcmul(self.centroids.index_select(0, donor), noise, std)
        if self.normalize:
            revived = F.normalize(revived, dim=1)
        self.centroids.copy_(torch.where(dead.unsqueeze(1), revived, self.centroids))
        self.variances.copy_(torch.where(dead, donor_var, self.variances))
        self.last_active.masked_fill_(dead, self.num_updates)

    # ------------------------------------------------------------------ seeding
    @torch.no_grad()
    def seed(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """(Re-)initialises the bank from real features: k-means++ seeding, then
        ``lloyd_iters`` Lloyd steps; variances become each cluster's mean squared distance.

        Runs at seeding time only (every ``reset_interval`` updates), so its k-means++ loop over
        clusters is not in the per-step path. It reads no tensor value on the host either.
        Under ``torch.distributed`` rank 0's result is broadcast, so every rank holds the same
        bank. With fewer distinct features than K, duplicates are drawn uniformly.

        Args:
            features: (N, D), N >= 1, e.g. the MoCo queue's keys plus the current batch's.
            generator: for k-means++ sampling, on ``features.device``; default: one seeded from
                ``(seed, number of seedings so far)``, so seeding is reproducible.
        """
        self._check_features(features)
        if features.shape[0] < 1:
            raise ValueError("seed() needs at least one feature row, got 0")
        if generator is None:
            generator = torch.Generator(device=features.device)
            generator.manual_seed(self.seed_value * 7_368_787 + self.num_seeds)
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.detach().float()
            if self.normalize:
                x = F.normalize(x, dim=1)
            centroids = kmeans_plus_plus(x, self.num_clusters, generator)
            for _ in range(self.lloyd_iters):
                centroids = lloyd_step(x, centroids, self.normalize)
            assignments = nearest_centroid(x, centroids)
            stats = cluster_statistics(x, assignments, centroids)
            counts, sq_sums = stats[:, -2], stats[:, -1]
            overall = sq_sums.sum() / counts.sum().clamp_min(1.0)
            # a cluster seeded with fewer than 2 members has no spread of its own (a lone point
            # has variance 0, which would make L3's "divide" explode): it gets the overall one
            variances = torch.where(counts >= 2, sq_sums / counts.clamp_min(1.0), overall)
            variances = variances.clamp_min(max(self.min_variance, 1e-8))
            if _dist_ready():
                packed = torch.cat([centroids, variances.unsqueeze(1)], dim=1).contiguous()
                dist.broadcast(packed, src=0)
                centroids, variances = packed[:, :-1], packed[:, -1]
        self.centroids.copy_(centroids)
        self.variances.copy_(variances)
        self.usage.fill_(1.0 / self.num_clusters)
        self._pending = None
        self.counts.zero_()
        self.last_active.fill_(self.num_updates)
        self.last_seed_update = self.num_updates
        self.num_seeds += 1

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, dim={self.dim}, "
            f"centroid_momentum={self.centroid_momentum}, "
            f"variance_momentum={self.variance_momentum}, freeze_iters={self.freeze_iters}, "
            f"reset_interval={self.reset_interval}, dead_cluster_steps={self.dead_cluster_steps}"
        )


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007) on the device of ``x``.

    Each draw samples a row with probability proportional to its squared distance to the
    nearest centroid chosen so far (inverse-CDF sampling from one uniform number per draw, all
    on device: no host-device synchronisation).

    Args:
        x: (N, D) float32 points.
        k: number of centroids.
        generator: sampling generator on ``x.device``.

    Returns:
        (K, D) chosen rows of ``x``. Where every remaining point is already a centroid (all
        distances zero), the next is drawn uniformly, so N < K still works.
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
            # all distances zero: draw uniformly instead, decided on device (no sync)
            uniform = (u * n).long().clamp_max_(n - 1)
            idx = torch.where(total > 0, by_distance, uniform)
        chosen[j] = x.index_select(0, idx)[0]
        if j < k - 1:
            # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: one mat-vec, no (N, D) temporary
            c = chosen[j]
            sq = (x_sq - 2.0 * (x @ c) + c.pow(2).sum()).clamp_min_(0.0)
            min_sq = torch.minimum(min_sq, sq.index_fill_(0, idx, 0.0))
    return chosen


def lloyd_step(x: torch.Tensor, centroids: torch.Tensor, normalize: bool) -> torch.Tensor:
    """One Lloyd iteration; clusters left empty keep their previous centroid.

    Args:
        x: (N, D) points. centroids: (K, D).

    Returns:
        (K, D) new centroids (unit-norm if ``normalize``).
    """
    assignments = nearest_centroid(x, centroids)
    k = centroids.shape[0]
    sums = x.new_zeros(k, x.shape[1]).index_add_(0, assignments, x)
    # index_add_, not bincount: bincount reads max() on the host (a sync on an accelerator)
    counts = x.new_zeros(k).index_add_(0, assignments, x.new_ones(x.shape[0]))
    means = sums / counts.clamp_min(1.0).unsqueeze(1)
    if normalize:
        means = F.normalize(means, dim=1)
    return torch.where((counts > 0).unsqueeze(1), means, centroids)
