"""L1 with queue negatives masked out: the fused InfoNCE against the autograd reference (value and
gradient, float32 and bf16 autocast, solo-learn's loss when nothing is masked), the contract of
both masks (hard: exactly the target cluster's keys; hcsc: independent drops at the quantised
probability table; unlabelled slots never), HCSC's random bits and their checkpointed generator
state, and CueCo's masked L1 resuming its draws from a checkpoint."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_solo

from cueco_plugin.losses import hcsc_drop_probabilities, infonce_loss, negative_mask
from cueco_plugin.sampling import BITS, NegativeSampler, stream_seed, uniform_bits


def reference_infonce(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, t: float, mask: torch.Tensor
) -> torch.Tensor:
    """The autograd reference: ``CE([q.k, q.queue] / t, 0)`` with the masked (B, Q) logits set
    to -inf, in float32 also under autocast (the implementation the fused function replaced)."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        q = query.float()
        pos = torch.einsum("nc,nc->n", q, key.detach().float()).unsqueeze(-1)
        neg = (q @ queue.detach().float()).masked_fill(mask, float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / t
        return F.cross_entropy(logits, logits.new_zeros(q.shape[0], dtype=torch.long))


def inputs(
    b: int = 24, d: int = 16, q_size: int = 300, seed: int = 0, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = scale * F.normalize(torch.randn(b, d, generator=gen), dim=1)
    k = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    queue = F.normalize(torch.randn(d, q_size, generator=gen), dim=0)
    return q, k, queue


def value_and_grad(fn: Any, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = q.detach().clone().requires_grad_(True)
    loss = fn(q)
    loss.backward()
    return loss.detach(), q.grad


def random_mask(b: int, q_size: int, density: float, seed: int) -> torch.Tensor:
    mask = torch.rand(b, q_size, generator=torch.Generator().manual_seed(seed)) < density
    mask[0] = True  # one query keeps only its positive
    mask[1] = False  # one keeps every negative
    return mask


# ---------------------------------------------------------------- the fused InfoNCE
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.95])
def test_fused_infonce_matches_the_autograd_reference_in_value_and_gradient(
    temperature: float, density: float, seed: int
) -> None:
    q, k, queue = inputs(seed=seed, scale=1.0 + 4 * seed)  # logits up to 180 (scale 9)
    mask = random_mask(24, 300, density, seed)
    drop = mask.T.contiguous().float()

    def ours(x: torch.Tensor) -> torch.Tensor:
        return infonce_loss(x, k, queue, temperature, drop)

    def ref(x: torch.Tensor) -> torch.Tensor:
        return reference_infonce(x, k, queue, temperature, mask)

    (value, grad), (ref_value, ref_grad) = value_and_grad(ours, q), value_and_grad(ref, q)
    assert value.dtype == torch.float32 and value.shape == ()
    torch.testing.assert_close(value, ref_value, rtol=2e-6, atol=2e-6)
    # float32 logits of up to 180 carry about 1e-5 of relative error into the softmax
    atol = 1e-5 * ref_grad.abs().max().item()
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=atol)


def test_fused_infonce_under_bf16_autocast_matches_the_reference_on_the_same_queries() -> None:
    gen = torch.Generator().manual_seed(7)
    head = torch.nn.Linear(12, 16)
    x = torch.randn(24, 12, generator=gen)
    _, k, queue = inputs(seed=7)
    mask = random_mask(24, 300, 0.3, 7)
    grads = []
    for fn in (
        lambda z: infonce_loss(z, k, queue, 0.2, mask.T.contiguous().float()),
        lambda z: reference_infonce(z, k, queue, 0.2, mask),
    ):
        head.zero_grad()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            z = F.normalize(head(x), dim=1)
            assert z.dtype == torch.bfloat16  # autocast really is on
            loss = fn(z)
        assert loss.dtype == torch.float32
        loss.backward()
        grads.append((loss.detach(), head.weight.grad.clone()))
    (ours, ours_grad), (ref, ref_grad) = grads
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-4, atol=1e-6)


