"""CIFAR through DALI (cueco_plugin.data.dali_cifar) with the real nvidia-dali wheel on the CPU,
real solo-learn augmentations and real CIFAR-10 images; the configs through solo-learn's own
parse_cfg; the device DALI is put on; epochs that stay whole after partial ones and resume where
they stopped; CueCo fits through ``python -m cueco_plugin.pretrain``."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, requires_dali, requires_solo
from omegaconf import OmegaConf

pytestmark = [requires_solo, requires_dali]

CONFIGS = REPO_ROOT / "configs" / "pretrain"
CIFAR_AUGS = CONFIGS / "cifar" / "augmentations" / "mocov2plus.yaml"
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])


@pytest.fixture(scope="module")
def cifar(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real CIFAR-10 training images and 100 test images as .npz files in train/ and val/."""
    root = tmp_path_factory.mktemp("cifar_npz")
    for split, source, n in (("train", "cifar10_train_0", 300), ("val", "cifar10_test", 100)):
        with np.load(shared_datasets / "cifar10" / f"{source}.npz") as data:
            (root / split).mkdir()
            np.savez(
                root / split / "part.npz", images=data["images"][:n], labels=data["labels"][:n]
            )
    return root


def _arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "part.npz") as data:
        return data["images"], data["labels"].astype(np.int64)


def _transforms(augs: list | None = None):
    from solo.data.dali_dataloader import build_transform_pipeline_dali
    from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation

    augs = augs if augs is not None else OmegaConf.load(CIFAR_AUGS)
    return FullTransformPipeline(
        [
            NCropAugmentation(build_transform_pipeline_dali("cifar10", a, "cpu"), a.num_crops)
            for a in augs
        ]
    )


def _loader(images, labels, batch=20, shard=0, shards=1, seed=3, transforms=None, position=None):
    from cueco_plugin.data.dali_cifar import cifar_train_loader

    return cifar_train_loader(
        images,
        labels,
        transforms or _transforms(),
        ["large0", "large1"],
        batch_size=batch,
        num_threads=1,
        dali_device="cpu",
        shard_id=shard,
        num_shards=shards,
        seed=seed,
        position=position,
    )


def _epoch_indexes(loader) -> list[int]:
    return [i for indexes, _, _ in loader for i in indexes.tolist()]


def test_data_module_serves_solo_learn_batches_of_two_normalised_views_with_true_labels(cifar):
    from cueco_plugin.data.dali_cifar import CifarDALIDataModule

    images, labels = _arrays(cifar / "train")
    module = CifarDALIDataModule(
        dataset="cifar10",
        train_data_path=cifar / "train",
        transforms=_transforms(),
        num_large_crops=2,
        num_small_crops=0,
        batch_size=32,
        num_workers=1,
        dali_device="cpu",
    )
    module.setup("fit")
    loader = module.train_dataloader()
    assert len(loader) == 300 // 32
    lowest = ((0 - CIFAR10_MEAN) / CIFAR10_STD).min()
    highest = ((1 - CIFAR10_MEAN) / CIFAR10_STD).max()
    for indexes, views, targets in loader:
        assert indexes.shape == targets.shape == (32,)
        assert indexes.dtype == targets.dtype == torch.int64
        assert targets.tolist() == labels[indexes.numpy()].tolist()
        assert len(views) == 2
        for view in views:
            assert view.shape == (32, 3, 32, 32) and view.dtype == torch.float32
            assert view.device.type == "cpu"
            assert lowest - 1e-4 <= view.min() and view.max() <= highest + 1e-4
            assert -1.0 < view.mean() < 1.0 and view.std() > 0.3
        assert not torch.equal(views[0], views[1])


def test_every_sample_of_a_batch_draws_its_own_augmentation_parameters(cifar):
    images, labels = _arrays(cifar / "train")
    same = np.repeat(images[:1], 40, axis=0)  # one real image, 40 times
    _, views, _ = next(iter(_loader(same, labels[:40], batch=40)))
    flat = views[0].flatten(1)
    distinct = {tuple(row.tolist()) for row in flat}
    assert len(distinct) == 40  # per-batch parameters would give one view 40 times

    # horizontal flip alone (p=0.5): each view is the normalised image or its mirror, both occur
    augs = OmegaConf.load(CIFAR_AUGS)
    for key in ("color_jitter", "grayscale", "gaussian_blur"):
        augs[0][key].prob = 0.0
    augs[0].rrc.enabled = False
    _, views, _ = next(iter(_loader(same, labels[:40], batch=40, transforms=_transforms(augs))))
    plain = torch.tensor(((images[0] / 255 - CIFAR10_MEAN) / CIFAR10_STD).transpose(2, 0, 1))
    plain = plain.float()
    flipped = [torch.allclose(v, plain.flip(-1), atol=1e-4) for v in views[0]]
    unflipped = [torch.allclose(v, plain, atol=1e-4) for v in views[0]]
    assert all(a != b for a, b in zip(flipped, unflipped))
    assert 5 < sum(flipped) < 35


