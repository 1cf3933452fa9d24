"""CueCo's losses and targets: L1 with masked negatives (against solo-learn's own MoCo loss), L2
centroid contrast (hard and soft targets, per-cluster temperatures), L3 variance-scaled distance,
Sinkhorn targets (against SwAV's algorithm) and negative masks: values computed by hand, gradient
flow, numerical robustness, mixed precision and relabelling invariance.

The functions are pure and trust their arguments (``cueco_plugin.config`` validates the options;
tests/test_config.py covers that), so there are no bad-input tests here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_solo
from hypothesis import given, settings
from hypothesis import strategies as st

from cueco_plugin.bank import nearest_centroid
from cueco_plugin.losses import (
    centroid_contrast_loss,
    infonce_loss,
    negative_mask,
    sinkhorn,
    variance_scaled_distance_loss,
)

# K = 3 centroids and B = 3 queries in D = 2, small enough to work out on paper.
CENTROIDS = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
QUERY = [[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]
ASSIGN = [1, 0, 2]
VARIANCES = [0.5, 2.0, 0.25]


def small_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(QUERY),
        torch.tensor(CENTROIDS),
        torch.tensor(VARIANCES),
        torch.tensor(ASSIGN, dtype=torch.long),
    )


def random_inputs(
    b: int = 16, k: int = 5, d: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    c = F.normalize(torch.randn(k, d, generator=gen), dim=1)
    v = torch.rand(k, generator=gen) + 0.05
    a = torch.randint(k, (b,), generator=gen)
    return q, c, v, a


def moco_inputs(
    b: int = 12, d: int = 16, q_size: int = 40, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit queries (B, D), keys (B, D) and a queue (D, Q) of unit columns."""
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    k = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    queue = F.normalize(torch.randn(d, q_size, generator=gen), dim=0)
    return q, k, queue


def no_mask(b: int, q_size: int) -> torch.Tensor:
    return torch.zeros(b, q_size, dtype=torch.bool)


def as_drop(mask: torch.Tensor) -> torch.Tensor:
    """A (B, Q) bool mask (True: dropped) as the (Q, B) float32 mask infonce_loss takes."""
    return mask.T.contiguous().float()


def as_bool(drop: torch.Tensor) -> torch.Tensor:
    """negative_mask's (Q, B) float32 mask as (B, Q) bool, True where dropped."""
    return drop.T.bool()


# ---------------------------------------------------------------- L1: InfoNCE with a mask
def test_infonce_matches_hand_computed_value() -> None:
    # B = 1, D = 2: q = (1, 0), k = (0.6, 0.8), queue columns (0, 1), (-1, 0), (0.8, 0.6)
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[0.0, -1.0, 0.8], [1.0, 0.0, 0.6]])
    t = 0.5
    # logits (0.6, 0, -1, 0.8) / 0.5 = (1.2, 0, -2, 1.6), target 0
    full = -1.2 + math.log(math.exp(1.2) + 1.0 + math.exp(-2.0) + math.exp(1.6))
    assert infonce_loss(q, k, queue, t).item() == pytest.approx(full, rel=1e-6)
    # masking the third negative (logit 1.6) removes exactly that term
    masked = -1.2 + math.log(math.exp(1.2) + 1.0 + math.exp(-2.0))
    mask = torch.tensor([[False, False, True]])
    loss = infonce_loss(q, k, queue, t, as_drop(mask))
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(masked, rel=1e-6)


@requires_solo
def test_infonce_without_masked_negatives_is_solo_learns_moco_loss() -> None:
    from solo.losses.mocov2plus import mocov2plus_loss_func

    for seed in range(5):
        q, k, queue = moco_inputs(b=32, d=64, q_size=300, seed=seed)
        for t in (0.07, 0.2, 1.0):
            q1, q2 = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
            ours = infonce_loss(q1, k, queue, t)
            ref = mocov2plus_loss_func(q2, k, queue, t)
            torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0.0)
            ours.backward()
            ref.backward()
            torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-5, atol=1e-7)


def test_infonce_with_an_all_false_mask_is_the_unmasked_loss_bit_for_bit() -> None:
    for seed in range(5):
        q, k, queue = moco_inputs(b=32, d=64, q_size=300, seed=seed)
        for t in (0.07, 0.2, 1.0):
            ours = infonce_loss(q, k, queue, t, as_drop(no_mask(32, 300)))
            assert torch.equal(ours, infonce_loss(q, k, queue, t)), (seed, t)


