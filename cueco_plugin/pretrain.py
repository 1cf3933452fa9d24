"""``python -m cueco_plugin.pretrain``: solo-learn's pretraining with a CPU-capable DALI module.

Why this exists: stock ``main_pretrain.py`` constructs solo-learn's ``PretrainDALIDataModule``
itself, and that class builds its DALI pipeline for a CUDA device, so ``data.format: dali`` with
``dali.device: cpu`` fails on a host without CUDA (see :mod:`cueco_plugin.dali`). This entry point
is ``main_pretrain.py``'s flow with one swap: for ``data.format: dali`` it uses
:class:`cueco_plugin.dali.CPUCapablePretrainDALIDataModule`, which is solo-learn's module on a GPU
and a CPU-only DALI pipeline without CUDA. Everything else is solo-learn's own code: ``parse_cfg``,
``METHODS``, the torchvision transforms and loaders, ``Checkpointer``, ``AutoResumer``,
``AutoUMAP``, W&B logging and the Trainer arguments taken from the config. It registers CueCo
itself (the YAML's ``hydra.callbacks`` entry does no harm) and runs every solo-learn method.

On a GPU host, stock ``main_pretrain.py`` works for CueCo with DALI as it is; use either.

Usage (same arguments as ``main_pretrain.py``)::

    python -m cueco_plugin.pretrain --config-path configs/pretrain/cpu --config-name cueco_dali \
        data.train_path=../shared/datasets/cifar10-folder-small/train
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import hydra
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.strategies.ddp import DDPStrategy
from omegaconf import DictConfig, OmegaConf
from solo.args.pretrain import parse_cfg
from solo.data.classification_dataloader import prepare_data as prepare_data_classification
from solo.data.pretrain_dataloader import (
    FullTransformPipeline,
    NCropAugmentation,
    build_transform_pipeline,
    prepare_dataloader,
    prepare_datasets,
)
from solo.methods import METHODS
from solo.utils.auto_resumer import AutoResumer
from solo.utils.checkpointer import Checkpointer
from solo.utils.misc import make_contiguous, omegaconf_select

from cueco_plugin.registration import register


@dataclass
class PretrainRun:
    """Everything ``trainer.fit`` needs, built from a config the way ``main_pretrain.py`` does."""

    cfg: DictConfig
    model: LightningModule
    fit_kwargs: dict[str, Any]
    callbacks: list[Callback] = field(default_factory=list)
    logger: Any = None
    ckpt_path: str | None = None

    def trainer_kwargs(self) -> dict[str, Any]:
        """Trainer arguments: the config's keys that ``Trainer.__init__`` accepts, as in solo."""
        everything = OmegaConf.to_container(self.cfg)
        valid = inspect.signature(Trainer.__init__).parameters
        kwargs = {name: everything[name] for name in valid if name in everything}
        kwargs.update(
            logger=self.logger,
            callbacks=list(self.callbacks),
            enable_checkpointing=False,
            strategy=(
                DDPStrategy(find_unused_parameters=False)
                if self.cfg.strategy == "ddp"
                else self.cfg.strategy
            ),
        )
        return kwargs


def build_val_loader(cfg: DictConfig) -> Any:
    """The validation loader ``main_pretrain.py`` builds (image folder even for DALI), or None."""
    if cfg.data.dataset == "custom" and (cfg.data.no_labels or cfg.data.val_path is None):
        return None
    if cfg.data.dataset in ["imagenet100", "imagenet"] and cfg.data.val_path is None:
        return None
    _, val_loader = prepare_data_classification(
        cfg.data.dataset,
        train_data_path=cfg.data.train_path,
        val_data_path=cfg.data.val_path,
        data_format="image_folder" if cfg.data.format == "dali" else cfg.data.format,
        batch_size=cfg.optimizer.batch_size,
        num_workers=cfg.data.num_workers,
    )
    return val_loader


