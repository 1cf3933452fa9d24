"""The CIFAR exporter writes real CIFAR pixels into a class-per-folder PNG tree, bit-exact, read
through torchvision's CIFAR classes or the shared .npz reader; it refuses labels outside its class
names, and an interrupted export leaves no tree that looks complete."""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cueco_plugin.cli.cifar_to_folder import (
    CIFAR10_CLASSES,
    MANIFEST_NAME,
    main,
    read_sources,
    select_per_class,
)


@pytest.fixture(scope="module")
def real_test_split(shared_datasets: Path) -> dict[str, np.ndarray]:
    """The first 300 images of the real CIFAR-10 test file: images (300, 32, 32, 3) uint8."""
    with np.load(shared_datasets / "cifar10" / "cifar10_test.npz") as data:
        return {
            "images": data["images"][:300].copy(),
            "labels": data["labels"][:300].copy(),
            "class_names": data["class_names"].copy(),
        }


def _read_tree(root: Path) -> dict[str, dict[str, list[Path]]]:
    return {
        split.name: {c.name: sorted(c.glob("*.png")) for c in sorted(split.iterdir())}
        for split in sorted(root.iterdir())
        if split.is_dir()
    }


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def test_npz_export_limits_per_class_and_round_trips_pixels_bit_exact(real_test_split, tmp_path):
    npz = tmp_path / "slice_test.npz"
    np.savez(npz, **real_test_split)
    out = tmp_path / "tree"
    assert main([str(npz), "-o", str(out), "--limit-per-class", "4", "--no-progress"]) == 0

    tree = _read_tree(out)
    assert list(tree) == ["val"]  # "test" in the file name -> val split
    assert list(tree["val"]) == list(CIFAR10_CLASSES)
    images, labels = real_test_split["images"], real_test_split["labels"]
    for class_index, name in enumerate(CIFAR10_CLASSES):
        files = tree["val"][name]
        assert len(files) == 4
        expected = np.flatnonzero(labels == class_index)[:4]
        assert [int(f.stem) for f in files] == expected.tolist()
        for path, index in zip(files, expected):
            np.testing.assert_array_equal(_pixels(path), images[index])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["counts"]["val"] == dict.fromkeys(CIFAR10_CLASSES, 4)


def test_several_npz_files_per_split_are_concatenated_in_order(real_test_split, tmp_path):
    images, labels = real_test_split["images"], real_test_split["labels"]
    a, b, c = tmp_path / "part_a.npz", tmp_path / "part_b.npz", tmp_path / "held_out.npz"
    np.savez(a, images=images[:100], labels=labels[:100])
    np.savez(b, images=images[100:200], labels=labels[100:200])
    np.savez(c, images=images[200:], labels=labels[200:])
    out = tmp_path / "tree"
    main([f"train={a}", f"train={b}", f"val={c}", "-o", str(out), "--no-progress"])

    tree = _read_tree(out)
    assert sum(len(v) for v in tree["train"].values()) == 200
    assert sum(len(v) for v in tree["val"].values()) == 100
    for name, files in tree["train"].items():
        for path in files:
            index = int(path.stem)
            assert CIFAR10_CLASSES[labels[index]] == name
            np.testing.assert_array_equal(_pixels(path), images[index])
    first_val = tree["val"][CIFAR10_CLASSES[labels[200]]][0]
    np.testing.assert_array_equal(_pixels(first_val), images[200])


def _write_pickle(path: Path, payload: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(payload, handle)  # str keys, as Python 3 reads the original batches


def _torchvision_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> torchvision's (N, 3072) rows: the R, G and B planes one after another."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _cifar10_dir(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """torchvision's cifar-10-batches-py layout re-packed from real images: 5 train batches of 20
    and a test batch of 50 (so the md5 sums differ from the originals)."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(5):
        part = slice(20 * i, 20 * (i + 1))
        _write_pickle(
            root / f"data_batch_{i + 1}",
            {"data": _torchvision_rows(images[part]), "labels": labels[part].tolist()},
        )
    _write_pickle(
        root / "test_batch", {"data": _torchvision_rows(images[100:150]), "labels": labels[100:150]}
    )
    _write_pickle(root / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})
    return root


