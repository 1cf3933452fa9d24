"""The centroid bank: one momentum update by hand, the freeze/reset schedule, seeding, micro-batch
accumulation, dead-cluster revival, checkpoint round-trips, mixed precision and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cueco_plugin.centroids import (
    CentroidBank,
    cluster_statistics,
    kmeans_plus_plus,
    lloyd_step,
    nearest_centroid,
)

BUFFERS = ("centroids", "variances", "usage", "counts", "last_active")


def make_bank(**kwargs: object) -> CentroidBank:
    args: dict[str, object] = dict(
        num_clusters=3,
        dim=2,
        centroid_momentum=0.5,
        variance_momentum=0.75,
        freeze_iters=0,
        reset_interval=0,
        dead_cluster_steps=0,
    )
    args.update(kwargs)
    return CentroidBank(**args)  # type: ignore[arg-type]


def set_bank(bank: CentroidBank, centroids: list[list[float]], variances: list[float]) -> None:
    """Seeds the bank (so that updates are allowed), then puts known values in its buffers."""
    bank.seed(torch.tensor(centroids))
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


def assert_banks_equal(a: CentroidBank, b: CentroidBank) -> None:
    for name in BUFFERS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.get_extra_state() == b.get_extra_state()


# ---------------------------------------------------------------- one update by hand
def test_one_update_matches_hand_computed_values() -> None:
    bank = make_bank()
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    a = bank.assign(x)
    # squared distances: x0 -> (0.8, 0.4, 3.2), x1 -> (0.4, 0.8, 3.6), x2 -> (2, 0, 2)
    assert a.tolist() == [1, 0, 1]

    counts = bank.update(x, a)

    assert counts.tolist() == [1.0, 2.0, 0.0]
    # cluster 0: mean (0.8, 0.6); 0.5 (1, 0) + 0.5 (0.8, 0.6) = (0.9, 0.3), normalised
    # cluster 1: mean (0.3, 0.9); 0.5 (0, 1) + 0.5 (0.3, 0.9) = (0.15, 0.95), normalised
    # cluster 2: no member, keeps (-1, 0)
    n0, n1 = math.sqrt(0.9**2 + 0.3**2), math.sqrt(0.15**2 + 0.95**2)
    expected_c = torch.tensor([[0.9 / n0, 0.3 / n0], [0.15 / n1, 0.95 / n1], [-1.0, 0.0]])
    torch.testing.assert_close(bank.centroids, expected_c)
    # variances: mean squared distance to the centroid *before* the update
    # cluster 0: 0.4 -> 0.75 * 0.5 + 0.25 * 0.4 = 0.475
    # cluster 1: (0.4 + 0) / 2 = 0.2 -> 0.75 * 1.0 + 0.25 * 0.2 = 0.8; cluster 2 keeps 2.0
    torch.testing.assert_close(bank.variances, torch.tensor([0.475, 0.8, 2.0]))
    # usage: 0.5 * 1/3 + 0.5 * (1/3, 2/3, 0)
    torch.testing.assert_close(bank.usage, torch.tensor([1 / 3, 1 / 2, 1 / 6]))
    assert bank.counts.tolist() == [1, 2, 0]
    assert bank.last_active.tolist() == [1, 1, 0]  # seeded at update 0, updated once
    assert bank.num_updates == 1 and bank.updates_since_seed == 1


def test_update_without_normalisation_keeps_the_plain_momentum_average() -> None:
    bank = make_bank(normalize=False)
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    bank.update(x, bank.assign(x))
    expected = torch.tensor([[0.9, 0.3], [0.15, 0.95], [-1.0, 0.0]])
    torch.testing.assert_close(bank.centroids, expected)


def test_assign_picks_the_nearest_centroid_by_euclidean_distance() -> None:
    # a longer but less aligned centroid: nearest by distance, not by dot product
    c = torch.tensor([[3.0, 0.0], [0.6, 0.8]])
    x = torch.tensor([[1.0, 0.0]])
    assert nearest_centroid(x, c).tolist() == [1]  # distances 4 vs 0.8
    assert (x @ c.T).argmax(1).tolist() == [0]


def test_cluster_statistics_sums_counts_and_squared_distances() -> None:
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    stats = cluster_statistics(x, torch.tensor([1, 0, 1]), c)
    expected = torch.tensor([[0.8, 0.6, 1.0, 0.4], [0.6, 1.8, 2.0, 0.4], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(stats, expected)


def test_clusters_without_members_keep_centroid_and_variance_over_many_updates() -> None:
    bank = make_bank()
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    for _ in range(5):
        bank.update(x, bank.assign(x))
    assert bank.centroids[2].tolist() == [-1.0, 0.0]
    assert bank.variances[2].item() == 2.0
    assert bank.counts[2].item() == 0 and bank.last_active[2].item() == 0
    assert bank.usage[2].item() == pytest.approx((1 / 3) * 0.5**5)


def test_update_with_an_empty_batch_changes_no_centroid() -> None:
    bank = make_bank(dead_cluster_steps=1)
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    before = bank.centroids.clone()
    counts = bank.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert counts.tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(bank.centroids, before)  # no live cluster: nothing to revive from
    assert bank.num_updates == 1


def test_bank_update_with_bf16_features_equals_float32_on_the_same_values() -> None:
    centres = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    x = blobs(64, 8, centres, 0.3, seed=1)
    low, full = make_bank(num_clusters=4, dim=8), make_bank(num_clusters=4, dim=8)
    low.seed(x)
    full.seed(x)
    xb = x.bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        a = low.assign(xb)
        low.update(xb, a)
    full.update(xb.float(), full.assign(xb.float()))
    assert torch.equal(a, full.assign(xb.float()))
    assert low.centroids.dtype == torch.float32
    torch.testing.assert_close(low.centroids, full.centroids, rtol=0, atol=0)
    torch.testing.assert_close(low.variances, full.variances, rtol=0, atol=0)


def test_bank_state_stays_float32_when_the_model_is_cast_to_half_precision() -> None:
    bank = make_bank()
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    for cast in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()):
        cast(bank)
        assert bank.centroids.dtype == bank.variances.dtype == bank.usage.dtype == torch.float32
        assert bank.counts.dtype == bank.last_active.dtype == torch.int64
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]]).half()
    bank.update(x, bank.assign(x))
    assert bank.centroids.dtype == torch.float32 and torch.isfinite(bank.centroids).all()


# ---------------------------------------------------------------- micro-batches
def test_accumulate_over_two_micro_batches_equals_one_update_on_their_concatenation() -> None:
    centres = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    x = blobs(96, 16, centres, 0.4, seed=3)
    whole = CentroidBank(6, 16, freeze_iters=0, reset_interval=0, dead_cluster_steps=2)
    parts = CentroidBank(6, 16, freeze_iters=0, reset_interval=0, dead_cluster_steps=2)
    whole.seed(x)
    parts.seed(x)
    for step in range(4):
        batch = blobs(40, 16, centres, 0.4, seed=10 + step)
        whole.update(batch, whole.assign(batch))
        first, second = batch[:15], batch[15:]
        parts.accumulate(first, parts.assign(first))
        parts.accumulate(second, parts.assign(second))
        parts.step()
    for name in ("centroids", "variances", "usage"):
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name), rtol=0, atol=1e-6)
    assert torch.equal(parts.counts, whole.counts)
    assert torch.equal(parts.last_active, whole.last_active)
    assert parts.num_updates == whole.num_updates == 4


def test_pending_statistics_are_per_rank_state_not_buffers() -> None:
    """DDP broadcasts buffers from rank 0 at every forward; micro-batch statistics must not be
    among them, or rank 0's would overwrite the others' before step() all-reduces them."""
    bank = make_bank()
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    bank.accumulate(x, bank.assign(x))
    assert set(dict(bank.named_buffers())) == set(BUFFERS)
    assert "_pending" not in bank.state_dict()
    bank.seed(x)  # re-seeding drops statistics gathered against the old centroids
    before = bank.centroids.clone()
    assert bank.step().tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(bank.centroids, before)


def test_accumulate_does_not_move_the_bank_until_step() -> None:
    bank = make_bank()
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    before = {name: getattr(bank, name).clone() for name in BUFFERS}
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    bank.accumulate(x, bank.assign(x))
    for name in BUFFERS:
        assert torch.equal(getattr(bank, name), before[name]), name
    assert bank.num_updates == 0
    bank.step()
    assert not torch.equal(bank.centroids, before["centroids"])


# ---------------------------------------------------------------- schedule
def test_schedule_freezes_losses_after_seeding_and_requests_reseeds() -> None:
    bank = CentroidBank(4, 3, freeze_iters=2, reset_interval=5, dead_cluster_steps=0)
    x = F.normalize(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    assert not bank.seeded and bank.needs_seed and not bank.losses_active
    with pytest.raises(RuntimeError, match="before seed"):
        bank.update(x, bank.assign(x))
    bank.seed(x)
    history = []
    for _ in range(7):
        history.append((bank.updates_since_seed, bank.losses_active, bank.needs_seed))
        if bank.needs_seed:
            bank.seed(x)
            history.append(("reseeded", bank.losses_active, bank.needs_seed))
        bank.update(x, bank.assign(x))
    assert history == [
        (0, False, False),
        (1, False, False),
        (2, True, False),
        (3, True, False),
        (4, True, False),
        (5, True, True),
        ("reseeded", False, False),
        (1, False, False),
    ]
    assert bank.num_seeds == 2 and bank.last_seed_update == 5 and bank.num_updates == 7


def test_zero_freeze_iters_turns_losses_on_right_after_seeding() -> None:
    bank = CentroidBank(4, 3, freeze_iters=0, reset_interval=5)
    assert not bank.losses_active  # never before the first seeding
    bank.seed(torch.randn(10, 3))
    assert bank.losses_active


def test_zero_reset_interval_seeds_once_and_never_again() -> None:
    bank = CentroidBank(4, 3, freeze_iters=3, reset_interval=0, dead_cluster_steps=0)
    x = F.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    assert bank.needs_seed
    bank.seed(x)
    for _ in range(50):
        assert not bank.needs_seed
        bank.update(x, bank.assign(x))
    assert bank.losses_active and bank.num_seeds == 1


def test_reseeding_resets_usage_counts_and_activity() -> None:
    bank = CentroidBank(4, 3, freeze_iters=0, reset_interval=0, dead_cluster_steps=0)
    x = F.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    bank.seed(x)
    for _ in range(3):
        bank.update(x, bank.assign(x))
    bank.seed(x)
    assert bank.counts.tolist() == [0, 0, 0, 0]
    assert bank.last_active.tolist() == [3, 3, 3, 3]
    torch.testing.assert_close(bank.usage, torch.full((4,), 0.25))
    assert bank.last_seed_update == 3 and bank.updates_since_seed == 0


# ---------------------------------------------------------------- seeding
def test_seeding_recovers_well_separated_clusters() -> None:
    centres = torch.eye(4, 8)
    x = blobs(400, 8, centres, 0.05, seed=4)
    bank = CentroidBank(4, 8)
    bank.seed(x, generator=torch.Generator().manual_seed(0))
    # every true centre has a centroid within a small angle, and centroids are unit vectors
    cos = centres @ bank.centroids.T
    assert cos.max(dim=1).values.min() > 0.99
    torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(4))
    # variances are each cluster's mean squared distance to its centroid
    a = nearest_centroid(x, bank.centroids)
    stats = cluster_statistics(x, a, bank.centroids)
    torch.testing.assert_close(bank.variances, stats[:, -1] / stats[:, -2])
    assert bank.seeded and bank.num_seeds == 1


def test_seeding_is_deterministic_under_a_given_generator() -> None:
    x = F.normalize(torch.randn(500, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    a, b, c = CentroidBank(10, 16), CentroidBank(10, 16, seed=3), CentroidBank(10, 16)
    a.seed(x, generator=torch.Generator().manual_seed(42))
    b.seed(x, generator=torch.Generator().manual_seed(42))  # the bank's own seed is not used
    c.seed(x, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.variances, b.variances)
    assert not torch.equal(a.centroids, c.centroids)


def test_seeding_is_deterministic_under_the_default_generator() -> None:
    x = F.normalize(torch.randn(500, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    torch.manual_seed(0)
    a = CentroidBank(10, 16, seed=7)
    a.seed(x)
    torch.manual_seed(123)  # the global RNG plays no part
    b = CentroidBank(10, 16, seed=7)
    b.seed(x)
    assert torch.equal(a.centroids, b.centroids)
    other = CentroidBank(10, 16, seed=8)
    other.seed(x)
    assert not torch.equal(a.centroids, other.centroids)
    # the second seeding of a bank draws differently from its first
    first = a.centroids.clone()
    a.seed(x)
    assert not torch.equal(first, a.centroids)


def test_seeding_with_fewer_features_than_clusters_uses_duplicates() -> None:
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0]])
    bank = CentroidBank(5, 3)
    bank.seed(x)
    unit = F.normalize(x, dim=1)
    # every centroid is one of the (normalised) features, and each feature is used
    match = torch.cdist(bank.centroids, unit).min(dim=1).values
    assert match.max() < 1e-6
    assert torch.cdist(unit, bank.centroids).min(dim=1).values.max() < 1e-6
    assert torch.isfinite(bank.variances).all() and (bank.variances > 0).all()
    assert bank.seeded


def test_seeding_from_a_single_feature_row() -> None:
    bank = CentroidBank(3, 2)
    bank.seed(torch.tensor([[0.0, 5.0]]))
    torch.testing.assert_close(bank.centroids, torch.tensor([[0.0, 1.0]] * 3))
    assert torch.isfinite(bank.variances).all()


def test_kmeans_plus_plus_picks_distinct_points_and_never_repeats_while_any_remain() -> None:
    x = F.normalize(torch.randn(50, 4, generator=torch.Generator().manual_seed(6)), dim=1)
    chosen = kmeans_plus_plus(x, 50, torch.Generator().manual_seed(0))
    idx = torch.cdist(chosen, x).argmin(dim=1)
    assert sorted(idx.tolist()) == list(range(50))


def test_lloyd_step_moves_centroids_to_cluster_means_and_keeps_empty_ones() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    c = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    new = lloyd_step(x, c, normalize=False)
    torch.testing.assert_close(new, torch.tensor([[1.0, 0.0], [0.3, 0.9], [-1.0, 0.0]]))


# ---------------------------------------------------------------- dead clusters
def test_dead_cluster_is_revived_after_dead_cluster_steps_next_to_a_populous_donor() -> None:
    d = 16
    centres = torch.eye(3, d)
    bank = CentroidBank(5, d, freeze_iters=0, reset_interval=0, dead_cluster_steps=3)
    bank.seed(blobs(64, d, centres, 0.05, seed=0))
    # put clusters 0 and 1 on the data, and 2..4 far away where nothing is assigned
    far = -F.normalize(torch.ones(3, d) + torch.eye(3, d), dim=1)
    bank.centroids.copy_(torch.cat([centres[:2], far]))
    for step in range(1, 4):
        before = bank.centroids.clone()
        x = blobs(60, d, centres[:2], 0.05, seed=step, weights=[3.0, 1.0])
        a = bank.assign(x)
        counts = bank.update(x, a)
        assert counts[2:].tolist() == [0.0, 0.0, 0.0] and counts[0] > counts[1] > 0
        if step < 3:  # not yet dead for 3 updates
            assert torch.equal(bank.centroids[2:], before[2:])
    # after the third empty update: revived as unit vectors near a live donor;
    # dead clusters 2, 3, 4 take donors 0 (most members), 1, then 0 again
    revived = bank.centroids[2:]
    torch.testing.assert_close(revived.norm(dim=1), torch.ones(3))
    cos = revived @ bank.centroids[:2].T
    assert cos[0, 0] > 0.9 and cos[1, 1] > 0.9 and cos[2, 0] > 0.9
    assert not torch.equal(revived[0], revived[2])  # independent perturbations
    assert not torch.equal(revived[0], bank.centroids[0])
    torch.testing.assert_close(bank.variances[2:], bank.variances[[0, 1, 0]])
    assert bank.last_active[2:].tolist() == [3, 3, 3]
    # a revived cluster is used again by data near its donor
    x = blobs(200, d, centres[:2], 0.05, seed=9)
    assert bank.update(x, bank.assign(x))[2:].sum() > 0


def test_zero_dead_cluster_steps_disables_revival() -> None:
    bank = make_bank(dead_cluster_steps=0)
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [0.5, 1.0, 2.0])
    x = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    for _ in range(20):
        bank.update(x, bank.assign(x))
    assert bank.centroids[2].tolist() == [-1.0, 0.0]


# ---------------------------------------------------------------- checkpoints
def run_updates(bank: CentroidBank, centres: torch.Tensor, steps: range) -> None:
    for step in steps:
        x = blobs(48, centres.shape[1], centres, 0.1, seed=100 + step)
        bank.update(x, bank.assign(x))


def test_state_dict_round_trip_restores_the_bank_and_continues_identically(
    tmp_path: Path,
) -> None:
    d = 8
    # seeded on six blobs, updated on two: four clusters die and are revived (noise included)
    centres, seed_centres = torch.eye(2, d), torch.eye(6, d)
    kwargs = dict(freeze_iters=1, reset_interval=4, dead_cluster_steps=2, seed=11)
    original = CentroidBank(6, d, **kwargs)  # type: ignore[arg-type]
    original.seed(blobs(120, d, seed_centres, 0.1, seed=1))
    run_updates(original, centres, range(4))
    assert original.needs_seed
    original.seed(blobs(120, d, seed_centres, 0.1, seed=2))
    run_updates(original, centres, range(4, 7))

    path = tmp_path / "bank.pt"
    torch.save(original.state_dict(), path)
    state = torch.load(path, weights_only=False)
    assert "_extra_state" in state and "_pending" not in state
    restored = CentroidBank(6, d, **kwargs)  # type: ignore[arg-type]
    restored.load_state_dict(state)
    assert_banks_equal(restored, original)
    assert restored.get_extra_state() == {"num_updates": 7, "last_seed_update": 4, "num_seeds": 2}
    assert restored.seeded and restored.losses_active and not restored.needs_seed

    # both continue: revivals (their noise), a scheduled re-seed and more updates
    for bank in (original, restored):
        run_updates(bank, centres, range(7, 8))
        assert bank.needs_seed
        bank.seed(blobs(120, d, seed_centres, 0.1, seed=3))  # default generator: (seed, 2)
        run_updates(bank, centres, range(8, 12))
    assert_banks_equal(restored, original)
    assert original.num_seeds == 3 and original.num_updates == 12


def test_revival_happens_in_the_checkpoint_round_trip_scenario() -> None:
    """Guards the test above: with two blobs and six clusters, some clusters really die."""
    d = 8
    centres, seed_centres = torch.eye(2, d), torch.eye(6, d)
    bank = CentroidBank(6, d, freeze_iters=1, reset_interval=4, dead_cluster_steps=2, seed=11)
    bank.seed(blobs(120, d, seed_centres, 0.1, seed=1))
    revived = 0
    for step in range(4):
        before = bank.centroids.clone()
        x = blobs(48, d, centres, 0.1, seed=100 + step)
        counts = bank.update(x, bank.assign(x))
        revived += int(((counts == 0) & (bank.centroids != before).any(dim=1)).sum())
    assert revived > 0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_clusters": 0}, r"num_clusters must be an integer >= 1, got 0"),
        ({"num_clusters": 2.5}, r"num_clusters must be an integer >= 1, got 2.5"),
        ({"dim": 0}, r"dim must be an integer >= 1, got 0"),
        ({"centroid_momentum": 1.0}, r"centroid_momentum must be a number in \[0, 1\), got 1.0"),
        ({"centroid_momentum": -0.1}, r"centroid_momentum must be a number in \[0, 1\), got -0.1"),
        ({"variance_momentum": 1.5}, r"variance_momentum must be a number in \[0, 1\), got 1.5"),
        ({"initial_variance": 0.0}, r"initial_variance must be a positive finite number, got 0.0"),
        ({"initial_variance": math.inf}, r"initial_variance must be a positive finite .* inf"),
        ({"freeze_iters": -1}, r"freeze_iters must be an integer >= 0 \(0 disables it\), got -1"),
        ({"reset_interval": -5}, r"reset_interval must be an integer >= 0 .*got -5"),
        ({"dead_cluster_steps": 1.0}, r"dead_cluster_steps must be an integer >= 0 .*got 1.0"),
        ({"lloyd_iters": -2}, r"lloyd_iters must be an integer >= 0 .*got -2"),
        ({"normalize": "yes"}, r"normalize must be True or False, got 'yes'"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
        (
            {"freeze_iters": 1000, "reset_interval": 1000},
            r"freeze_iters \(1000\) must be smaller than reset_interval \(1000\)",
        ),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, object], pattern: str) -> None:
    args: dict[str, object] = {"num_clusters": 4, "dim": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        CentroidBank(**args)  # type: ignore[arg-type]


def test_constructor_accepts_disabled_schedule() -> None:
    bank = CentroidBank(4, 3, freeze_iters=0, reset_interval=0, dead_cluster_steps=0)
    assert bank.freeze_iters == bank.reset_interval == bank.dead_cluster_steps == 0


def test_bank_rejects_features_of_the_wrong_shape_or_dtype() -> None:
    bank = CentroidBank(4, 3)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 3\), got \(5, 2\)"):
        bank.assign(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"features must have shape \(B, 3\), got \(3,\)"):
        bank.seed(torch.randn(3))
    with pytest.raises(ValueError, match=r"features must be a floating-point .* torch.int64"):
        bank.assign(torch.ones(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"seed\(\) needs at least one feature row, got 0"):
        bank.seed(torch.zeros(0, 3))


def test_bank_rejects_bad_assignments() -> None:
    bank = CentroidBank(4, 3)
    x = torch.randn(5, 3)
    bank.seed(x)
    with pytest.raises(ValueError, match=r"assignments must be int64 with shape \(5,\), got"):
        bank.update(x, torch.zeros(5, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"assignments must be int64 with shape \(5,\), got"):
        bank.update(x, torch.zeros(4, dtype=torch.long))
    for bad in (4, -1):
        a = torch.tensor([0, 1, bad, 2, 3])
        with pytest.raises(
            ValueError,
            match=rf"assignments contain {bad}, outside the allowed range \[0, 3\] "
            r"for num_clusters=4",
        ):
            bank.update(x, a)
    assert bank.num_updates == 0  # nothing was applied


def test_a_cluster_seeded_with_one_member_gets_the_overall_variance_not_zero() -> None:
    # two tight pairs and one lone point: the lone point's cluster has no spread of its own
    x = torch.tensor([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0], [0.0998, 0.995], [-1.0, 0.0]])
    bank = CentroidBank(3, 2, lloyd_iters=5, min_variance=0.0)
    bank.seed(x)
    lone = int(bank.assign(F.normalize(x[4:], dim=1))[0])
    others = [j for j in range(3) if j != lone]
    assert bank.counts.sum() == 0  # seeding resets usage counters
    assert bank.variances[lone] > 1e-6
    # the lone cluster's variance is the mean squared distance over all five points
    overall = bank.variances[others].sum() * 2 / 5
    torch.testing.assert_close(bank.variances[lone], overall)


def test_running_variances_never_fall_below_min_variance() -> None:
    bank = make_bank(min_variance=0.05, variance_momentum=0.0)
    set_bank(bank, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [1.0, 1.0, 1.0])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # exactly on the centroids
    bank.update(x, bank.assign(x))
    torch.testing.assert_close(bank.variances, torch.full((3,), 0.05))


@pytest.mark.parametrize("bad", [-0.1, float("inf"), "0.1", True])
def test_bad_min_variance_is_rejected_with_its_value(bad: object) -> None:
    with pytest.raises(ValueError, match=r"min_variance must be a finite number >= 0.*got"):
        CentroidBank(3, 2, min_variance=bad)  # type: ignore[arg-type]


def test_dead_clusters_are_looked_for_every_tenth_of_dead_cluster_steps() -> None:
    d = 8
    bank = CentroidBank(4, d, freeze_iters=0, reset_interval=0, dead_cluster_steps=31)
    assert bank.revive_check_interval == 3
    bank.seed(F.normalize(torch.randn(64, d, generator=torch.Generator().manual_seed(0)), dim=1))
    x = F.normalize(bank.centroids[:1] + 0.01, dim=1).repeat(8, 1)  # always cluster 0 only
    revived_at = []
    for _ in range(36):
        before = bank.centroids[1:].clone()
        bank.update(x, bank.assign(x))
        if not torch.equal(bank.centroids[1:], before):
            revived_at.append(bank.num_updates)
    # dead after 31 empty updates, but looked for only at updates 3, 6, ...: revived at 33
    assert revived_at[0] == 33
    assert bank.last_active[1:].tolist() == [33, 33, 33]
