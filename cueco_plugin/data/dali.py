"""solo-learn's DALI pretraining data module, able to build CPU pipelines on a host without CUDA.

solo-learn's ``PretrainDALIDataModule.setup`` builds its pipeline with
``device_id=trainer.local_rank``; DALI takes any integer ``device_id`` as a request for a CUDA
context, so ``dali.device: cpu`` fails on a host without a GPU driver ("You are trying to create a
GPU DALI pipeline while CUDA is not available ... set device_id = None"). Everything else in
solo-learn's DALI path (file reader, CPU decoder, augmentations, ``PretrainWrapper``) runs on the
CPU as it is.

:class:`CPUCapablePretrainDALIDataModule` changes that one argument and nothing else: its
``setup`` is solo-learn's ``setup``, run while solo-learn's ``PretrainPipelineBuilder`` is a
subclass whose ``pipeline(...)`` call passes ``device_id=None``. The builder still receives the
local rank, so pipeline seeds (``12 + local rank``), shards and outputs are solo-learn's. With CUDA
present, or with ``dali.device: gpu``, the module is solo-learn's module unchanged.

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


def pipeline_device_id(dali_device: str, local_rank: int) -> int | None:
    """The ``device_id`` a DALI pipeline is built with: ``None`` (a CPU-only pipeline, no CUDA
    context) for ``dali_device='cpu'`` on a host without CUDA, else the local rank (solo's)."""
    if dali_device == "cpu" and not torch.cuda.is_available():
        return None
    return local_rank


class _CPUOnlyPipelineBuilder(PretrainPipelineBuilder):
    """solo-learn's builder; its pipeline is built without a CUDA device (``device_id=None``)."""

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return super().pipeline(*args, **{**kwargs, "device_id": None})


@contextmanager
def _cpu_only_pipelines() -> Iterator[None]:
    """Within the block, solo-learn's DALI module builds its pipelines with ``device_id=None``."""
    solo_dali.PretrainPipelineBuilder = _CPUOnlyPipelineBuilder
    try:
        yield
    finally:
        solo_dali.PretrainPipelineBuilder = PretrainPipelineBuilder


class CPUCapablePretrainDALIDataModule(PretrainDALIDataModule):
    """solo-learn's ``PretrainDALIDataModule`` (same arguments), with CPU-only DALI pipelines where
    CUDA is absent and a validation loader that may be ``None``."""

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
        if pipeline_device_id(self.dali_device, 0) is None:
            with _cpu_only_pipelines():
                super().setup(stage)
        else:
            super().setup(stage)
