"""CIFAR-10/100 through NVIDIA DALI for any solo-learn method, from in-memory uint8 arrays.

solo-learn's DALI path reads image files (``data.format: dali`` is refused for CIFAR by its
``parse_cfg``). Here the CIFAR arrays (:mod:`cueco_plugin.data.cifar_arrays`: ``.npz`` files or
torchvision's CIFAR files) stay in host memory; a DALI ``external_source`` callback,
:class:`EpochShards`, hands the pipeline each batch's images and sample indexes; the views are made
by solo-learn's own DALI augmentations (``build_transform_pipeline_dali``: random resized crop,
colour jitter, grayscale, Gaussian blur, solarisation, flip, normalisation, each drawing its
parameters per sample) on ``dali.device``. solo-learn's ``PretrainWrapper`` turns the outputs into
its batches.

- ``dali.device: gpu`` with CUDA (:func:`arrays_device` ``"gpu"``): the training images are copied
  to the GPU once, as one uint8 torch tensor (150 MiB for CIFAR's 50,000 images);
  :class:`DeviceEpochShards` draws each batch's indexes on the host (the same
  :class:`EpochShards` logic) and gathers the batch on the GPU with torch, on a CUDA stream of its
  own that the GPU ``external_source`` is given (``cuda_stream``), so DALI's copy of the batch is
  ordered after the gather by construction (see that class for the stream and memory rules).
- ``dali.device: cpu`` (or ``arrays="host"``): the arrays stay in host memory and the callback
  returns ``images[indexes]`` as NumPy (on ``gpu`` DALI then copies it, 3 KiB per image).

- Each epoch a fresh permutation of the dataset, drawn from ``(seed, epoch)``, identical on every
  rank; rank ``r`` of ``R`` serves the ``r``-th of ``R`` equal slices of it, in full batches: the
  ranks together cover the epoch once (the last ``N mod R`` samples of the permutation and each
  slice's last partial batch sit out that epoch, as with ``DistributedSampler`` and
  ``drop_last``).
- Seeded: the permutation by ``seed``; the augmentations by ``seed + rank``. The default seed is
  the one ``seed_everything(cfg.seed)`` in ``main_pretrain.py`` sets in every process
  (``PL_GLOBAL_SEED``), else 12 (solo-learn's DALI seed).
- Batches are solo-learn's: ``[indexes (B,) int64, [view (B, 3, H, W) float32] * n_crops,
  labels (B,) int64]`` with the true sample indexes and labels (``encode_indexes_into_labels``
  is implied), on the training GPU for ``dali.device: gpu``, else on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from lightning.pytorch.utilities import rank_zero_info
from nvidia.dali import pipeline_def
from nvidia.dali.plugin.pytorch import LastBatchPolicy
from solo.data.dali_dataloader import PretrainWrapper

from cueco_plugin.data.cifar_arrays import CIFAR_CLASSES, load_cifar_arrays
from cueco_plugin.data.dali import CPUCapablePretrainDALIDataModule, pipeline_device_id


class EpochShards:
    """DALI ``external_source`` callback (``batch=True, batch_info=True``): this rank's batches,
    ``(images (B, H, W, 3) uint8, indexes (B,) int64)``; ``StopIteration`` ends each epoch.

    Args:
        images: the whole training set, (N, H, W, 3) uint8.
        batch_size: B, per rank.
        shard_id, num_shards: this rank and the number of ranks.
        seed: seeds the per-epoch permutation (the same on every rank).
    """

    def __init__(
        self, images: np.ndarray, batch_size: int, shard_id: int, num_shards: int, seed: int
    ) -> None:
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.shard_size = len(images) // num_shards
        self.start = shard_id * self.shard_size
        self.steps = self.shard_size // batch_size
        if self.steps == 0:
            raise ValueError(
                f"optimizer.batch_size={batch_size}: larger than the {self.shard_size} images per "
                f"process ({len(images)} images over {num_shards} processes)"
            )
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def epoch_indexes(self, epoch: int) -> np.ndarray:
        """(steps * B,) the sample indexes this rank serves in ``epoch``, in order."""
        if epoch != self._epoch:
            order = np.random.default_rng((self.seed, epoch)).permutation(len(self.images))
            self._epoch = epoch
            self._order = order[self.start : self.start + self.steps * self.batch_size]
        return self._order

    def batch_slice(self, info: types.BatchInfo) -> slice:
        """This batch's positions in :meth:`epoch_indexes`; ``StopIteration`` past the last."""
        if info.iteration >= self.steps:
            raise StopIteration
        first = info.iteration * self.batch_size
        return slice(first, first + self.batch_size)

    def __call__(self, info: types.BatchInfo) -> tuple[np.ndarray, np.ndarray]:
        indexes = self.epoch_indexes(info.epoch_idx)[self.batch_slice(info)]
        return self.images[indexes], indexes


