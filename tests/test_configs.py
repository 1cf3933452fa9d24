"""Every YAML under configs/ composes with Hydra; the pretraining configs pass solo-learn's own
parse_cfg and build CueCo; the recipes match solo-learn's MoCo V2+ ones; bad values fail with
the promised errors before any training step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, requires_solo
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from solo_runs import run_main_pretrain

pytestmark = [requires_solo, pytest.mark.solo]

CONFIGS = REPO_ROOT / "configs"
PRIMARY = sorted(CONFIGS.glob("*/*/*.yaml"))  # configs/{pretrain,linear}/<set>/<name>.yaml
PRETRAIN = [p for p in PRIMARY if p.parts[-3] == "pretrain"]
LINEAR = [p for p in PRIMARY if p.parts[-3] == "linear"]
REGISTRATION_TARGET = "cueco_plugin.registration.RegisterCueCo"


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def _group_options(primary: Path) -> list[tuple[str, str]]:
    """(group, option) for every sub-config next to a primary config (augmentations/, wandb/)."""
    return [
        (group.name, option.stem)
        for group in sorted(p for p in primary.parent.iterdir() if p.is_dir())
        for option in sorted(group.glob("*.yaml"))
    ]


@contextmanager
def _hydra(config_dir: Path) -> Iterator[None]:
    with initialize_config_dir(version_base="1.2", config_dir=str(config_dir)):
        yield


def compose_config(
    path: Path, overrides: list[str] | tuple[str, ...] = (), hydra_config: bool = False
) -> DictConfig:
    with _hydra(path.parent):
        cfg = compose(
            config_name=path.name, overrides=list(overrides), return_hydra_config=hydra_config
        )
    OmegaConf.set_struct(cfg, False)  # what main_pretrain.py / main_linear.py do first
    return cfg


def data_overrides(path: Path, small_cifar: Path) -> list[str]:
    """Real folders for configs that read images at parse time (custom datasets scan
    train_path); the placeholders in configs/pretrain/custom stay placeholders otherwise."""
    cfg = compose_config(path)
    if cfg.data.dataset in ("custom", "imagenet100"):
        return [f"data.train_path={small_cifar / 'train'}", f"data.val_path={small_cifar / 'val'}"]
    return []


@pytest.fixture(scope="module")
def small_cifar(shared_datasets: Path) -> Path:
    return shared_datasets / "cifar10-folder-small"


@pytest.fixture(scope="module")
def methods() -> dict[str, Any]:
    from solo.methods import METHODS

    return METHODS


def parse_pretrain(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """main_pretrain.py's steps before training: compose, parse_cfg, then the method's
    add_and_assert_specific_cfg (which BaseMethod.__init__ calls). CIFAR through DALI runs
    through ``python -m cueco_plugin.pretrain``, whose parse_cfg admits it; every other YAML
    through solo-learn's own parse_cfg, as stock main_pretrain.py does."""
    from solo.args.pretrain import parse_cfg as solo_parse_cfg
    from solo.methods import METHODS

    from cueco_plugin import register
    from cueco_plugin.cli.pretrain import parse_cfg as dali_cifar_parse_cfg

    register()
    cfg = compose_config(path, overrides)
    dali_cifar = cfg.data.format == "dali" and cfg.data.dataset in ("cifar10", "cifar100")
    cfg = (dali_cifar_parse_cfg if dali_cifar else solo_parse_cfg)(cfg)
    return METHODS[cfg.method].add_and_assert_specific_cfg(cfg)


def test_config_tree_has_pretrain_linear_and_knn_entries() -> None:
    names = {_id(p) for p in PRIMARY}
    for expected in (
        "pretrain/cifar/cueco.yaml",
        "pretrain/cifar/cueco_cifar100.yaml",
        "pretrain/imagenet-100/cueco.yaml",
        "pretrain/custom/cueco.yaml",
        "pretrain/cpu/cueco.yaml",
        "linear/cifar/cueco.yaml",
        "linear/cifar/cueco_cifar100.yaml",
        "linear/imagenet-100/cueco.yaml",
        "linear/custom/cueco.yaml",
        "linear/cpu/cueco.yaml",
    ):
        assert expected in names
    assert (CONFIGS / "knn" / "knn.sh").is_file()


