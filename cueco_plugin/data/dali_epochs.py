"""Lightning's epochs over DALI iterators, which cannot be reset mid-epoch.

A DALI iterator asked to reset before its epoch's end logs "does not support resetting while
epoch is not finished. Ignoring" (DALI's ``base_iterator.py``) and goes on with the old epoch. So
iterated directly by Lightning, an epoch cut short (``limit_train_batches``, a mid-epoch resume)
leaves its rest to the next epoch, and DALI's epoch counter, which restarts at 0 with every
pipeline, is not the run's. :class:`EpochAlignedLoader` serves the epoch Lightning's fit loop is
in (:func:`lightning_epoch_start`), each pass from where it should start, building a new
pipeline only when the current one does not stand there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple


class EpochStart(NamedTuple):
    """Where a pass over the training data starts: ``epoch``, its first ``batch`` to serve (> 0
    only when a run resumes mid-epoch) and the number of ``batches`` each epoch has (Lightning's
    ``num_training_batches``: fewer than the loader's length under ``limit_train_batches``)."""

    epoch: int
    batch: int
    batches: int


def batches_per_epoch(steps: int, limit: int | float) -> int:
    """Lightning's ``num_training_batches`` for a loader of ``steps`` batches under
    ``limit_train_batches=limit`` (its rule: an int caps the count, a float is the fraction of
    ``steps``, rounded down); at least 1."""
    count = min(steps, limit) if isinstance(limit, int) else int(steps * limit)
    return max(1, count)


def lightning_epoch_start(trainer: Any, steps: int) -> EpochStart:
    """Where Lightning's fit loop is: the epoch it trains (``epoch_progress.current.processed``,
    which it gives samplers' ``set_epoch``; ``current_epoch`` lags it by one while a run resumed
    from an end-of-epoch checkpoint sets up), the batches of that epoch already trained (restored
    from a mid-epoch checkpoint, else 0), and its batches per epoch (:func:`batches_per_epoch`)."""
    loop = trainer.fit_loop
    done = loop.epoch_loop.batch_progress.current.completed if loop.epoch_loop.restarting else 0
    batches = batches_per_epoch(steps, trainer.limit_train_batches)
    return EpochStart(loop.epoch_progress.current.processed, done, batches)


class EpochAlignedLoader:
    """The training loader Lightning iterates, over DALI iterators: ``len()`` is the full batches
    per epoch of this rank; each ``iter()`` is one pass, over the epoch ``position(steps)`` names
    (an :class:`EpochStart`), from its ``batch``, up to its ``batches``, with the batches of the
    iterator ``make_wrapper`` builds (solo-learn's ``PretrainWrapper`` for DALI CIFAR).

    A DALI iterator cannot be reset mid-epoch (it logs "does not support resetting while epoch is
    not finished. Ignoring" and goes on with the old epoch), so each pipeline serves epochs whole
    as its source defines them (``make_wrapper(start)``: epochs from ``start.epoch``, the first
    from ``start.batch``, each ``start.batches`` long), and this loader keeps the pipeline while a
    pass starts where it stands: the next epoch's first batch after a finished epoch. Any other
    start (the first pass, a resume mid-epoch, an epoch left unfinished) builds a new pipeline
    there, and the old one is dropped.

    Args:
        make_wrapper: builds the pipeline and its ``PretrainWrapper`` for a start.
        steps: full batches per epoch of this rank.
        position: where each pass starts, given ``steps``; default: epoch 0, then each pass the
            epoch after the last one served, from batch 0, every batch.
    """

    #: it serves the rest of an epoch itself on a mid-epoch resume (cueco_plugin.runs)
    resumes_mid_epoch = True

    def __init__(
        self,
        make_wrapper: Callable[[EpochStart], Iterator[Any]],
        steps: int,
        position: Callable[[int], EpochStart] | None = None,
    ) -> None:
        self._make, self.steps = make_wrapper, steps
        self._position = position or self._after_last_epoch
        self._wrapper: Iterator[Any] | None = None
        self._next = (0, 0)  # (epoch, batch) the pipeline serves next
        self._batches = steps  # batches per epoch of the pipeline
        self._pass: object | None = None
        self.builds = 0  # pipelines built so far

    def __len__(self) -> int:
        return self.steps

    def _after_last_epoch(self, steps: int) -> EpochStart:
        epoch, batch = self._next
        return EpochStart(epoch + 1 if self._wrapper is not None and batch > 0 else epoch, 0, steps)

    def _close_finished_epoch(self) -> None:
        """After a pass that took its epoch's last batch DALI's end of epoch is still unread:
        reading it moves the pipeline to the next epoch's first batch."""
        if self._wrapper is None or self._next[1] < self._batches:
            return
        try:
            next(self._wrapper)
        except StopIteration:
            self._next = (self._next[0] + 1, 0)
        else:
            raise RuntimeError(f"DALI served a batch past the end of epoch {self._next[0]}")

    def __iter__(self) -> Iterator[list[Any]]:
        start = self._position(self.steps)
        if start.batch >= start.batches:  # the epoch was trained to its end
            start = EpochStart(start.epoch + 1, 0, start.batches)
        self._close_finished_epoch()
        if (
            self._wrapper is None
            or self._next != (start.epoch, start.batch)
            or self._batches != start.batches
        ):
            self._wrapper = None  # the old pipeline goes before the new one is built
            self._wrapper = self._make(start)
            self._next, self._batches = (start.epoch, start.batch), start.batches
            self.builds += 1
        self._pass = token = object()
        return self._serve(token)

    def _serve(self, token: object) -> Iterator[list[Any]]:
        epoch, batch = self._next
        while batch < self._batches:
            if self._pass is not token:
                raise RuntimeError("a pass over the DALI loader went on after another began")
            out = next(self._wrapper)
            batch += 1
            self._next = (epoch, batch)
            yield out
        if self._pass is token:
            self._close_finished_epoch()
