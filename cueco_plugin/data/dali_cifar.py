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
  rank; rank ``r`` of ``R`` (the global rank) serves the ``r``-th of ``R`` equal slices of it, in
  full batches: the ranks together cover the epoch once (the last ``N mod R`` samples of the
  permutation and each slice's last partial batch sit out that epoch, as with
  ``DistributedSampler`` and ``drop_last``).
- Epochs are Lightning's (:class:`cueco_plugin.data.dali_epochs.EpochAlignedLoader`): each pass
  over the loader serves the epoch the fit loop is in (``epoch_progress.current.processed``, what
  Lightning gives samplers' ``set_epoch``), from its first batch, or, resumed from a mid-epoch
  checkpoint, from the first batch not yet trained, in the same permutation. An epoch cut short
  by ``limit_train_batches`` is a whole epoch to DALI: the source ends it there. A DALI iterator
  cannot be reset mid-epoch, so a pass that starts anywhere else than where the pipeline stands
  builds a new pipeline there.
- Seeded: the permutation by ``seed``; the augmentations of a pipeline that starts at epoch ``e``,
  batch ``b`` by ``(seed, rank, e, b)`` (:func:`pipeline_seed`). The default seed is the one
  ``seed_everything(cfg.seed)`` in ``main_pretrain.py`` sets in every process
  (``PL_GLOBAL_SEED``), else 12 (solo-learn's DALI seed).
- DALI, the GPU copy of the images and the batches are on the model's device (the Trainer's root
  device: ``cuda:1`` for ``devices: [1]``), not on the local rank's
  (:func:`cueco_plugin.data.dali.pipeline_device_id`).
- Batches are solo-learn's: ``[indexes (B,) int64, [view (B, 3, H, W) float32] * n_crops,
  labels (B,) int64]`` with the true sample indexes and labels (``encode_indexes_into_labels``
  is implied), on the training GPU for ``dali.device: gpu``, else on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from lightning.pytorch.utilities import rank_zero_info
from nvidia.dali import pipeline_def
from solo.data.dali_dataloader import PretrainWrapper

from cueco_plugin.data.cifar_arrays import CIFAR_CLASSES, load_cifar_arrays
from cueco_plugin.data.dali import (
    CPUCapablePretrainDALIDataModule,
    batch_device,
    model_device,
    pipeline_device_id,
)
from cueco_plugin.data.dali_epochs import EpochAlignedLoader, EpochStart, lightning_epoch_start


def shard_steps(num_images: int, batch_size: int, num_shards: int) -> int:
    """Full batches per epoch of one of ``num_shards`` ranks.

    Raises:
        ValueError: naming the batch size, when it exceeds one rank's share of the images.
    """
    shard_size = num_images // num_shards
    if shard_size // batch_size == 0:
        raise ValueError(
            f"optimizer.batch_size={batch_size}: larger than the {shard_size} images per "
            f"process ({num_images} images over {num_shards} processes)"
        )
    return shard_size // batch_size


