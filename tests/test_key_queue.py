"""The MoCo key queue: FIFO writes, wrap-around, oversized batches, non-finite keys, fill tracking
(never cluster on random slots), recent keys, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_solo

try:
    from cueco_plugin.method import KeyQueue
except ImportError:  # without solo-learn every test here is skipped by requires_solo
    pass

pytestmark = requires_solo

DIM = 4


def keys(n: int, views: int = 2, offset: int = 0) -> torch.Tensor:
    """(V, N, D) distinguishable unit keys."""
    x = torch.arange(offset, offset + views * n * DIM, dtype=torch.float32) + 1.0
    return F.normalize(x.reshape(views, n, DIM), dim=-1)


def slot_keys(queue: KeyQueue, slots: list[int]) -> torch.Tensor:
    """The keys in the given slots, (V, len(slots), D)."""
    return queue.keys[:, :, slots].transpose(1, 2)


def test_a_new_queue_holds_random_unit_keys_and_no_real_one() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=8)
    assert queue.keys.shape == (2, DIM, 8)  # (V, D, Q): solo-learn's mocov2plus_loss_func layout
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(2, 8))
    assert not queue.real.any()
    assert (queue.ptr, queue.num_filled) == (0, 0)


def test_filled_keys_are_only_the_real_keys_enqueued_so_far() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=8)
    assert queue.filled().shape == (0, DIM)  # the random initial vectors are never returned
    first = keys(3)
    queue.enqueue(first)
    assert queue.num_filled == 3 and queue.ptr == 3
    torch.testing.assert_close(queue.filled(), first.reshape(-1, DIM))  # view-major
    second = keys(3, offset=100)
    queue.enqueue(second)
    expected = torch.cat([first, second], dim=1).reshape(-1, DIM)
    torch.testing.assert_close(queue.filled(), expected)


def test_enqueue_overwrites_the_oldest_keys_and_wraps_around() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=4)
    old = keys(3)
    queue.enqueue(old)
    newer = keys(3, offset=100)
    queue.enqueue(newer)  # slots 3, 0, 1
    assert queue.ptr == 2 and queue.num_filled == 4
    torch.testing.assert_close(slot_keys(queue, [3, 0, 1]), newer)
    torch.testing.assert_close(slot_keys(queue, [2]), old[:, 2:])
    # full: every slot is real, in slot order
    torch.testing.assert_close(queue.filled(), queue.keys.transpose(1, 2).reshape(-1, DIM))


@pytest.mark.parametrize("start", [0, 1, 3])
def test_a_batch_larger_than_the_queue_keeps_the_newest_keys(start: int) -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=4)
    if start:
        queue.enqueue(keys(start, offset=500))
    big = keys(10)
    queue.enqueue(big)
    assert queue.ptr == start and queue.num_filled == 4  # 4 slots written, ptr wraps to start
    slots = [(start + i) % 4 for i in range(4)]
    torch.testing.assert_close(slot_keys(queue, slots), big[:, 6:])
    torch.testing.assert_close(queue.recent(4), big[:, 6:].reshape(-1, DIM))


def test_non_finite_keys_keep_the_old_key_of_their_slot() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=4)
    old = keys(4)
    queue.enqueue(old)
    new = keys(3, offset=100)
    new[0, 1, 2] = float("nan")  # view 0, key 1
    new[1, 0, 0] = float("inf")  # view 1, key 0
    new[1, 2] = -float("inf")  # view 1, key 2
    queue.enqueue(new)  # slots 0, 1, 2
    assert torch.isfinite(queue.keys).all()
    torch.testing.assert_close(slot_keys(queue, [0, 2])[0], new[0, [0, 2]])
    torch.testing.assert_close(slot_keys(queue, [1])[0], old[0, 1:2])
    torch.testing.assert_close(slot_keys(queue, [1])[1], new[1, 1:2])
    torch.testing.assert_close(slot_keys(queue, [0, 2])[1], old[1, [0, 2]])
    assert queue.ptr == 3 and queue.num_filled == 4  # the slots were used all the same


def test_a_non_finite_key_in_an_unwritten_slot_never_makes_a_random_vector_real() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=8)
    new = keys(3)
    new[:, 1] = float("nan")
    queue.enqueue(new)
    torch.testing.assert_close(queue.filled(), new[:, [0, 2]].reshape(-1, DIM))


def test_recent_returns_the_last_keys_written_per_view_in_order() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=5)
    assert queue.recent(3).shape == (0, DIM)
    a, b, c = keys(2), keys(2, offset=100), keys(2, offset=200)
    queue.enqueue(a)
    torch.testing.assert_close(queue.recent(3), a.reshape(-1, DIM))  # only 2 real so far
    queue.enqueue(b)
    queue.enqueue(c)  # slots 4, 0: wrapped
    history = torch.cat([a, b, c], dim=1)  # (V, 6, D), oldest first
    torch.testing.assert_close(queue.recent(3), history[:, -3:].reshape(-1, DIM))
    torch.testing.assert_close(queue.recent(5), history[:, -5:].reshape(-1, DIM))
    torch.testing.assert_close(queue.recent(100), history[:, -5:].reshape(-1, DIM))
    assert queue.recent(0).shape == (0, DIM)


def test_state_dict_round_trip_restores_keys_pointer_and_fill() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=8)
    queue.enqueue(keys(5))
    state = queue.state_dict()
    assert {"keys", "real", "_extra_state"} <= set(state)
    restored = KeyQueue(num_views=2, dim=DIM, size=8)
    restored.load_state_dict(state)
    assert (restored.ptr, restored.num_filled) == (5, 5)
    assert torch.equal(restored.keys, queue.keys) and torch.equal(restored.real, queue.real)
    # both continue identically, through the wrap-around
    for q in (queue, restored):
        q.enqueue(keys(6, offset=300))
    assert torch.equal(restored.keys, queue.keys) and torch.equal(restored.real, queue.real)
    assert (restored.ptr, restored.num_filled) == (queue.ptr, queue.num_filled) == (3, 8)
    torch.testing.assert_close(restored.recent(4), queue.recent(4))


def test_a_half_precision_queue_stores_float32_keys_rounded() -> None:
    queue = KeyQueue(num_views=2, dim=DIM, size=4).half()
    new = keys(2)
    queue.enqueue(new)
    assert queue.keys.dtype == torch.float16 and queue.real.dtype == torch.bool
    assert torch.equal(slot_keys(queue, [0, 1]), new.half())
