"""Checks an image folder before training, so bad data is named before the first step, not
after an epoch (a bad validation image) or by a loader error without a file name.

What is checked in ``<root>/<class>/**/<image>`` (or ``<root>/<image>`` without labels):

- the folder exists and holds class folders, none of them without images;
- files that are not images (by extension, as torchvision's ``ImageFolder`` filters them):
  torchvision skips them, but solo-learn's DALI reader and its label-free dataset take every
  file, so for those they are an error naming them;
- unreadable files, named with their path: empty files always; up to ``decode_limit`` images
  every image is decoded (PIL ``load``); up to ``header_limit`` images each one's header is
  parsed and its end checked (PNG ``IEND``, JPEG ``EOI``), which finds truncated files without
  decoding them; beyond that only the structure is checked (and the report says so).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

DECODE_LIMIT = 5_000
HEADER_LIMIT = 60_000
_SHOWN = 8  # bad files named in one error
_TAIL_MARKERS = {".png": b"IEND", ".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9"}


class DataCheckError(ValueError):
    """A data folder that training cannot use; the message names the folder or the files."""


@dataclass
class FolderReport:
    """What :func:`check_image_folder` found."""

    root: Path
    classes: list[str]
    images: list[Path]
    not_images: list[Path] = field(default_factory=list)
    level: str = "decoded"  # "decoded", "headers" or "structure"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def _listing(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def _problem(path: Path, decode: bool) -> str | None:
    """Why ``path`` cannot be read as an image, or None."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as image:
            if decode:
                image.load()
            else:
                marker = _TAIL_MARKERS.get(path.suffix.lower())
                if marker is not None:
                    with path.open("rb") as handle:
                        handle.seek(max(0, path.stat().st_size - 1024))
                        if marker not in handle.read():
                            return "truncated (no end-of-image marker)"
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file
        return f"{type(err).__name__}: {err}"
    return None


def _walk(folder: Path) -> list[Path]:
    return sorted(
        Path(top) / name for top, _, names in os.walk(folder, followlinks=True) for name in names
    )


def check_image_folder(
    root: str | Path,
    key: str = "data.train_path",
    labelled: bool = True,
    every_file_read: bool = False,
    decode_limit: int = DECODE_LIMIT,
    header_limit: int = HEADER_LIMIT,
) -> FolderReport:
    """Checks the image folder ``root`` given as config key ``key``.

    Args:
        labelled: class folders (``ImageFolder``); False: images directly in ``root``.
        every_file_read: the loader reads every file, not only images (solo-learn's DALI reader,
            its label-free dataset): a non-image file is then an error.

    Raises:
        DataCheckError: naming the folder, the empty class folders, or the bad files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataCheckError(f"{key}={str(root)!r} is not a folder")
    if labelled:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not classes:
            raise DataCheckError(
                f"{key}={str(root)!r} holds no class folders: expected {root}/<class>/<image>"
            )
        files = {name: _walk(root / name) for name in classes}
        if every_file_read:  # solo-learn's DALI reader lists each class folder, not deeper
            files = {name: sorted((root / name).iterdir()) for name in classes}
        empty = [name for name in classes if not any(_is_image(p) for p in files[name])]
        if empty:
            raise DataCheckError(
                f"{key}={str(root)!r}: class folder(s) without images: {_listing(empty)}"
            )
        found = [p for name in classes for p in files[name]]
    else:
        classes = []
        found = sorted(root.iterdir())
        every_file_read = True
    images = [p for p in found if _is_image(p) and p.is_file()]
    image_set = set(images)
    others = [p for p in found if p not in image_set]
    if others and every_file_read:
        raise DataCheckError(
            f"{key}={str(root)!r}: not image files (allowed extensions {', '.join(IMG_EXTENSIONS)})"
            f", which this loader would try to decode: {_listing(others)}; move them out"
        )
    level = "decoded" if len(images) <= decode_limit else "headers"
    if len(images) > header_limit:
        level = "structure"
    if level != "structure":
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(lambda p: _problem(p, level == "decoded"), images))
        bad = [Path(f"{p} ({why})") for p, why in zip(images, problems) if why]
        if bad:
            raise DataCheckError(f"{key}={str(root)!r}: unreadable image(s): {_listing(bad)}")
    return FolderReport(root, classes, images, others, level)