@requires_solo
def test_infonce_with_masked_negatives_is_solo_learns_moco_loss_on_the_reduced_queue() -> None:
    from solo.losses.mocov2plus import mocov2plus_loss_func

    q, k, queue = moco_inputs(b=12, d=16, q_size=40, seed=1)
    # the same columns masked for every query: MoCo on the queue without them
    columns = torch.zeros(40, dtype=torch.bool)
    columns[[0, 3, 4, 17, 39]] = True
    mask = columns.expand(12, 40)
    torch.testing.assert_close(
        infonce_loss(q, k, queue, 0.2, as_drop(mask)),
        mocov2plus_loss_func(q, k, queue[:, ~columns], 0.2),
        rtol=1e-6,
        atol=1e-6,
    )
    # a different mask per query: the mean of each query's loss on its own reduced queue
    mask = torch.rand(12, 40, generator=torch.Generator().manual_seed(2)) < 0.3
    mask[0] = True  # every negative of query 0 masked: only its positive remains
    per_query = torch.stack(
        [
            mocov2plus_loss_func(q[i : i + 1], k[i : i + 1], queue[:, ~mask[i]], 0.2)
            for i in range(12)
        ]
    )
    assert per_query[0].item() == 0.0  # log(exp(pos) / exp(pos))
    torch.testing.assert_close(
        infonce_loss(q, k, queue, 0.2, as_drop(mask)), per_query.mean(), rtol=1e-6, atol=1e-6
    )


def test_infonce_sends_gradients_to_query_only_and_none_through_masked_negatives() -> None:
    q, k, queue = moco_inputs()
    q.requires_grad_(True)
    k.requires_grad_(True)
    queue.requires_grad_(True)
    mask = torch.zeros(12, 40, dtype=torch.bool)
    mask[:, :20] = True
    infonce_loss(q, k, queue, 0.2, as_drop(mask)).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None
    # d/dq_b = (sum_j p_bj n_j - (1 - p_b0) k_b) / (t B): masked negatives have p_bj = 0
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1).detach() / 0.2
    logits[:, 1:21] = float("-inf")
    p = torch.softmax(logits, dim=1)
    targets = torch.cat([k.detach(), queue.detach().T])  # (1 + Q) rows per query
    expected = torch.stack(
        [(p[b, 1:] @ targets[12:] - (1 - p[b, 0]) * targets[b]) for b in range(12)]
    ) / (0.2 * 12)
    torch.testing.assert_close(q.grad, expected)