def test_shards_cover_each_epoch_exactly_once_with_a_fresh_permutation(cifar):
    images, labels = _arrays(cifar / "train")
    loaders = [_loader(images, labels, batch=20, shard=r, shards=3) for r in range(3)]
    assert [len(loader) for loader in loaders] == [5, 5, 5]
    epochs = []
    for _ in range(2):
        shards = [_epoch_indexes(loader) for loader in loaders]
        assert sorted(i for shard in shards for i in shard) == list(range(300))
        epochs.append(shards)
    assert epochs[0][0] != epochs[1][0]  # a new order (and new shard contents) each epoch

    # 300 images over 7 ranks of batch 20: 42 per rank, 2 full batches; no sample twice
    shards = [_epoch_indexes(_loader(images, labels, shard=r, shards=7)) for r in range(7)]
    served = [i for shard in shards for i in shard]
    assert len(served) == len(set(served)) == 7 * 40


def test_the_same_seed_gives_the_same_batches(cifar):
    images, labels = _arrays(cifar / "train")
    runs = [_loader(images, labels, seed=seed) for seed in (3, 3, 4)]
    batches = [[next(it) for _ in range(3)] for it in (iter(r) for r in runs)]
    for a, b in zip(batches[0], batches[1]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0])
        assert torch.equal(a[1][1], b[1][1])
    assert not torch.equal(batches[0][0][0], batches[2][0][0])


def _info(iteration: int, epoch: int):
    from nvidia.dali.types import BatchInfo

    return BatchInfo(iteration, epoch)


def test_the_device_source_gathers_the_host_sources_batches_from_a_torch_tensor(cifar):
    # the GPU path's callback, run on a CPU tensor: the same index drawing (permutation, shard,
    # epochs) and the same images, gathered by torch instead of NumPy
    from cueco_plugin.data.dali_cifar import DeviceEpochShards, EpochShards

    images, _ = _arrays(cifar / "train")
    host = EpochShards(images, 20, 1, 3, seed=5)
    device = DeviceEpochShards(torch.from_numpy(images), 20, 1, 3, seed=5)
    assert device.stream is None and device.steps == host.steps == 5
    for epoch in (0, 1, 0):
        for step in range(host.steps):
            host_images, host_indexes = host(_info(step, epoch))
            gathered, indexes = device(_info(step, epoch))
            assert isinstance(gathered, torch.Tensor) and gathered.dtype == torch.uint8
            assert gathered.shape == (20, 32, 32, 3) and gathered.is_contiguous()
            assert indexes.dtype == torch.int64 and indexes.tolist() == host_indexes.tolist()
            assert torch.equal(gathered, torch.from_numpy(host_images))
        for source in (host, device):
            with pytest.raises(StopIteration):
                source(_info(host.steps, epoch))


def test_a_pipeline_fed_by_the_torch_gather_gives_the_host_pipelines_batches(cifar):
    # the device source's dense torch batches through a real DALI external_source (on the CPU
    # here; on a GPU the same source feeds a GPU external_source on its own stream)
    from cueco_plugin.data.dali_cifar import DeviceEpochShards, EpochShards, cifar_pipeline

    images, _ = _arrays(cifar / "train")
    outputs = []
    for source in (
        EpochShards(images, 20, 0, 1, seed=3),
        DeviceEpochShards(torch.from_numpy(images), 20, 0, 1, seed=3),
    ):
        pipe = cifar_pipeline(
            source, _transforms(), "cpu", batch_size=20, num_threads=1, device_id=None, seed=3
        )
        pipe.build()
        outputs.append([[np.array(o.as_tensor()) for o in pipe.run()] for _ in range(6)])
    for host_batch, device_batch in zip(*outputs):  # 6 batches: into the second epoch
        assert len(host_batch) == 3  # two views, then the indexes
        for a, b in zip(host_batch, device_batch):
            np.testing.assert_array_equal(a, b)
    assert outputs[0][0][2].tolist() != outputs[0][5][2].tolist()