def test_torchvision_cifar10_files_export_with_their_label_names(real_test_split, tmp_path):
    images, labels = real_test_split["images"], real_test_split["labels"]
    _cifar10_dir(tmp_path, images, labels)
    out = tmp_path / "tree"
    # torchvision's root, the parent; re-packed files need --skip-md5
    main([str(tmp_path), "-o", str(out), "--no-progress", "--skip-md5"])

    tree = _read_tree(out)
    assert list(tree["train"]) == list(CIFAR10_CLASSES)
    assert sum(len(v) for v in tree["train"].values()) == 100
    assert sum(len(v) for v in tree["val"].values()) == 50
    for split, offset in (("train", 0), ("val", 100)):
        for name, files in tree[split].items():
            for path in files:
                index = offset + int(path.stem)
                assert CIFAR10_CLASSES[labels[index]] == name
                np.testing.assert_array_equal(_pixels(path), images[index])


def test_torchvision_files_are_md5_checked_by_default(real_test_split, tmp_path):
    root = _cifar10_dir(tmp_path, real_test_split["images"], real_test_split["labels"])
    with pytest.raises(SystemExit, match="corrupted.*--skip-md5"):
        main([str(root), "-o", str(tmp_path / "tree"), "--no-progress"])
    (root / "data_batch_3").unlink()
    with pytest.raises(SystemExit, match="not found or corrupted"):
        main([str(root), "-o", str(tmp_path / "tree"), "--no-progress", "--skip-md5"])
    assert not (tmp_path / "tree").exists()


def test_torchvision_cifar100_files_use_the_fine_labels(real_test_split, tmp_path):
    images = real_test_split["images"][:40]
    fine = np.arange(40) % 4
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, part in (("train", slice(0, 30)), ("test", slice(30, 40))):
        _write_pickle(
            root / name,
            {
                "data": _torchvision_rows(images[part]),
                "fine_labels": fine[part].tolist(),
                "coarse_labels": (fine[part] % 2).tolist(),
            },
        )
    _write_pickle(
        root / "meta",
        {
            "fine_label_names": ["apple", "aquarium_fish", "baby", "bear"],
            "coarse_label_names": ["aquatic_mammals", "fish"],
        },
    )
    main([str(root), "-o", str(tmp_path / "fine"), "--no-progress", "--skip-md5"])

    fine_tree = _read_tree(tmp_path / "fine")
    assert {k: len(v) for k, v in fine_tree["train"].items()} == {
        "apple": 8,
        "aquarium_fish": 8,
        "baby": 7,
        "bear": 7,
    }
    assert sum(len(v) for v in fine_tree["val"].values()) == 10
    bear = fine_tree["train"]["bear"][0]
    np.testing.assert_array_equal(_pixels(bear), images[int(bear.stem)])


def test_select_per_class_keeps_the_first_n_of_each_class_in_source_order():
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 1])
    np.testing.assert_array_equal(select_per_class(labels, 2), [0, 1, 2, 3, 4, 7])
    np.testing.assert_array_equal(select_per_class(labels, None), np.arange(8))
    with pytest.raises(ValueError, match="limit_per_class=0"):
        select_per_class(labels, 0)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((4, 3, 32, 32), np.uint8), "labels": np.zeros(4, int)}, "NHWC"),
        ({"images": np.zeros((4, 32, 32, 3), np.float32), "labels": np.zeros(4, int)}, "uint8"),
        ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(3, int)}, "labels"),
        ({"x": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(4, int)}, "no 'images'"),
        (
            {
                "images": np.zeros((4, 32, 32, 3), np.uint8),
                "labels": np.full(4, 12),
                "class_names": np.array(CIFAR10_CLASSES),
            },
            "outside 0..9",
        ),
    ],
)
def test_bad_npz_arrays_fail_with_a_message_naming_the_problem(tmp_path, arrays, message):
    npz = tmp_path / "bad_train.npz"
    np.savez(npz, **arrays)
    with pytest.raises(SystemExit, match=message):
        main([str(npz), "-o", str(tmp_path / "out"), "--no-progress"])