def test_infonce_with_every_negative_masked_is_zero_with_zero_gradient() -> None:
    q, k, queue = moco_inputs()
    q.requires_grad_(True)
    loss = infonce_loss(q, k, queue, 0.2, torch.ones(40, 12))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(q.grad, torch.zeros_like(q))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_infonce_in_half_precision_is_float32_and_matches_full_precision(
    dtype: torch.dtype,
) -> None:
    q, k, queue = moco_inputs(b=32, d=64, q_size=256, seed=3)
    mask = as_drop(torch.rand(32, 256, generator=torch.Generator().manual_seed(4)) < 0.2)
    qh = q.to(dtype).requires_grad_(True)
    low = infonce_loss(qh, k.to(dtype), queue.to(dtype), 0.07, mask)
    low.backward()
    rounded = infonce_loss(
        qh.detach().float(), k.to(dtype).float(), queue.to(dtype).float(), 0.07, mask
    )
    full = infonce_loss(q, k, queue, 0.07, mask)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    torch.testing.assert_close(low, rounded, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(low, full, rtol=2e-2, atol=1e-3)
    assert qh.grad.dtype == dtype and torch.isfinite(qh.grad.float()).all()


# ---------------------------------------------------------------- L2, L3: hand-computed values
def test_centroid_contrast_loss_matches_hand_computed_value() -> None:
    q, c, _, a = small_inputs()
    t = 0.5
    # logits = q @ c.T / t, row by row:
    # q0 = (0.6, 0.8): (0.6, 0.8, -0.6) / 0.5 = (1.2, 1.6, -1.2), target 1
    # q1 = (1, 0):     (1, 0, -1) / 0.5       = (2, 0, -2),       target 0
    # q2 = (0, -1):    (0, -1, 0) / 0.5       = (0, -2, 0),       target 2
    ce0 = -1.6 + math.log(math.exp(1.2) + math.exp(1.6) + math.exp(-1.2))
    ce1 = -2.0 + math.log(math.exp(2.0) + 1.0 + math.exp(-2.0))
    ce2 = -0.0 + math.log(1.0 + math.exp(-2.0) + 1.0)
    expected = (ce0 + ce1 + ce2) / 3
    loss = centroid_contrast_loss(q, c, a, temperature=t)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_centroid_contrast_with_per_cluster_temperatures_matches_hand_computed_value() -> None:
    q, c, _, a = small_inputs()
    t = torch.tensor([0.5, 1.0, 0.25])  # column j of the logits is divided by t_j
    # q0: (0.6 / 0.5, 0.8 / 1, -0.6 / 0.25) = (1.2, 0.8, -2.4), target 1
    # q1: (2, 0, -4), target 0;  q2: (0, -1, 0), target 2
    ce0 = -0.8 + math.log(math.exp(1.2) + math.exp(0.8) + math.exp(-2.4))
    ce1 = -2.0 + math.log(math.exp(2.0) + 1.0 + math.exp(-4.0))
    ce2 = -0.0 + math.log(1.0 + math.exp(-1.0) + 1.0)
    loss = centroid_contrast_loss(q, c, a, temperature=t)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx((ce0 + ce1 + ce2) / 3, rel=1e-6)


def test_centroid_contrast_with_soft_targets_matches_hand_computed_value() -> None:
    q, c, _, _ = small_inputs()
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [0.2, 0.3, 0.5]])
    # CE with a target distribution: -sum_j p_j log softmax_j, logits as in the hard test
    rows = [(1.2, 1.6, -1.2), (2.0, 0.0, -2.0), (0.0, -2.0, 0.0)]
    expected = 0.0
    for p, logits in zip(soft.tolist(), rows):
        lse = math.log(sum(math.exp(z) for z in logits))
        expected += -sum(pj * (z - lse) for pj, z in zip(p, logits))
    loss = centroid_contrast_loss(q, c, soft, temperature=0.5)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)


def test_one_hot_soft_targets_give_the_hard_loss_and_gradient() -> None:
    q, c, _, a = random_inputs(b=20, k=6, d=8, seed=5)
    q_hard, q_soft = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
    onehot = F.one_hot(a, 6).float()
    hard = centroid_contrast_loss(q_hard, c, a, 0.1)
    soft = centroid_contrast_loss(q_soft, c, onehot, 0.1)
    torch.testing.assert_close(soft, hard)
    hard.backward()
    soft.backward()
    torch.testing.assert_close(q_soft.grad, q_hard.grad)


def test_per_cluster_temperatures_of_equal_values_equal_the_scalar_temperature() -> None:
    q, c, _, a = random_inputs(b=20, k=6, d=8, seed=6)
    soft = torch.softmax(torch.randn(20, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    for targets in (a, soft):
        torch.testing.assert_close(
            centroid_contrast_loss(q, c, targets, torch.full((6,), 0.15)),
            centroid_contrast_loss(q, c, targets, 0.15),
            rtol=1e-6,
            atol=0.0,
        )


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        # squared distances to the assigned centroid: q0-c1 = (0.6, -0.2) -> 0.40,
        # q1-c0 = (0, 0) -> 0, q2-c2 = (1, -1) -> 2; assigned variances (2.0, 0.5, 0.25)
        ("divide", (0.40 / (2.0 + 1e-4) + 0.0 / (0.5 + 1e-4) + 2.0 / (0.25 + 1e-4)) / 3),
        ("multiply", (0.40 * 2.0 + 0.0 * 0.5 + 2.0 * 0.25) / 3),
        ("none", (0.40 + 0.0 + 2.0) / 3),
    ],
)
def test_variance_scaled_distance_loss_matches_hand_computed_value(
    scaling: str, expected: float
) -> None:
    q, c, v, a = small_inputs()
    loss = variance_scaled_distance_loss(q, c, v, a, scaling=scaling, eps=1e-4)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_variance_loss_divide_uses_the_given_eps() -> None:
    q, c, v, a = small_inputs()
    loss = variance_scaled_distance_loss(q, c, v, a, scaling="divide", eps=0.5)
    expected = (0.40 / 2.5 + 0.0 + 2.0 / 0.75) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- L2, L3: gradients
