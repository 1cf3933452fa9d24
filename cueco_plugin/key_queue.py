"""MoCo's queue of past keys, one per view, with host-side write pointer and fill count.

The keys live in a buffer of shape (V, D, Q), the layout solo-learn's ``mocov2plus_loss_func``
takes (``queue[v]`` is (D, Q)). The write pointer and the number of slots already holding real
keys are plain Python ints, so enqueueing never reads a tensor on the host (no device sync), and
they are saved with the module's ``state_dict`` through ``get_extra_state``; a resumed run
continues with the same queue.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class KeyQueue(nn.Module):
    """FIFO queue of L2-normalised keys per view, initialised with random unit vectors.

    Args:
        num_views: V, number of views (2 for CueCo / MoCo V2+).
        dim: D, key dimension.
        size: Q, number of keys kept per view.
    """

    queue: torch.Tensor

    def __init__(self, num_views: int, dim: int, size: int) -> None:
        super().__init__()
        for name, value in (("num_views", num_views), ("dim", dim), ("size", size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.num_views = num_views
        self.dim = dim
        self.size = size
        # random negatives until real keys arrive, as MoCo does; never used to seed clusters
        self.register_buffer("queue", F.normalize(torch.randn(num_views, dim, size), dim=1))
        self.ptr = 0
        self.num_filled = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"ptr": self.ptr, "num_filled": self.num_filled}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.ptr = int(state["ptr"])
        self.num_filled = int(state["num_filled"])

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Writes keys at the pointer, overwriting the oldest ones (wrapping around).

        Args:
            keys: (V, N, D) with N <= Q, e.g. the gathered keys of every view.
        """
        if keys.dim() != 3 or keys.shape[0] != self.num_views or keys.shape[2] != self.dim:
            raise ValueError(
                f"keys must have shape ({self.num_views}, N, {self.dim}), got {tuple(keys.shape)}"
            )
        n = keys.shape[1]
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} keys per view into a queue of size {self.size}")
        cols = keys.detach().transpose(1, 2).to(self.queue.dtype)
        first = min(n, self.size - self.ptr)
        self.queue[:, :, self.ptr : self.ptr + first] = cols[:, :, :first]
        if first < n:
            self.queue[:, :, : n - first] = cols[:, :, first:]
        self.ptr = (self.ptr + n) % self.size
        self.num_filled = min(self.num_filled + n, self.size)

    def filled_keys(self) -> torch.Tensor:
        """The real keys held so far, all views stacked: (V * num_filled, D).

        Slots are filled in order from 0, so until the queue is full the real keys are the
        prefix ``[0, num_filled)``; the random initial vectors are never returned.
        """
        return self.queue[:, :, : self.num_filled].permute(0, 2, 1).reshape(-1, self.dim)

    def extra_repr(self) -> str:
        return f"num_views={self.num_views}, dim={self.dim}, size={self.size}"