@pytest.mark.parametrize(
    "path,group,option",
    [(p, g, o) for p in PRIMARY for g, o in _group_options(p)],
    ids=lambda v: _id(v) if isinstance(v, Path) else str(v),
)
def test_every_yaml_composes_with_hydra(path: Path, group: str, option: str) -> None:
    cfg = compose_config(path, [f"{group}={option}"])
    assert cfg.backbone.name.startswith("resnet")
    if group == "wandb":
        assert isinstance(cfg.wandb.enabled, bool)
    else:
        assert all(aug.num_crops >= 1 for aug in cfg.augmentations)


@pytest.mark.parametrize("path", PRETRAIN, ids=_id)
def test_pretrain_yaml_registers_cueco_through_its_hydra_callback(
    path: Path, methods: dict[str, Any], small_cifar: Path
) -> None:
    cfg = compose_config(path, data_overrides(path, small_cifar), hydra_config=True)
    assert cfg.method == "cueco"
    assert cfg.hydra.callbacks.cueco._target_ == REGISTRATION_TARGET
    previous = methods.pop("cueco", None)
    try:
        callback = instantiate(cfg.hydra.callbacks.cueco)
        callback.on_job_start(config=cfg)  # what Hydra calls in every (DDP) process
        assert methods["cueco"].__name__ == "CueCo"
    finally:
        if previous is not None:
            methods["cueco"] = previous


@pytest.mark.parametrize("path", PRETRAIN, ids=_id)
def test_pretrain_yaml_passes_parse_cfg_and_builds_cueco(
    path: Path, small_cifar: Path, methods: dict[str, Any]
) -> None:
    cfg = parse_pretrain(path, data_overrides(path, small_cifar))
    model = methods["cueco"](cfg)
    mk = cfg.method_kwargs
    assert model.bank.centroids.shape == (mk.num_clusters, mk.proj_output_dim)
    assert model.queue.keys.shape == (2, mk.proj_output_dim, mk.queue_size)
    assert cfg.data.num_large_crops == 2 and cfg.data.num_small_crops == 0


@pytest.mark.parametrize("path", LINEAR, ids=_id)
def test_linear_yaml_passes_solo_linear_parse_cfg(path: Path, small_cifar: Path) -> None:
    from solo.args.linear import parse_cfg

    overrides = data_overrides(path, small_cifar) + [
        # quoted: solo-learn's checkpoint names contain '='
        "pretrained_feature_extractor='/runs/cueco/run/cueco-run-ep=0.ckpt'"
    ]
    cfg = parse_cfg(compose_config(path, overrides))
    assert cfg.pretrain_method == "cueco"
    assert cfg.pretrained_feature_extractor.endswith(".ckpt")
    # main_linear.py builds the backbone itself: no method lookup, no registration needed
    assert "hydra" not in OmegaConf.to_container(compose_config(path, overrides))


@pytest.mark.parametrize(
    "ours,dataset_dir,overrides",
    [
        ("pretrain/cifar/cueco.yaml", "cifar", []),
        ("pretrain/cifar/cueco_cifar100.yaml", "cifar", ["data.dataset=cifar100"]),
        ("pretrain/imagenet-100/cueco.yaml", "imagenet-100", []),
    ],
)
def test_pretrain_recipe_matches_solo_learns_mocov2plus_recipe(
    ours: str, dataset_dir: str, overrides: list[str], solo_root: Path
) -> None:
    theirs = solo_root / "scripts" / "pretrain" / dataset_dir / "mocov2plus.yaml"
    if not theirs.is_file():
        pytest.skip(f"solo-learn's recipe {theirs} is not in this clone")
    a = OmegaConf.to_container(compose_config(CONFIGS / ours))
    b = OmegaConf.to_container(compose_config(theirs, overrides))
    for key in (
        "backbone",
        "momentum",
        "optimizer",
        "scheduler",
        "augmentations",
        "max_epochs",
        "devices",
        "precision",
        "sync_batchnorm",
        "accelerator",
        "strategy",
    ):
        assert a[key] == b[key], key
    for key in ("dataset", "format"):
        assert a["data"][key] == b["data"][key], key
    for key in ("proj_hidden_dim", "proj_output_dim", "queue_size", "temperature"):
        assert a["method_kwargs"][key] == b["method_kwargs"][key], key


