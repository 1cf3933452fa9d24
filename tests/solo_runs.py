"""Runs solo-learn's own ``main_pretrain.py`` on this package's YAML in a subprocess (or as one
node of several under ``torchrun``), and reads back what the run wrote: Lightning's CSV metrics,
solo-learn's checkpoint, and (optionally) a per-rank record written by
``tests/probe/cueco_probe.py``."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

TESTS_DIR = Path(__file__).resolve().parent
PROBE_DIR = TESTS_DIR / "probe"
CPU_CONFIG_DIR = TESTS_DIR.parent / "configs" / "pretrain" / "cpu"
#: DALI CIFAR, which stock parse_cfg refuses: run through ``python -m cueco_plugin.pretrain``
DALI_CIFAR_CONFIG = "cueco_dali_cifar.yaml"

# the values CueCo logs every step (train_*) and after validation (val_cluster_*)
TRAIN_METRICS = (
    "train_nce_loss",
    "train_centroid_loss",
    "train_variance_loss",
    "train_live_clusters",
    "train_usage_entropy",
    "train_mean_variance",
    "train_feature_std",
)
VAL_CLUSTER_METRICS = ("val_cluster_acc", "val_cluster_acc_m2o", "val_cluster_nmi")

# deterministic views (no random crop, jitter, blur or flip): with strategy=ddp the data order
# is seeded per epoch too, so two runs see the same batches at the same step
DETERMINISTIC_VIEWS = (
    "augmentations.0.rrc.enabled=False",
    "augmentations.0.color_jitter.prob=0.0",
    "augmentations.0.grayscale.prob=0.0",
    "augmentations.0.gaussian_blur.prob=0.0",
    "augmentations.0.horizontal_flip.prob=0.0",
)

# issue 17's partial-epoch run, DALI CIFAR (CPU backend): 80 images of batch 16 are 5 batches an
# epoch, of which 3 are taken, for 3 epochs: 9 optimiser steps; deterministic views and constant
# lr and tau, so that a resumed run can equal it bit for bit (tests/test_interrupts.py)
# Two epochs of 3 steps on the CIFAR-10 PNGs that resume exactly: deterministic views,
# strategy=ddp on one process (its DistributedSampler seeds the order per epoch), constant lr and
# tau; recluster_interval=4 puts a re-clustering after any mid-run resume point.
TWO_EPOCHS = (
    "data.val_path=null",
    "scheduler.name=none",
    "momentum.final_tau=0.99",
    "strategy=ddp",
    'devices="1"',
    "limit_train_batches=3",
    "optimizer.batch_size=8",
    "method_kwargs.recluster_interval=4",
    "max_epochs=2",
    *DETERMINISTIC_VIEWS,
)

DALI_PARTIAL_EPOCHS = (
    # solo-learn's WideResNet-28-2: at 32 px a quarter of the CIFAR-stem ResNet-18's compute
    "backbone.name=wide_resnet28w2",
    "data.val_path=null",
    "scheduler.name=none",
    "momentum.final_tau=0.99",
    "checkpoint.enabled=True",
    "limit_train_batches=3",
    "optimizer.batch_size=16",
    "method_kwargs.recluster_interval=4",
    "max_epochs=3",
    "++seed=7",
    *DETERMINISTIC_VIEWS,
)


def linked_image_folder(
    source: Path, dest: Path, per_class: int, num_classes: int | None = None
) -> Path:
    """An image folder of symlinks to the first ``per_class`` images of the first
    ``num_classes`` (default: every) class folders of ``source``."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir())[:num_classes]:
        target = dest / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (target / image.name).symlink_to(image)
    return dest


def small_val_folder(shared_datasets: Path, dest: Path, per_class: int = 2) -> Path:
    """A labelled validation folder with ``per_class`` real CIFAR-10 PNGs of every class
    (symlinks). solo-learn's k-NN counts classes from the validation labels it saw, and the
    validation loader is not shuffled, so a prefix of the full folder would hold one class."""
    return linked_image_folder(shared_datasets / "cifar10-folder-small" / "val", dest, per_class)


def write_probe_metadata(dest: Path) -> Path:
    """A dist-info folder that registers ``cueco_probe:factory`` as a Lightning callback
    factory (entry-point group ``lightning.pytorch.callbacks_factory``)."""
    info = dest / "cueco_probe-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cueco-probe\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[lightning.pytorch.callbacks_factory]\ncueco_probe = cueco_probe:factory\n"
    )
    return dest


