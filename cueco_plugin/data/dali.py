"""solo-learn's DALI pretraining data module on the model's device, able to build CPU pipelines on
a host without CUDA.

solo-learn's ``PretrainDALIDataModule.setup`` builds its pipeline with
``device_id=trainer.local_rank``. Two things go wrong with that:

- DALI takes any integer ``device_id`` as a request for a CUDA context, so ``dali.device: cpu``
  fails on a host without a GPU driver ("You are trying to create a GPU DALI pipeline while CUDA
  is not available ... set device_id = None");
- the local rank is not the model's GPU when the devices do not start at 0 (``devices: [1]``):
  DALI's outputs land on ``cuda:0``, the model and solo-learn's label lookup on ``cuda:1``.

:func:`pipeline_device_id` chooses the ``device_id`` from where the model is (:func:`model_device`,
the Trainer's root device): the model's CUDA device, or ``None`` (a CPU-only pipeline) for a model
on the CPU. :class:`CPUCapablePretrainDALIDataModule` changes that one argument and nothing else:
its ``setup`` is solo-learn's ``setup``, run while solo-learn's ``PretrainPipelineBuilder`` is a
subclass whose ``pipeline(...)`` call passes that ``device_id``. The builder still receives the
local rank, so pipeline seeds (``12 + local rank``), shards and outputs are solo-learn's.

Batches: ``[indexes (B,), [view (B, 3, H, W) float32] * n_crops, targets (B,)]``, as solo-learn's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

try:
    import solo.data.dali_dataloader as solo_dali
except ImportError as _err:  # pragma: no cover - exercised only without DALI/solo-learn
    raise ImportError(
        "cueco_plugin.data.dali needs solo-learn (see README.md, 'Install') and NVIDIA DALI: "
        "pip install nvidia-dali-cuda120 (CUDA 12.x driver; its CPU operators also run on hosts "
        "without a GPU) or nvidia-dali-cuda130 (CUDA 13.x)"
    ) from _err

from solo.data.dali_dataloader import PretrainDALIDataModule, PretrainPipelineBuilder


def model_device(trainer: Any | None) -> torch.device:
    """Where the model trains: the Trainer's root device (``cuda:1`` for ``devices: [1]``; under
    DDP the device of this process's local rank), the CPU without a Trainer."""
    if trainer is None:
        return torch.device("cpu")
    return torch.device(trainer.strategy.root_device)


def pipeline_device_id(dali_device: str, model: torch.device) -> int | None:
    """The ``device_id`` a DALI pipeline is built with, for a model on ``model``: the model's CUDA
    device index (a ``cpu`` pipeline then uses it only for its pinned host buffers), or ``None``
    (a CPU-only pipeline, no CUDA context) for a model on the CPU.

    Raises:
        ValueError: ``dali_device`` other than ``'gpu'`` / ``'cpu'``, or ``'gpu'`` for a model
            that is not on a CUDA device.
    """
    if dali_device not in ("gpu", "cpu"):
        raise ValueError(f"dali.device={dali_device!r}: allowed values are ['gpu', 'cpu']")
    if model.type == "cuda":
        return torch.cuda.current_device() if model.index is None else model.index
    if dali_device == "gpu":
        raise ValueError(
            f"dali.device='gpu' needs the model on a CUDA device, and it is on {model}: use "
            "accelerator: gpu, or dali.device: cpu"
        )
    return None


def batch_device(dali_device: str, model: torch.device) -> torch.device:
    """Where DALI's batches (and solo-learn's label lookup) are: on the model's device for
    ``dali.device: gpu`` (the device :func:`pipeline_device_id` names), else on the CPU."""
    return model if dali_device == "gpu" else torch.device("cpu")


def _builder_on(device_id: int | None) -> type[PretrainPipelineBuilder]:
    """solo-learn's builder, whose pipeline is built with ``device_id`` (not the local rank)."""

    class PipelineBuilderOnModelDevice(PretrainPipelineBuilder):
        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            return super().pipeline(*args, **{**kwargs, "device_id": device_id})

    return PipelineBuilderOnModelDevice


@contextmanager
def _pipelines_on(device_id: int | None) -> Iterator[None]:
    """Within the block, solo-learn's DALI module builds its pipelines with ``device_id``."""
    solo_dali.PretrainPipelineBuilder = _builder_on(device_id)
    try:
        yield
    finally:
        solo_dali.PretrainPipelineBuilder = PretrainPipelineBuilder


class CPUCapablePretrainDALIDataModule(PretrainDALIDataModule):
    """solo-learn's ``PretrainDALIDataModule`` (same arguments), its pipelines on the model's
    device (CPU-only for a model on the CPU: :func:`pipeline_device_id`), with a validation loader
    that may be ``None``."""

    _assigned_val_loader: Callable[[], Any] = staticmethod(lambda: None)

    @property
    def val_dataloader(self) -> Callable[[], Any]:
        """What ``main_pretrain.py`` assigns (``module.val_dataloader = lambda: val_loader``),
        with ``[]`` (no validation) for a ``None`` loader, which Lightning 2.1 rejects."""
        make_loader = self._assigned_val_loader
        return lambda: [] if (loader := make_loader()) is None else loader

    @val_dataloader.setter
    def val_dataloader(self, make_loader: Callable[[], Any]) -> None:
        self._assigned_val_loader = make_loader

    def setup(self, stage: str | None = None) -> None:
        with _pipelines_on(pipeline_device_id(self.dali_device, model_device(self.trainer))):
            super().setup(stage)
