"""Real CIFAR-10 from the ``.npz`` files (no download; ``../shared/datasets/cifar10``: the
official training order in ``cifar10_train_{0..4}.npz``, 10,000 images each, and
``cifar10_test.npz``, possibly spread over several folders), fed to solo-learn's methods in its
own sample format: through its own PIL transforms (``loader: torchvision``) or as batched views
of uint8 tensors made on the training process (``loader: batched``, :mod:`sslbench.augment`),
optionally at a lower resolution (PIL's bicubic resize, the same images for training and
evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

from cueco_plugin.data.npz import load_npz_arrays

TRAIN_BLOCK = 10_000
LOADERS = ("torchvision", "batched")


def load_npz(dirs: Sequence[str | Path], split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of ``split`` ("train" or "test").

    Returns:
        images uint8 (n, 32, 32, 3) RGB and labels int64 (n,).

    Raises:
        ValueError: naming the file that is missing from ``dirs`` or the count that is too large.
    """
    if split not in ("train", "test") or n < 1:
        raise ValueError(f"split must be 'train' or 'test' and n >= 1, got {split!r}, {n}")
    names = (
        ["cifar10_test.npz"]
        if split == "test"
        else [f"cifar10_train_{i}.npz" for i in range(-(-n // TRAIN_BLOCK))]
    )
    paths = []
    for name in names:
        path = next((Path(d) / name for d in dirs if (Path(d) / name).is_file()), None)
        if path is None:
            raise ValueError(f"{name} (needed for {n} {split} images) is in none of {list(dirs)}")
        paths.append(path)
    images, labels = load_npz_arrays(paths)
    if len(labels) < n:
        raise ValueError(f"asked for {n} {split} images, {names} hold {len(labels)}")
    return np.ascontiguousarray(images[:n]), labels[:n]


class NpzViews(Dataset):
    """``(index, [views], label)`` as solo-learn's ``dataset_with_index`` datasets return it.

    Args:
        images: uint8 (N, H, W, 3). labels: int64 (N,).
        transform: solo-learn's ``FullTransformPipeline`` (PIL image -> list of views).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[int, list[torch.Tensor], int]:
        return i, self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def downsample(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, resolution, resolution, 3) by PIL's bicubic resize (which
    widens its filter when shrinking, so it antialiases); unchanged at the same size."""
    if images.shape[1:3] == (resolution, resolution):
        return images
    size, bicubic = (resolution, resolution), Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(img).resize(size, bicubic)) for img in images])


class BatchedViewsDataset(Dataset):
    """``(indexes, [views], labels)`` of a whole batch: ``dataset[indexes]`` takes a list of
    indexes (from a ``BatchSampler``) and makes the views of those uint8 images at once.

    Args:
        images: uint8 (N, 3, H, W). labels: int64 (N,).
        views: :class:`sslbench.augment.BatchedViews`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, views: Any) -> None:
        self.images, self.labels, self.views = images, labels, views

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indexes: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], Any]:
        idx = torch.as_tensor(indexes)
        return idx, self.views(self.images.index_select(0, idx)), self.labels.index_select(0, idx)


def pretrain_transform(cfg: Any) -> Any:
    """The views of ``cfg.augmentations``, built as ``main_pretrain.py`` builds them."""
    from solo.data.pretrain_dataloader import (
        FullTransformPipeline,
        NCropAugmentation,
        build_transform_pipeline,
    )

    return FullTransformPipeline(
        [
            NCropAugmentation(build_transform_pipeline(cfg.data.dataset, aug), aug.num_crops)
            for aug in cfg.augmentations
        ]
    )


class CifarData:
    """The images of one benchmark, loaded once and shared by every run.

    ``eval_train`` / ``eval_test``: TensorDatasets of solo-learn's CIFAR validation transform
    (ToTensor + Normalize) of every image at ``resolution``, (N, 3, R, R) float32 with labels,
    for validation and the final kNN / linear probe.

    Args:
        dirs: folders with the ``.npz`` files. train_images, test_images: the first N / M.
        resolution: side in pixels of every image, training and evaluation (32: CIFAR's own).
        loader: ``"torchvision"`` (solo-learn's PIL transforms in ``data.num_workers``
            workers) or ``"batched"`` (:mod:`sslbench.augment` on the training process).
    """

    def __init__(
        self,
        dirs: Sequence[str | Path],
        train_images: int,
        test_images: int,
        resolution: int = 32,
        loader: str = "torchvision",
    ) -> None:
        from solo.data.classification_dataloader import prepare_transforms

        if loader not in LOADERS:
            raise ValueError(f"loader must be one of {list(LOADERS)}, got {loader!r}")
        if not isinstance(resolution, int) or not 8 <= resolution <= 32:
            raise ValueError(f"resolution must be an integer in [8, 32], got {resolution!r}")
        self.dirs = [str(d) for d in dirs]
        self.resolution, self.loader = resolution, loader
        train_x, self.train_y = load_npz(dirs, "train", train_images)
        test_x, test_y = load_npz(dirs, "test", test_images)
        self.train_x = downsample(train_x, resolution)
        test_x = downsample(test_x, resolution)
        _, t_val = prepare_transforms("cifar10")  # ToTensor + Normalize at any size

        def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
            views = torch.stack([t_val(Image.fromarray(img)) for img in x])
            return TensorDataset(views, torch.from_numpy(y))

        self.eval_train = tensors(self.train_x, self.train_y)
        self.eval_test = tensors(test_x, test_y)

    def _check_crop(self, cfg: Any) -> None:
        sizes = {int(aug.crop_size) for aug in cfg.augmentations}
        if sizes != {self.resolution}:
            raise ValueError(
                f"augmentations crop_size {sorted(sizes)} must equal the data's resolution "
                f"{self.resolution} (training and evaluation at the same size)"
            )

    def train_loader(self, cfg: Any, pin_memory: bool) -> DataLoader:
        """Shuffled, whole batches of ``cfg.optimizer.batch_size``. ``torchvision``:
        ``cfg.data.num_workers`` persistent workers (solo-learn's ``prepare_dataloader``
        restarts them every epoch); ``batched``: the views made on this process from a
        generator seeded with ``cfg.seed``, the order from another, so every arm of a seed sees
        the same batches and views."""
        self._check_crop(cfg)
        batch = int(cfg.optimizer.batch_size)
        if self.loader == "batched":
            from sslbench.augment import BatchedViews

            seed = int(cfg.seed)
            views = BatchedViews(cfg.augmentations, cfg.data.dataset, seed)
            images = torch.from_numpy(self.train_x).permute(0, 3, 1, 2).contiguous()
            dataset = BatchedViewsDataset(images, torch.from_numpy(self.train_y), views)
            order = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed + 1))
            sampler = BatchSampler(order, batch, drop_last=True)
            return DataLoader(dataset, batch_size=None, sampler=sampler, pin_memory=pin_memory)
        workers = int(cfg.data.num_workers)
        return DataLoader(
            NpzViews(self.train_x, self.train_y, pretrain_transform(cfg)),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
        )

    def val_loader(self, cfg: Any) -> DataLoader:
        """The test images in order, ``(x, y)`` batches (solo-learn's validation format)."""
        return DataLoader(self.eval_test, batch_size=int(cfg.optimizer.batch_size))
