"""Real CIFAR-10 from the ``.npz`` files (no download), wrapped with solo-learn's transforms.

solo-learn gives ResNets the CIFAR stem (3x3 conv, no max-pool) only for ``data.dataset`` equal to
``cifar10``/``cifar100``, whose datasets download at run time. The harness therefore builds every
config with ``data.dataset: cifar10`` (CIFAR stem, CIFAR mean/std in the transforms) and feeds the
methods this module's dataset instead, which returns ``(index, [views], label)`` exactly as
solo-learn's ``dataset_with_index`` datasets do.

File layout (see ``../shared/datasets/cifar10/README.md``): ``cifar10_train_{0..4}.npz`` hold the
official training order in blocks of 10,000 and ``cifar10_test.npz`` the 10,000 test images (a
fixed shuffle), each with ``images`` uint8 (N, 32, 32, 3) and ``labels`` int64 (N,). The files may
be spread over several directories (a GPU machine receives them in several transfers).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

TRAIN_BLOCK = 10_000
_TRAIN_RE = re.compile(r"^cifar10_train_(\d+)\.npz$")
TEST_FILE = "cifar10_test.npz"

#: The two CIFAR augmentation recipes of solo-learn, written in its ``build_transform_pipeline``
#: schema (values from solo-learn's ``scripts/pretrain/cifar/augmentations``):
#: "mocov2plus" = its MoCo V2+ recipe (``symmetric_weak``: one pipeline, two views);
#: "byol" = its BYOL recipe (``asymmetric``: two pipelines, the second with solarisation).
AUGMENTATIONS: dict[str, list[dict[str, Any]]] = {
    "mocov2plus": [
        {
            "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
            "color_jitter": {
                "prob": 0.8,
                "brightness": 0.4,
                "contrast": 0.4,
                "saturation": 0.4,
                "hue": 0.1,
            },
            "grayscale": {"prob": 0.2},
            "gaussian_blur": {"prob": 0.5},
            "solarization": {"prob": 0.0},
            "equalization": {"prob": 0.0},
            "horizontal_flip": {"prob": 0.5},
            "crop_size": 32,
            "num_crops": 2,
        }
    ],
    "byol": [
        {
            "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
            "color_jitter": {
                "prob": 0.8,
                "brightness": 0.4,
                "contrast": 0.4,
                "saturation": 0.2,
                "hue": 0.1,
            },
            "grayscale": {"prob": 0.2},
            "gaussian_blur": {"prob": 0.0},
            "solarization": {"prob": solar},
            "equalization": {"prob": 0.0},
            "horizontal_flip": {"prob": 0.5},
            "crop_size": 32,
            "num_crops": 1,
        }
        for solar in (0.0, 0.2)
    ],
}


def find_npz_files(dirs: Sequence[str | Path]) -> dict[str, Path]:
    """Maps ``cifar10_train_<i>.npz`` / ``cifar10_test.npz`` names to paths, searching ``dirs``
    in order (the first occurrence of a name wins).

    Raises:
        ValueError: if a directory does not exist or none holds a CIFAR-10 ``.npz`` file.
    """
    found: dict[str, Path] = {}
    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            raise ValueError(f"--data-dir {str(d)!r} is not a directory")
        for f in sorted(path.glob("cifar10_*.npz")):
            found.setdefault(f.name, f)
    if not found:
        raise ValueError(
            f"--data-dir {[str(d) for d in dirs]} holds no cifar10_train_<i>.npz or "
            f"{TEST_FILE}; point it at ../shared/datasets/cifar10 or the folders holding them"
        )
    return found


def load_split(
    dirs: Sequence[str | Path], split: str, limit: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a split (all when None), reading only the files needed.

    Args:
        dirs: directories holding the ``.npz`` files.
        split: "train" (official training order) or "test" (the stored fixed shuffle).
        limit: number of images, >= 1, or None for every image found.

    Returns:
        images uint8 (N, 32, 32, 3) HWC RGB and labels int64 (N,).

    Raises:
        ValueError: for a bad split/limit or when the files needed are missing.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    files = find_npz_files(dirs)
    if split == "test":
        if TEST_FILE not in files:
            raise ValueError(f"{TEST_FILE} not found in --data-dir {[str(d) for d in dirs]}")
        with np.load(files[TEST_FILE]) as z:
            images, labels = z["images"], z["labels"]
        if limit is not None and limit > len(labels):
            raise ValueError(f"asked for {limit} test images, {TEST_FILE} holds {len(labels)}")
        n = len(labels) if limit is None else limit
        return np.ascontiguousarray(images[:n]), labels[:n].astype(np.int64)

    blocks = sorted(int(m.group(1)) for name in files if (m := _TRAIN_RE.match(name)))
    # contiguous prefix of the official order: block 0, 1, ... without a gap
    prefix = 0
    while prefix in blocks:
        prefix += 1
    available = prefix * TRAIN_BLOCK
    if available == 0:
        raise ValueError(f"cifar10_train_0.npz not found in --data-dir {[str(d) for d in dirs]}")
    n = available if limit is None else limit
    if n > available:
        missing = [f"cifar10_train_{i}.npz" for i in range(prefix, -(-n // TRAIN_BLOCK))]
        raise ValueError(
            f"asked for the first {n} training images; the files found hold {available} "
            f"(missing {missing} in --data-dir {[str(d) for d in dirs]})"
        )
    images, labels = [], []
    for i in range(-(-n // TRAIN_BLOCK)):
        with np.load(files[f"cifar10_train_{i}.npz"]) as z:
            take = min(TRAIN_BLOCK, n - i * TRAIN_BLOCK)
            images.append(z["images"][:take])
            labels.append(z["labels"][:take])
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels).astype(np.int64)


class NpzImageDataset(Dataset):
    """In-memory images as PIL, through a transform, in solo-learn's sample format.

    Args:
        images: uint8 (N, H, W, 3) RGB.
        labels: int64 (N,).
        transform: e.g. solo-learn's ``FullTransformPipeline`` (returns a list of views).
        with_index: return ``(index, x, label)`` as solo-learn's pretraining datasets do;
            otherwise ``(x, label)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[Image.Image], Any],
        with_index: bool = True,
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        self.images = images
        self.labels = labels
        self.transform = transform
        self.with_index = with_index

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        x = self.transform(Image.fromarray(self.images[index]))
        label = int(self.labels[index])
        return (index, x, label) if self.with_index else (x, label)


