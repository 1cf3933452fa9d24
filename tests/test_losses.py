"""CueCo's cluster losses (L2 centroid contrast, L3 variance-scaled distance): values computed by
hand, gradient flow, numerical robustness, mixed precision, relabelling invariance, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cueco_plugin.centroids import nearest_centroid
from cueco_plugin.losses import centroid_contrast_loss, variance_scaled_distance_loss

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
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=gen), dim=1)
    v = torch.rand(k, generator=gen) + 0.05
    a = torch.randint(k, (b,), generator=gen)
    return q, c, v, a


# ---------------------------------------------------------------- hand-computed values
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


# ---------------------------------------------------------------- gradients
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


def test_centroid_contrast_gradient_equals_softmax_minus_onehot() -> None:
    q, c, _, a = small_inputs()
    q.requires_grad_(True)
    t = 0.5
    centroid_contrast_loss(q, c, a, t).backward()
    p = torch.softmax(q.detach() @ c.T / t, dim=1)
    onehot = torch.nn.functional.one_hot(a, 3).float()
    expected = (p - onehot) @ c / (t * 3)
    torch.testing.assert_close(q.grad, expected)


# ---------------------------------------------------------------- robustness
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
    ref = torch.nn.functional.cross_entropy(q.detach().double() @ c.double().T / 1e-3, a)
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
    rounded = both_losses(qh.detach().float(), c.to(dtype).float(), v.to(dtype).float(), a)
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
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        q = head(x)
        assert q.dtype == torch.bfloat16  # autocast really is on
        auto = both_losses(q, c, v, a)
    ref = both_losses(q.detach().float(), c, v, a)
    full = both_losses(head(x).detach(), c, v, a)
    for au, re, fu in zip(auto, ref, full):
        assert au.dtype == torch.float32 and torch.isfinite(au)
        torch.testing.assert_close(au, re, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(au, fu, rtol=2e-2, atol=1e-3)
    sum(auto).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


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


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("temperature", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_centroid_contrast_rejects_bad_temperature(temperature: object) -> None:
    q, c, _, a = small_inputs()
    with pytest.raises(ValueError, match=r"temperature must be a positive finite number, got"):
        centroid_contrast_loss(q, c, a, temperature)  # type: ignore[arg-type]


@pytest.mark.parametrize("scaling", ["divided", "", None, "DIVIDE"])
def test_variance_loss_rejects_unknown_scaling(scaling: object) -> None:
    q, c, v, a = small_inputs()
    with pytest.raises(
        ValueError, match=r"scaling must be one of \('divide', 'multiply', 'none'\)"
    ):
        variance_scaled_distance_loss(q, c, v, a, scaling=scaling)  # type: ignore[arg-type]


@pytest.mark.parametrize("eps", [0, -1e-4, float("nan"), float("inf")])
def test_variance_loss_rejects_bad_eps(eps: float) -> None:
    q, c, v, a = small_inputs()
    with pytest.raises(ValueError, match=rf"eps must be a positive finite number, got {eps!r}"):
        variance_scaled_distance_loss(q, c, v, a, eps=eps)


@pytest.mark.parametrize("bad", [3, -1])
def test_losses_reject_out_of_range_assignments(bad: int) -> None:
    q, c, v, _ = small_inputs()
    a = torch.tensor([0, bad, 1])
    pattern = rf"assignments contain {bad}, outside the allowed range \[0, 2\] for K=3"
    with pytest.raises(ValueError, match=pattern):
        centroid_contrast_loss(q, c, a, 0.1)
    with pytest.raises(ValueError, match=pattern):
        variance_scaled_distance_loss(q, c, v, a)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda q, c, v, a: (q[0], c, v, a), r"query must be 2-D \(B, D\), got shape \(2,\)"),
        (lambda q, c, v, a: (q.long(), c, v, a), r"query must be a floating-point .* torch.int64"),
        (lambda q, c, v, a: (q[:0], c, v, a[:0]), r"at least one sample \(B >= 1\), got B=0"),
        (lambda q, c, v, a: (q, c[0], v, a), r"centroids must be 2-D \(K, D\), got shape \(2,\)"),
        (lambda q, c, v, a: (q, c[:, :1], v, a), r"centroids have dimension 1 but query has 2"),
        (lambda q, c, v, a: (q, c[:0], v[:0], a), r"at least one cluster \(K >= 1\), got K=0"),
        (lambda q, c, v, a: (q, c.long(), v, a), r"centroids must be a floating-point"),
        (lambda q, c, v, a: (q, c, v, a.int()), r"assignments must be int64 .* torch.int32"),
        (lambda q, c, v, a: (q, c, v, a[:2]), r"assignments must have shape \(B,\) = \(3,\)"),
        (lambda q, c, v, a: (q, c, v[:2], a), r"variances must have shape \(K,\) = \(3,\), got"),
        (lambda q, c, v, a: (q, c, v.long(), a), r"variances must be a floating-point"),
    ],
)
def test_losses_reject_bad_shapes_and_dtypes(make: Callable[..., tuple], pattern: str) -> None:
    q, c, v, a = make(*small_inputs())
    with pytest.raises(ValueError, match=pattern):
        variance_scaled_distance_loss(q, c, v, a)
    if "variances" not in pattern:
        with pytest.raises(ValueError, match=pattern):
            centroid_contrast_loss(q, c, a, 0.1)


def test_range_check_can_be_switched_off() -> None:
    q, c, v, _ = small_inputs()
    a = torch.tensor([0, 1, 2])
    # explicit check_range=True behaves like the CPU default; False skips the value read
    assert torch.isfinite(centroid_contrast_loss(q, c, a, 0.1, check_range=False))
    with pytest.raises(ValueError, match="outside the allowed range"):
        centroid_contrast_loss(q, c, torch.tensor([0, 1, 5]), 0.1, check_range=True)