def test_labels_beyond_the_class_names_are_refused_before_anything_is_written(tmp_path):
    """The reported fault: out-of-range labels got class folders of their own."""
    npz = tmp_path / "odd_train.npz"
    np.savez(npz, images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.array([0, 1, 12]))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="labels go up to 12 but no class names were given"):
        main([str(npz), "-o", str(out), "--no-progress"])
    with pytest.raises(SystemExit, match=r"label 12 outside 0..2 \(\['a', 'b', 'c'\]\)"):
        main([str(npz), "-o", str(out), "--no-progress", "--class-names", "a", "b", "c"])
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_a_killed_export_leaves_no_tree_that_looks_complete(shared_datasets, tmp_path):
    """The reported fault: an interrupted export left a 0-byte PNG and a manifest that listed
    what was not there, in a tree that looked complete."""
    out = tmp_path / "tree"
    command = [
        sys.executable,
        "-m",
        "cueco_plugin.cli.cifar_to_folder",
        "--no-progress",
        "-o",
        str(out),
    ]
    source = str(shared_datasets / "cifar10" / "cifar10_test.npz")
    run = subprocess.Popen([*command, source], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while run.poll() is None and time.time() < deadline:
        if len(list(tmp_path.glob(".tree.partial-*/val/*/*.png"))) > 50:
            run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert run.wait() == -signal.SIGKILL, run.stderr.read()
    assert not out.exists()
    (partial,) = tmp_path.glob(".tree.partial-*")
    assert not (partial / MANIFEST_NAME).exists()

    main([*command[3:], f"val={source}", "--limit-per-class", "2"])
    assert not partial.exists()  # the stale partial tree is removed
    assert json.loads((out / MANIFEST_NAME).read_text())["counts"]["val"] == dict.fromkeys(
        CIFAR10_CLASSES, 2
    )
    assert sum(1 for _ in out.rglob("*.png")) == 20


def test_wrong_paths_and_an_occupied_output_fail_clearly(real_test_split, tmp_path):
    with pytest.raises(ValueError, match="source not found"):
        read_sources([str(tmp_path / "missing")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds neither cifar-10-batches-py nor cifar-100-python"):
        read_sources([str(empty)])
    unnamed = tmp_path / "cifar.npz"
    np.savez(unnamed, images=real_test_split["images"][:5], labels=real_test_split["labels"][:5])
    with pytest.raises(ValueError, match="write train=PATH or val=PATH"):
        read_sources([str(unnamed)])
    broken = tmp_path / "cifar-10-batches-py"
    broken.mkdir()
    _write_pickle(broken / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})
    with pytest.raises(ValueError, match="not found or corrupted"):
        read_sources([str(broken)], check_md5=False)
    shutil.rmtree(broken)

    out = tmp_path / "tree"
    args = [f"val={unnamed}", "-o", str(out), "--no-progress"]
    main(args)
    with pytest.raises(SystemExit, match="--overwrite"):
        main(args)
    main([*args, "--overwrite", "--limit-per-class", "1"])
    assert sum(1 for _ in (out / "val").rglob("*.png")) == len(set(real_test_split["labels"][:5]))


def test_module_entry_point_shows_a_progress_bar(real_test_split, tmp_path):
    npz = tmp_path / "mini_train.npz"
    np.savez(npz, images=real_test_split["images"][:20], labels=real_test_split["labels"][:20])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cueco_plugin.cli.cifar_to_folder",
            str(npz),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "20/20" in result.stderr  # tqdm's bar
    assert "train: 20 images in 10 class folders" in result.stdout
