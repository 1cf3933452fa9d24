"""CIFAR-10/100 as in-memory uint8 arrays, from ``.npz`` files or torchvision's own files.

A CIFAR source (``data.train_path`` / ``data.val_path`` of a ``cifar10`` / ``cifar100`` config)
is one of:

- a ``.npz`` file, or a folder of them, with ``images`` uint8 (N, H, W, 3) and ``labels`` (N,)
  (``../shared/datasets/cifar10/``); in a folder whose file names mark splits (``train`` /
  ``test`` / ``val``), the training split reads the ``train`` files and the other the rest, so
  one folder can serve as both ``train_path`` and ``val_path``;
- a folder with torchvision's ``cifar-10-batches-py`` / ``cifar-100-python``, read by
  ``torchvision.datasets.CIFAR10/100(download=False)``.

:func:`prepare_datasets` and :func:`prepare_data_classification` are solo-learn's functions of
those names, which also read ``.npz`` sources; ``python -m cueco_plugin.pretrain`` hands them to
``main_pretrain.py``, so the torchvision loaders and DALI read the same arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torchvision
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from cueco_plugin.data.npz import load_npz_arrays

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
_SPLIT_MARKS = ("train", "test", "val")


def npz_files(path: str | Path, train: bool) -> list[Path]:
    """The ``.npz`` files of one split in ``path`` (a file or a folder); ``[]`` for a folder
    without any (a torchvision CIFAR folder)."""
    path = Path(path)
    if path.suffix == ".npz":
        return [path]
    files = sorted(path.glob("*.npz")) if path.is_dir() else []
    marked = [f for f in files if any(mark in f.stem.lower() for mark in _SPLIT_MARKS)]
    if not marked:
        return files
    return [f for f in marked if ("train" in f.stem.lower()) == train]


def is_npz_source(path: str | Path | None) -> bool:
    return path is not None and bool(npz_files(path, True) or npz_files(path, False))


def load_cifar_arrays(dataset: str, path: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """One split of a CIFAR source: images (N, H, W, 3) uint8 RGB and labels (N,) int64.

    Raises:
        ValueError: unknown dataset, a source that is neither ``.npz`` nor torchvision CIFAR
            files, or labels outside the dataset's classes; each naming the value.
    """
    if dataset not in CIFAR_CLASSES:
        raise ValueError(f"data.dataset={dataset!r}: allowed values are {sorted(CIFAR_CLASSES)}")
    split = "train" if train else "val"
    if is_npz_source(path):
        files = npz_files(path, train)
        if not files:
            raise ValueError(f"data.{split}_path={str(path)!r} holds no {split} .npz file")
        images, labels = load_npz_arrays(files)
    else:
        dataset_class = getattr(torchvision.datasets, dataset.upper())
        try:
            data = dataset_class(str(path), train=train, download=False)
        except RuntimeError as err:
            raise ValueError(
                f"data.{split}_path={str(path)!r} is neither a .npz file, a folder of .npz files "
                f"('images' uint8 N x H x W x 3, 'labels'), nor a folder with torchvision's "
                f"{dataset} files: {err}"
            ) from err
        images, labels = data.data, np.asarray(data.targets, dtype=np.int64)
    classes = CIFAR_CLASSES[dataset]
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"data.{split}_path={str(path)!r}: labels span [{labels.min()}, {labels.max()}], "
            f"{dataset} has classes 0..{classes - 1}"
        )
    return images, labels


class CIFARArrays(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR dataset (its ``__getitem__``: PIL image, transform, label) over
    arrays already in memory: ``images`` (N, H, W, 3) uint8, ``labels`` (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any = None) -> None:
        torchvision.datasets.VisionDataset.__init__(self, root=None, transform=transform)
        self.data, self.targets, self.train = images, labels.tolist(), True


def prepare_datasets(dataset: str, transform: Any, train_data_path: Any = None, **kwargs: Any):
    """solo-learn's pretraining ``prepare_datasets``, reading ``.npz`` CIFAR sources itself."""
    from solo.data import pretrain_dataloader as solo

    if dataset not in CIFAR_CLASSES or not is_npz_source(train_data_path):
        return solo.prepare_datasets(dataset, transform, train_data_path, **kwargs)
    arrays = load_cifar_arrays(dataset, train_data_path, train=True)
    return solo.dataset_with_index(CIFARArrays)(*arrays, transform=transform)


def prepare_data_classification(
    dataset: str,
    train_data_path: Any = None,
    val_data_path: Any = None,
    batch_size: int = 64,
    num_workers: int = 4,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """solo-learn's ``classification_dataloader.prepare_data``; for a ``.npz`` CIFAR source it
    returns ``(None, validation loader)`` (``main_pretrain.py`` uses only the validation loader;
    ``(None, None)`` without ``val_data_path``), with solo-learn's validation transform."""
    from solo.data import classification_dataloader as solo

    npz = is_npz_source(train_data_path) or is_npz_source(val_data_path)
    if dataset not in CIFAR_CLASSES or not npz:
        return solo.prepare_data(
            dataset,
            train_data_path=train_data_path,
            val_data_path=val_data_path,
            batch_size=batch_size,
            num_workers=num_workers,
            **kwargs,
        )
    if val_data_path is None:
        return None, None
    _, val_transform = solo.prepare_transforms(dataset)
    val = CIFARArrays(*load_cifar_arrays(dataset, val_data_path, train=False), val_transform)
    loader = DataLoader(val, batch_size=batch_size, num_workers=num_workers, pin_memory=True)
    return None, loader


def parse_cfg(cfg: DictConfig) -> DictConfig:
    """solo-learn's ``parse_cfg``, also for ``data.format: dali`` with CIFAR (which it asserts
    against; nothing else in it reads the format)."""
    from solo.args.pretrain import parse_cfg as solo_parse_cfg

    dali_cifar = cfg.data.get("format") == "dali" and cfg.data.get("dataset") in CIFAR_CLASSES
    if dali_cifar:
        cfg.data.format = "image_folder"
    cfg = solo_parse_cfg(cfg)
    if dali_cifar:
        cfg.data.format = "dali"
    return cfg
