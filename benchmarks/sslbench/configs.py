"""Benchmark configs composed with Hydra from this repository's ``configs/pretrain/`` YAMLs.

A profile (``benchmarks/studies/profiles.yaml``) names one YAML and the overrides that set the
budget; an arm adds its own overrides. Nothing of a recipe is retyped here: every value comes
from the YAML, the profile or the arm, and the result goes through solo-learn's ``parse_cfg``
exactly as ``main_pretrain.py`` does it.

The MoCo V2+ control is solo-learn's own ``mocov2plus`` method built from the *same* CueCo YAML
(``method=mocov2plus``) with ``method_kwargs`` reduced to the four options solo-learn's
``MoCoV2Plus`` reads. So the control and every CueCo arm share optimiser, schedule, momentum,
projector, queue, augmentations and budget by construction; the CueCo YAMLs themselves equal
solo-learn's ``scripts/pretrain/*/mocov2plus.yaml`` key by key (tests/test_configs.py), and
tests/test_compare_smoke.py checks the composed control against solo-learn's YAML.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[2]
PROFILES_FILE = REPO / "benchmarks" / "studies" / "profiles.yaml"
RESULTS = REPO / "benchmarks" / "results"
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"
CONTROL = "mocov2plus"
#: the method_kwargs solo-learn's MoCoV2Plus reads (its docstring's "Extra cfg settings")
MOCOV2PLUS_KWARGS = ("proj_hidden_dim", "proj_output_dim", "queue_size", "temperature")
_STEPS_PER_EPOCH = {"value": 1}
OmegaConf.register_new_resolver("repo", lambda: str(REPO), replace=True)
OmegaConf.register_new_resolver(
    "epochs", lambda n: max(1, round(float(n) * _STEPS_PER_EPOCH["value"])), replace=True
)


@dataclass(frozen=True)
class Profile:
    """One budget: the base YAML, its overrides, the data sizes and the final evaluation."""

    name: str
    description: str
    config: Path
    train_images: int
    test_images: int
    overrides: tuple[str, ...]
    evaluation: dict[str, Any]
    resolution: int = 32
    loader: str = "torchvision"


def load_profile(name: str, path: Path = PROFILES_FILE) -> Profile:
    """The profile ``name`` of ``path``.

    Raises:
        ValueError: for an unknown name (listing the known ones) or a missing base YAML.
    """
    profiles = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if name not in profiles:
        raise ValueError(f"--profile {name!r} is not in {path}; allowed: {sorted(profiles)}")
    p = profiles[name]
    config = (REPO / p["config"]).resolve()
    if not config.is_file():
        raise ValueError(f"profile {name!r}: config {p['config']!r} does not exist under {REPO}")
    return Profile(
        name=name,
        description=" ".join(str(p["description"]).split()),
        config=config,
        train_images=int(p["train_images"]),
        test_images=int(p["test_images"]),
        overrides=tuple(p.get("overrides") or ()),
        evaluation=dict(p["evaluation"]),
        resolution=int(p.get("resolution", 32)),
        loader=str(p.get("loader", "torchvision")),
    )


def compose(profile: Profile, overrides: list[str], train_images: int) -> DictConfig:
    """The solo-learn config of one run: the profile's YAML + its overrides + ``overrides``,
    ``${epochs:N}`` resolved, every crop at the profile's ``resolution``, reduced to solo-learn's
    MoCo V2+ for ``method=mocov2plus``, then solo-learn's ``parse_cfg`` (defaults, crop counts,
    learning rate x batch/256).

    Raises:
        ValueError: for a method other than ``cueco`` or ``mocov2plus``; Hydra's own errors for
            overrides it cannot parse or keys that do not exist.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from solo.args.pretrain import parse_cfg

    with initialize_config_dir(config_dir=str(profile.config.parent), version_base="1.2"):
        cfg = hydra_compose(profile.config.name, overrides=[*profile.overrides, *overrides])
    _STEPS_PER_EPOCH["value"] = train_images // int(cfg.optimizer.batch_size)
    OmegaConf.resolve(cfg)
    OmegaConf.set_struct(cfg, False)
    for aug in cfg.augmentations:
        aug.crop_size = profile.resolution
    if cfg.method == CONTROL:
        cfg.method_kwargs = {key: cfg.method_kwargs[key] for key in MOCOV2PLUS_KWARGS}
    elif cfg.method != "cueco":
        raise ValueError(f"method must be 'cueco' or {CONTROL!r}, got {cfg.method!r}")
    return parse_cfg(cfg)


def validate(cfg: DictConfig, train_images: int, where: str) -> None:
    """The checks that would otherwise fail mid-study: the method's own config validation
    (CueCo's named errors), the queue against batch and training set, and the device.

    Raises:
        ValueError: prefixed by ``where`` (the arm), naming the key, its value and the rule.
    """
    import torch
    from solo.methods import METHODS

    try:
        METHODS[cfg.method].add_and_assert_specific_cfg(copy.deepcopy(cfg))
    except (ValueError, AssertionError) as err:
        raise ValueError(f"{where}: {err}") from err
    queue, batch = int(cfg.method_kwargs.queue_size), int(cfg.optimizer.batch_size)
    if queue % batch:
        raise ValueError(
            f"{where}: method_kwargs.queue_size ({queue}) must be a multiple of "
            f"optimizer.batch_size ({batch}): MoCo's queue is written a whole batch at a time"
        )
    if queue >= train_images:
        raise ValueError(
            f"{where}: method_kwargs.queue_size ({queue}) must be smaller than the training set "
            f"({train_images} images), or each query meets its own stale key among the negatives"
        )
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError(
            f"{where}: accelerator 'gpu' but torch.cuda.is_available() is False; use a CPU "
            "profile (--profile cpu-tiny)"
        )


def trainer_kwargs(cfg: Any) -> dict[str, Any]:
    """The config's Trainer arguments, picked as ``main_pretrain.py`` picks them."""
    import inspect

    from lightning.pytorch import Trainer

    valid = inspect.signature(Trainer.__init__).parameters
    return {k: v for k, v in OmegaConf.to_container(cfg).items() if k in valid}


def cli(doc: str, data: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every benchmark shares: ``--set`` (Hydra overrides for every
    run, after the profile's), ``--threads``, ``--out-dir`` and, with ``data``, ``--data-dir``."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="output folder")
    if data:
        p.add_argument("--data-dir", nargs="+", default=[str(CIFAR10)], help=".npz folders")
    return p


def prepare(threads: int) -> None:
    """What every script of :func:`cli` does before composing configs: registers CueCo with
    solo-learn and applies ``--threads`` (0: torch's default)."""
    import torch

    from cueco_plugin.registration import register

    register()
    if threads:
        torch.set_num_threads(threads)
