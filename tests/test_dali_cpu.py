"""CPU DALI pretraining on real image files, with the real nvidia-dali wheel and real solo-learn.

cueco_plugin.data.dali runs solo-learn's own DALI module (file reader, decoder, augmentations) on
the CPU; the end-to-end tests train CueCo through ``python -m cueco_plugin.pretrain``, i.e.
solo-learn's main_pretrain.py with that module swapped in.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, requires_dali, requires_solo
from omegaconf import OmegaConf

pytestmark = [requires_solo, requires_dali]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")

CONFIGS = REPO_ROOT / "configs" / "pretrain"
CIFAR_AUGS = CONFIGS / "cpu" / "augmentations" / "cifar_small.yaml"
IMAGENET_AUGS = CONFIGS / "custom" / "augmentations" / "mocov2plus.yaml"


def _labels_by_file_index(folder: Path) -> list[int]:
    """Class index of every image in the order solo-learn's DALI builder lists the files."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return [i for i, c in enumerate(classes) for _ in sorted(os.listdir(folder / c))]


def _transforms(augs: Path, crop: int | None = None):
    from solo.data.dali_dataloader import build_transform_pipeline_dali
    from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation

    aug_cfg = OmegaConf.load(augs)
    for aug in aug_cfg:
        aug.crop_size = crop or aug.crop_size
    return FullTransformPipeline(
        [
            NCropAugmentation(build_transform_pipeline_dali("custom", a, "cpu"), a.num_crops)
            for a in aug_cfg
        ]
    )


def _module(cls, folder: Path, transforms, batch: int, encode: bool = False):
    from lightning.pytorch import Trainer

    module = cls(
        dataset="custom",
        train_data_path=folder,
        transforms=transforms,
        num_large_crops=2,
        num_small_crops=0,
        batch_size=batch,
        num_workers=2,
        dali_device="cpu",
        encode_indexes_into_labels=encode,
    )
    module.trainer = Trainer(accelerator="cpu", devices=1, logger=False)  # ranks for setup
    return module


def _datamodule(folder: Path, augs: Path, crop: int, batch: int, encode: bool):
    from cueco_plugin.data.dali import CPUCapablePretrainDALIDataModule

    return _module(CPUCapablePretrainDALIDataModule, folder, _transforms(augs, crop), batch, encode)


@no_cuda
@pytest.mark.parametrize(
    "dataset, augs, crop, encode",
    [
        ("cifar10-folder-small", CIFAR_AUGS, 32, True),  # real CIFAR-10 PNGs
        ("imagenette-small", IMAGENET_AUGS, 96, False),  # real Imagenette JPEGs
    ],
)
def test_cpu_dali_module_yields_two_normalised_views_with_true_labels(
    shared_datasets, dataset, augs, crop, encode
):
    folder = shared_datasets / dataset / "train"
    module = _datamodule(folder, augs, crop, batch=16, encode=encode)
    module.setup("fit")
    loader = module.train_dataloader()
    expected_labels = _labels_by_file_index(folder)
    assert len(loader) == len(expected_labels) // 16  # DROP policy: full batches only

    seen = set()
    for step, (indexes, views, targets) in enumerate(loader):
        assert indexes.shape == targets.shape == (16,)
        assert indexes.dtype == targets.dtype == torch.int64
        assert len(views) == 2
        for view in views:
            assert view.shape == (16, 3, crop, crop)
            assert view.dtype == torch.float32 and view.device.type == "cpu"
            assert torch.isfinite(view).all()
            assert -4.0 < view.mean().item() < 4.0 and view.std().item() > 0.1  # normalised
        assert not torch.equal(views[0], views[1])  # two independent augmentations
        if encode:  # real sample indexes, labels looked up from them
            assert targets.tolist() == [expected_labels[i] for i in indexes.tolist()]
            seen.update(indexes.tolist())
        else:
            assert set(targets.tolist()) <= set(expected_labels)
        if step == 2:
            break
    if encode:
        assert len(seen) == 48  # 3 batches of distinct images


@no_cuda
def test_stock_solo_dali_module_cannot_build_a_cpu_pipeline_without_cuda_and_ours_can(
    shared_datasets,
):
    """Why cueco_plugin.data.dali exists: solo-learn's module asks DALI for device_id=local_rank;
    ours is the same module with the model's device (None for a CPU model) for the pipeline, and
    leaves solo-learn as it was."""
    from solo.data import dali_dataloader
    from solo.data.dali_dataloader import PretrainDALIDataModule, PretrainPipelineBuilder

    from cueco_plugin.data.dali import CPUCapablePretrainDALIDataModule, pipeline_device_id

    folder = shared_datasets / "cifar10-folder-small" / "train"
    stock = _module(PretrainDALIDataModule, folder, _transforms(CIFAR_AUGS), batch=8)
    with pytest.raises(RuntimeError, match="CUDA"):
        stock.setup("fit")
    ours = _module(CPUCapablePretrainDALIDataModule, folder, _transforms(CIFAR_AUGS), batch=8)
    ours.setup("fit")
    assert next(iter(ours.train_dataloader()))[1][0].shape == (8, 3, 32, 32)
    assert dali_dataloader.PretrainPipelineBuilder is PretrainPipelineBuilder
    assert pipeline_device_id("cpu", torch.device("cpu")) is None


def _train_rows(metrics: Path) -> list[dict[str, str]]:
    return [r for r in csv.DictReader(metrics.open()) if r.get("train_nce_loss")]


