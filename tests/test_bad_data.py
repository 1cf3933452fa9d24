"""Bad data is named before the first step: real CIFAR-10 PNGs and Imagenette JPEGs, truncated,
emptied or replaced by text, a README.txt in a class folder, an empty class folder; under stock
``main_pretrain.py`` a bad validation image stops the run before training, naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import requires_solo
from solo_runs import linked_image_folder, run_main_pretrain

from cueco_plugin.data.checks import DataCheckError, check_image_folder


def _truncate(path: Path) -> Path:
    """Replaces the symlinked real image at ``path`` by its first half."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture()
def folder(shared_datasets: Path, tmp_path: Path) -> Path:
    """Three classes of three real CIFAR-10 PNGs each (symlinks)."""
    source = shared_datasets / "cifar10-folder-small" / "train"
    return linked_image_folder(source, tmp_path / "train", per_class=3, num_classes=3)


def _an_image(root: Path) -> Path:
    return sorted(next(root.iterdir()).iterdir())[0]


def test_a_good_folder_passes_with_every_image_decoded(folder: Path) -> None:
    report = check_image_folder(folder)
    assert len(report.classes) == 3 and len(report.images) == 9 and report.level == "decoded"
    assert check_image_folder(folder, decode_limit=0).level == "headers"
    assert check_image_folder(folder, decode_limit=0, header_limit=0).level == "structure"


@pytest.mark.parametrize("decode_limit", [5000, 0], ids=["decoded", "header_and_end"])
def test_a_truncated_png_is_named_with_its_path(folder: Path, decode_limit: int) -> None:
    bad = _truncate(_an_image(folder))
    with pytest.raises(DataCheckError, match="unreadable image") as err:
        check_image_folder(folder, decode_limit=decode_limit)
    assert str(bad) in str(err.value) and "data.train_path" in str(err.value)


def test_a_truncated_jpeg_is_named_even_without_decoding(
    shared_datasets: Path, tmp_path: Path
) -> None:
    source = sorted((shared_datasets / "imagenette-small" / "val").iterdir())[0]
    root = tmp_path / "val"
    shutil.copytree(source, root / source.name)
    bad = sorted((root / source.name).iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:-4000])
    for decode_limit in (5000, 0):
        with pytest.raises(DataCheckError, match=str(bad)):
            check_image_folder(root, "data.val_path", decode_limit=decode_limit)


def test_empty_files_and_text_named_png_are_named(folder: Path) -> None:
    empty = folder / "airplane" / "empty.png"
    empty.touch()
    text = folder / "automobile" / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataCheckError) as err:
        check_image_folder(folder, decode_limit=0)
    assert f"{empty} (empty file)" in str(err.value)
    assert f"{text} (UnidentifiedImageError" in str(err.value)


def test_a_readme_in_a_class_folder_is_skipped_for_torchvision_and_named_for_dali(
    folder: Path,
) -> None:
    """The reported fault: DALI died on a README.txt with `nvImageCodec failure: '#17'`."""
    readme = folder / "bird" / "README.txt"
    readme.write_text("where these images come from")
    report = check_image_folder(folder)
    assert report.not_images == [readme] and len(report.images) == 9
    with pytest.raises(DataCheckError, match="not image files") as err:
        check_image_folder(folder, every_file_read=True)
    assert str(readme) in str(err.value) and "move them out" in str(err.value)


def test_an_empty_class_folder_and_a_folder_without_classes_are_refused(
    folder: Path, tmp_path: Path
) -> None:
    """The reported fault: DALI died with `not enough values to unpack` on an empty folder."""
    (folder / "zebra").mkdir()
    with pytest.raises(DataCheckError, match="class folder.* without images: zebra"):
        check_image_folder(folder)
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(DataCheckError, match="holds no class folders"):
        check_image_folder(flat)
    with pytest.raises(DataCheckError, match="is not a folder"):
        check_image_folder(tmp_path / "missing", "data.val_path")


@requires_solo
@pytest.mark.solo
def test_main_pretrain_stops_on_a_truncated_validation_png_before_training(
    solo_root: Path, folder: Path, shared_datasets: Path, tmp_path: Path
) -> None:
    """The reported fault: a bad validation image crashed after a whole training epoch, before
    its checkpoint was written."""
    val = tmp_path / "val"
    shutil.copytree(folder, val, symlinks=True)
    bad = _truncate(_an_image(val))
    done = run_main_pretrain(
        solo_root,
        tmp_path / "run",
        shared_datasets / "cifar10-folder-small" / "train",
        [f"data.val_path={val}"],
    )
    assert done.returncode == 2, done.stdout[-3000:]
    assert (
        f"CueCo pre-flight check failed: data.val_path='{val}': unreadable image(s): {bad}"
        in done.stdout
    ), done.stdout[-3000:]
    assert not (tmp_path / "run" / "trained_models").exists()  # no step was taken