class EpochShards:
    """DALI ``external_source`` callback (``batch=True, batch_info=True``): this rank's batches,
    ``(images (B, H, W, 3) uint8, indexes (B,) int64)``; ``StopIteration`` ends each epoch.

    DALI counts epochs from 0 for every pipeline (``BatchInfo.epoch_idx``, ``iteration``); this
    source maps them to the run's: DALI's epoch ``j`` is epoch ``start.epoch + j``, whose first
    batch is ``start.batch`` for ``j = 0`` and 0 after, and each ends after ``start.batches``.

    Args:
        images: the whole training set, (N, H, W, 3) uint8.
        batch_size: B, per rank.
        shard_id, num_shards: this rank (global) and the number of ranks.
        seed: seeds the per-epoch permutation (the same on every rank).
        start: where this source's first epoch starts, and the batches per epoch (default:
            epoch 0, batch 0, every full batch of the shard).
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        shard_id: int,
        num_shards: int,
        seed: int,
        start: EpochStart | None = None,
    ) -> None:
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.steps = shard_steps(len(images), batch_size, num_shards)
        self.shard_size = len(images) // num_shards
        self.start = shard_id * self.shard_size
        self.first = EpochStart(0, 0, self.steps) if start is None else start
        batches, batch = self.first.batches, self.first.batch
        if not (1 <= batches <= self.steps and 0 <= batch < batches):
            raise ValueError(
                f"start={tuple(self.first)}: needs 1 <= batches <= {self.steps} (the full batches "
                "per epoch) and 0 <= batch < batches"
            )
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def epoch_indexes(self, epoch: int) -> np.ndarray:
        """(steps * B,) the sample indexes this rank serves in ``epoch``, in order."""
        if epoch != self._epoch:
            order = np.random.default_rng((self.seed, epoch)).permutation(len(self.images))
            self._epoch = epoch
            self._order = order[self.start : self.start + self.steps * self.batch_size]
        return self._order

    def position(self, info: types.BatchInfo) -> tuple[int, int]:
        """The run's ``(epoch, batch)`` of DALI's ``info``; ``StopIteration`` past the epoch's
        last batch."""
        batch = info.iteration + (self.first.batch if info.epoch_idx == 0 else 0)
        if batch >= self.first.batches:
            raise StopIteration
        return self.first.epoch + info.epoch_idx, batch

    def batch_indexes(self, epoch: int, batch: int) -> slice:
        """The positions of ``batch`` in :meth:`epoch_indexes`."""
        return slice(batch * self.batch_size, (batch + 1) * self.batch_size)

    def __call__(self, info: types.BatchInfo) -> tuple[np.ndarray, np.ndarray]:
        epoch, batch = self.position(info)
        indexes = self.epoch_indexes(epoch)[self.batch_indexes(epoch, batch)]
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
        batch_size, shard_id, num_shards, seed, start: as :class:`EpochShards`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        shard_id: int,
        num_shards: int,
        seed: int,
        start: EpochStart | None = None,
    ) -> None:
        super().__init__(
            images, batch_size, shard_id, num_shards, seed, start  # type: ignore[arg-type]
        )
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
        epoch, batch = self.position(info)
        with self._on_stream():
            if epoch != self._device_epoch:
                order = torch.from_numpy(self.epoch_indexes(epoch))
                self._device_order = order.to(self.device, non_blocking=True)
                self._device_epoch = epoch
            indexes = self._device_order[self.batch_indexes(epoch, batch)]
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


def hold_images(
    images: np.ndarray, arrays: str, device_id: int | None
) -> np.ndarray | torch.Tensor:
    """The training images where ``arrays`` (:func:`arrays_device`) says: the host arrays as they
    are, or one uint8 copy of them on CUDA device ``device_id`` (made here, on torch's current
    stream; ``None``: the current device), shared by every pipeline the loader builds."""
    if arrays == "host":
        return images
    device = torch.device("cuda", torch.cuda.current_device() if device_id is None else device_id)
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def make_source(
    images: np.ndarray | torch.Tensor,
    batch_size: int,
    shard_id: int,
    num_shards: int,
    seed: int,
    start: EpochStart | None = None,
) -> EpochShards:
    """The ``external_source`` callback over images held by :func:`hold_images`: host arrays
    (:class:`EpochShards`) or a torch tensor (:class:`DeviceEpochShards`)."""
    if isinstance(images, torch.Tensor):
        return DeviceEpochShards(images, batch_size, shard_id, num_shards, seed, start)
    return EpochShards(images, batch_size, shard_id, num_shards, seed, start)


def pipeline_seed(seed: int, shard_id: int, start: EpochStart) -> int:
    """The augmentations' seed of a pipeline of rank ``shard_id`` that starts at ``start``: from
    ``(seed, rank, epoch, batch)``, so that no two pipelines of a run replay the same draws."""
    entropy = (seed, shard_id, start.epoch, start.batch)
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


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
    position: Callable[[int], EpochStart] | None = None,
) -> EpochAlignedLoader:
    """:class:`EpochAlignedLoader` over :func:`cifar_pipeline` and solo-learn's ``PretrainWrapper``,
    ``len()`` = batches per epoch of this rank.

    Args:
        images, labels: (N, H, W, 3) uint8 and (N,) int64 (``-1`` for no labels).
        transforms: solo-learn's ``FullTransformPipeline`` of DALI augmentations.
        output_names: one name per view (solo-learn's ``large0, ..., small0, ...``).
        device_id: the pipeline's CUDA device (``None``: CPU only), the model's
            (:func:`cueco_plugin.data.dali.pipeline_device_id`).
        model_device: where the labels lookup and the batches live.
        arrays: where the images are held, ``"gpu"`` / ``"host"`` / ``None`` (automatic, see
            :func:`arrays_device`).
        position: where each pass starts (``EpochAlignedLoader``); ``lightning_epoch_start`` under
            a Trainer.

    Raises:
        ValueError: a batch larger than one rank's share of the images, or a bad ``arrays``.
    """
    arrays = arrays_device(dali_device, arrays)
    steps = shard_steps(len(images), batch_size, num_shards)
    held = hold_images(images, arrays, device_id)

    def make_wrapper(start: EpochStart) -> PretrainWrapper:
        source = make_source(held, batch_size, shard_id, num_shards, seed, start)
        pipeline = cifar_pipeline(
            source,
            transforms,
            dali_device,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            seed=pipeline_seed(seed, shard_id, start),
        )
        pipeline.build()
        return PretrainWrapper(
            model_batch_size=batch_size,
            model_rank=shard_id,
            model_device=model_device,
            dataset_size=len(held),
            conversion_map=labels,  # index -> label lookup, as for encode_indexes_into_labels
            pipelines=pipeline,
            output_map=[*output_names, "label"],
            size=-1,  # the source's StopIteration ends each epoch (EpochShards.position)
            auto_reset=True,
        )

    return EpochAlignedLoader(make_wrapper, steps, position)


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
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
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
        model = model_device(trainer)
        device_id = pipeline_device_id(self.dali_device, model)
        self.device = batch_device(self.dali_device, model)
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
            device_id=device_id,
            model_device=self.device,
            arrays=self.arrays,
            position=functools.partial(lightning_epoch_start, trainer) if trainer else None,
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