def test_the_arrays_go_to_the_gpu_only_for_dali_gpu_with_cuda(cifar):
    from cueco_plugin.data.dali_cifar import arrays_device, hold_images, make_source

    cuda = torch.cuda.is_available()
    assert arrays_device("gpu") == ("gpu" if cuda else "host")
    assert arrays_device("cpu") == "host" and arrays_device("gpu", "host") == "host"
    with pytest.raises(ValueError, match=r"arrays='gpu' needs dali.device='gpu' and CUDA"):
        arrays_device("cpu", "gpu")
    with pytest.raises(ValueError, match=r"arrays='pinned': allowed values"):
        arrays_device("gpu", "pinned")
    if not cuda:
        with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\)=False"):
            arrays_device("gpu", "gpu")
    images, _ = _arrays(cifar / "train")
    source = make_source(hold_images(images, "host", None), 20, 0, 1, 3)
    assert type(source).__name__ == "EpochShards" and source.images is images


def test_a_bad_dali_device_fails_naming_the_value_before_any_pipeline(cifar):
    from cueco_plugin.data.dali_cifar import pretrain_dali_datamodule

    kwargs = dict(train_data_path=cifar / "train", transforms=None, num_large_crops=2)
    kwargs.update(num_small_crops=0, batch_size=8, dali_device="tpu")
    for dataset in ("cifar10", "custom"):
        with pytest.raises(ValueError, match=r"dali.device='tpu': allowed values are \['gpu'"):
            pretrain_dali_datamodule(dataset=dataset, **kwargs)


def test_a_batch_larger_than_a_shard_fails_naming_the_batch_size(cifar):
    images, labels = _arrays(cifar / "train")
    with pytest.raises(ValueError, match="optimizer.batch_size=200: larger than the 150 images"):
        _loader(images, labels, batch=200, shards=2)


def test_dali_and_its_batches_go_to_the_models_device_not_the_local_ranks():
    # devices=[1] under DDP: Lightning's own strategy puts local rank 0's model on cuda:1
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DDPStrategy

    from cueco_plugin.data.dali import batch_device, model_device, pipeline_device_id

    strategy = DDPStrategy(
        parallel_devices=[torch.device("cuda", 1)], cluster_environment=LightningEnvironment()
    )
    assert strategy.local_rank == 0 and strategy.root_device == torch.device("cuda", 1)
    model = strategy.root_device
    assert pipeline_device_id("gpu", model) == 1  # DALI's device_id, the images' GPU copy
    assert batch_device("gpu", model) == torch.device("cuda", 1)  # PretrainWrapper's lookup
    assert pipeline_device_id("cpu", model) == 1 and batch_device("cpu", model).type == "cpu"

    cpu = model_device(Trainer(accelerator="cpu", devices=1, logger=False))
    assert cpu == model_device(None) == torch.device("cpu")
    assert pipeline_device_id("cpu", cpu) is None and batch_device("cpu", cpu) == cpu
    with pytest.raises(ValueError, match=r"dali.device='gpu' needs the model on a CUDA device"):
        pipeline_device_id("gpu", cpu)
    with pytest.raises(ValueError, match=r"dali.device='tpu': allowed values are \['gpu'"):
        pipeline_device_id("tpu", cpu)


def _starts(*starts):
    """A ``position`` that hands out these (epoch, batch, batches) one pass after another."""
    from cueco_plugin.data.dali_epochs import EpochStart

    queue = [EpochStart(*start) for start in starts]
    return lambda steps: queue.pop(0)


def _permutation_batches(images, labels, epoch, batch=20, seed=3) -> list[list[int]]:
    """The batches of ``epoch`` (the source's permutation of that epoch, in order)."""
    from cueco_plugin.data.dali_cifar import EpochShards

    order = EpochShards(images, batch, 0, 1, seed).epoch_indexes(epoch).tolist()
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def test_a_pass_after_a_partial_epoch_serves_the_next_epoch_whole(cifar, caplog):
    images, labels = _arrays(cifar / "train")
    loader = _loader(images, labels)  # 300 images, batch 20: 15 batches an epoch
    first = iter(loader)
    partial = [next(first)[0].tolist() for _ in range(4)]
    assert partial == _permutation_batches(images, labels, 0)[:4]
    whole = [indexes.tolist() for indexes, _, _ in loader]
    assert whole == _permutation_batches(images, labels, 1)  # all 15, epoch 1's order
    assert [indexes.tolist() for indexes, _, _ in loader] == _permutation_batches(images, labels, 2)
    assert loader.builds == 2  # a new pipeline after the partial epoch only
    assert "does not support resetting" not in caplog.text