def pretrain_transform(recipe: str) -> tuple[Callable[[Image.Image], list], list[dict]]:
    """solo-learn's pretraining transform for CIFAR-10 (its ``build_transform_pipeline``,
    ``NCropAugmentation`` and ``FullTransformPipeline``) for one of :data:`AUGMENTATIONS`.

    Returns:
        (transform returning a list of 2 views (3, 32, 32), the augmentation config list).
    """
    from omegaconf import OmegaConf
    from solo.data.pretrain_dataloader import (
        FullTransformPipeline,
        NCropAugmentation,
        build_transform_pipeline,
    )

    if recipe not in AUGMENTATIONS:
        raise ValueError(f"--augmentations must be one of {sorted(AUGMENTATIONS)}, got {recipe!r}")
    aug_cfgs = AUGMENTATIONS[recipe]
    pipelines = [
        NCropAugmentation(build_transform_pipeline("cifar10", OmegaConf.create(a)), a["num_crops"])
        for a in aug_cfgs
    ]
    return FullTransformPipeline(pipelines), aug_cfgs


def eval_tensor(images: np.ndarray) -> torch.Tensor:
    """Applies solo-learn's CIFAR validation transform (``prepare_transforms("cifar10")``:
    ToTensor + Normalize) to every image once.

    Args:
        images: uint8 (N, 32, 32, 3).

    Returns:
        float32 (N, 3, 32, 32).
    """
    from solo.data.classification_dataloader import prepare_transforms

    _, t_val = prepare_transforms("cifar10")
    return torch.stack([t_val(Image.fromarray(img)) for img in images])
