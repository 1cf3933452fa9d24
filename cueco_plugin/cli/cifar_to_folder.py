"""``cueco-cifar-to-folder``: CIFAR-10/100 as a class-per-folder PNG tree that solo-learn's
``custom`` dataset and its DALI reader both load::

    OUT/train/<class name>/<index>.png   OUT/val/<class name>/<index>.png   OUT/cifar_folder.json

PNG is lossless, so the pixels are the source pixels; ``<index>`` is the image's position in its
split, so sorted names keep the source order, and CIFAR's class names sort in label order.

Sources (nothing is downloaded): torchvision's CIFAR folder (``cifar-10-batches-py`` or
``cifar-100-python``, or the folder holding it), read with ``torchvision.datasets.CIFAR10/100``
(which checks the files' md5; ``--skip-md5`` for re-packed files); or ``.npz`` files with
``images`` (N, H, W, 3) uint8 and ``labels`` (N,), and optionally ``class_names``, or folders of
them. An ``.npz`` goes to ``train`` when its name contains "train", to ``val`` for "test"/"val";
``train=PATH`` / ``val=PATH`` say it explicitly.

The tree is written into ``.OUT.partial-<pid>`` beside ``OUT`` and renamed to ``OUT`` when
complete, so an interrupted export never leaves a tree that looks complete.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from tqdm import tqdm

from cueco_plugin.data.npz import load_npz_arrays, npz_class_names

SPLITS = ("train", "val")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
CIFAR10_CLASSES += ("dog", "frog", "horse", "ship", "truck")
MANIFEST_NAME = "cifar_folder.json"
Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images (N,H,W,3) uint8, labels (N,))


def _without_md5(cls: type) -> type:
    """torchvision's CIFAR class with its md5 checks off (file presence is still checked)."""
    lists = {
        key: [[name, None] for name, _ in getattr(cls, key)] for key in ("train_list", "test_list")
    }
    return type(cls.__name__, (cls,), {**lists, "meta": {**cls.meta, "md5": None}})


def read_torchvision(folder: Path, check_md5: bool = True) -> tuple[Arrays, list[str]]:
    """Both splits of torchvision's CIFAR-10 or CIFAR-100 files at or directly under ``folder``."""
    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):
        base = cls.base_folder
        root = folder.parent if folder.name == base else folder
        if (root / base).is_dir():
            break
    else:
        raise ValueError(f"{folder} holds neither cifar-10-batches-py nor cifar-100-python")
    cls = cls if check_md5 else _without_md5(cls)
    try:
        sets = {split: cls(str(root), train=split == "train", download=False) for split in SPLITS}
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        raise ValueError(
            f"{root / base}: {err} (md5 checked; --skip-md5 for re-packed files)".replace(
                " You can use download=True to download it", ""
            )
        ) from None
    arrays = {s: (d.data, np.asarray(d.targets, dtype=np.int64)) for s, d in sets.items()}
    return arrays, list(sets["train"].classes)


def _split_of(path: Path) -> str:
    stem = path.stem.lower()
    if "train" in stem:
        return "train"
    if "test" in stem or "val" in stem:
        return "val"
    raise ValueError(f"cannot tell the split of {path}: write train=PATH or val=PATH")


def read_sources(sources: Sequence[str], check_md5: bool = True) -> tuple[Arrays, list[str] | None]:
    """Reads one torchvision CIFAR folder, or ``.npz`` files and folders of them."""
    files: dict[str, list[Path]] = {}
    for text in sources:
        match = re.fullmatch(r"(train|val|test)=(.+)", text)
        split, path = (match.group(1), Path(match.group(2))) if match else (None, Path(text))
        if not path.exists():
            raise ValueError(f"source not found: {path}")
        if path.is_dir() and not list(path.glob("*.npz")):
            if len(sources) != 1:
                raise ValueError(f"{path}: a torchvision CIFAR folder must be the only source")
            return read_torchvision(path, check_md5)
        for file in sorted(path.glob("*.npz")) if path.is_dir() else [path]:
            files.setdefault("val" if split == "test" else split or _split_of(file), []).append(
                file
            )
    arrays = {s: load_npz_arrays(files[s]) for s in SPLITS if s in files}
    return arrays, npz_class_names([f for fs in files.values() for f in fs])


def select_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices (ascending) of the first ``limit`` images of each class; all for None.
    labels: (N,) ints -> (M,) int64."""
    if limit is None:
        return np.arange(len(labels))
    if limit <= 0:
        raise ValueError(f"limit_per_class={limit}: must be a positive integer")
    order = np.argsort(labels, kind="stable")
    rank = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order], side="left")
    return np.sort(order[rank < limit])


def export_arrays(
    arrays: Arrays,
    class_names: Sequence[str] | None,
    out: Path,
    limit_per_class: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Writes ``out/<split>/<class>/<index>.png`` (via a temporary folder); returns
    split -> class -> count. Labels outside ``class_names`` are refused before writing."""
    top = max(int(labels.max(initial=-1)) for _, labels in arrays.values())
    if class_names is None and top >= len(CIFAR10_CLASSES):
        raise ValueError(f"labels go up to {top} but no class names were given: --class-names")
    names = [re.sub(r"[\\/:\s]+", "_", n.strip()) for n in class_names or CIFAR10_CLASSES]
    if len(set(names)) != len(names) or {"", ".", ".."} & set(names):
        raise ValueError(f"class names {names} do not give distinct folder names")
    for split, (_, labels) in arrays.items():
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            bad = int(labels[(labels < 0) | (labels >= len(names))][0])
            raise ValueError(f"split '{split}': label {bad} outside 0..{len(names) - 1} ({names})")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace it")
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    counts: dict[str, dict[str, int]] = {}
    for split, (images, labels) in arrays.items():
        keep = select_per_class(labels, limit_per_class)
        width = max(5, len(str(len(labels) - 1)))
        for name in names:
            (tmp / split / name).mkdir(parents=True, exist_ok=True)
        for index in tqdm(keep, desc=f"{split} -> {out / split}", unit="img", disable=not progress):
            path = tmp / split / names[labels[index]] / f"{index:0{width}d}.png"
            Image.fromarray(images[index], mode="RGB").save(path, format="PNG")
        counts[split] = {n: int((labels[keep] == i).sum()) for i, n in enumerate(names)}
    manifest = {"class_names": names, "limit_per_class": limit_per_class, "counts": counts}
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        old = out.parent / f".{out.name}.partial-{os.getpid()}-old"
        os.replace(out, old)
        shutil.rmtree(old)
    os.replace(tmp, out)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cueco-cifar-to-folder",
        description="Write CIFAR-10/100 (torchvision's files or .npz arrays) as a class-per-folder "
        "PNG tree OUT/{train,val}/<class>/<index>.png for solo-learn's 'custom' dataset and DALI.",
    )
    parser.add_argument(
        "sources", nargs="+", help="a torchvision CIFAR folder, or .npz files and folders of them"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    parser.add_argument("--limit-per-class", type=int, help="first N images of each class only")
    parser.add_argument("--class-names", nargs="+", help="folder names in label order")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--skip-md5", action="store_true", help="no md5 check of torchvision files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        arrays, names = read_sources(args.sources, check_md5=not args.skip_md5)
        names = args.class_names or names
        counts = export_arrays(
            arrays, names, args.out, args.limit_per_class, args.overwrite, not args.no_progress
        )
    except ValueError as err:
        raise SystemExit(f"cueco-cifar-to-folder: error: {err}") from None
    for split, per_class in counts.items():
        print(f"{split}: {sum(per_class.values())} images in {len(per_class)} class folders")
    print(f"wrote {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