class DeviceEpochShards(EpochShards):
    """:class:`EpochShards` over images held as one torch tensor: each batch is gathered where
    the tensor lives (``index_select``), ``(images (B, H, W, 3) uint8, indexes (B,) int64)``, both
    torch tensors on that device. The indexes are drawn on the host exactly as in
    :class:`EpochShards` (same permutation, shards, epochs); each epoch's order goes to the device
    once (8 bytes per image), so a batch costs one gather kernel and no host-device copy.

    On a CUDA device everything runs on :attr:`stream`, a stream of this source's own, which the
    pipeline's GPU ``external_source`` is given as ``cuda_stream``. That makes it correct by
    construction, whichever thread DALI calls it from and whatever torch's current stream there:

    - DALI copies the returned batch (``no_copy=False``) into its own buffer with
      ``cudaMemcpyAsync`` on :attr:`stream` and records an event its operators wait on, so the copy
      runs after the gather and the augmentations after the copy;
    - the gathered tensors are allocated on :attr:`stream`; when the callback's result is dropped
      torch's caching allocator may hand their memory out again only to later work on that same
      stream, i.e. after DALI's copy: no reference has to be kept;
    - :attr:`stream` waits once for the upload of the images (made on the caller's stream), and
      the images' memory is recorded as used on :attr:`stream`, so it is not reused before the
      last gather when the source is dropped.

    Args:
        images: the whole training set, (N, H, W, 3) uint8 torch tensor, on the GPU (or the CPU,
            which takes the same code path without streams: how it is tested without a GPU).
        batch_size, shard_id, num_shards, seed: as :class:`EpochShards`.
    """

    def __init__(
        self, images: torch.Tensor, batch_size: int, shard_id: int, num_shards: int, seed: int
    ) -> None:
        super().__init__(images, batch_size, shard_id, num_shards, seed)  # type: ignore[arg-type]
        self.device = images.device
        self.stream: torch.cuda.Stream | None = None
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            images.record_stream(self.stream)  # its memory outlives the gathers reading it
        self._device_epoch, self._device_order = -1, torch.empty(0, dtype=torch.long)

    def _on_stream(self) -> contextlib.AbstractContextManager:
        return (
            torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        )

    def __call__(self, info: types.BatchInfo) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_slice(info)
        with self._on_stream():
            if info.epoch_idx != self._device_epoch:
                order = torch.from_numpy(self.epoch_indexes(info.epoch_idx))
                self._device_order = order.to(self.device, non_blocking=True)
                self._device_epoch = info.epoch_idx
            indexes = self._device_order[batch]
            return self.images.index_select(0, indexes), indexes


