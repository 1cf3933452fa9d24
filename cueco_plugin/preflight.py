"""Checks a CueCo pretraining config before stock ``main_pretrain.py`` runs it, from the Hydra
callback (``RegisterCueCo.on_job_start``): CueCo's named errors come before solo-learn's bare
asserts, bad data is named before the first step, and a run that can take no step, or whose
cluster losses can never switch on, says so before training.

It works on a copy of the config: solo-learn's own ``parse_cfg`` (crop counts, class count),
then CueCo's validation (``cueco_plugin.config``), then the data folders and the step count.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from cueco_plugin.data.checks import check_image_folder

#: training-set sizes of the datasets solo-learn reads through torchvision
KNOWN_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 105_000}


class PreflightError(ValueError):
    """A config that cannot train; the message names the keys and what to change."""


def is_rank_zero() -> bool:
    """False in the processes Lightning's DDP launcher (or SLURM) starts for ranks > 0:
    Lightning's own rank (from ``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``, ... before a Trainer
    exists, the trainer's global rank after)."""
    return rank_zero_only.rank == 0


def processes(devices: Any, num_nodes: Any = 1) -> int | None:
    """Processes Lightning starts for ``devices`` x ``num_nodes``; None when the machine
    decides (``-1``, ``"auto"``)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        count = len(devices)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        count = devices if devices > 0 else 0
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, str) and devices.strip().isdigit():
        count = int(devices)
    else:
        count = 0
    nodes = num_nodes if isinstance(num_nodes, int) and num_nodes > 0 else 1
    return count * nodes or None


def check_data(cfg: DictConfig) -> int | None:
    """Checks the train and validation folders ``main_pretrain.py`` will read; returns the
    number of training images (None when not an image folder)."""
    dataset, fmt = cfg.data.dataset, OmegaConf.select(cfg, "data.format", default="image_folder")
    if dataset in KNOWN_TRAIN_SIZES or fmt not in ("image_folder", "dali"):
        return KNOWN_TRAIN_SIZES.get(dataset)
    no_labels = dataset == "custom" and bool(OmegaConf.select(cfg, "data.no_labels", default=False))
    train = check_image_folder(
        cfg.data.train_path,
        "data.train_path",
        labelled=not no_labels,
        every_file_read=fmt == "dali",
    )
    val_path = OmegaConf.select(cfg, "data.val_path", default=None)
    if val_path is not None and not no_labels:
        check_image_folder(val_path, "data.val_path")  # torchvision ImageFolder, both formats
    return len(train.images)


def check_steps(cfg: DictConfig, num_images: int | None) -> None:
    """Refuses a run that can take no optimiser step; warns when CueCo's cluster losses can
    never switch on (``warmup_iters + freeze_iters`` steps or more)."""
    world = processes(cfg.devices, OmegaConf.select(cfg, "num_nodes", default=1))
    if num_images is None or world is None:
        return
    fraction = OmegaConf.select(cfg, "data.fraction", default=-1) or -1
    if 0 < fraction < 1:
        num_images = int(num_images * fraction)
    batch = cfg.optimizer.batch_size
    per_epoch = math.ceil(num_images / world) // batch  # solo-learn's loaders drop the last batch
    if per_epoch == 0:
        raise PreflightError(
            f"no training step can run: data.train_path holds {num_images} images, fewer than one "
            f"batch per process (optimizer.batch_size={batch} x {world} process(es)); use a "
            "smaller optimizer.batch_size or more images"
        )
    limit = OmegaConf.select(cfg, "limit_train_batches", default=1.0)
    if isinstance(limit, int) and not isinstance(limit, bool):
        per_epoch = min(per_epoch, limit)
    elif isinstance(limit, float):
        per_epoch = int(per_epoch * limit)
    steps = per_epoch * (OmegaConf.select(cfg, "max_epochs", default=None) or 1000)
    max_steps = OmegaConf.select(cfg, "max_steps", default=-1)
    if isinstance(max_steps, int) and max_steps >= 0:
        steps = min(steps, max_steps)
    mk = cfg.method_kwargs
    first_on = mk.warmup_iters + mk.freeze_iters
    if (mk.lambda_centroid > 0 or mk.lambda_variance > 0) and steps <= first_on:
        print(
            f"CueCo warning: the cluster losses can never switch on: the run has {steps} "
            f"optimiser steps and they start after method_kwargs.warmup_iters + freeze_iters = "
            f"{mk.warmup_iters} + {mk.freeze_iters} steps; this trains MoCo V2+ only",
            file=sys.stderr,
            flush=True,
        )


def preflight(config: DictConfig) -> None:
    """All checks on (a copy of) the Hydra job config of a ``method: cueco`` run.

    Raises:
        ValueError: CueCo's config errors (``cueco_plugin.config``), :class:`PreflightError`,
            or ``cueco_plugin.data.checks.DataCheckError``, each naming the key or file.
    """
    if OmegaConf.select(config, "method", default=None) != "cueco":
        return
    from cueco_plugin.config import add_and_validate_method_kwargs
    from cueco_plugin.data.cifar_arrays import parse_cfg  # solo-learn's, also DALI CIFAR

    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        cfg.pop("hydra", None)
    OmegaConf.set_struct(cfg, False)
    if "method_kwargs" in cfg and cfg.method_kwargs is None:
        add_and_validate_method_kwargs(cfg)  # its named error for a null method_kwargs
    num_images = check_data(cfg) if is_rank_zero() else None
    try:
        cfg = parse_cfg(cfg)  # solo-learn's: crop counts and class count, as main_pretrain.py
    except AssertionError:
        return  # solo-learn refuses the config (or another entry point runs it): its own error
    add_and_validate_method_kwargs(cfg)
    check_steps(cfg, num_images)