def test_epochs_cut_by_limit_train_batches_are_whole_to_dali_and_keep_one_pipeline(cifar, caplog):
    images, labels = _arrays(cifar / "train")
    loader = _loader(images, labels, position=_starts((0, 0, 3), (1, 0, 3), (2, 0, 3)))
    for epoch in range(3):
        served = [indexes.tolist() for indexes, _, _ in loader]
        assert served == _permutation_batches(images, labels, epoch)[:3], epoch
    assert loader.builds == 1
    assert "does not support resetting" not in caplog.text


def test_a_pass_resumed_mid_epoch_continues_that_epochs_permutation_at_its_batch(cifar):
    images, labels = _arrays(cifar / "train")
    # a run resumed in epoch 4 after 6 of its 15 batches, then on to epoch 5
    loader = _loader(images, labels, position=_starts((4, 6, 15), (5, 0, 15)))
    rest = [indexes.tolist() for indexes, _, _ in loader]
    assert rest == _permutation_batches(images, labels, 4)[6:]
    assert [indexes.tolist() for indexes, _, _ in loader] == _permutation_batches(images, labels, 5)
    assert loader.builds == 1
    # an epoch trained to its last batch (interrupted before Lightning closed it): the next one
    loader = _loader(images, labels, position=_starts((4, 15, 15)))
    assert [indexes.tolist() for indexes, _, _ in loader] == _permutation_batches(images, labels, 5)


@pytest.mark.parametrize(
    "limit, batches", [(3, 3), (40, 15), (1.0, 15), (0.5, 7), (0.1, 1), (0.01, 1)]
)
def test_batches_per_epoch_follows_lightnings_limit_train_batches_rule(limit, batches):
    from cueco_plugin.data.dali_epochs import batches_per_epoch

    assert batches_per_epoch(15, limit) == batches


def test_a_source_refuses_a_start_outside_its_epoch(cifar):
    from cueco_plugin.data.dali_cifar import EpochShards
    from cueco_plugin.data.dali_epochs import EpochStart

    images, _ = _arrays(cifar / "train")
    for start in ((0, 3, 3), (0, 0, 16), (0, 0, 0)):
        with pytest.raises(ValueError, match=r"start=\(0, .*needs 1 <= batches <= 15"):
            EpochShards(images, 20, 0, 1, seed=3, start=EpochStart(*start))


@pytest.mark.slow
def test_an_epoch_cut_by_limit_train_batches_leaves_every_epoch_its_steps(
    dali_cifar_run, small_cifar_npz
):
    # the reproduction through the entry point: 80 images, batch 16 (5 batches an
    # epoch), limit_train_batches=3, max_epochs=3 make 9 optimiser steps (DALI's own reset rule
    # gave 8), each epoch the first 3 batches of its own permutation
    from cueco_plugin.data.dali_cifar import EpochShards

    assert "does not support resetting" not in dali_cifar_run["output"]
    record = dali_cifar_run["record"]
    assert record["global_step"] == dali_cifar_run["final"]["global_step"] == 9
    assert [step["epoch"] for step in record["steps"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    source = EpochShards(np.load(small_cifar_npz)["images"], 16, 0, 1, seed=7)
    for epoch in range(3):
        served = [i for step in record["steps"][3 * epoch : 3 * epoch + 3] for i in step["indexes"]]
        assert served == source.epoch_indexes(epoch)[:48].tolist(), epoch


def test_cifar_sources_are_npz_folders_split_by_name_or_fail_naming_the_path(
    shared_datasets, tmp_path
):
    from cueco_plugin.data.cifar_arrays import load_cifar_arrays, npz_files

    folder = shared_datasets / "cifar10"
    assert [p.name for p in npz_files(folder, train=False)] == ["cifar10_test.npz"]
    assert len(npz_files(folder, train=True)) == 5
    with pytest.raises(ValueError, match=r"data.train_path='.*nowhere' is neither a .npz file"):
        load_cifar_arrays("cifar10", tmp_path / "nowhere", train=True)
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 32, 32, 3), np.uint8), labels=[3, 12])
    with pytest.raises(ValueError, match=r"labels span \[3, 12\], cifar10 has classes 0..9"):
        load_cifar_arrays("cifar10", tmp_path / "bad.npz", train=True)
    with pytest.raises(ValueError, match=r"data.dataset='stl10': allowed values"):
        load_cifar_arrays("stl10", tmp_path / "bad.npz", train=True)


