"""The MoCo key queue: FIFO writes, fill tracking (never seed from random slots), checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cueco_plugin.key_queue import KeyQueue


def keys(n: int, dim: int = 4, views: int = 2, offset: int = 0) -> torch.Tensor:
    """(V, N, D) distinguishable unit keys."""
    x = torch.arange(offset, offset + views * n * dim, dtype=torch.float32) + 1.0
    return F.normalize(x.reshape(views, n, dim), dim=-1)


def test_filled_keys_are_only_the_real_keys_enqueued_so_far() -> None:
    queue = KeyQueue(num_views=2, dim=4, size=8)
    assert queue.filled_keys().shape == (0, 4)  # the random initial vectors are never returned
    first = keys(3)
    queue.enqueue(first)
    assert queue.num_filled == 3 and queue.ptr == 3
    torch.testing.assert_close(queue.filled_keys(), first.reshape(-1, 4))
    second = keys(3, offset=100)
    queue.enqueue(second)
    expected = torch.cat([first, second], dim=1).reshape(-1, 4)
    torch.testing.assert_close(queue.filled_keys(), expected)


def test_enqueue_overwrites_the_oldest_keys_and_wraps_around() -> None:
    queue = KeyQueue(num_views=2, dim=4, size=4)
    queue.enqueue(keys(3))
    newer = keys(3, offset=100)
    queue.enqueue(newer)  # slots 3, 0, 1
    assert queue.ptr == 2 and queue.num_filled == 4
    # layout (V, D, Q) as solo-learn's mocov2plus_loss_func expects
    torch.testing.assert_close(queue.queue[:, :, 3], newer[:, 0])
    torch.testing.assert_close(queue.queue[:, :, 0], newer[:, 1])
    torch.testing.assert_close(queue.queue[:, :, 1], newer[:, 2])
    torch.testing.assert_close(queue.queue[:, :, 2], keys(3)[:, 2])


def test_state_dict_round_trip_restores_keys_pointer_and_fill() -> None:
    queue = KeyQueue(num_views=2, dim=4, size=8)
    queue.enqueue(keys(5))
    restored = KeyQueue(num_views=2, dim=4, size=8)
    restored.load_state_dict(queue.state_dict())
    assert (restored.ptr, restored.num_filled) == (5, 5)
    torch.testing.assert_close(restored.queue, queue.queue)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(3, 2, 4), r"keys must have shape \(2, N, 4\)"),
        (torch.zeros(2, 2, 5), r"keys must have shape \(2, N, 4\)"),
        (torch.zeros(2, 9, 4), "cannot enqueue 9 keys per view into a queue of size 8"),
    ],
)
def test_bad_keys_raise_value_error(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyQueue(num_views=2, dim=4, size=8).enqueue(bad)


def test_bad_sizes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="size must be an integer >= 1, got 0"):
        KeyQueue(num_views=2, dim=4, size=0)