@requires_solo
def test_fused_infonce_with_nothing_masked_is_solo_learns_loss_for_both_views() -> None:
    from solo.losses.mocov2plus import mocov2plus_loss_func

    q, k, queue = inputs(b=32, d=64, q_size=1000, seed=3)
    queues = torch.stack([queue, queue.roll(7, dims=1)])
    k1, k2 = k.chunk(2)
    for temperature in (0.07, 0.2):

        def ours(x: torch.Tensor, t: float = temperature) -> torch.Tensor:
            a, b = x.chunk(2)
            return (infonce_loss(a, k2, queues[1], t) + infonce_loss(b, k1, queues[0], t)) / 2

        def solo(x: torch.Tensor, t: float = temperature) -> torch.Tensor:
            a, b = x.chunk(2)
            loss = mocov2plus_loss_func(a, k2, queues[1], t)
            return (loss + mocov2plus_loss_func(b, k1, queues[0], t)) / 2

        (v1, g1), (v2, g2) = value_and_grad(ours, q), value_and_grad(solo, q)
        torch.testing.assert_close(v1, v2, rtol=1e-6, atol=0.0)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)


def test_fused_infonce_gradient_holds_when_the_queue_changes_before_backward() -> None:
    # CueCo enqueues (in place) between L1's forward and backward, without cloning the queue
    q, k, queue = inputs(seed=6)
    mask = random_mask(24, 300, 0.3, 6)
    _, expected = value_and_grad(lambda x: reference_infonce(x, k, queue, 0.2, mask), q)
    x = q.clone().requires_grad_(True)
    loss = infonce_loss(x, k, queue, 0.2, mask.T.contiguous().float())
    queue.mul_(-1.0)
    loss.backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-7)


def test_infonce_leaves_the_mask_unchanged_unless_told_to_overwrite_it() -> None:
    q, k, queue = inputs(seed=4)
    drop = random_mask(24, 300, 0.3, 4).T.contiguous().float()
    kept = drop.clone()
    first = infonce_loss(q, k, queue, 0.2, drop)
    assert torch.equal(drop, kept)
    assert torch.equal(infonce_loss(q, k, queue, 0.2, drop, overwrite_mask=True), first)
    assert not torch.equal(drop, kept)  # its memory held the logits


def test_infonce_rejects_a_mask_in_the_query_major_bool_layout() -> None:
    q, k, queue = inputs(seed=5)
    with pytest.raises(ValueError, match=r"\(Q, B\) = \(300, 24\) float32 .* got \(24, 300\)"):
        infonce_loss(q, k, queue, 0.2, torch.zeros(24, 300, dtype=torch.bool))