def test_solo_learn_torchvision_loaders_read_the_same_npz_arrays(cifar):
    from solo.data.pretrain_dataloader import (
        FullTransformPipeline,
        NCropAugmentation,
        build_transform_pipeline,
    )

    from cueco_plugin.data.cifar_arrays import prepare_data_classification, prepare_datasets

    images, labels = _arrays(cifar / "train")
    aug = OmegaConf.load(CIFAR_AUGS)[0]
    transform = FullTransformPipeline(
        [NCropAugmentation(build_transform_pipeline("cifar10", aug), 2)]
    )
    dataset = prepare_datasets("cifar10", transform, train_data_path=cifar / "train")
    index, views, label = dataset[7]
    assert index == 7 and label == labels[7] and len(dataset) == 300
    assert [v.shape for v in views] == [(3, 32, 32)] * 2

    _, val = prepare_data_classification(
        "cifar10", cifar / "train", cifar / "val", batch_size=50, num_workers=0
    )
    x, y = next(iter(val))
    assert x.shape == (50, 3, 32, 32) and y.tolist() == _arrays(cifar / "val")[1][:50].tolist()


def _compose(path: Path, overrides: list[str] = ()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
        cfg = compose(config_name=path.name, overrides=list(overrides))
    OmegaConf.set_struct(cfg, False)
    return cfg


@pytest.mark.parametrize(
    "name, device", [("cpu/cueco_dali_cifar.yaml", "cpu"), ("cifar/cueco_dali.yaml", "gpu")]
)
def test_dali_cifar_configs_pass_solo_learns_parse_cfg_through_the_entry_point(name, device):
    from solo.args.pretrain import parse_cfg as solo_parse_cfg
    from solo.methods import METHODS

    from cueco_plugin.cli.pretrain import parse_cfg
    from cueco_plugin.registration import register

    register()
    with pytest.raises(AssertionError):  # why the entry point exists
        solo_parse_cfg(_compose(CONFIGS / name))
    cfg = METHODS["cueco"].add_and_assert_specific_cfg(parse_cfg(_compose(CONFIGS / name)))
    assert cfg.data.format == "dali" and cfg.data.dataset == "cifar10"
    assert cfg.dali.device == device and cfg.data.num_large_crops == 2
    assert cfg.method_kwargs.queue_size % cfg.optimizer.batch_size == 0


@pytest.mark.parametrize("batch", [512, 1024])
def test_large_batch_recipes_scale_the_learning_rate_and_the_step_schedule(batch):
    from solo.args.pretrain import parse_cfg

    base = _compose(CONFIGS / "cifar" / "cueco.yaml")
    cfg = parse_cfg(_compose(CONFIGS / "cifar" / f"cueco_b{batch}.yaml"))
    assert cfg.optimizer.batch_size == batch
    assert cfg.optimizer.lr == pytest.approx(base.optimizer.lr * batch / 256)
    assert cfg.optimizer.classifier_lr == pytest.approx(base.optimizer.classifier_lr * batch / 256)
    for key in ("freeze_iters", "recluster_interval", "dead_cluster_steps"):
        assert cfg.method_kwargs[key] == pytest.approx(base.method_kwargs[key] * 256 / batch, abs=1)
    assert cfg.method_kwargs.queue_size % batch == 0
    assert cfg.augmentations == base.augmentations


@pytest.mark.slow
def test_cueco_trains_four_steps_on_cifar_through_dali_cpu_and_the_entry_point(
    cifar, solo_root, tmp_path
):
    cmd = [
        sys.executable,
        "-m",
        "cueco_plugin.pretrain",
        "--config-path",
        str(CONFIGS / "cpu"),
        "--config-name",
        "cueco_dali_cifar.yaml",
        f"data.train_path={cifar / 'train'}",
        f"data.val_path={cifar / 'val'}",
        "backbone.name=wide_resnet28w2",  # a quarter of the CIFAR-stem ResNet-18's compute
        "limit_train_batches=4",
        "limit_val_batches=1",
        f"++default_root_dir={tmp_path}",
        "++enable_progress_bar=False",
    ]
    # one intra-op thread: DALI's threads already use this 2-core machine's cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SOLO_LEARN_ROOT": str(solo_root)}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (metrics,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    train = [r for r in rows if r.get("train_nce_loss")]
    assert [int(r["step"]) for r in train] == [0, 1, 2, 3]
    for row in train:
        for key in ("train_nce_loss", "train_centroid_loss", "train_variance_loss"):
            assert math.isfinite(float(row[key])), (key, row)
    # freeze_iters=2 in the recipe: the cluster losses switch on after the freeze
    assert all(float(r["train_centroid_loss"]) == 0.0 for r in train[:2])
    assert all(float(r["train_centroid_loss"]) > 0.0 for r in train[2:])
    val = [r for r in rows if r.get("val_loss")]  # solo-learn's validation ran on the .npz
    assert val and math.isfinite(float(val[-1]["val_loss"]))