@pytest.mark.slow
def test_cueco_pretrains_with_cpu_dali_through_the_entry_point(
    shared_datasets, solo_root, tmp_path
):
    cifar = shared_datasets / "cifar10-folder-small"
    cmd = [
        sys.executable,
        "-m",
        "cueco_plugin.pretrain",
        "--config-path",
        str(CONFIGS / "cpu"),
        "--config-name",
        "cueco_dali.yaml",
        f"data.train_path={cifar / 'train'}",
        f"data.val_path={cifar / 'val'}",
        "limit_train_batches=5",
        "limit_val_batches=1",
        f"+default_root_dir={tmp_path}",
    ]
    # one intra-op thread: the two DALI threads already fill this 2-core machine, and OpenMP
    # threads that wait for a busy core make each step many times slower
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SOLO_LEARN_ROOT": str(solo_root)}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    (metrics_file,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    train = _train_rows(metrics_file)
    assert [int(r["step"]) for r in train] == list(range(5))
    for row in train:
        for key in ("train_nce_loss", "train_centroid_loss", "train_variance_loss"):
            assert math.isfinite(float(row[key])), (key, row)
    # freeze_iters=2 in the config: the cluster losses switch on after the freeze
    assert all(float(r["train_centroid_loss"]) == 0.0 for r in train[:2])
    assert any(float(r["train_centroid_loss"]) > 0.0 for r in train[2:])
    val = [r for r in rows if r.get("val_loss")]
    assert val and math.isfinite(float(val[-1]["val_loss"]))


@pytest.mark.parametrize(
    "config_dir, config_name",
    [("custom", "cueco_dali.yaml"), ("imagenet-100", "cueco.yaml")],
)
def test_gpu_dali_configs_compose_and_pass_cueco_validation(
    shared_datasets, config_dir, config_name
):
    from hydra import compose, initialize_config_dir
    from solo.args.pretrain import parse_cfg

    from cueco_plugin.registration import register

    cueco_cls = register()
    images = shared_datasets / "imagenette-small"
    with initialize_config_dir(config_dir=str(CONFIGS / config_dir), version_base="1.2"):
        cfg = compose(
            config_name=config_name,
            overrides=[f"data.train_path={images / 'train'}", f"data.val_path={images / 'val'}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.callbacks.cueco._target_ == "cueco_plugin.registration.RegisterCueCo"
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    cfg = parse_cfg(cfg)
    cfg = cueco_cls.add_and_assert_specific_cfg(cfg)
    assert cfg.method == "cueco" and cfg.data.format == "dali"
    assert cfg.dali.device == "gpu" and cfg.accelerator == "gpu"
    assert cfg.dali.encode_indexes_into_labels is False  # CueCo keeps no per-sample state
    assert cfg.data.num_large_crops == 2 and cfg.data.num_small_crops == 0
    global_batch = cfg.optimizer.batch_size * len(cfg.devices) * cfg.num_nodes
    assert cfg.method_kwargs.queue_size % global_batch == 0


@pytest.mark.slow
def test_entry_point_trains_with_dali_and_no_validation_folder(
    shared_datasets, solo_root, tmp_path, monkeypatch
):
    """Stock main_pretrain.py hands Lightning a None val loader here (TypeError in 2.1)."""
    from cueco_plugin.cli.pretrain import main

    monkeypatch.setenv("SOLO_LEARN_ROOT", str(solo_root))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess test: DALI's threads use the cores
    try:
        main(
            [
                "--config-path",
                str(CONFIGS / "cpu"),
                "--config-name",
                "cueco_dali.yaml",
                f"data.train_path={shared_datasets / 'cifar10-folder-small' / 'train'}",
                "data.val_path=null",
                "limit_train_batches=3",
                f"++default_root_dir={tmp_path}",
                "++enable_progress_bar=False",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    (metrics_file,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    train = _train_rows(metrics_file)
    assert [int(r["step"]) for r in train] == [0, 1, 2]
    assert all(math.isfinite(float(r["train_nce_loss"])) for r in train)
    assert not any(r.get("val_loss") for r in csv.DictReader(metrics_file.open()))


def test_exported_cifar_tree_is_read_by_solo_custom_dataset_and_by_dali(shared_datasets, tmp_path):
    import numpy as np
    from solo.data.pretrain_dataloader import prepare_datasets

    from cueco_plugin.cli.cifar_to_folder import CIFAR10_CLASSES
    from cueco_plugin.cli.cifar_to_folder import main as export

    source = shared_datasets / "cifar10" / "cifar10_test.npz"
    export([f"train={source}", "-o", str(tmp_path), "--limit-per-class", "3", "--no-progress"])
    with np.load(source) as data:
        images = data["images"]

    dataset = prepare_datasets("custom", np.asarray, train_data_path=tmp_path / "train")
    assert dataset.classes == list(CIFAR10_CLASSES) and len(dataset) == 30
    for (path, label), index in zip(dataset.samples[::7], range(0, 30, 7)):
        returned_index, pixels, target = dataset[index]  # solo-learn adds the sample index
        assert returned_index == index and target == label
        np.testing.assert_array_equal(pixels, images[int(Path(path).stem)])

    module = _datamodule(tmp_path / "train", CIFAR_AUGS, 32, batch=10, encode=True)
    module.setup("fit")
    indexes, views, targets = next(iter(module.train_dataloader()))
    expected = _labels_by_file_index(tmp_path / "train")
    assert views[0].shape == (10, 3, 32, 32)
    assert targets.tolist() == [expected[i] for i in indexes.tolist()]