def build_torchvision_train_loader(cfg: DictConfig) -> torch.utils.data.DataLoader:
    """solo-learn's torchvision pretraining loader for ``cfg.augmentations``."""
    transform = FullTransformPipeline(
        [
            NCropAugmentation(build_transform_pipeline(cfg.data.dataset, aug), aug.num_crops)
            for aug in cfg.augmentations
        ]
    )
    if cfg.debug_augmentations:
        print("Transforms:")
        print(transform)
    dataset = prepare_datasets(
        cfg.data.dataset,
        transform,
        train_data_path=cfg.data.train_path,
        data_format=cfg.data.format,
        no_labels=cfg.data.no_labels,
        data_fraction=cfg.data.fraction,
    )
    return prepare_dataloader(
        dataset, batch_size=cfg.optimizer.batch_size, num_workers=cfg.data.num_workers
    )


def _resume(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(checkpoint path, W&B run id) exactly as ``main_pretrain.py`` decides them."""
    if cfg.auto_resume.enabled and cfg.resume_from_checkpoint is None:
        resumer = AutoResumer(
            checkpoint_dir=os.path.join(cfg.checkpoint.dir, cfg.method),
            max_hours=cfg.auto_resume.max_hours,
        )
        ckpt_path, wandb_run_id = resumer.find_checkpoint(cfg)
        if ckpt_path is not None:
            print(f"Resuming from previous checkpoint that matches specifications: '{ckpt_path}'")
        return ckpt_path, wandb_run_id
    if cfg.resume_from_checkpoint is not None:
        ckpt_path = cfg.resume_from_checkpoint
        del cfg.resume_from_checkpoint
        return ckpt_path, None
    return None, None


def prepare_run(cfg: DictConfig) -> PretrainRun:
    """Parses ``cfg`` with solo-learn's ``parse_cfg`` and builds model, data and callbacks."""
    OmegaConf.set_struct(cfg, False)
    register()
    cfg = parse_cfg(cfg)
    seed_everything(cfg.seed)
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r}: allowed values are {sorted(METHODS)}")
    if cfg.data.num_large_crops != 2 and cfg.method not in ["wmse", "mae"]:
        raise ValueError(
            f"{cfg.method} needs 2 large crops, the augmentations give {cfg.data.num_large_crops}"
        )

    model = METHODS[cfg.method](cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)

    val_loader = build_val_loader(cfg)
    if cfg.data.format == "dali":
        from cueco_plugin.dali import build_dali_datamodule

        fit_kwargs: dict[str, Any] = {"datamodule": build_dali_datamodule(cfg, val_loader)}
    else:
        fit_kwargs = {
            "train_dataloaders": build_torchvision_train_loader(cfg),
            "val_dataloaders": val_loader,
        }

    ckpt_path, wandb_run_id = _resume(cfg)
    callbacks: list[Callback] = []
    if cfg.checkpoint.enabled:
        callbacks.append(
            Checkpointer(
                cfg,
                logdir=os.path.join(cfg.checkpoint.dir, cfg.method),
                frequency=cfg.checkpoint.frequency,
                keep_prev=cfg.checkpoint.keep_prev,
            )
        )
    if omegaconf_select(cfg, "auto_umap.enabled", False):
        from solo.utils.auto_umap import AutoUMAP

        callbacks.append(
            AutoUMAP(
                cfg.name,
                logdir=os.path.join(cfg.auto_umap.dir, cfg.method),
                frequency=cfg.auto_umap.frequency,
            )
        )
    logger = None
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers.wandb import WandbLogger

        logger = WandbLogger(
            name=cfg.name,
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            offline=cfg.wandb.offline,
            resume="allow" if wandb_run_id else None,
            id=wandb_run_id,
        )
        logger.watch(model, log="gradients", log_freq=100)
        logger.log_hyperparams(OmegaConf.to_container(cfg))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return PretrainRun(cfg, model, fit_kwargs, callbacks, logger, ckpt_path)


def fit(run: PretrainRun, extra_callbacks: list[Callback] | None = None) -> Trainer:
    """Builds the Trainer from the config and trains; returns the finished Trainer."""
    kwargs = run.trainer_kwargs()
    kwargs["callbacks"] += list(extra_callbacks or [])
    trainer = Trainer(**kwargs)
    trainer.fit(run.model, ckpt_path=run.ckpt_path, **run.fit_kwargs)
    return trainer


@hydra.main(version_base="1.2")
def main(cfg: DictConfig) -> None:
    fit(prepare_run(cfg))


if __name__ == "__main__":
    main()