def test_cluster_losses_send_gradients_to_query_only() -> None:
    q, c, v, a = random_inputs()
    q.requires_grad_(True)
    c.requires_grad_(True)
    v.requires_grad_(True)
    temps = torch.rand(5, generator=torch.Generator().manual_seed(1)).add(0.05)
    soft = torch.softmax(torch.randn(16, 5), dim=1).requires_grad_(True)
    loss = centroid_contrast_loss(q, c, a, 0.1) + centroid_contrast_loss(q, c, soft, temps)
    for scaling in ("divide", "multiply", "none"):
        loss = loss + variance_scaled_distance_loss(q, c, v, a, scaling=scaling)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert c.grad is None
    assert v.grad is None
    assert soft.grad is None


def test_variance_loss_gradient_equals_scaled_difference_to_assigned_centroid() -> None:
    q, c, v, a = small_inputs()
    q.requires_grad_(True)
    variance_scaled_distance_loss(q, c, v, a, scaling="divide", eps=1e-4).backward()
    # d/dq mean_b ||q_b - c_a||^2 / (v_a + eps) = 2 (q_b - c_a) / ((v_a + eps) B)
    expected = 2 * (q.detach() - c[a]) / ((v[a] + 1e-4).unsqueeze(1) * 3)
    torch.testing.assert_close(q.grad, expected)


def test_centroid_contrast_gradient_equals_softmax_minus_target() -> None:
    q, c, _, a = small_inputs()
    t = 0.5
    for targets, target_dist in (
        (a, F.one_hot(a, 3).float()),
        (torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [0.2, 0.3, 0.5]]),) * 2,
    ):
        qg = q.clone().requires_grad_(True)
        centroid_contrast_loss(qg, c, targets, t).backward()
        p = torch.softmax(q @ c.T / t, dim=1)
        expected = (p - target_dist) @ c / (t * 3)
        torch.testing.assert_close(qg.grad, expected)


# ---------------------------------------------------------------- L2, L3: robustness
def both_losses(
    q: torch.Tensor, c: torch.Tensor, v: torch.Tensor, a: torch.Tensor, t: float = 0.1
) -> list[torch.Tensor]:
    return [centroid_contrast_loss(q, c, a, t)] + [
        variance_scaled_distance_loss(q, c, v, a, scaling=s) for s in ("divide", "multiply", "none")
    ]


def test_losses_are_finite_with_empty_clusters() -> None:
    q, c, v, _ = random_inputs(b=8, k=6)
    a = torch.zeros(8, dtype=torch.long)  # clusters 1..5 have no member
    for loss in both_losses(q, c, v, a):
        assert torch.isfinite(loss)


def test_losses_are_finite_with_zero_variance() -> None:
    q, c, v, a = random_inputs()
    v = torch.zeros_like(v)
    q.requires_grad_(True)
    losses = both_losses(q, c, v, a)
    sum(losses).backward()
    assert all(torch.isfinite(loss) for loss in losses)
    assert torch.isfinite(q.grad).all()
    # divide by eps only: ||q - c||^2 / 1e-4
    expected = (q.detach() - c[a]).pow(2).sum(1).mean() / 1e-4
    torch.testing.assert_close(losses[1], expected)


def test_losses_on_a_one_sample_batch() -> None:
    q, c, v, a = random_inputs(b=1)
    q.requires_grad_(True)
    losses = both_losses(q, c, v, a)
    sum(losses).backward()
    assert all(torch.isfinite(loss) for loss in losses)
    assert torch.isfinite(q.grad).all()
    expected_ce = -torch.log_softmax(q.detach() @ c.T / 0.1, dim=1)[0, a[0]]
    torch.testing.assert_close(losses[0], expected_ce)