# ---------------------------------------------------------------- the masks' contracts
def clusters_and_queue(
    k: int = 8, b: int = 40, q_size: int = 2000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centroids = F.normalize(torch.randn(k, 16, generator=gen), dim=1)
    targets = torch.randint(k, (b,), generator=gen)
    labels = torch.randint(-1, k, (q_size,), generator=gen)
    return centroids, targets, labels


@requires_solo
def test_hard_mask_loss_is_each_querys_moco_loss_without_its_clusters_keys() -> None:
    from solo.losses.mocov2plus import mocov2plus_loss_func

    c, targets, labels = clusters_and_queue(k=5, b=24, q_size=300, seed=1)
    q, k, queue = inputs(seed=1)
    drop = negative_mask(targets, labels, c, "hard")
    per_query = torch.stack(
        [
            mocov2plus_loss_func(q[i : i + 1], k[i : i + 1], queue[:, labels != targets[i]], 0.2)
            for i in range(24)
        ]
    )
    torch.testing.assert_close(
        infonce_loss(q, k, queue, 0.2, drop), per_query.mean(), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("mode", ["hard", "hcsc"])
def test_unlabelled_queue_slots_are_never_dropped(mode: str) -> None:
    # every centroid the same: hcsc drops every labelled key (probability 1), hard its own
    c = F.normalize(torch.ones(6, 4), dim=1)
    targets = torch.arange(6).repeat(10)
    labels = torch.tensor([-1, 0, 1, 2, 3, 4, 5]).repeat(300)
    mask = negative_mask(targets, labels, c, mode).T.bool()  # (B, Q)
    assert not mask[:, labels < 0].any()
    same = targets[:, None] == labels[None, :]
    assert torch.equal(
        mask[:, labels >= 0], (same if mode == "hard" else ~same | same)[:, labels >= 0]
    )


def test_hcsc_drops_each_pair_at_the_quantised_probability_of_its_clusters() -> None:
    # cosine similarities 0.9, 0.5, 0.1, 1/3 * 2^-15 (rounds to 0), 0, -0.5 to centroid 0
    sims = torch.tensor([0.9, 0.5, 0.1, 2.0**-15 / 3, 0.0, -0.5])
    c = torch.zeros(7, 8)
    c[0, 0] = 1.0
    c[1:, 0] = sims
    c[1:, 1:7] = torch.diag((1 - sims**2).sqrt())
    targets = torch.zeros(128, dtype=torch.long)
    labels = torch.arange(7).repeat_interleave(4000)  # 4000 slots per cluster
    gen = torch.Generator().manual_seed(11)
    bits = uniform_bits(labels.shape[0], 128, "cpu", gen)
    mask = negative_mask(targets, labels, c, "hcsc", bits).T.bool().view(128, 7, 4000)
    table = hcsc_drop_probabilities(c)[0, :7]
    quantised = (table * 2**BITS).round() / 2**BITS
    assert quantised[0] == 1.0 and quantised[4:].eq(0).all()
    n = 128 * 4000
    for cluster in range(7):
        freq = mask[:, cluster].float().mean().item()
        p = quantised[cluster].item()
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(freq - p) <= 5 * sigma + 1e-12, (cluster, freq, p)
    # independent per pair: drops of two queries (or two keys) of the same pair of clusters
    # coincide at p^2, not p
    half = mask[:, 2].float()  # p = 0.5
    assert (half[0::2] * half[1::2]).mean().item() == pytest.approx(0.25, abs=0.005)
    assert (half[:, 0::2] * half[:, 1::2]).mean().item() == pytest.approx(0.25, abs=0.005)


def test_hcsc_with_the_same_bits_is_the_same_mask_and_consumes_them() -> None:
    c, targets, labels = clusters_and_queue(seed=2)
    draw = uniform_bits(labels.shape[0], targets.shape[0], "cpu", torch.Generator().manual_seed(3))
    copy, original = draw.clone(), draw.clone()
    first = negative_mask(targets, labels, c, "hcsc", draw)
    assert not torch.equal(draw, original)  # consumed: the bits' memory was reused
    assert torch.equal(first, negative_mask(targets, labels, c, "hcsc", copy))
    again = uniform_bits(labels.shape[0], targets.shape[0], "cpu", torch.Generator().manual_seed(4))
    assert not torch.equal(first, negative_mask(targets, labels, c, "hcsc", again))


# ---------------------------------------------------------------- random bits and their state
def test_uniform_bits_are_15_bit_uniform_in_every_position_of_a_word() -> None:
    bits = uniform_bits(1000, 401, "cpu", torch.Generator().manual_seed(0))  # 400 400 draws
    assert bits.dtype == torch.int16 and bits.shape == (1000, 401)
    assert int(bits.min()) == 0 and int(bits.max()) == 2**BITS - 1
    values = bits.view(-1)[:400_400].int().view(-1, 4)  # the four draws of each 64-bit word
    for position in range(4):
        ones = torch.stack([(values[:, position] >> s) & 1 for s in range(BITS)]).float()
        # 100 100 draws per position: the std of a bit's mean is 0.0016
        assert (ones.mean(dim=1) - 0.5).abs().max() < 0.008, position


def test_uniform_bits_reuse_the_given_buffer() -> None:
    words = torch.empty(300, dtype=torch.int64)
    bits = uniform_bits(20, 50, "cpu", torch.Generator().manual_seed(1), words)
    assert bits.untyped_storage().data_ptr() == words.untyped_storage().data_ptr()
    fresh = uniform_bits(20, 50, "cpu", torch.Generator().manual_seed(1))
    assert torch.equal(bits, fresh)


def test_stream_seeds_differ_per_draw_in_their_low_32_bits_and_per_rank() -> None:
    low = {stream_seed(5, 0, draw) & 0xFFFFFFFF for draw in range(10_000)}
    assert len(low) == 10_000
    assert len({stream_seed(5, 0, 0), stream_seed(5, 1, 0), stream_seed(6, 0, 0)}) == 3
    assert all(
        0 <= stream_seed(s, r, d) < 2**63 for s in (0, 2**40) for r in (0, 7) for d in (0, 9)
    )


def test_sampler_draws_depend_on_seed_rank_and_count_only() -> None:
    a, b = NegativeSampler(seed=5), NegativeSampler(seed=5)
    first = a.bits(64, 32, "cpu").clone()
    assert torch.equal(first, b.bits(64, 32, "cpu"))
    assert not torch.equal(a.bits(64, 32, "cpu"), first)  # the next draw differs
    assert a.draws == 2 and b.draws == 1
    assert not torch.equal(NegativeSampler(seed=5).bits(64, 32, "cpu", rank=1), first)
    assert not torch.equal(NegativeSampler(seed=6).bits(64, 32, "cpu"), first)


def test_sampler_state_round_trip_through_a_checkpoint_gives_the_same_next_draws() -> None:
    sampler = NegativeSampler(seed=3)
    for _ in range(5):
        sampler.bits(100, 16, "cpu", rank=2)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    expected = [sampler.bits(100, 16, "cpu", rank=2).clone() for _ in range(2)]

    buffer.seek(0)
    resumed = NegativeSampler(seed=0)  # the checkpoint's seed and count win
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.seed == 3 and resumed.draws == 5
    got = [resumed.bits(100, 16, "cpu", rank=2).clone() for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(expected, got))


# ---------------------------------------------------------------- CueCo's masked L1
def cueco_with_a_seeded_bank(tmp_path: Path, **method_kwargs: Any) -> Any:
    """A small CueCo with the cluster losses on: bank clustered from random keys, queue full."""
    from test_method import make_cfg

    from cueco_plugin import register

    cfg = make_cfg(tmp_path, warmup_iters=0, freeze_iters=0, **method_kwargs)
    model = register()(cfg)
    gen = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(2, 32, 64, generator=gen), dim=1)  # (V, D, Q)
    feats = keys.transpose(1, 2).reshape(-1, 32)
    assert model.bank.cluster(feats) and model.bank.losses_active
    model.queue.keys.copy_(keys)
    model.queue.labels.copy_(model.bank.assign(feats).view(2, -1))
    return model


def step_inputs(model: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(16, 32, generator=gen), dim=1)
    k = F.normalize(torch.randn(16, 32, generator=gen), dim=1)
    return q, k, model.bank.assign(k).roll(8)  # targets: the other view's key's cluster


@requires_solo
def test_cueco_hard_masked_l1_is_the_reference_on_both_views(tmp_path: Path) -> None:
    model = cueco_with_a_seeded_bank(tmp_path, negative_mask="hard")
    q, k, hard = step_inputs(model, 1)
    labels, keys = model.queue.labels, model.queue.keys
    expected = 0.0
    for view, (qv, kv, tv) in enumerate(zip(q.chunk(2), k.chunk(2)[::-1], hard.chunk(2))):
        mask = tv[:, None] == labels[1 - view][None, :]  # (B, Q): the target cluster's keys
        expected = expected + reference_infonce(qv, kv, keys[1 - view], 0.2, mask) / 2
    torch.testing.assert_close(model._nce_loss(q, k, hard), expected, rtol=1e-6, atol=1e-6)


@requires_solo
def test_cueco_hcsc_resumed_from_a_checkpoint_draws_what_the_uninterrupted_run_draws(
    tmp_path: Path,
) -> None:
    model = cueco_with_a_seeded_bank(tmp_path, negative_mask="hcsc")
    assert isinstance(model.negative_sampler, NegativeSampler)
    q, k, hard = step_inputs(model, 2)
    model._nce_loss(q, k, hard)  # draws 0 and 1
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert "negative_sampler._extra_state" in model.state_dict()
    uninterrupted = [model._nce_loss(q, k, hard) for _ in range(2)]
    assert not torch.equal(uninterrupted[0], uninterrupted[1])  # fresh draws per step

    buffer.seek(0)
    resumed = cueco_with_a_seeded_bank(tmp_path, negative_mask="hcsc")
    resumed.load_state_dict(torch.load(buffer))
    torch.manual_seed(123)  # the global generator plays no part
    assert all(torch.equal(resumed._nce_loss(q, k, hard), x) for x in uninterrupted)