def test_custom_recipe_uses_the_imagenet100_views_and_optimiser_at_the_same_global_batch() -> None:
    custom = compose_config(CONFIGS / "pretrain/custom/cueco.yaml")
    in100 = compose_config(CONFIGS / "pretrain/imagenet-100/cueco.yaml")
    assert custom.augmentations == in100.augmentations
    for key in ("name", "lr", "classifier_lr", "weight_decay"):
        assert custom.optimizer[key] == in100.optimizer[key]
    assert custom.optimizer.batch_size * len(custom.devices) == in100.optimizer.batch_size * len(
        in100.devices
    )


@pytest.mark.parametrize(
    "path,clusters",
    [
        ("pretrain/cifar/cueco.yaml", 100),
        ("pretrain/cifar/cueco_cifar100.yaml", 300),
        ("pretrain/imagenet-100/cueco.yaml", 300),
    ],
)
def test_default_number_of_clusters_follows_the_design(path: str, clusters: int) -> None:
    assert compose_config(CONFIGS / path).method_kwargs.num_clusters == clusters


def test_cpu_config_reads_the_real_cifar10_folder_relative_to_the_repo_root(
    shared_datasets: Path,
) -> None:
    cfg = compose_config(CONFIGS / "pretrain/cpu/cueco.yaml")
    for key in ("train_path", "val_path"):
        path = (REPO_ROOT / cfg.data[key]).resolve()
        assert path == (shared_datasets / "cifar10-folder-small" / Path(cfg.data[key]).name)
        assert len([p for p in path.iterdir() if p.is_dir()]) == 10
    assert cfg.accelerator == "cpu" and cfg.precision == 32 and cfg.wandb.enabled is False
    assert cfg.knn_eval.enabled is True and cfg.data.val_path is not None


@pytest.mark.parametrize("devices,processes", [('"1"', 1), ('"02"', 2)])
def test_cpu_devices_string_counts_processes_for_parse_cfg_and_lightning(
    devices: str, processes: int, small_cifar: Path
) -> None:
    from lightning.pytorch import Trainer

    path = CONFIGS / "pretrain/cpu/cueco.yaml"
    base_lr = compose_config(path).optimizer.lr
    cfg = parse_pretrain(
        path, data_overrides(path, small_cifar) + [f"devices={devices}", "strategy=ddp"]
    )
    # parse_cfg scales the learning rate by batch x len(devices) / 256
    assert cfg.optimizer.lr == pytest.approx(base_lr * cfg.optimizer.batch_size * processes / 256)
    trainer = Trainer(
        accelerator="cpu",
        devices=cfg.devices,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
    )
    assert trainer.num_devices == processes


BAD_CONFIGS = [
    (
        ["method_kwargs.warmup_iters=-1"],
        "method_kwargs.warmup_iters must be an integer >= 0 (0 disables it), got -1",
    ),
    (
        ["method_kwargs.variance_scaling=sqrt"],
        "method_kwargs.variance_scaling must be one of ['divide', 'multiply', 'none'], "
        "got 'sqrt'",
    ),
    (
        ["method_kwargs.lambda_centroid=-1.0"],
        "method_kwargs.lambda_centroid must be a finite number >= 0, got -1.0",
    ),
    (["method_kwargs.num_clusters=1"], "method_kwargs.num_clusters must be an integer >= 2, got 1"),
    (
        ["method_kwargs.assignment_source=teacher"],
        "method_kwargs.assignment_source must be one of ['key', 'query'], got 'teacher'",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS, ids=lambda v: str(v)[:40])
def test_bad_cueco_options_fail_in_config_parsing_with_the_promised_error(
    overrides: list[str], message: str, small_cifar: Path
) -> None:
    path = CONFIGS / "pretrain/cpu/cueco.yaml"
    with pytest.raises(ValueError) as err:
        parse_pretrain(path, data_overrides(path, small_cifar) + overrides)
    assert message in str(err.value)


def test_main_pretrain_with_a_bad_option_exits_before_training(
    solo_root: Path, small_cifar: Path, tmp_path: Path
) -> None:
    run = run_main_pretrain(
        solo_root,
        tmp_path,
        small_cifar / "train",
        [f"data.val_path={small_cifar / 'val'}", "method_kwargs.num_clusters=1"],
    )
    assert run.returncode != 0
    assert "method_kwargs.num_clusters must be an integer >= 2, got 1" in run.stdout
    assert "ValueError" in run.stdout
    # nothing trained: no checkpoint folder, no logged step
    assert not (tmp_path / "trained_models").exists()
    assert not list(tmp_path.glob("logs/lightning_logs/*/metrics.csv"))