def test_losses_are_finite_with_huge_logits() -> None:
    q, c, v, a = random_inputs()
    q = (q * 1e4).requires_grad_(True)
    c = c * 1e3
    losses = both_losses(q, c, v, a, t=1e-3)  # logits up to ~1e10
    sum(losses).backward()
    assert all(torch.isfinite(loss) for loss in losses)
    assert torch.isfinite(q.grad).all()
    ref = F.cross_entropy(q.detach().double() @ c.double().T / 1e-3, a)
    torch.testing.assert_close(losses[0].double(), ref, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_in_half_precision_are_float32_and_match_full_precision(
    dtype: torch.dtype,
) -> None:
    q, c, v, a = random_inputs(b=32, k=7, d=16)
    soft = torch.softmax(torch.randn(32, 7, generator=torch.Generator().manual_seed(8)), dim=1)
    temps = torch.rand(7, generator=torch.Generator().manual_seed(9)) * 0.2 + 0.05

    def all_losses(q, c, v, soft, temps) -> list[torch.Tensor]:
        return both_losses(q, c, v, a) + [centroid_contrast_loss(q, c, soft, temps)]

    qh = q.to(dtype).requires_grad_(True)
    low = all_losses(qh, c.to(dtype), v.to(dtype), soft.to(dtype), temps.to(dtype))
    sum(low).backward()
    # exactly the float32 computation on the rounded inputs ...
    rounded = all_losses(
        *(x.to(dtype).float() for x in (qh.detach(), c, v, soft)), temps.to(dtype).float()
    )
    # ... and close to the float32 computation on the original inputs
    full = all_losses(q, c, v, soft, temps)
    for lo, ro, fu in zip(low, rounded, full):
        assert lo.dtype == torch.float32 and torch.isfinite(lo)
        torch.testing.assert_close(lo, ro, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(lo, fu, rtol=2e-2, atol=1e-3)
    assert qh.grad.dtype == dtype and torch.isfinite(qh.grad.float()).all()


def test_losses_under_cpu_bf16_autocast_match_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(12, 8)
    x = torch.randn(20, 12, generator=gen)
    _, c, v, a = random_inputs(b=20, k=5, d=8, seed=4)
    key, queue = F.normalize(torch.randn(20, 8, generator=gen), dim=1), torch.randn(8, 30)
    mask = as_drop(torch.rand(20, 30, generator=gen) < 0.3)

    def all_losses(q: torch.Tensor) -> list[torch.Tensor]:
        return both_losses(q, c, v, a) + [infonce_loss(q, key, queue, 0.2, mask)]

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        q = head(x)
        assert q.dtype == torch.bfloat16  # autocast really is on
        auto = all_losses(q)
    ref = all_losses(q.detach().float())
    full = all_losses(head(x).detach())
    for au, re, fu in zip(auto, ref, full):
        assert au.dtype == torch.float32 and torch.isfinite(au)
        torch.testing.assert_close(au, re, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(au, fu, rtol=2e-2, atol=1e-3)
    sum(auto).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


# ---------------------------------------------------------------- Sinkhorn targets
def swav_sinkhorn_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's ``distributed_sinkhorn`` (Caron et al., 2020) for one process, in float64:
    Q = exp(scores / eps)^T normalised to sum 1, then alternately each of the K rows scaled to
    sum 1 / K and each of the N columns to 1 / N; returned as N Q^T."""
    q = torch.exp(scores.double() / epsilon).T
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).T


def skewed_scores(n: int = 200, k: int = 10, seed: int = 0) -> torch.Tensor:
    """Cosine-like scores (N, K) where every feature is nearest to centroid 0."""
    gen = torch.Generator().manual_seed(seed)
    scores = 0.1 * torch.randn(n, k, generator=gen)
    scores[:, 0] = scores.max(dim=1).values + 0.2
    return scores


def test_sinkhorn_rows_are_distributions_and_columns_are_balanced_for_skewed_scores() -> None:
    scores = skewed_scores()
    assert scores.argmax(dim=1).eq(0).all()  # nearest centroid: all 200 in cluster 0
    softmax_share = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert softmax_share[0] > 150  # a plain softmax is as skewed
    for iterations, tolerance in ((3, 0.1), (50, 1e-4)):
        soft = sinkhorn(scores, epsilon=0.05, iterations=iterations)
        assert soft.shape == (200, 10) and soft.dtype == torch.float32
        assert (soft >= 0).all()
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(200), rtol=0, atol=1e-5)
        # every centroid gets N / K = 20 features' worth, within 10 % after SwAV's 3 iterations
        torch.testing.assert_close(
            soft.sum(dim=0), torch.full((10,), 20.0), rtol=tolerance, atol=0.0
        )


@pytest.mark.parametrize(("epsilon", "iterations"), [(0.05, 3), (0.1, 1), (0.03, 10)])
def test_sinkhorn_matches_swavs_algorithm_for_one_process(epsilon: float, iterations: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(300, 32, generator=gen), dim=1)
    c = F.normalize(torch.randn(16, 32, generator=gen), dim=1)
    scores = x @ c.T
    torch.testing.assert_close(
        sinkhorn(scores, epsilon, iterations).double(),
        swav_sinkhorn_reference(scores, epsilon, iterations),
        rtol=1e-5,
        atol=1e-7,
    )


@requires_solo
def test_sinkhorn_matches_solo_learns_sinkhorn_knopp() -> None:
    from solo.utils.sinkhorn_knopp import SinkhornKnopp

    scores = skewed_scores(n=128, k=12, seed=2)
    torch.testing.assert_close(
        sinkhorn(scores, 0.05, 3),
        SinkhornKnopp(num_iters=3, epsilon=0.05)(scores.clone()),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sinkhorn_of_half_precision_scores_is_the_float32_computation(dtype: torch.dtype) -> None:
    scores = skewed_scores(n=64, k=8, seed=3)
    low = sinkhorn(scores.to(dtype), 0.05, 3)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    torch.testing.assert_close(low, sinkhorn(scores.to(dtype).float(), 0.05, 3), rtol=0, atol=0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto = sinkhorn(scores, 0.05, 3)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, sinkhorn(scores, 0.05, 3), rtol=0, atol=0)


def test_sinkhorn_targets_carry_no_gradient() -> None:
    scores = skewed_scores(n=32, k=4).requires_grad_(True)
    assert not sinkhorn(scores, 0.05, 3).requires_grad


def test_sinkhorn_is_finite_for_small_epsilon() -> None:
    gen = torch.Generator().manual_seed(0)
    c = F.normalize(torch.randn(10, 32, generator=gen), dim=1)
    x = F.normalize(torch.randn(100, 32, generator=gen), dim=1)
    x[0] = c[0]  # one score of 1 while most features' best score is near 0.1
    scores = x @ c.T
    soft = sinkhorn(scores, epsilon=0.005, iterations=3)
    assert torch.isfinite(soft).all()
    # float32 logits up to 200 carry about 2e-5 of relative error into the exponent
    reference = swav_sinkhorn_reference(scores, 0.005, 3)
    torch.testing.assert_close(soft.double(), reference, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- negative masks
def test_hard_negative_mask_drops_exactly_the_labelled_slots_of_the_target_cluster() -> None:
    targets = torch.tensor([0, 2, 1])
    labels = torch.tensor([0, -1, 2, 0, 1, -1, 2])
    c = torch.eye(3, 4)
    drop = negative_mask(targets, labels, c, "hard")
    assert drop.dtype == torch.float32 and drop.shape == (7, 3) and drop.is_contiguous()
    mask = as_bool(drop)
    expected = torch.tensor(
        [
            [True, False, False, True, False, False, False],  # the -1 slots are not cluster 0
            [False, False, True, False, False, False, True],
            [False, False, False, False, True, False, False],
        ]
    )
    assert torch.equal(mask, expected)
    assert set(drop.unique().tolist()) == {0.0, 1.0}


def test_hard_negative_mask_on_random_labels_equals_label_equality() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(7, (64,), generator=gen)
    labels = torch.randint(-1, 7, (500,), generator=gen)
    c = F.normalize(torch.randn(7, 16, generator=gen), dim=1)
    expected = (targets[:, None] == labels[None, :]) & (labels >= 0)[None, :]
    assert torch.equal(as_bool(negative_mask(targets, labels, c, "hard")), expected)
    # a queue of unlabelled slots only (before the bank is seeded) drops nothing
    unlabelled = torch.full((500,), -1)
    assert not negative_mask(targets, unlabelled, c, "hard").any()


def hcsc_centroids(s: float) -> torch.Tensor:
    """Unit centroids: 0 = e0; 1 at cosine ``s`` to 0; 2 orthogonal to 0; 3 opposite to 0."""
    return torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [s, math.sqrt(1.0 - s * s), 0.0],
            [0.0, 0.0, 1.0],
            [-1.0, 0.0, 0.0],
        ]
    )


def test_hcsc_negative_mask_drops_by_centroid_similarity() -> None:
    s = 0.3
    torch.manual_seed(0)  # the mask draws from the global generator
    targets = torch.zeros(64, dtype=torch.long)
    labels = torch.tensor([0, 1, 2, 3, -1]).repeat_interleave(1000)
    drop = negative_mask(targets, labels, hcsc_centroids(s), "hcsc")
    assert drop.shape == (5000, 64) and drop.dtype == torch.float32
    assert set(drop.unique().tolist()) == {0.0, 1.0}
    mask = as_bool(drop)
    same, near, orthogonal, opposite, unlabelled = mask.view(64, 5, 1000).unbind(dim=1)
    assert same.all()  # similarity 1: always dropped
    assert not orthogonal.any()  # similarity 0: never dropped
    assert not opposite.any()  # negative similarity is clamped to 0
    assert not unlabelled.any()  # -1 slots: never dropped, though clamped to label 0
    # similarity 0.3: dropped with probability 0.3 (64 000 draws, std 0.0018)
    assert near.float().mean().item() == pytest.approx(s, abs=0.01)
    # the draws are independent per (query, slot), not one draw per cluster pair
    assert 0 < near.float().mean(dim=1).min() and near.float().mean(dim=1).max() < 1


def test_hcsc_negative_mask_always_drops_the_same_cluster_for_random_centroids() -> None:
    gen = torch.Generator().manual_seed(1)
    c = F.normalize(torch.randn(20, 128, generator=gen), dim=1)
    targets = torch.randint(20, (128,), generator=gen)
    labels = torch.randint(-1, 20, (4096,), generator=gen)
    torch.manual_seed(1)
    mask = as_bool(negative_mask(targets, labels, c, "hcsc"))
    same = (targets[:, None] == labels[None, :]) & (labels >= 0)[None, :]
    assert mask[same].all()
    assert not mask[:, labels < 0].any()
    # other clusters are dropped at their clamped cosine similarity, on average
    sim = (c @ c.T).clamp(0, 1)[targets][:, labels.clamp_min(0)]
    others = ~same & (labels >= 0)[None, :]
    assert mask[others].float().mean().item() == pytest.approx(sim[others].mean().item(), abs=0.005)


# ---------------------------------------------------------------- relabelling
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_relabelling_clusters_permutes_assignments_and_keeps_losses(data: st.DataObject) -> None:
    k = data.draw(st.integers(2, 8), label="K")
    b = data.draw(st.integers(1, 24), label="B")
    d = data.draw(st.integers(2, 6), label="D")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    perm = torch.tensor(data.draw(st.permutations(list(range(k))), label="perm"))
    scaling = data.draw(st.sampled_from(["divide", "multiply", "none"]), label="scaling")
    temperature = data.draw(st.floats(0.05, 2.0), label="temperature")

    q, c, v, _ = random_inputs(b=b, k=k, d=d, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    soft = torch.softmax(torch.randn(b, k, generator=gen), dim=1)
    temps = torch.rand(k, generator=gen) + 0.05
    queue_labels = torch.randint(-1, k, (30,), generator=gen)
    a = nearest_centroid(q, c)
    # new row i holds old cluster perm[i]; old cluster j is now called inv[j]
    c_new, v_new, soft_new, temps_new = c[perm], v[perm], soft[:, perm], temps[perm]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(k)
    a_new = nearest_centroid(q, c_new)
    assert torch.equal(a_new, inv[a])
    labels_new = torch.where(queue_labels >= 0, inv[queue_labels.clamp_min(0)], -1)

    torch.testing.assert_close(
        centroid_contrast_loss(q, c_new, a_new, temperature),
        centroid_contrast_loss(q, c, a, temperature),
    )
    torch.testing.assert_close(
        centroid_contrast_loss(q, c_new, soft_new, temps_new),
        centroid_contrast_loss(q, c, soft, temps),
    )
    torch.testing.assert_close(
        variance_scaled_distance_loss(q, c_new, v_new, a_new, scaling=scaling),
        variance_scaled_distance_loss(q, c, v, a, scaling=scaling),
    )
    assert torch.equal(
        negative_mask(a_new, labels_new, c_new, "hard"), negative_mask(a, queue_labels, c, "hard")
    )
    torch.manual_seed(seed)
    hcsc_new = negative_mask(a_new, labels_new, c_new, "hcsc")
    torch.manual_seed(seed)
    assert torch.equal(hcsc_new, negative_mask(a, queue_labels, c, "hcsc"))
