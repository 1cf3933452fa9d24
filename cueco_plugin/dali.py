"""A solo-learn DALI pretraining data module that also runs on a host without CUDA.

Why this exists: solo-learn's ``PretrainDALIDataModule.setup`` always builds its DALI pipeline
with ``device_id=trainer.local_rank``. DALI treats any integer ``device_id`` as a request for a
CUDA context, so with ``dali.device: cpu`` on a machine without a GPU driver, ``pipeline.build()``
fails with "You are trying to create a GPU DALI pipeline while CUDA is not available ... set
``device_id = None``". Everything else in solo-learn's DALI code (the file reader, the CPU image
decoder, the augmentation operators that ``build_transform_pipeline_dali(..., dali_device="cpu")``
creates, the ``PretrainWrapper`` iterator) already works on the CPU.

The extension point is :class:`CPUCapablePretrainDALIDataModule`, a subclass that changes only
that one argument: :func:`pipeline_device_id` returns ``None`` when ``dali_device == "cpu"`` and
CUDA is unavailable, otherwise the local rank exactly as solo-learn does. ``setup`` repeats
solo-learn's ``setup`` (which has no hook for the device id) with that value and reuses solo-learn's
``PretrainPipelineBuilder`` and ``PretrainWrapper`` unchanged, so GPU behaviour is solo-learn's.
Nothing in solo-learn is edited or patched. Stock ``main_pretrain.py`` constructs solo-learn's
class itself, hence the entry point ``python -m cueco_plugin.pretrain`` (see
:mod:`cueco_plugin.pretrain`), which uses this module for ``data.format: dali``.

It also works without a Lightning trainer (rank 0 of 1), which the loader benchmark uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from nvidia.dali.plugin.pytorch import LastBatchPolicy
    from solo.data.dali_dataloader import (
        PretrainDALIDataModule,
        PretrainPipelineBuilder,
        PretrainWrapper,
        build_transform_pipeline_dali,
    )
except ImportError as _err:  # pragma: no cover - exercised only without DALI/solo-learn
    raise ImportError(
        "cueco_plugin.dali needs solo-learn (see README.md, 'Install') and NVIDIA DALI: "
        "pip install nvidia-dali-cuda120 (CUDA 12.x driver; the CPU path works with this wheel on "
        "hosts without a GPU) or nvidia-dali-cuda130 (CUDA 13.x)"
    ) from _err

from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation

DALI_DEVICES = ("gpu", "cpu")


def pipeline_device_id(dali_device: str, local_rank: int) -> int | None:
    """The ``device_id`` a DALI pipeline must be built with.

    ``None`` (a CPU-only pipeline, no CUDA context) when the pipeline runs on the CPU and CUDA is
    unavailable; otherwise the local rank, as solo-learn passes it."""
    if dali_device == "cpu" and not torch.cuda.is_available():
        return None
    return local_rank


def check_dali_device(dali_device: str) -> None:
    """ValueError for a DALI device that cannot run here, before any pipeline is built."""
    if dali_device not in DALI_DEVICES:
        raise ValueError(f"dali.device={dali_device!r}: allowed values are {list(DALI_DEVICES)}")
    if dali_device == "gpu" and not torch.cuda.is_available():
        raise ValueError(
            "dali.device='gpu' needs CUDA, which is not available on this host; "
            "set dali.device=cpu (decoding and augmentation on the CPU)"
        )


def build_dali_transforms(
    dataset: str, augmentations: Sequence[Any], dali_device: str
) -> FullTransformPipeline:
    """solo-learn's DALI augmentation pipelines for a list of augmentation configs.

    Same construction as ``main_pretrain.py``: one ``NCropAugmentation`` per entry of
    ``cfg.augmentations``, operators placed on ``dali_device``."""
    check_dali_device(dali_device)
    return FullTransformPipeline(
        [
            NCropAugmentation(
                build_transform_pipeline_dali(dataset, aug_cfg, dali_device=dali_device),
                aug_cfg.num_crops,
            )
            for aug_cfg in augmentations
        ]
    )


class CPUCapablePretrainDALIDataModule(PretrainDALIDataModule):
    """solo-learn's ``PretrainDALIDataModule`` with a CPU-only DALI pipeline where CUDA is absent.

    Arguments are solo-learn's (``dataset``, ``train_data_path``, ``transforms``,
    ``num_large_crops``, ``num_small_crops``, ``batch_size``, ``num_workers`` = DALI threads,
    ``no_labels``, ``data_fraction``, ``dali_device``, ``encode_indexes_into_labels``), plus
    ``val_loader``: the (non-DALI) validation loader to return from ``val_dataloader``, which
    ``main_pretrain.py`` sets by assigning a lambda instead.

    Batches are solo-learn's ``[indexes (B,), [view (B, 3, H, W) float32] * n_crops, targets (B,)]``
    on ``cuda:<rank>`` for ``dali_device='gpu'`` and on the CPU for ``'cpu'``.
    """

    def __init__(
        self,
        dataset: str,
        train_data_path: str | Path,
        transforms: Callable,
        num_large_crops: int,
        num_small_crops: int,
        batch_size: int,
        num_workers: int = 4,
        no_labels: bool = False,
        data_fraction: float = -1.0,
        dali_device: str = "gpu",
        encode_indexes_into_labels: bool = False,
        val_loader: Any = None,
    ) -> None:
        check_dali_device(dali_device)
        if not Path(train_data_path).is_dir():
            raise ValueError(f"data.train_path={str(train_data_path)!r} is not a directory")
        if batch_size <= 0 or num_workers <= 0:
            raise ValueError(
                f"batch_size={batch_size}, num_workers={num_workers}: DALI needs both >= 1 "
                "(num_workers is the number of DALI threads)"
            )
        super().__init__(
            dataset=dataset,
            train_data_path=train_data_path,
            transforms=transforms,
            num_large_crops=num_large_crops,
            num_small_crops=num_small_crops,
            batch_size=batch_size,
            num_workers=num_workers,
            no_labels=no_labels,
            data_fraction=data_fraction,
            dali_device=dali_device,
            encode_indexes_into_labels=encode_indexes_into_labels,
        )
        self._val_loader = val_loader

    def _ranks(self) -> tuple[int, int, int]:
        """(local rank, global rank, world size); rank 0 of 1 without a trainer."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 1
        return trainer.local_rank, trainer.global_rank, trainer.world_size

    def setup(self, stage: str | None = None) -> None:
        """solo-learn's setup, with ``device_id`` from :func:`pipeline_device_id`."""
        self.device_id, self.shard_id, self.num_shards = self._ranks()
        if torch.cuda.is_available() and self.dali_device == "gpu":
            self.device = torch.device(f"cuda:{torch.cuda.current_device()}")
        else:
            self.device = torch.device("cpu")

        builder = PretrainPipelineBuilder(
            self.train_data_path,
            batch_size=self.batch_size,
            transforms=self.transforms,
            device=self.dali_device,
            device_id=self.device_id,  # also seeds the pipeline (seed + device_id), as in solo
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            num_threads=self.num_workers,
            no_labels=self.no_labels,
            encode_indexes_into_labels=self.encode_indexes_into_labels,
            data_fraction=self.data_fraction,
        )
        device_id = pipeline_device_id(self.dali_device, self.device_id)
        pipeline = builder.pipeline(
            batch_size=builder.batch_size,
            num_threads=builder.num_threads,
            device_id=device_id,
            seed=builder.seed,
        )
        pipeline.build()
        if self.shard_id == 0:  # printed: Hydra's disabled job logging hides logging.info
            print(
                f"{type(self).__name__}: DALI pipeline on {self.dali_device} "
                f"(device_id={device_id}), {pipeline.epoch_size('Reader')} images in "
                f"{self.train_data_path}, "
                f"batch {self.batch_size} per process, {self.num_workers} DALI threads",
                flush=True,
            )

        output_map = (
            [f"large{i}" for i in range(self.num_large_crops)]
            + [f"small{i}" for i in range(self.num_small_crops)]
            + ["label"]
        )
        self.train_loader = PretrainWrapper(
            model_batch_size=self.batch_size,
            model_rank=self.device_id,
            model_device=self.device,
            dataset_size=pipeline.epoch_size("Reader"),
            conversion_map=builder.conversion_map if self.encode_indexes_into_labels else None,
            pipelines=pipeline,
            output_map=output_map,
            reader_name="Reader",
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=True,
        )

    def val_dataloader(self) -> Any:
        """The validation loader given at construction; ``[]`` (no validation) without one,
        since Lightning rejects ``None`` from a data module's ``val_dataloader``."""
        return [] if self._val_loader is None else self._val_loader


def build_dali_datamodule(cfg: Any, val_loader: Any = None) -> CPUCapablePretrainDALIDataModule:
    """The data module for a parsed solo-learn config (after ``solo.args.pretrain.parse_cfg``),
    built from the same keys ``main_pretrain.py`` reads."""
    transforms = build_dali_transforms(cfg.data.dataset, cfg.augmentations, cfg.dali.device)
    return CPUCapablePretrainDALIDataModule(
        dataset=cfg.data.dataset,
        train_data_path=cfg.data.train_path,
        transforms=transforms,
        num_large_crops=cfg.data.num_large_crops,
        num_small_crops=cfg.data.num_small_crops,
        num_workers=cfg.data.num_workers,
        batch_size=cfg.optimizer.batch_size,
        no_labels=cfg.data.no_labels,
        data_fraction=cfg.data.fraction,
        dali_device=cfg.dali.device,
        encode_indexes_into_labels=cfg.dali.encode_indexes_into_labels,
        val_loader=val_loader,
    )
