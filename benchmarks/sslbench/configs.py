"""Benchmark profiles, the runs compared, and solo-learn configs built in code.

Every run of one comparison shares backbone, data, augmentations, epochs (hence steps), batch
size, precision and seed. Optimiser, learning rate, weight decay, target-network momentum and
projector sizes follow solo-learn's own CIFAR recipe *of each method* (its
``scripts/pretrain/cifar/{byol,mocov2plus}.yaml``); CueCo uses the MoCo V2+ recipe, so CueCo and
MoCo V2+ differ only by the cluster terms. Only the values are taken from those recipes: the
configs are built here, in solo-learn's keys, and go through solo-learn's own ``parse_cfg``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sslbench.data import AUGMENTATIONS


@dataclass(frozen=True)
class Run:
    """One trained model of a comparison: a solo-learn method plus method_kwargs overrides."""

    name: str
    method: str
    label: str
    method_kwargs: dict[str, Any] = field(default_factory=dict)


RUNS: dict[str, Run] = {
    r.name: r
    for r in (
        Run("mocov2plus", "mocov2plus", "MoCo V2+ (solo-learn)"),
        Run("cueco", "cueco", "CueCo L1+L2+L3"),
        Run("byol", "byol", "BYOL (solo-learn)"),
        Run(
            "cueco-l1",
            "cueco",
            "CueCo L1 only (ablation)",
            {"lambda_centroid": 0.0, "lambda_variance": 0.0},
        ),
        Run("cueco-l1l2", "cueco", "CueCo L1+L2 (ablation)", {"lambda_variance": 0.0}),
    )
}
#: most informative first, so a run stopped by the deadline loses the least
DEFAULT_ORDER: tuple[str, ...] = ("mocov2plus", "cueco", "byol", "cueco-l1", "cueco-l1l2")

#: solo-learn's CIFAR recipe per method (values of its scripts/pretrain/cifar/*.yaml)
RECIPES: dict[str, dict[str, Any]] = {
    "byol": {
        "method_kwargs": {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096},
        "momentum": {"base_tau": 0.99, "final_tau": 1.0},
        "optimizer": {
            "name": "lars",
            "lr": 1.0,
            "classifier_lr": 0.1,
            "weight_decay": 1e-5,
            "kwargs": {"clip_lr": True, "eta": 0.02, "exclude_bias_n_norm": True},
        },
    },
    "mocov2plus": {
        "method_kwargs": {
            "proj_hidden_dim": 2048,
            "proj_output_dim": 256,
            "queue_size": 32768,
            "temperature": 0.2,
        },
        "momentum": {"base_tau": 0.99, "final_tau": 0.999},
        "optimizer": {"name": "sgd", "lr": 0.3, "classifier_lr": 0.3, "weight_decay": 1e-4},
    },
}
RECIPES["cueco"] = copy.deepcopy(RECIPES["mocov2plus"])


@dataclass(frozen=True)
class Settings:
    """Everything shared by the runs of one comparison (a profile plus command-line overrides).

    ``train_images``/``test_images``: the first N images of the official training order / of the
    stored test file (None = every image found). ``epoch_eval_*``: sizes of the train/test subsets
    of the cheap kNN evaluated at every epoch end. The final kNN and linear probe use the features
    of all ``train_images`` (unaugmented) against the ``test_images``.
    """

    profile: str
    smoke: bool
    description: str
    backbone: str = "resnet18"
    augmentations: str = "mocov2plus"
    train_images: int | None = None
    test_images: int | None = None
    epoch_eval_train: int = 5000
    epoch_eval_test: int = 2000
    batch_size: int = 256
    epochs: int = 8
    precision: str = "bf16-mixed"
    accelerator: str = "gpu"
    channels_last: bool = True
    num_workers: int = 14
    queue_size: int = 32768
    num_clusters: int = 100
    freeze_iters: int = 313
    reset_interval: int = 1000
    warmup_epochs: float = 1.0
    seed: int = 5
    throughput_warmup_steps: int = 20
    checkpoint_every: int = 0
    knn_k: int = 200
    knn_t: float = 0.1
    knn_distance: str = "cosine"
    probe_iters: int = 500
    probe_weight_decay: float = 1e-4
    kmeans_iters: int = 30
    eval_batch_size: int = 512

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, Settings] = {
    "cpu-smoke": Settings(
        profile="cpu-smoke",
        smoke=True,
        description=(
            "harness check on 2 CPU cores: ResNet-18 (CIFAR stem), the first 256 training images, "
            "2 epochs; a smoke result, not evidence"
        ),
        train_images=256,
        test_images=500,
        epoch_eval_train=256,
        epoch_eval_test=250,
        batch_size=32,
        epochs=2,
        precision="32-true",
        accelerator="cpu",
        # measured here: channels_last makes a ResNet-18 step ~4x slower on this CPU
        channels_last=False,
        num_workers=0,
        queue_size=512,
        num_clusters=20,
        freeze_iters=2,
        reset_interval=8,
        warmup_epochs=0.0,
        throughput_warmup_steps=2,
        probe_iters=200,
        kmeans_iters=10,
        eval_batch_size=256,
    ),
    "gpu-short": Settings(
        profile="gpu-short",
        smoke=False,
        description=(
            "one H100/H200: ResNet-18 (CIFAR stem), the first 30,000 CIFAR-10 training images "
            "(files train_0..2), 8 epochs (936 steps) per method, batch 256, bf16-mixed, "
            "channels_last; a short-budget comparison, far from solo-learn's 1000-epoch recipe"
        ),
        train_images=30_000,
        test_images=10_000,
        epoch_eval_train=5000,
        epoch_eval_test=2000,
        batch_size=256,
        epochs=8,
        precision="bf16-mixed",
        accelerator="gpu",
        channels_last=True,
        num_workers=14,
        queue_size=32768,
        num_clusters=100,
        freeze_iters=313,
        reset_interval=1000,
        warmup_epochs=1.0,
        throughput_warmup_steps=20,
    ),
    "gpu-full": Settings(
        profile="gpu-full",
        smoke=False,
        description=(
            "solo-learn's CIFAR-10 recipe length: ResNet-18, all 50,000 training images, 1000 "
            "epochs per method, batch 256, bf16-mixed (hours per method on one GPU; not run here)"
        ),
        train_images=50_000,
        test_images=10_000,
        epoch_eval_train=10_000,
        epoch_eval_test=10_000,
        batch_size=256,
        epochs=1000,
        precision="bf16-mixed",
        accelerator="gpu",
        channels_last=True,
        num_workers=14,
        queue_size=32768,
        num_clusters=100,
        freeze_iters=313,
        reset_interval=1000,
        warmup_epochs=10.0,
        throughput_warmup_steps=50,
        checkpoint_every=1,
    ),
}


def method_kwargs_for(run: Run, settings: Settings) -> dict[str, Any]:
    """The ``method_kwargs`` of ``run`` under ``settings`` (recipe, shared queue size, the
    CueCo schedule of the profile, then the run's own overrides)."""
    kwargs = copy.deepcopy(RECIPES[run.method]["method_kwargs"])
    if "queue_size" in kwargs:
        kwargs["queue_size"] = settings.queue_size
    if run.method == "cueco":
        kwargs.update(
            num_clusters=settings.num_clusters,
            freeze_iters=settings.freeze_iters,
            reset_interval=settings.reset_interval,
        )
    kwargs.update(run.method_kwargs)
    return kwargs


def build_cfg(run: Run, settings: Settings, train_path: str) -> Any:
    """A solo-learn pretraining config for ``run``, passed through solo-learn's ``parse_cfg``
    (which fills its defaults, counts crops and scales the learning rate by batch/256).

    ``data.dataset`` is ``cifar10`` so that solo-learn builds the CIFAR stem; ``train_path`` is
    informative only (the harness feeds its own dataset).
    """
    from omegaconf import OmegaConf
    from solo.args.pretrain import parse_cfg

    recipe = RECIPES[run.method]
    raw = {
        "name": f"{run.name}-cifar10-{settings.profile}",
        "method": run.method,
        "backbone": {"name": settings.backbone, "kwargs": {}},
        "method_kwargs": method_kwargs_for(run, settings),
        "momentum": dict(recipe["momentum"]),
        "data": {
            "dataset": "cifar10",
            "train_path": train_path,
            "val_path": None,
            "format": "image_folder",
            "num_workers": settings.num_workers,
        },
        "augmentations": copy.deepcopy(AUGMENTATIONS[settings.augmentations]),
        "optimizer": {**copy.deepcopy(recipe["optimizer"]), "batch_size": settings.batch_size},
        "scheduler": {"name": "warmup_cosine", "warmup_epochs": settings.warmup_epochs},
        "checkpoint": {"enabled": False},
        "auto_resume": {"enabled": False},
        "knn_eval": {"enabled": False},
        "performance": {"disable_channel_last": not settings.channels_last},
        "max_epochs": settings.epochs,
        "devices": [0],
        "num_nodes": 1,
        "accelerator": settings.accelerator,
        "precision": settings.precision,
        "strategy": "auto",
        "sync_batchnorm": False,
        "seed": settings.seed,
    }
    cfg = OmegaConf.create(raw)
    OmegaConf.set_struct(cfg, False)
    return parse_cfg(cfg)


def fingerprint(run: Run, settings: Settings) -> str:
    """Hash of everything that determines a run's result (paths and the deadline excluded), so
    a results folder is only resumed with the same settings."""
    payload = {
        "run": dataclasses.asdict(run),
        "recipe": RECIPES[run.method],
        "method_kwargs": method_kwargs_for(run, settings),
        "settings": settings.as_dict(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