def arrays_device(dali_device: str, requested: str | None = None) -> str:
    """Where the training arrays are held: ``"gpu"`` (one CUDA copy, batches gathered there by
    :class:`DeviceEpochShards`) or ``"host"`` (:class:`EpochShards`). ``requested=None`` picks
    ``"gpu"`` for ``dali_device="gpu"`` when CUDA is available, else ``"host"``.

    Raises:
        ValueError: ``requested`` other than ``None`` / ``"gpu"`` / ``"host"``, or ``"gpu"``
            without CUDA or with ``dali_device="cpu"``.
    """
    if requested not in (None, "gpu", "host"):
        raise ValueError(f"arrays={requested!r}: allowed values are [None, 'gpu', 'host']")
    cuda = torch.cuda.is_available()
    if requested == "gpu" and not (dali_device == "gpu" and cuda):
        raise ValueError(
            f"arrays='gpu' needs dali.device='gpu' and CUDA, got dali.device={dali_device!r} "
            f"and torch.cuda.is_available()={cuda}"
        )
    if requested is None:
        return "gpu" if dali_device == "gpu" and cuda else "host"
    return requested


def make_source(
    images: np.ndarray,
    batch_size: int,
    shard_id: int,
    num_shards: int,
    seed: int,
    arrays: str,
    device_id: int | None,
) -> EpochShards:
    """The ``external_source`` callback for ``arrays`` (:func:`arrays_device`): the host arrays,
    or one copy of them on CUDA device ``device_id`` (made here, on torch's current stream)."""
    if arrays == "host":
        return EpochShards(images, batch_size, shard_id, num_shards, seed)
    device = torch.device("cuda", 0 if device_id is None else device_id)
    resident = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return DeviceEpochShards(resident, batch_size, shard_id, num_shards, seed)


@pipeline_def(enable_conditionals=True)
def cifar_pipeline(source: EpochShards, transforms: Callable, dali_device: str) -> tuple:
    """Views of each batch by ``transforms`` (solo-learn's DALI augmentations), then indexes.
    A source on a CUDA device feeds a GPU ``external_source`` on its own stream."""
    stream = getattr(source, "stream", None)
    # DALI asks torch for its current CUDA stream when a torch tensor comes without one, which
    # fails without CUDA: a torch source on the CPU (host-to-host copies) names the null stream
    host_stream = 0 if isinstance(source, DeviceEpochShards) else None
    images, indexes = fn.external_source(
        source=source,
        num_outputs=2,
        batch=True,
        batch_info=True,
        layout=["HWC", ""],
        dtype=[types.UINT8, types.INT64],
        ndim=[3, 0],
        device="gpu" if stream is not None else "cpu",
        cuda_stream=stream if stream is not None else host_stream,
        no_copy=False,  # DALI copies each batch on ``stream``: what DeviceEpochShards relies on
    )
    if dali_device == "gpu" and stream is None:
        images, indexes = images.gpu(), indexes.gpu()
    return (*transforms(images), indexes)


def cifar_train_loader(
    images: np.ndarray,
    labels: np.ndarray,
    transforms: Callable,
    output_names: list[str],
    batch_size: int,
    num_threads: int = 4,
    dali_device: str = "gpu",
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 12,
    device_id: int | None = None,
    model_device: torch.device | str = "cpu",
    arrays: str | None = None,
) -> PretrainWrapper:
    """solo-learn's ``PretrainWrapper`` over :func:`cifar_pipeline`, ``len()`` = batches per
    epoch of this rank.

    Args:
        images, labels: (N, H, W, 3) uint8 and (N,) int64 (``-1`` for no labels).
        transforms: solo-learn's ``FullTransformPipeline`` of DALI augmentations.
        output_names: one name per view (solo-learn's ``large0, ..., small0, ...``).
        device_id: the pipeline's CUDA device (``None``: CPU only).
        model_device: where the labels lookup and the batches live.
        arrays: where the images are held, ``"gpu"`` / ``"host"`` / ``None`` (automatic, see
            :func:`arrays_device`).
    """
    arrays = arrays_device(dali_device, arrays)
    source = make_source(images, batch_size, shard_id, num_shards, seed, arrays, device_id)
    pipeline = cifar_pipeline(
        source,
        transforms,
        dali_device,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed + shard_id,
    )
    pipeline.build()
    with warnings.catch_warnings():  # DALI asks for a file reader's name; there is none here
        warnings.filterwarnings("ignore", message="Please set `reader_name`")
        return PretrainWrapper(
            model_batch_size=batch_size,
            model_rank=shard_id,
            model_device=model_device,
            dataset_size=len(images),
            conversion_map=labels,  # index -> label lookup, as for encode_indexes_into_labels
            pipelines=pipeline,
            output_map=[*output_names, "label"],
            size=source.steps * batch_size,
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=True,
        )


