"""Exports CIFAR-10/100 as a class-per-folder PNG tree that solo-learn and DALI both read.

solo-learn's ``cifar10``/``cifar100`` datasets download at run time and its DALI loaders only read
image folders, so CIFAR runs with ``data.format: dali`` need the images as files. This writes::

    OUT/train/<class name>/<index>.png
    OUT/val/<class name>/<index>.png
    OUT/cifar_folder.json      (what was written, from where)

which solo-learn's ``custom`` dataset (``data.dataset: custom``, ``data.train_path: OUT/train``,
``data.val_path: OUT/val``) and DALI's file reader both load. PNG is lossless, so the pixels are
exactly the source pixels. ``<index>`` is the image's position in its source split (zero-padded),
so sorted file names keep the source order inside each class. CIFAR's class names are already in
alphabetical order, so the class indices that image-folder loaders derive from the sorted folder
names are CIFAR's own label indices.

Sources (no download; give one or more):

- torchvision's extracted python-pickle directories: ``cifar-10-batches-py`` (``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``, ``batches.meta``) or ``cifar-100-python`` (``train``,
  ``test``, ``meta``), or the folder that holds one of them (torchvision's ``root``);
- ``.npz`` files with ``images`` (uint8, N x H x W x 3, RGB) and ``labels`` (N integers), and
  optionally ``class_names``, like ``../shared/datasets/cifar10/*.npz``, or a directory of them.
  A file goes to ``train`` when its name contains "train", to ``val`` when it contains "test" or
  "val"; write ``train=PATH`` or ``val=PATH`` to say it explicitly. Several files per split are
  concatenated in the order given (sorted by name for a directory).

Usage::

    cueco-cifar-to-folder ../shared/datasets/cifar10 -o datasets/cifar10-folder
    python -m cueco_plugin.cifar_folder ~/data/cifar-100-python -o datasets/cifar100-folder
    cueco-cifar-to-folder train=a.npz train=b.npz val=c.npz -o out --limit-per-class 100
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

SPLITS = ("train", "val")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_PICKLE_DIR = "cifar-10-batches-py"
CIFAR100_PICKLE_DIR = "cifar-100-python"
CIFAR10_PICKLE_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "val": ["test_batch"],
}
CIFAR100_PICKLE_FILES = {"train": ["train"], "val": ["test"]}
MANIFEST_NAME = "cifar_folder.json"


@dataclass
class SplitArrays:
    """One split in memory: images (N, H, W, 3) uint8 RGB, labels (N,) int64, and where from."""

    images: np.ndarray
    labels: np.ndarray
    sources: list[str] = field(default_factory=list)


@dataclass
class CifarArrays:
    """What the exporter writes: split name -> arrays, plus the class names (index order)."""

    splits: dict[str, SplitArrays]
    class_names: list[str]


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"CIFAR pickle file missing: {path} (expected torchvision's layout)")
    with path.open("rb") as handle:
        try:
            raw = pickle.load(handle, encoding="latin1")
        except Exception as err:  # noqa: BLE001 - any unpickling error means a bad file
            raise ValueError(f"{path} is not a CIFAR python-pickle batch: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, expected a dict batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _pickle_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one torchvision CIFAR batch: rows of 3072 bytes (R, G, B planes of 32 x 32)."""
    batch = _unpickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise ValueError(f"{path} has no '{key}' entry (keys: {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"{path}: {len(labels)} labels for {len(images)} images")
    return np.ascontiguousarray(images), labels


def _find_pickle_dir(path: Path) -> Path | None:
    """The torchvision CIFAR directory at or directly under ``path``, if there is one."""
    for candidate in (path, path / CIFAR10_PICKLE_DIR, path / CIFAR100_PICKLE_DIR):
        if (candidate / "batches.meta").is_file() or (candidate / "meta").is_file():
            return candidate
    return None


def read_torchvision_dir(path: Path, cifar100_labels: str = "fine") -> CifarArrays:
    """Reads torchvision's extracted ``cifar-10-batches-py`` or ``cifar-100-python`` directory."""
    if cifar100_labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100_labels={cifar100_labels!r}: allowed 'fine' or 'coarse'")
    root = _find_pickle_dir(path)
    if root is None:
        raise ValueError(
            f"{path} is not a torchvision CIFAR directory: expected '{CIFAR10_PICKLE_DIR}' "
            f"(with batches.meta) or '{CIFAR100_PICKLE_DIR}' (with meta), or their parent"
        )
    if (root / "batches.meta").is_file():
        meta, names_key, files, label_key = (
            _unpickle(root / "batches.meta"),
            "label_names",
            CIFAR10_PICKLE_FILES,
            "labels",
        )
    else:
        meta, names_key, files, label_key = (
            _unpickle(root / "meta"),
            f"{cifar100_labels}_label_names",
            CIFAR100_PICKLE_FILES,
            f"{cifar100_labels}_labels",
        )
    if names_key not in meta:
        raise ValueError(f"{root}: meta file has no '{names_key}' (keys: {sorted(meta)})")
    class_names = [str(name) for name in meta[names_key]]
    missing = [name for split in SPLITS for name in files[split] if not (root / name).is_file()]
    if missing:
        raise ValueError(f"{root}: missing batch files {missing} (torchvision's layout needed)")
    splits = {}
    for split in SPLITS:
        parts = [_pickle_batch(root / name, label_key) for name in files[split]]
        splits[split] = SplitArrays(
            images=np.concatenate([p[0] for p in parts]),
            labels=np.concatenate([p[1] for p in parts]),
            sources=[str(root / name) for name in files[split]],
        )
    return CifarArrays(splits=splits, class_names=class_names)


def _split_of_npz(path: Path) -> str:
    stem = path.stem.lower()
    if "train" in stem:
        return "train"
    if "test" in stem or "val" in stem:
        return "val"
    raise ValueError(
        f"cannot tell the split of {path}: its name contains neither 'train' nor 'test'/'val'; "
        "write train=PATH or val=PATH"
    )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
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
        names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{path}: 'images' is {images.dtype} with shape {images.shape}; expected uint8 "
            "(N, H, W, 3) RGB (NHWC)"
        )
    if (
        labels.ndim != 1
        or len(labels) != len(images)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError(
            f"{path}: 'labels' is {labels.dtype} with shape {labels.shape}; expected "
            f"{len(images)} integers (N,)"
        )
    return images, labels.astype(np.int64), names


def read_npz_files(
    entries: Sequence[tuple[str | None, Path]], class_names: Sequence[str] | None = None
) -> CifarArrays:
    """Reads ``.npz`` files; ``entries`` are (split or None to infer from the name, path)."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, str]]] = {}
    found_names: list[str] | None = None
    for split, path in entries:
        split = split or _split_of_npz(path)
        images, labels, names = _read_npz(path)
        if names is not None:
            if found_names is not None and names != found_names:
                raise ValueError(f"{path}: class_names {names} differ from {found_names}")
            found_names = names
        parts.setdefault(split, []).append((images, labels, str(path)))
    splits = {}
    for split in [s for s in SPLITS if s in parts]:
        items = parts[split]
        shapes = {item[0].shape[1:] for item in items}
        if len(shapes) > 1:
            raise ValueError(f"split '{split}': images of different sizes {sorted(shapes)}")
        splits[split] = SplitArrays(
            images=np.concatenate([item[0] for item in items]),
            labels=np.concatenate([item[1] for item in items]),
            sources=[item[2] for item in items],
        )
    num_classes = 1 + max(int(s.labels.max(initial=-1)) for s in splits.values())
    names = list(class_names) if class_names else found_names
    if names is None:
        names = list(CIFAR10_CLASSES) if num_classes <= 10 else [str(i) for i in range(num_classes)]
    return CifarArrays(splits=splits, class_names=names)


def _parse_source(text: str) -> tuple[str | None, Path]:
    match = re.fullmatch(r"(train|val|test)=(.+)", text)
    if match:
        split = "val" if match.group(1) == "test" else match.group(1)
        return split, Path(match.group(2)).expanduser()
    return None, Path(text).expanduser()


def read_sources(
    sources: Sequence[str],
    cifar100_labels: str = "fine",
    class_names: Sequence[str] | None = None,
) -> CifarArrays:
    """Reads one torchvision CIFAR directory, or any number of ``.npz`` files/directories."""
    if not sources:
        raise ValueError("no source given: pass a torchvision CIFAR directory or .npz files")
    parsed = [_parse_source(s) for s in sources]
    npz: list[tuple[str | None, Path]] = []
    for split, path in parsed:
        if not path.exists():
            raise ValueError(f"source not found: {path}")
        if path.is_dir() and _find_pickle_dir(path) is not None:
            if len(parsed) != 1:
                raise ValueError(f"{path}: a torchvision CIFAR directory must be the only source")
            arrays = read_torchvision_dir(path, cifar100_labels)
            if class_names:
                arrays.class_names = list(class_names)
            return arrays
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise ValueError(
                    f"{path} holds neither torchvision's CIFAR files ('{CIFAR10_PICKLE_DIR}', "
                    f"'{CIFAR100_PICKLE_DIR}') nor .npz files"
                )
            npz += [(split, f) for f in files]
        elif path.suffix == ".npz":
            npz.append((split, path))
        else:
            raise ValueError(f"{path}: expected a directory or a .npz file")
    return read_npz_files(npz, class_names)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def safe_folder_name(name: str) -> str:
    """A class name usable as one folder name (path separators and spaces become '_')."""
    cleaned = re.sub(r"[\\/:\s]+", "_", name.strip())
    if cleaned in ("", ".", ".."):
        raise ValueError(f"class name {name!r} cannot be a folder name")
    return cleaned


def select_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices (ascending) of the first ``limit`` images of each class; all when limit is None.

    labels: (N,) ints. Returns (M,) int64."""
    if limit is None:
        return np.arange(len(labels))
    if limit <= 0:
        raise ValueError(f"limit_per_class={limit}: must be a positive integer")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.arange(len(labels)) - starts
    return np.sort(order[rank_in_class < limit])


def export_arrays(
    arrays: CifarArrays,
    out: Path,
    limit_per_class: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Writes ``out/<split>/<class>/<index>.png``; returns split -> class folder -> count."""
    out = Path(out)
    folders = [safe_folder_name(n) for n in arrays.class_names]
    if len(set(folders)) != len(folders):
        raise ValueError(f"class names give duplicate folder names: {folders}")
    for split, data in arrays.splits.items():
        bad = (data.labels < 0) | (data.labels >= len(folders))
        if bad.any():
            raise ValueError(
                f"split '{split}': label {int(data.labels[bad][0])} outside 0..{len(folders) - 1} "
                f"({len(folders)} class names)"
            )
        target = out / split
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise ValueError(
                    f"{target} exists and is not empty; pass --overwrite to replace it"
                )
            shutil.rmtree(target)
    counts: dict[str, dict[str, int]] = {}
    for split, data in arrays.splits.items():
        keep = select_per_class(data.labels, limit_per_class)
        width = max(5, len(str(len(data.labels) - 1)))
        for folder in folders:
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        split_counts = dict.fromkeys(folders, 0)
        for index in tqdm(keep, desc=f"{split} -> {out / split}", unit="img", disable=not progress):
            folder = folders[data.labels[index]]
            path = out / split / folder / f"{index:0{width}d}.png"
            Image.fromarray(data.images[index], mode="RGB").save(path, format="PNG")
            split_counts[folder] += 1
        counts[split] = split_counts
    manifest = {
        "class_names": arrays.class_names,
        "folders": folders,
        "limit_per_class": limit_per_class,
        "counts": counts,
        "sources": {split: data.sources for split, data in arrays.splits.items()},
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cueco-cifar-to-folder",
        description=(
            "Write CIFAR-10/100 (torchvision's python-pickle directory or .npz arrays) as a "
            "class-per-folder PNG tree OUT/{train,val}/<class>/<index>.png for solo-learn's "
            "'custom' dataset and its DALI loaders. Nothing is downloaded."
        ),
    )
    parser.add_argument(
        "sources",
        nargs="+",
        help=(
            "a torchvision CIFAR directory (cifar-10-batches-py, cifar-100-python or their "
            "parent), or .npz files / directories of .npz files with 'images' uint8 (N,H,W,3) "
            "and 'labels' (N,); prefix train=/val= to set a file's split (default: from its name)"
        ),
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        help="write only the first N images of each class per split (small trees for tests)",
    )
    parser.add_argument(
        "--cifar100-labels",
        choices=("fine", "coarse"),
        default="fine",
        help="CIFAR-100 label set for the class folders (default: fine, 100 classes)",
    )
    parser.add_argument(
        "--class-names",
        nargs="+",
        default=None,
        help="folder names in label order (default: from the source, else CIFAR-10's names)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete existing OUT/<split> folders first"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        arrays = read_sources(args.sources, args.cifar100_labels, args.class_names)
        counts = export_arrays(
            arrays,
            args.out,
            limit_per_class=args.limit_per_class,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ValueError as err:
        raise SystemExit(f"cueco-cifar-to-folder: error: {err}") from None
    for split, per_class in counts.items():
        print(f"{split}: {sum(per_class.values())} images in {len(per_class)} class folders")
    print(f"wrote {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
