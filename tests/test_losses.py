"""CueCo's losses: L2 centroid contrast, L3 variance-scaled distance and the Sinkhorn codes of
the bank's balanced update (against SwAV's algorithm): values computed by hand, gradient flow,
numerical robustness, mixed precision and relabelling invariance. L1 is solo-learn's own
``mocov2plus_loss_func``, called as it is (tests/test_method.py checks the method's use of it).

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
    loss = centroid_contrast_loss(q, c, a, 0.1)
    for scaling in ("divide", "multiply", "none"):
        loss = loss + variance_scaled_distance_loss(q, c, v, a, scaling=scaling)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert c.grad is None
    assert v.grad is None


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
    qg = q.clone().requires_grad_(True)
    centroid_contrast_loss(qg, c, a, t).backward()
    p = torch.softmax(q @ c.T / t, dim=1)
    expected = (p - F.one_hot(a, 3).float()) @ c / (t * 3)
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
    qh = q.to(dtype).requires_grad_(True)
    low = both_losses(qh, c.to(dtype), v.to(dtype), a)
    sum(low).backward()
    # exactly the float32 computation on the rounded inputs ...
    rounded = both_losses(*(x.to(dtype).float() for x in (qh.detach(), c, v)), a)
    # ... and close to the float32 computation on the original inputs
    full = both_losses(q, c, v, a)
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

    def all_losses(q: torch.Tensor) -> list[torch.Tensor]:
        return both_losses(q, c, v, a)

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


# ---------------------------------------------------------------- Sinkhorn codes (the bank)
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


def test_sinkhorn_codes_carry_no_gradient() -> None:
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
    a = nearest_centroid(q, c)
    # new row i holds old cluster perm[i]; old cluster j is now called inv[j]
    c_new, v_new = c[perm], v[perm]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(k)
    a_new = nearest_centroid(q, c_new)
    assert torch.equal(a_new, inv[a])

    torch.testing.assert_close(
        centroid_contrast_loss(q, c_new, a_new, temperature),
        centroid_contrast_loss(q, c, a, temperature),
    )
    torch.testing.assert_close(
        variance_scaled_distance_loss(q, c_new, v_new, a_new, scaling=scaling),
        variance_scaled_distance_loss(q, c, v, a, scaling=scaling),
    )
