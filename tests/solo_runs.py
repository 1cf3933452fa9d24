"""Runs solo-learn's own ``main_pretrain.py`` on this package's YAML in a subprocess, and reads
back what the run wrote: Lightning's CSV metrics, solo-learn's checkpoint, and (optionally) a
per-rank record written by ``tests/probe/cueco_probe.py``."""

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
    solo_root: Path, workdir: Path, train_path: Path, overrides: list[str]
) -> list[str]:
    """``main_pretrain.py`` on configs/pretrain/cpu/cueco.yaml with checkpoints and logs under
    ``workdir``, no loader workers and no progress bar, then ``overrides``."""
    return [
        sys.executable,
        str(solo_root / "main_pretrain.py"),
        "--config-path",
        str(CPU_CONFIG_DIR),
        "--config-name",
        "cueco.yaml",
        f"data.train_path={train_path}",
        f"checkpoint.dir={workdir / 'trained_models'}",
        f"+default_root_dir={workdir / 'logs'}",
        "data.num_workers=0",
        "+enable_progress_bar=False",
        *overrides,
    ]


def run_main_pretrain(
    solo_root: Path,
    workdir: Path,
    train_path: Path,
    overrides: list[str],
    probe_dir: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """``python main_pretrain.py --config-path configs/pretrain/cpu --config-name cueco.yaml``
    on the real images in ``train_path``, with checkpoints and logs under ``workdir`` (also the
    working directory). Pass ``data.val_path=...`` (or ``=null``) in ``overrides``.

    Returns the finished process (stdout and stderr merged into ``stdout``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    if probe_dir is not None:
        meta = write_probe_metadata(workdir / "probe_meta")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PROBE_DIR), str(meta)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        env["CUECO_PROBE_DIR"] = str(probe_dir)
    return subprocess.run(
        main_pretrain_command(solo_root, workdir, train_path, overrides),
        cwd=workdir,
        env=env,
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
