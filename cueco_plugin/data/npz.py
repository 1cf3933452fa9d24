"""The one reader of CIFAR-style ``.npz`` files (``../shared/datasets/cifar10/*.npz``): arrays
``images`` uint8 (N, H, W, 3) RGB and ``labels`` (N,) integers, optionally ``class_names``.

Used by the CIFAR folder exporter, the DALI CIFAR data module and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def _read_one(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"npz file not found: {path}")
    with np.load(path, allow_pickle=False) as arrays:
        for key in ("images", "labels"):
            if key not in arrays:
                raise ValueError(
                    f"{path} has no '{key}' array (arrays: {sorted(arrays.files)}); expected "
                    "'images' uint8 (N, H, W, 3) and 'labels' (N,)"
                )
        images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{path}: 'images' is {images.dtype} with shape {images.shape}; expected uint8 "
            "(N, H, W, 3) RGB (NHWC)"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: 'labels' is {labels.dtype} with shape {labels.shape}; expected "
            f"{len(images)} integers (N,)"
        )
    return images, labels.astype(np.int64)


def load_npz_arrays(paths: str | Path | Iterable[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Reads and concatenates (in the order given) ``.npz`` files.

    Args:
        paths: one path or several.

    Returns:
        images (N, H, W, 3) uint8 RGB and labels (N,) int64.

    Raises:
        ValueError: a missing file, a missing array, or arrays of the wrong dtype or shape,
            naming the file.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("no .npz file given")
    parts = [_read_one(path) for path in paths]
    sizes = {images.shape[1:] for images, _ in parts}
    if len(sizes) > 1:
        raise ValueError(f"the .npz files {[str(p) for p in paths]} hold images of sizes {sizes}")
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def npz_class_names(paths: Sequence[str | Path]) -> list[str] | None:
    """The ``class_names`` array of the files (all must agree), or None when none has one."""
    found: list[str] | None = None
    for path in paths:
        with np.load(path, allow_pickle=False) as arrays:
            if "class_names" not in arrays:
                continue
            names = [str(n) for n in arrays["class_names"]]
        if found is not None and names != found:
            raise ValueError(f"{path}: class_names {names} differ from {found}")
        found = names
    return found