def default_seed() -> int:
    """``seed_everything``'s seed of this run (the same in every DDP process), else 12."""
    return int(os.environ.get("PL_GLOBAL_SEED", 12))


class CifarDALIDataModule(CPUCapablePretrainDALIDataModule):
    """solo-learn's DALI pretraining module, for ``cifar10`` / ``cifar100`` from arrays.

    Same constructor as solo-learn's ``PretrainDALIDataModule`` (what ``main_pretrain.py``
    passes); ``train_data_path`` is a CIFAR source (:mod:`cueco_plugin.data.cifar_arrays`),
    ``num_workers`` the number of DALI threads; ``seed`` defaults to :func:`default_seed`.
    """

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = default_seed() if seed is None else seed

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        local_rank, rank, world = (
            (trainer.local_rank, trainer.global_rank, trainer.world_size) if trainer else (0, 0, 1)
        )
        images, labels = load_cifar_arrays(self.dataset, self.train_data_path, train=True)
        if self.data_fraction > 0:  # as solo-learn's builders: stratified, random_state 42
            from sklearn.model_selection import train_test_split

            keep, _ = train_test_split(
                np.arange(len(labels)),
                train_size=self.data_fraction,
                stratify=labels,
                random_state=42,
            )
            images, labels = images[np.sort(keep)], labels[np.sort(keep)]
        if self.no_labels:
            labels = np.full_like(labels, -1)
        gpu = self.dali_device == "gpu" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if gpu else "cpu")
        self.arrays = arrays_device(self.dali_device)
        rank_zero_info(
            f"DALI CIFAR: {len(images)} training images held "
            + (
                f"on {self.device}, batches gathered there"
                if self.arrays == "gpu"
                else "in host memory"
            )
            + f"; views by DALI on the {self.dali_device.upper()}"
        )
        self.train_loader = cifar_train_loader(
            images,
            labels,
            self.transforms,
            [f"large{i}" for i in range(self.num_large_crops)]
            + [f"small{i}" for i in range(self.num_small_crops)],
            batch_size=self.batch_size,
            num_threads=self.num_workers,
            dali_device=self.dali_device,
            shard_id=rank,
            num_shards=world,
            seed=self.seed,
            device_id=pipeline_device_id(self.dali_device, local_rank),
            model_device=self.device,
            arrays=self.arrays,
        )


def pretrain_dali_datamodule(dataset: str, **kwargs: Any) -> CPUCapablePretrainDALIDataModule:
    """The module ``main_pretrain.py`` builds as ``PretrainDALIDataModule(dataset=..., ...)``:
    :class:`CifarDALIDataModule` for CIFAR-10/100, else solo-learn's (CPU-capable) module.

    Raises:
        ValueError: ``dali.device`` other than ``gpu`` / ``cpu`` (solo-learn only asserts).
    """
    device = kwargs.get("dali_device", "gpu")
    if device not in ("gpu", "cpu"):
        raise ValueError(f"dali.device={device!r}: allowed values are ['gpu', 'cpu']")
    if dataset in CIFAR_CLASSES:
        return CifarDALIDataModule(dataset=dataset, **kwargs)
    return CPUCapablePretrainDALIDataModule(dataset=dataset, **kwargs)
