"""The centroid bank: one momentum step by hand, the schedule (warm-up, freeze, ramp, re-clustering
warm or k-means++), clustering and its deferral, non-finite keys, skipped optimiser steps,
micro-batch accumulation, dead-cluster revival, cluster health, checkpoint
round trips and mixed precision.

The constructor trusts its arguments (``cueco_plugin.config`` validates them; tests/test_config.py
covers that), so there are no bad-argument tests here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cueco_plugin.bank import (
    ENTROPY_FLOOR,
    LIVE_FLOOR,
    CentroidBank,
    cluster_statistics,
    kmeans_plus_plus,
    lloyd_step,
    nearest_centroid,
)

BUFFERS = ("centroids", "variances", "usage", "last_active")
EXTRA_STATE = ("num_updates", "num_clusterings", "last_cluster_update", "seed_update")
C3 = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]


def bank_args(**kwargs: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        num_clusters=3,
        dim=2,
        centroid_momentum=0.5,
        variance_momentum=0.75,
        min_variance=1e-3,
        warmup_iters=0,
        freeze_iters=0,
        ramp_iters=0,
        recluster_interval=0,
        recluster_init="warm",
        dead_cluster_steps=0,
        lloyd_iters=10,
        seed=0,
    )
    args.update(kwargs)
    return args


def make_bank(**kwargs: object) -> CentroidBank:
    return CentroidBank(**bank_args(**kwargs))  # type: ignore[arg-type]


def set_bank(bank: CentroidBank, centroids: list[list[float]], variances: list[float]) -> None:
    """Clusters the bank (so that steps apply), then puts known values in its buffers."""
    assert bank.cluster(torch.tensor(centroids))
    bank.centroids.copy_(torch.tensor(centroids))
    bank.variances.copy_(torch.tensor(variances))


def blobs(
    n: int,
    d: int,
    centres: torch.Tensor,
    spread: float,
    seed: int,
    weights: list[float] | None = None,
) -> torch.Tensor:
    """Unit vectors scattered around the given unit centres (n, d)."""
    gen = torch.Generator().manual_seed(seed)
    k = centres.shape[0]
    probs = torch.tensor(weights if weights is not None else [1.0] * k)
    which = torch.multinomial(probs, n, replacement=True, generator=gen)
    return F.normalize(centres[which] + spread * torch.randn(n, d, generator=gen), dim=1)


def train_step(bank: CentroidBank, keys: torch.Tensor) -> torch.Tensor:
    """What CueCo does with the bank in one optimiser step, once it is seeded. Returns the
    members of each cluster in this batch (K,) and checks ``health()`` counts them."""
    assignments = bank.assign(keys)
    if bank.seeded:
        bank.accumulate(keys, assignments)
        live = bank.health(assignments)["live_clusters"]
    bank.step()
    counts = torch.bincount(assignments, minlength=bank.num_clusters)
    if bank.seeded:
        assert live.item() == (counts > 0).sum().item()
    return counts


def snapshot(bank: CentroidBank) -> dict[str, object]:
    state: dict[str, object] = {name: getattr(bank, name).clone() for name in BUFFERS}
    state.update(bank.get_extra_state())
    return state


def assert_banks_equal(a: CentroidBank, b: CentroidBank, names: tuple[str, ...] = BUFFERS) -> None:
    for name in names:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.get_extra_state() == b.get_extra_state()


def assert_unchanged(bank: CentroidBank, before: dict[str, object]) -> None:
    for name in BUFFERS:
        assert torch.equal(getattr(bank, name), before[name]), name
    assert bank.get_extra_state() == {name: before[name] for name in EXTRA_STATE}


# ---------------------------------------------------------------- one step by hand
def test_one_step_matches_hand_computed_values() -> None:
    bank = make_bank()
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    a = bank.assign(x)
    # squared distances: x0 -> (0.8, 0.4, 3.2), x1 -> (0.4, 0.8, 3.6), x2 -> (2, 0, 2)
    assert a.tolist() == [1, 0, 1]

    bank.accumulate(x, a)
    bank.step()
    health = bank.health(a)

    # cluster 0: mean (0.8, 0.6); 0.5 (1, 0) + 0.5 (0.8, 0.6) = (0.9, 0.3), normalised
    # cluster 1: mean (0.3, 0.9); 0.5 (0, 1) + 0.5 (0.3, 0.9) = (0.15, 0.95), normalised
    # cluster 2: no member, keeps (-1, 0)
    n0, n1 = math.sqrt(0.9**2 + 0.3**2), math.sqrt(0.15**2 + 0.95**2)
    expected_c = torch.tensor([[0.9 / n0, 0.3 / n0], [0.15 / n1, 0.95 / n1], [-1.0, 0.0]])
    torch.testing.assert_close(bank.centroids, expected_c)
    # variances: mean squared distance to the centroid *before* the step
    # cluster 0: 0.4 -> 0.75 * 0.5 + 0.25 * 0.4 = 0.475
    # cluster 1: (0.4 + 0) / 2 = 0.2 -> 0.75 * 1.0 + 0.25 * 0.2 = 0.8; cluster 2 keeps 2.0
    torch.testing.assert_close(bank.variances, torch.tensor([0.475, 0.8, 2.0]))
    # usage: 0.5 * 1/3 + 0.5 * (1/3, 2/3, 0)
    torch.testing.assert_close(bank.usage, torch.tensor([1 / 3, 1 / 2, 1 / 6]))
    assert bank.last_active.tolist() == [1, 1, 0]  # clustered at step 0, stepped once
    assert bank.num_updates == 1
    assert health["live_clusters"].item() == 2.0
    usage = [1 / 3, 1 / 2, 1 / 6]
    entropy = -sum(p * math.log(p) for p in usage) / math.log(3)
    assert health["usage_entropy"].item() == pytest.approx(entropy, rel=1e-6)
    assert health["mean_variance"].item() == pytest.approx((0.475 + 0.8 + 2.0) / 3, rel=1e-6)


def test_assign_picks_the_nearest_centroid_by_euclidean_distance() -> None:
    # a longer but less aligned centroid: nearest by distance, not by dot product
    c = torch.tensor([[3.0, 0.0], [0.6, 0.8]])
    x = torch.tensor([[1.0, 0.0]])
    assert nearest_centroid(x, c).tolist() == [1]  # distances 4 vs 0.8
    assert (x @ c.T).argmax(1).tolist() == [0]


def test_cluster_statistics_sums_counts_and_squared_distances_of_finite_rows() -> None:
    c = torch.tensor(C3)
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    a = torch.tensor([1, 0, 1])
    expected = torch.tensor(
        [[0.8, 0.6, 1.0, 0.4, 1.0], [0.6, 1.8, 2.0, 0.4, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(cluster_statistics(x, a, c), expected)
    # rows with a NaN or an inf (assigned anywhere) add nothing, not even to the counts
    bad = torch.tensor([[float("nan"), 0.0], [float("inf"), 1.0], [0.5, -float("inf")]])
    stats = cluster_statistics(torch.cat([x, bad]), torch.cat([a, torch.tensor([0, 1, 2])]), c)
    assert torch.equal(stats, cluster_statistics(x, a, c))


def test_clusters_without_members_keep_centroid_and_variance_over_many_steps() -> None:
    bank = make_bank()
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    for _ in range(5):
        train_step(bank, x)
    assert bank.centroids[2].tolist() == [-1.0, 0.0]
    assert bank.variances[2].item() == 2.0
    assert bank.last_active[2].item() == 0
    assert bank.usage[2].item() == pytest.approx((1 / 3) * 0.5**5)


def test_a_step_without_keys_changes_nothing_but_the_step_count() -> None:
    bank = make_bank(dead_cluster_steps=1)
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    before = snapshot(bank)
    bank.accumulate(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    bank.step()
    bank.step()  # nothing accumulated at all
    for name in BUFFERS:  # no live cluster: nothing to revive from either
        assert torch.equal(getattr(bank, name), before[name]), name
    assert bank.num_updates == 2


def test_running_variances_never_fall_below_min_variance() -> None:
    bank = make_bank(min_variance=0.05, variance_momentum=0.0)
    set_bank(bank, C3, [1.0, 1.0, 1.0])
    train_step(bank, torch.tensor(C3))  # exactly on the centroids
    torch.testing.assert_close(bank.variances, torch.full((3,), 0.05))


# ---------------------------------------------------------------- skipped steps, bad keys
def test_a_skipped_optimiser_step_moves_nothing_but_advances_the_step_count() -> None:
    bank = make_bank(dead_cluster_steps=1)
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    before = snapshot(bank)
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    bank.accumulate(x, bank.assign(x))
    bank.step(skipped=torch.tensor(True))
    for name in BUFFERS:  # cluster 2 is empty for a step, but no revival either
        assert torch.equal(getattr(bank, name), before[name]), name
    assert bank.num_updates == 1
    # the skipped step's statistics are gone, not carried into the next step
    bank.step()
    for name in ("centroids", "variances", "usage"):
        assert torch.equal(getattr(bank, name), before[name]), name


def test_a_step_that_was_not_skipped_equals_a_plain_step() -> None:
    flagged, plain = make_bank(dead_cluster_steps=1), make_bank(dead_cluster_steps=1)
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    for bank, skipped in ((flagged, torch.tensor(False)), (plain, None)):
        set_bank(bank, C3, [0.5, 1.0, 2.0])
        for _ in range(3):
            bank.accumulate(x, bank.assign(x))
            bank.step(skipped=skipped)
    assert_banks_equal(flagged, plain)
    assert not torch.equal(flagged.centroids, torch.tensor(C3))


def test_non_finite_keys_change_nothing_in_accumulate_and_step() -> None:
    d = 8
    centres = torch.eye(4, d)
    seed_x = blobs(64, d, centres, 0.1, seed=0)
    clean, dirty = make_bank(num_clusters=4, dim=d), make_bank(num_clusters=4, dim=d)
    assert clean.cluster(seed_x) and dirty.cluster(seed_x)
    bad = torch.tensor(
        [[float("nan")] * d, [float("inf")] + [0.0] * (d - 1), [0.5] * (d - 1) + [-float("inf")]]
    )
    for step in range(4):
        x = blobs(32, d, centres, 0.1, seed=10 + step)
        with_bad = torch.cat([x[:10], bad, x[10:]])
        clean.accumulate(x, clean.assign(x))
        dirty.accumulate(with_bad, dirty.assign(with_bad))
        clean.step()
        dirty.step()
    assert_banks_equal(dirty, clean)
    assert torch.isfinite(dirty.centroids).all() and torch.isfinite(dirty.variances).all()


# ---------------------------------------------------------------- micro-batches
def test_accumulate_over_two_micro_batches_equals_one_step_on_their_concatenation() -> None:
    centres = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    x = blobs(96, 16, centres, 0.4, seed=3)
    whole = make_bank(num_clusters=6, dim=16, dead_cluster_steps=2)
    parts = make_bank(num_clusters=6, dim=16, dead_cluster_steps=2)
    whole.cluster(x)
    parts.cluster(x)
    for step in range(4):
        batch = blobs(40, 16, centres, 0.4, seed=10 + step)
        whole.accumulate(batch, whole.assign(batch))
        whole.step()
        first, second = batch[:15], batch[15:]
        parts.accumulate(first, parts.assign(first))
        parts.accumulate(second, parts.assign(second))
        parts.step()
    for name in ("centroids", "variances", "usage"):
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name), rtol=0, atol=1e-6)
    assert torch.equal(parts.last_active, whole.last_active)
    assert parts.num_updates == whole.num_updates == 4


def test_pending_statistics_are_per_rank_state_not_buffers() -> None:
    """DDP broadcasts buffers from rank 0 at every forward; micro-batch statistics must not be
    among them, or rank 0's would overwrite the others' before step() all-reduces them."""
    bank = make_bank()
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    bank.accumulate(x, bank.assign(x))
    # epoch_counts holds all-reduced counts (equal on every rank) and is not checkpointed
    assert set(dict(bank.named_buffers())) == set(BUFFERS) | {"epoch_counts"}
    assert set(bank.state_dict()) == set(BUFFERS) | {"_extra_state"}
    assert bank.cluster(x)  # re-clustering drops statistics gathered against the old centroids
    before = bank.centroids.clone()
    bank.step()
    assert torch.equal(bank.centroids, before)
    torch.testing.assert_close(bank.usage, torch.full((3,), 1 / 3))


def test_accumulate_does_not_move_the_bank_until_step() -> None:
    bank = make_bank()
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    before = snapshot(bank)
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    bank.accumulate(x, bank.assign(x))
    assert_unchanged(bank, before)
    bank.step()
    assert not torch.equal(bank.centroids, before["centroids"])


# ---------------------------------------------------------------- mixed precision
def test_bank_step_with_bf16_features_equals_float32_on_the_same_values() -> None:
    centres = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    x = blobs(64, 8, centres, 0.3, seed=1)
    low, full = make_bank(num_clusters=4, dim=8), make_bank(num_clusters=4, dim=8)
    low.cluster(x)
    full.cluster(x)
    xb = blobs(64, 8, centres, 0.3, seed=2).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        a = low.assign(xb)
        low.accumulate(xb, a)
    low.step()
    assert torch.equal(a, full.assign(xb.float()))
    full.accumulate(xb.float(), a)
    full.step()
    assert low.centroids.dtype == torch.float32
    assert_banks_equal(low, full)


def test_bank_state_stays_float32_when_the_model_is_cast_to_half_precision() -> None:
    cast_bank = make_bank(centroid_momentum=0.99)
    set_bank(cast_bank, C3, [0.5, 1.0, 2.0])
    for cast in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()):
        cast(cast_bank)
        for name in BUFFERS:
            expected = torch.int64 if name == "last_active" else torch.float32
            assert getattr(cast_bank, name).dtype == expected, name
    # a 1 % momentum step is applied in float32, as in a bank that was never cast
    reference = make_bank(centroid_momentum=0.99)
    reference.load_state_dict(cast_bank.state_dict())
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    cast_bank.accumulate(x.half(), cast_bank.assign(x.half()))
    reference.accumulate(x.half().float(), reference.assign(x.half().float()))
    cast_bank.step()
    reference.step()
    assert_banks_equal(cast_bank, reference)
    moved = cast_bank.centroids[0] - torch.tensor(C3[0])
    assert 0 < moved.abs().max() < 1e-2  # small steps survive


def test_casting_the_model_to_half_precision_keeps_the_bank_values_exactly() -> None:
    bank = make_bank()
    set_bank(bank, [[0.6, 0.8], [0.1, math.sqrt(0.99)], [-1.0, 0.0]], [0.123, 1.0, 2.0])
    before = snapshot(bank)
    bank.half()
    assert_unchanged(bank, before)


# ---------------------------------------------------------------- schedule
def schedule_trace(bank: CentroidBank, x: torch.Tensor, steps: int) -> list[tuple]:
    """(num_updates, wants_clustering, losses_active, loss_weight) at each training step, with
    a ``"clustered"`` row after each clustering the step did."""
    rows: list[tuple] = []
    for _ in range(steps):
        rows.append((bank.num_updates, bank.wants_clustering, bank.losses_active, bank.loss_weight))
        if bank.wants_clustering:
            assert bank.cluster(x)
            rows.append(("clustered", bank.wants_clustering, bank.losses_active, bank.loss_weight))
        train_step(bank, x)
    return rows


def test_steps_in_the_warm_up_move_nothing_and_clustering_starts_after_it() -> None:
    bank = make_bank(num_clusters=4, dim=3, warmup_iters=3)
    x = F.normalize(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    before = snapshot(bank)
    for _ in range(3):
        assert not bank.wants_clustering and not bank.seeded
        assert not bank.losses_active and bank.loss_weight == 0.0
        bank.accumulate(x, bank.assign(x))  # even if the caller accumulates, nothing moves
        bank.step()
    for name in BUFFERS:
        assert torch.equal(getattr(bank, name), before[name]), name
    assert bank.num_updates == 3 and bank.wants_clustering
    assert bank.cluster(x)
    assert bank.seeded and bank.seed_update == 3 and bank.losses_active
    assert bank.last_active.tolist() == [3, 3, 3, 3]


def test_schedule_freezes_the_losses_after_every_clustering() -> None:
    bank = make_bank(num_clusters=4, dim=3, warmup_iters=2, freeze_iters=2, recluster_interval=5)
    x = F.normalize(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    assert schedule_trace(bank, x, 13) == [
        (0, False, False, 0.0),
        (1, False, False, 0.0),
        (2, True, False, 0.0),  # end of the warm-up: seed
        ("clustered", False, False, 0.0),
        (3, False, False, 0.0),
        (4, False, True, 1.0),  # freeze_iters after the seeding
        (5, False, True, 1.0),
        (6, False, True, 1.0),
        (7, True, True, 1.0),  # recluster_interval after the seeding
        ("clustered", False, False, 0.0),
        (8, False, False, 0.0),
        (9, False, True, 1.0),
        (10, False, True, 1.0),
        (11, False, True, 1.0),
        (12, True, True, 1.0),
        ("clustered", False, False, 0.0),
    ]
    assert bank.num_clusterings == 3 and bank.seed_update == 2 and bank.last_cluster_update == 12


def test_loss_weight_ramps_up_linearly_after_the_first_freeze_only() -> None:
    bank = make_bank(
        num_clusters=4, dim=3, warmup_iters=1, freeze_iters=2, ramp_iters=4, recluster_interval=8
    )
    x = F.normalize(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    weights: list[float] = []  # the weight each step's losses get (after its clustering)
    for row in schedule_trace(bank, x, 14):
        if row[0] == "clustered":
            weights.pop()
        weights.append(row[3])
    # seeded at 1, frozen at 1, 2, ramp 1/4 .. 4/4 at 3 .. 6; re-clustered at 9: frozen at
    # 9, 10, then straight back to 1 (no second ramp)
    assert weights == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_zero_freeze_iters_turns_the_losses_on_right_after_seeding() -> None:
    bank = make_bank(num_clusters=4, dim=3, recluster_interval=5)
    assert not bank.losses_active  # never before the first clustering
    assert bank.wants_clustering  # warmup_iters = 0: at once
    assert bank.cluster(torch.randn(10, 3))
    assert bank.losses_active and bank.loss_weight == 1.0


def test_zero_recluster_interval_clusters_once_and_never_again() -> None:
    bank = make_bank(num_clusters=4, dim=3, freeze_iters=3)
    x = F.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    assert bank.cluster(x)
    for _ in range(50):
        assert not bank.wants_clustering
        train_step(bank, x)
    assert bank.losses_active and bank.num_clusterings == 1


def reclustered(recluster_init: str, permute: bool) -> tuple[CentroidBank, torch.Tensor]:
    """A bank seeded on four blobs, stepped 3 times, its centroids optionally permuted, then
    re-clustered as scheduled; returns it and its centroids just before re-clustering."""
    d = 8
    centres = torch.eye(4, d)
    bank = make_bank(
        num_clusters=4, dim=d, recluster_interval=3, recluster_init=recluster_init, lloyd_iters=5
    )
    assert bank.cluster(blobs(200, d, centres, 0.05, seed=0))
    for step in range(3):
        train_step(bank, blobs(40, d, centres, 0.05, seed=1 + step, weights=[4.0, 3.0, 2.0, 1.0]))
    if permute:
        bank.centroids.copy_(bank.centroids[[2, 0, 3, 1]])
    before = bank.centroids.clone()
    assert bank.wants_clustering
    assert bank.cluster(blobs(200, d, centres, 0.05, seed=9))
    return bank, before


@pytest.mark.parametrize("permute", [False, True])
def test_warm_reclustering_keeps_each_cluster_where_it_was(permute: bool) -> None:
    bank, before = reclustered("warm", permute)
    # cluster j starts from centroid j and stays near it: the identities survive
    cos = (bank.centroids * before).sum(dim=1)
    assert cos.min() > 0.99
    # usage and activity carry on (not reset), the schedule restarts from here
    assert not torch.allclose(bank.usage, torch.full((4,), 0.25), atol=1e-3)
    assert bank.last_active.tolist() == [3, 3, 3, 3]
    assert bank.num_clusterings == 2 and bank.last_cluster_update == 3 and bank.seed_update == 0


def test_kmeans_plus_plus_reclustering_starts_afresh() -> None:
    bank, _ = reclustered("kmeans++", permute=False)
    permuted, _ = reclustered("kmeans++", permute=True)
    # the result does not depend on the centroids before: a fresh k-means++ on the features
    assert torch.equal(bank.centroids, permuted.centroids)
    # ... that still finds the four blobs, and usage and activity are reset
    assert (torch.eye(4, 8) @ bank.centroids.T).max(dim=1).values.min() > 0.99
    torch.testing.assert_close(bank.usage, torch.full((4,), 0.25))
    stepped_usage = reclustered("warm", permute=False)[0].usage
    assert not torch.allclose(stepped_usage, torch.full((4,), 0.25), atol=1e-3)
    assert bank.last_active.tolist() == [3, 3, 3, 3]


# ---------------------------------------------------------------- clustering
def test_clustering_recovers_well_separated_clusters() -> None:
    centres = torch.eye(4, 8)
    x = blobs(400, 8, centres, 0.05, seed=4)
    bank = make_bank(num_clusters=4, dim=8)
    assert bank.cluster(x * 3.0)  # features are normalised first
    # every true centre has a centroid within a small angle, and centroids are unit vectors
    cos = centres @ bank.centroids.T
    assert cos.max(dim=1).values.min() > 0.99
    torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(4))
    # variances are each cluster's mean squared distance to its centroid
    a = nearest_centroid(x, bank.centroids)
    stats = cluster_statistics(x, a, bank.centroids)
    torch.testing.assert_close(bank.variances, stats[:, -2] / stats[:, -1])
    assert bank.seeded and bank.num_clusterings == 1 and bank.seed_update == 0


def test_clustering_is_deterministic_under_the_bank_seed_and_not_the_global_rng() -> None:
    x = F.normalize(torch.randn(500, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    args = dict(num_clusters=10, dim=16, recluster_init="kmeans++", lloyd_iters=0)
    torch.manual_seed(0)
    a = make_bank(seed=7, **args)
    a.cluster(x)
    torch.manual_seed(123)  # the global RNG plays no part
    b = make_bank(seed=7, **args)
    b.cluster(x)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.variances, b.variances)
    other = make_bank(seed=8, **args)
    other.cluster(x)
    assert not torch.equal(a.centroids, other.centroids)
    # the second k-means++ clustering of a bank draws differently from its first
    first = a.centroids.clone()
    a.cluster(x)
    assert not torch.equal(first, a.centroids)


@pytest.mark.parametrize("seeded", [False, True])
def test_clustering_with_fewer_finite_features_than_clusters_is_deferred(seeded: bool) -> None:
    bank = make_bank(num_clusters=4, dim=3, recluster_interval=2, recluster_init="kmeans++")
    x = F.normalize(torch.randn(40, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    if seeded:
        assert bank.cluster(x)
        train_step(bank, x)
        train_step(bank, x)
    assert bank.wants_clustering
    before = snapshot(bank)
    too_few = torch.cat([x[:3], torch.full((5, 3), float("nan")), x[3:4] * float("inf")])
    assert bank.cluster(too_few) is False
    assert_unchanged(bank, before)
    assert bank.wants_clustering and bank.seeded == seeded  # the caller retries later
    assert bank.cluster(torch.cat([too_few, x[4:5]])) is True  # K = 4 finite rows suffice
    assert bank.num_clusterings == 1 + seeded


def test_clustering_drops_non_finite_rows() -> None:
    x = F.normalize(torch.randn(100, 6, generator=torch.Generator().manual_seed(3)), dim=1)
    bad = torch.tensor([[float("nan")] * 6, [1.0, float("inf")] + [0.0] * 4])
    clean, dirty = make_bank(num_clusters=5, dim=6), make_bank(num_clusters=5, dim=6)
    assert clean.cluster(x)
    assert dirty.cluster(torch.cat([x[:50], bad, x[50:]]))
    assert_banks_equal(dirty, clean)
    assert torch.isfinite(dirty.centroids).all()


def test_kmeans_plus_plus_picks_distinct_points_and_never_repeats_while_any_remain() -> None:
    x = F.normalize(torch.randn(50, 4, generator=torch.Generator().manual_seed(6)), dim=1)
    chosen = kmeans_plus_plus(x, 50, torch.Generator().manual_seed(0))
    idx = torch.cdist(chosen, x).argmin(dim=1)
    assert sorted(idx.tolist()) == list(range(50))


def test_lloyd_step_moves_centroids_to_normalised_cluster_means_and_keeps_empty_ones() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    c = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    n = math.sqrt(0.3**2 + 0.9**2)
    expected = torch.tensor([[1.0, 0.0], [0.3 / n, 0.9 / n], [-1.0, 0.0]])
    torch.testing.assert_close(lloyd_step(x, c), expected)


def test_a_cluster_with_one_member_gets_the_overall_variance() -> None:
    # two tight pairs and one lone point: the lone point's cluster has no spread of its own
    x = torch.tensor([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0], [0.0998, 0.995], [-1.0, 0.0]])
    bank = make_bank(lloyd_iters=5, min_variance=0.0)
    assert bank.cluster(x)
    lone = int(bank.assign(F.normalize(x[4:], dim=1))[0])
    others = [j for j in range(3) if j != lone]
    assert bank.variances[lone] > 1e-6
    # the lone cluster's variance is the mean squared distance over all five points
    overall = bank.variances[others].sum() * 2 / 5
    torch.testing.assert_close(bank.variances[lone], overall)


# ---------------------------------------------------------------- dead clusters
def test_dead_cluster_is_revived_after_dead_cluster_steps_next_to_a_populous_donor() -> None:
    d = 16
    centres = torch.eye(3, d)
    bank = make_bank(num_clusters=5, dim=d, dead_cluster_steps=3)
    assert bank.cluster(blobs(64, d, centres, 0.05, seed=0))
    # put clusters 0 and 1 on the data, and 2..4 far away where nothing is assigned
    far = -F.normalize(torch.ones(3, d) + torch.eye(3, d), dim=1)
    bank.centroids.copy_(torch.cat([centres[:2], far]))
    for step in range(1, 4):
        before = bank.centroids.clone()
        x = blobs(60, d, centres[:2], 0.05, seed=step, weights=[3.0, 1.0])
        a = bank.assign(x)
        bank.accumulate(x, a)
        counts = torch.bincount(a, minlength=5).float()
        bank.step()
        assert counts[2:].tolist() == [0.0, 0.0, 0.0] and counts[0] > counts[1] > 0
        if step < 3:  # not yet dead for 3 steps
            assert torch.equal(bank.centroids[2:], before[2:])
    # after the third empty step: revived as unit vectors near a live donor;
    # dead clusters 2, 3, 4 take donors 0 (most members), 1, then 0 again
    revived = bank.centroids[2:]
    torch.testing.assert_close(revived.norm(dim=1), torch.ones(3))
    cos = revived @ bank.centroids[:2].T
    assert cos[0, 0] > 0.9 and cos[1, 1] > 0.9 and cos[2, 0] > 0.9
    assert not torch.equal(revived[0], revived[2])  # independent perturbations
    assert not torch.equal(revived[0], bank.centroids[0])
    torch.testing.assert_close(bank.variances[2:], bank.variances[[0, 1, 0]])
    assert bank.last_active[2:].tolist() == [3, 3, 3]
    # revived clusters have no member yet: they do not count as live
    assert (bank.last_active == 3).all()
    assert bank.health(a)["live_clusters"].item() == 2.0
    # a revived cluster is used again by data near its donor, and then it is live
    counts = train_step(bank, blobs(200, d, centres[:2], 0.05, seed=9))
    assert counts[2:].sum() > 0 and (counts > 0).sum() > 2


def test_zero_dead_cluster_steps_disables_revival() -> None:
    bank = make_bank(dead_cluster_steps=0)
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    for _ in range(20):
        train_step(bank, x)
    assert bank.centroids[2].tolist() == [-1.0, 0.0]


def test_dead_clusters_are_looked_for_every_tenth_of_dead_cluster_steps() -> None:
    d = 8
    bank = make_bank(num_clusters=4, dim=d, dead_cluster_steps=31)
    assert bank.revive_check_interval == 3
    bank.cluster(F.normalize(torch.randn(64, d, generator=torch.Generator().manual_seed(0)), dim=1))
    x = F.normalize(bank.centroids[:1] + 0.01, dim=1).repeat(8, 1)  # always cluster 0 only
    revived_at = []
    for _ in range(36):
        before = bank.centroids[1:].clone()
        train_step(bank, x)
        if not torch.equal(bank.centroids[1:], before):
            revived_at.append(bank.num_updates)
    # dead after 31 empty steps, but looked for only at steps 3, 6, ...: revived at 33
    assert revived_at[0] == 33
    assert bank.last_active[1:].tolist() == [33, 33, 33]


# ---------------------------------------------------------------- checkpoints
D_CKPT = 8
CKPT_ARGS = dict(
    num_clusters=6,
    dim=D_CKPT,
    centroid_momentum=0.9,
    variance_momentum=0.9,
    warmup_iters=1,
    freeze_iters=1,
    ramp_iters=2,
    recluster_interval=4,
    dead_cluster_steps=2,
    lloyd_iters=3,
    seed=11,
)


def run_training(bank: CentroidBank, steps: range) -> int:
    """The training loop's use of the bank: clustered on six blobs when the schedule asks,
    stepped on keys from two blobs (four clusters die and are revived). Returns how many
    clusters were moved by revival."""
    seed_centres, centres = torch.eye(6, D_CKPT), torch.eye(2, D_CKPT)
    revived = 0
    for step in steps:
        if bank.wants_clustering:
            assert bank.cluster(blobs(120, D_CKPT, seed_centres, 0.1, seed=bank.num_clusterings))
        before = bank.centroids.clone()
        counts = train_step(bank, blobs(48, D_CKPT, centres, 0.1, seed=100 + step))
        moved = (bank.centroids != before).any(dim=1)
        revived += int(((counts == 0) & moved).sum())
    return revived


@pytest.mark.parametrize("recluster_init", ["warm", "kmeans++"])
def test_state_dict_round_trip_restores_the_bank_and_continues_identically(
    tmp_path: Path, recluster_init: str
) -> None:
    args = bank_args(**CKPT_ARGS, recluster_init=recluster_init)
    original = CentroidBank(**args)  # type: ignore[arg-type]
    run_training(original, range(7))

    path = tmp_path / "bank.pt"
    torch.save(original.state_dict(), path)
    state = torch.load(path, weights_only=False)
    assert set(state) == set(BUFFERS) | {"_extra_state"}
    restored = CentroidBank(**args)  # type: ignore[arg-type]
    restored.load_state_dict(state)
    assert_banks_equal(restored, original)
    # seeded at 1, re-clustered at 5; 7 steps done
    assert restored.get_extra_state() == {
        "num_updates": 7,
        "num_clusterings": 2,
        "last_cluster_update": 5,
        "seed_update": 1,
    }
    assert restored.seeded and restored.losses_active and not restored.wants_clustering
    assert restored.loss_weight == original.loss_weight == 1.0

    # both continue: revivals (their noise), a scheduled re-clustering at 9 and more steps
    for bank in (original, restored):
        run_training(bank, range(7, 12))
    assert_banks_equal(restored, original)
    assert original.num_clusterings == 3 and original.num_updates == 12


def test_revival_happens_in_the_checkpoint_round_trip_scenario() -> None:
    """Guards the test above: with two blobs and six clusters, some clusters really die."""
    bank = CentroidBank(**bank_args(**CKPT_ARGS))  # type: ignore[arg-type]
    assert run_training(bank, range(12)) > 0


# ---------------------------------------------------------------- balanced update and health
def test_weighted_statistics_move_each_centroid_by_its_share_and_count_nearest_members() -> None:
    c = torch.tensor(C3)
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    a = torch.tensor([1, 0])
    w = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    stats = cluster_statistics(x, a, c, w)
    torch.testing.assert_close(stats[:, :2], w.T @ x)
    torch.testing.assert_close(stats[:, 2], w.sum(0))
    sq = torch.cdist(x, c).pow(2)
    torch.testing.assert_close(stats[:, 3], (w * sq).sum(0))
    assert stats[:, 4].tolist() == [1.0, 1.0, 0.0]  # nearest-centroid members, not shares


def test_balanced_shares_move_a_centroid_that_no_key_is_nearest_to() -> None:
    bank = make_bank()
    set_bank(bank, C3, [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    shares = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    bank.accumulate(x, bank.assign(x), shares)
    bank.step()
    # cluster 2 had no nearest key but half of each: it moved halfway to their mean (beta 0.5)
    expected = F.normalize(0.5 * torch.tensor([-1.0, 0.0]) + 0.5 * x.mean(0), dim=0)
    torch.testing.assert_close(bank.centroids[2], expected)
    assert bank.epoch_counts.tolist() == [1.0, 1.0, 0.0]  # health counts nearest members


def test_epoch_health_counts_the_epochs_members_and_names_what_is_below_the_floors() -> None:
    bank = make_bank(num_clusters=4, dim=2)
    assert bank.cluster(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    bank.reset_epoch()
    even = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.1], [0.1, -1.0]])
    train_step(bank, even)
    health = bank.epoch_health()
    assert int(health["epoch_live_clusters"]) == 4
    assert float(health["epoch_usage_entropy"]) == pytest.approx(1.0)
    assert bank.collapse_message(health) is None
    for _ in range(20):  # then one cluster takes nearly every key
        train_step(bank, torch.tensor([[1.0, 0.05]] * 8))
    health = bank.epoch_health()
    assert int(health["epoch_live_clusters"]) == 4
    entropy = float(health["epoch_usage_entropy"])
    assert entropy < ENTROPY_FLOOR
    assert bank.collapse_message(health) == (
        f"4 of 4 clusters had a member (floor 2) and the usage entropy is {entropy:.3f} "
        f"(floor {ENTROPY_FLOOR})"
    )
    bank.reset_epoch()
    train_step(bank, torch.tensor([[1.0, 0.05]] * 8))
    assert bank.collapse_message(bank.epoch_health()) is None  # 8 keys < 4 K: not judged yet
    train_step(bank, torch.tensor([[1.0, 0.05]] * 8))
    health = bank.epoch_health()
    assert int(health["epoch_live_clusters"]) == 1 and "1 of 4 clusters" in bank.collapse_message(
        health
    )
    assert LIVE_FLOOR == 0.5


def test_a_non_finite_row_and_its_nan_shares_add_nothing_to_the_weighted_statistics() -> None:
    c = torch.tensor(C3)
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    w = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    bad_x = torch.cat([x, torch.tensor([[float("nan"), 0.0]])])
    bad_w = torch.cat([w, torch.full((1, 3), float("nan"))])
    a = torch.tensor([1, 0, 0])
    stats = cluster_statistics(bad_x, a, c, bad_w)
    assert torch.isfinite(stats).all()
    torch.testing.assert_close(stats, cluster_statistics(x, a[:2], c, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 under AMP too
        assert cluster_statistics(x, a[:2], c, w).dtype == torch.float32
