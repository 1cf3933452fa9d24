"""Random bits for HCSC's negative sampling, reproducible across interruptions.

:class:`NegativeSampler` draws from a ``torch.Generator`` on the tensors' device that is seeded
afresh for every draw from ``(seed, rank, number of draws so far)``. Its only state is that count,
a host int saved in checkpoints through the module's extra state: a resumed run draws the same
bits as an uninterrupted one, on every rank of a DDP run (all ranks make the same number of
draws, so rank 0's checkpoint holds every rank's count; the rank is mixed in at draw time), and
nothing is read from or written to the device to save or restore it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

BITS = 15  # resolution of a drop probability: 2^-15
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit ints that mixes every input bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(seed: int, rank: int, draw: int) -> int:
    """The generator seed of draw number ``draw`` on ``rank``: a hash of (seed, rank) plus the
    draw count, so that the low 32 bits (all that torch's CPU Mersenne Twister uses) differ for
    2^32 consecutive draws. In [0, 2^63)."""
    base = _splitmix64(_splitmix64(seed & _MASK64) ^ (rank & _MASK64))
    return (base + draw) & ((1 << 63) - 1)


def uniform_bits(
    rows: int,
    cols: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    words: torch.Tensor | None = None,
) -> torch.Tensor:
    """(rows, cols) int16 draws, independent and uniform on [0, 2^15).

    Four draws per 64-bit random word (``random_`` over the full int64 range, one kernel), each
    16-bit half masked to 15 bits: half the random numbers and a quarter of the memory of
    ``torch.rand``.

    Args:
        rows, cols: the shape. device: where to draw.
        generator: a generator on ``device``; None: torch's default one there.
        words: an int64 buffer of at least ``ceil(rows * cols / 4)`` elements on ``device`` to
            draw into (reused across calls to save the allocation); None: a new one.

    Returns:
        A (rows, cols) view of ``words`` (valid until ``words`` is drawn into again).
    """
    n = rows * cols
    needed = (n + 3) // 4
    if words is None:
        words = torch.empty(needed, dtype=torch.int64, device=device)
    words = words[:needed].random_(-(2**63), None, generator=generator)
    return words.view(torch.int16)[:n].view(rows, cols).bitwise_and_((1 << BITS) - 1)


class NegativeSampler(nn.Module):
    """HCSC's random draws: :func:`uniform_bits` from a generator reseeded for every draw with
    :func:`stream_seed` ``(seed, rank, draws)``; ``draws`` (and ``seed``) are the checkpointed
    extra state. Keeps one int64 buffer per device for the draws (not state: a scratch space),
    so that each draw allocates nothing.

    Args:
        seed: the run's seed (``cfg.seed``).
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.draws = 0
        self._words: dict[torch.device, torch.Tensor] = {}

    def get_extra_state(self) -> dict[str, int]:
        return {"seed": self.seed, "draws": self.draws}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.seed, self.draws = int(state["seed"]), int(state["draws"])

    def bits(self, rows: int, cols: int, device: torch.device | str, rank: int = 0) -> torch.Tensor:
        """The next (rows, cols) int16 draws, uniform on [0, 2^15), for process ``rank``; a
        view of this sampler's buffer, valid until its next call. No host-device sync."""
        device = torch.device(device)
        needed = (rows * cols + 3) // 4
        words = self._words.get(device)
        if words is None or words.numel() < needed:
            words = self._words[device] = torch.empty(needed, dtype=torch.int64, device=device)
        generator = torch.Generator(device=device)
        generator.manual_seed(stream_seed(self.seed, rank, self.draws))
        self.draws += 1
        return uniform_bits(rows, cols, device, generator, words)

    def extra_repr(self) -> str:
        return f"seed={self.seed}, draws={self.draws}"
