"""``python -m cueco_plugin.evaluate`` on a real tiny CueCo checkpoint and the real CIFAR-10 images,
on CPU: weighted k-NN, the bank's unsupervised classification, results.json and the pictures;
one-line errors for bad checkpoints and data."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_solo
from PIL import Image

from cueco_plugin.cli.evaluate import main
from cueco_plugin.evaluation import LabelledImages, extract_features, image_transform, load_cueco
from cueco_plugin.metrics import cluster_scores, contingency_table

pytestmark = [requires_solo, pytest.mark.solo, pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_cifar(shared_datasets: Path) -> Path:
    return shared_datasets / "cifar10-folder-small"


@pytest.fixture(scope="module")
def cifar_npz(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 images of the real CIFAR-10 test set, as a CIFAR .npz."""
    with np.load(shared_datasets / "cifar10" / "cifar10_test.npz") as data:
        images, labels, names = data["images"][:300], data["labels"][:300], data["class_names"]
    path = tmp_path_factory.mktemp("npz") / "cifar10_test_300.npz"
    np.savez(path, images=images, labels=labels, class_names=names)
    return path


def evaluate_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cueco-evaluate: error: ")
    return err


def test_evaluate_reports_knn_and_bank_clusters_and_writes_pictures_on_cpu(
    tiny_cueco_run: Path, small_cifar: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "cueco_plugin.evaluate", str(tiny_cueco_run)]
    command += [str(small_cifar / "train"), str(small_cifar / "val"), "--out", str(out)]
    command += ["--device", "cpu", "--num-workers", "0", "--gallery-clusters", "4"]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "features val: 100%" in done.stderr  # the progress bar of the feature pass
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == [1000, 500] and results["device"] == "cpu"
    for kind in ("backbone", "projector"):
        # real features and labels line up: well above the 10% of chance on 10 classes
        assert 15.0 < results["knn"][kind]["acc1"] <= results["knn"][kind]["acc5"] <= 100.0
    clusters = results["clusters"]
    assert clusters["num_clusters"] == 10 and 1 <= clusters["clusters_used"] <= 10
    assert 0.1 <= clusters["acc"] <= clusters["acc_m2o"] <= 1.0 and 0.0 <= clusters["nmi"] <= 1.0
    expected = "umap" if importlib.util.find_spec("umap") else "tsne"
    assert results["embedding"] == {"method": expected, "points": 500}
    for name in ("embedding.png", "gallery.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / name) as picture:
            assert min(picture.size) >= 200
    assert "Hungarian acc" in done.stdout and "NMI" in done.stdout


def test_bank_scores_are_those_of_the_models_nearest_centroids(
    tiny_cueco_run: Path, cifar_npz: Path, tmp_path: Path
) -> None:
    """One .npz (k-NN on its even/odd halves), t-SNE; the cluster scores equal those of
    ``model.bank.assign`` on the model's own projections of the same images."""
    out = tmp_path / "eval"
    main([str(tiny_cueco_run), str(cifar_npz), "--out", str(out), "--device", "cpu"]
         + ["--num-workers", "0", "--embedding", "tsne", "--max-points", "200"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == [300]
    assert results["embedding"] == {"method": "tsne", "points": 200}
    model, cfg, _ = load_cueco(tiny_cueco_run)
    mean, std = cfg.augmentations[0].mean, cfg.augmentations[0].std
    images = LabelledImages(cifar_npz, image_transform(mean, std, None))
    assert images.class_names[:2] == ["airplane", "automobile"]
    feats = extract_features(model, images, "cpu", batch_size=256)  # as the CLI
    with torch.no_grad():
        clusters = model.bank.assign(feats.z)
    expected = cluster_scores(contingency_table(clusters, feats.labels, 10, 10))
    for key in ("acc", "acc_m2o", "nmi"):
        assert results["clusters"][key] == pytest.approx(expected[key])


def test_evaluate_rejects_another_methods_checkpoint(
    tiny_cueco_run: Path, small_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = shutil.copytree(tiny_cueco_run, tmp_path / "run")
    args = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps(dict(args, method="mocov2plus")))
    err = evaluate_error([str(run), str(small_cifar / "val")], capsys)
    assert "'mocov2plus' checkpoint" in err and "not a CueCo checkpoint" in err


def test_evaluate_rejects_an_unreadable_checkpoint(
    tiny_cueco_run: Path, small_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copy(tiny_cueco_run / "args.json", tmp_path / "args.json")
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    err = evaluate_error([str(tmp_path / "broken.ckpt"), str(small_cifar / "val")], capsys)
    assert f"cannot read checkpoint {tmp_path / 'broken.ckpt'}" in err


def test_evaluate_rejects_a_checkpoint_without_args_json(
    tiny_cueco_run: Path, small_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = shutil.copy(next(tiny_cueco_run.glob("*.ckpt")), tmp_path / "alone.ckpt")
    err = evaluate_error([str(ckpt), str(small_cifar / "val")], capsys)
    assert "has no args.json beside it" in err


def test_evaluate_rejects_a_missing_checkpoint_and_a_missing_data_folder(
    tiny_cueco_run: Path, small_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = evaluate_error([str(tmp_path / "no_run"), str(small_cifar / "val")], capsys)
    assert f"checkpoint or run folder not found: {tmp_path / 'no_run'}" in err
    err = evaluate_error([str(tiny_cueco_run), str(tmp_path / "no_data")], capsys)
    assert f"data not found: {tmp_path / 'no_data'}" in err


def test_evaluate_rejects_images_of_different_sizes_and_names_them(
    tiny_cueco_run: Path, small_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "mixed" / "cat"
    folder.mkdir(parents=True)
    source = sorted((small_cifar / "val" / "cat").iterdir())[:2]
    shutil.copy(source[0], folder / "a.png")
    with Image.open(source[1]) as image:
        image.resize((40, 40)).save(folder / "b.png")
    err = evaluate_error([str(tiny_cueco_run), str(tmp_path / "mixed")], capsys)
    assert "images of different sizes" in err and "32x32" in err and "40x40" in err
    assert str(folder / "b.png") in err and "--image-size" in err