def main_pretrain_command(
    solo_root: Path,
    workdir: Path,
    train_path: Path,
    overrides: list[str],
    config_name: str = "cueco.yaml",
) -> list[str]:
    """``main_pretrain.py`` on ``configs/pretrain/cpu/<config_name>`` with checkpoints and logs
    under ``workdir``, no progress bar, then ``overrides``. :data:`DALI_CIFAR_CONFIG` runs through
    ``python -m cueco_plugin.pretrain`` (solo-learn's ``main_pretrain.py`` with the DALI CIFAR
    module swapped in) with one DALI thread; the others through the script itself, with no
    loader workers."""
    dali_cifar = config_name == DALI_CIFAR_CONFIG
    entry = ["-m", "cueco_plugin.pretrain"] if dali_cifar else [str(solo_root / "main_pretrain.py")]
    return [
        sys.executable,
        *entry,
        "--config-path",
        str(CPU_CONFIG_DIR),
        "--config-name",
        config_name,
        f"data.train_path={train_path}",
        f"checkpoint.dir={workdir / 'trained_models'}",
        f"+default_root_dir={workdir / 'logs'}",
        f"data.num_workers={1 if dali_cifar else 0}",
        "+enable_progress_bar=False",
        *overrides,
    ]


def torchrun_command(command: list[str], nodes: int, node_rank: int, port: int) -> list[str]:
    """``command`` (a :func:`main_pretrain_command`) as node ``node_rank`` of ``nodes`` under
    ``torchrun``, one process per node, rendezvous at ``127.0.0.1:port``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        "--nproc-per-node=1",
        f"--node-rank={node_rank}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        *command[1:],
    ]


def run_env(solo_root: Path, workdir: Path, probe_dir: Path | None = None) -> dict[str, str]:
    """The environment of a run: this one, without Python's warnings, ``SOLO_LEARN_ROOT`` for
    the entry point, and with ``probe_dir`` the probe callback registered on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    env["SOLO_LEARN_ROOT"] = str(solo_root)
    if probe_dir is not None:
        meta = write_probe_metadata(workdir / "probe_meta")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PROBE_DIR), str(meta)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        env["CUECO_PROBE_DIR"] = str(probe_dir)
    return env


def run_main_pretrain(
    solo_root: Path,
    workdir: Path,
    train_path: Path,
    overrides: list[str],
    probe_dir: Path | None = None,
    timeout: float = 600,
    config_name: str = "cueco.yaml",
) -> subprocess.CompletedProcess:
    """``python main_pretrain.py --config-path configs/pretrain/cpu --config-name <config_name>``
    (:func:`main_pretrain_command`) on the real images in ``train_path``, with checkpoints and
    logs under ``workdir`` (also the working directory). Pass ``data.val_path=...`` (or ``=null``)
    in ``overrides``.

    Returns the finished process (stdout and stderr merged into ``stdout``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        main_pretrain_command(solo_root, workdir, train_path, overrides, config_name),
        cwd=workdir,
        env=run_env(solo_root, workdir, probe_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def checkpoints(workdir: Path) -> list[Path]:
    """solo-learn's checkpoints of the run, oldest first."""
    found = (workdir / "trained_models" / "cueco").glob("*/*.ckpt")
    return sorted(found, key=lambda p: p.stat().st_mtime)


def read_metrics(workdir: Path) -> dict[str, list[float]]:
    """Every value Lightning's CSV logger wrote, per metric, in step order (empty cells
    skipped). main_pretrain passes ``logger=None`` without W&B, which makes Lightning use its
    default logger: CSV without tensorboard, TensorBoard event files with it."""
    csv_files = sorted((workdir / "logs" / "lightning_logs").glob("version_*/metrics.csv"))
    values: dict[str, list[float]] = {}
    if csv_files:
        with csv_files[-1].open() as handle:
            for row in csv.DictReader(handle):
                for key, cell in row.items():
                    if cell not in ("", None):
                        values.setdefault(key, []).append(float(cell))
        return values
    event_files = sorted((workdir / "logs" / "lightning_logs").glob("version_*/events.*"))
    if event_files:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(event_files[-1].parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values[tag] = [event.value for event in acc.Scalars(tag)]
    return values


def all_finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def tail(process: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return process.stdout[-chars:]


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two Lightning checkpoints hold the same step, weights, buffers, extra states (bank and
    queue schedules) and optimiser states, bit for bit."""
    assert a["global_step"] == b["global_step"]
    assert set(a["state_dict"]) == set(b["state_dict"])
    for key, value in a["state_dict"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["state_dict"][key]), key
        else:
            assert value == b["state_dict"][key], key
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for index, state in sa["state"].items():
            for name, value in state.items():
                assert torch.equal(value, sb["state"][index][name]), (index, name)


def assert_same_bank_and_queue(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two ranks' probe records (``tests/probe/cueco_probe.py``) hold the same centroid bank and
    key queue, tensors bit for bit, extra states (counters, schedules) equal."""
    for part in ("bank", "queue"):
        assert set(a[part]) == set(b[part]), part
        for key, value in a[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[part][key]), (part, key)
            else:
                assert value == b[part][key], (part, key)
