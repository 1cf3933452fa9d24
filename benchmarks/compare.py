#!/usr/bin/env python3
"""Side-by-side benchmark: solo-learn's BYOL and MoCo V2+ against CueCo and its loss ablation.

Trains, one after another in one process, solo-learn's ``byol`` and ``mocov2plus`` and this
package's ``cueco`` (L1+L2+L3) plus the ablation runs CueCo L1 only and L1+L2, with the same
backbone, data, augmentations, epochs, batch size, precision and seed, through solo-learn's real
method classes (``solo.methods.METHODS``) and a real Lightning ``Trainer``. Then it evaluates every
frozen backbone the same way and writes ``results.md``, ``results.csv``, ``metadata.json`` and two
plots to ``<out-dir>/<profile>[-<tag>]/``.

CIFAR stem: every config says ``data.dataset: cifar10`` (so solo-learn builds ResNets with the
3x3 stem and no max-pool, and uses the CIFAR mean/std), while the images come from the real
``.npz`` files (no download), wrapped with solo-learn's own transforms.

Resumable: each finished run is stored in ``runs/<run>/result.json`` with a fingerprint of its
settings; running the same command again skips those runs (``--force`` retrains). With
``--checkpoint-every N`` an interrupted run continues from its last checkpoint. A run that fails
is recorded as failed and the others still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sslbench.configs import DEFAULT_ORDER, PROFILES, RUNS, Run, Settings  # noqa: E402

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "datasets" / "cifar10"
NUM_CLASSES = 10

EPILOG = """\
profiles:
  cpu-smoke  harness check on a CPU (2 cores: a few minutes): 256 training images, 2 epochs,
             batch 32, fp32. Its table is labelled 'smoke result, not evidence'.
  gpu-short  one H100/H200: ResNet-18, the first 30,000 CIFAR-10 training images, 8 epochs
             (936 steps) per run, batch 256, bf16-mixed, channels_last, 14 workers.
  gpu-full   solo-learn's CIFAR recipe length (1000 epochs, all 50,000 images) for users with
             their own GPU; checkpoints every epoch (hours per run).
Any option above overrides the profile's value; the values used are written to metadata.json.

examples:
  python benchmarks/compare.py --profile cpu-smoke
  python benchmarks/compare.py --profile gpu-short --data-dir .gpu/c1 .gpu/c2 --deadline-minutes 7
  python benchmarks/compare.py --profile cpu-smoke --methods mocov2plus,cueco --epochs 1 --tag quick
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="cpu-smoke",
        help="settings preset (see 'profiles' below); default: %(default)s",
    )
    g.add_argument(
        "--methods",
        default=",".join(DEFAULT_ORDER),
        help="comma-separated runs, trained in this order; choices: "
        + ", ".join(DEFAULT_ORDER)
        + " (cueco = L1+L2+L3, cueco-l1 = lambda_centroid = lambda_variance = 0, cueco-l1l2 = "
        "lambda_variance = 0); default: all, in that order",
    )
    g.add_argument(
        "--data-dir",
        nargs="+",
        default=None,
        metavar="DIR",
        help="folder(s) holding cifar10_train_<i>.npz and cifar10_test.npz (searched in order; "
        "files may be split over several folders); default: $CUECO_CIFAR10_DIRS "
        "(':'-separated) or ../shared/datasets/cifar10 next to this repository",
    )
    g.add_argument(
        "--out-dir",
        type=Path,
        default=HERE / "results",
        help="results go to OUT_DIR/<profile>[-<tag>]/; default: benchmarks/results",
    )
    g.add_argument("--tag", default=None, help="suffix of the results folder name")
    g.add_argument("--force", action="store_true", help="retrain runs whose results already exist")
    g.add_argument(
        "--deadline-minutes",
        type=float,
        default=None,
        help="wall-clock budget of this invocation: a run that would not finish in time (judged "
        "from the runs before it) is skipped, and training in progress stops at the deadline "
        "(that run is marked truncated); default: none",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="save a Lightning checkpoint every N epochs under runs/<run>/checkpoints and resume "
        "an unfinished run from it; 0 disables (profile default: 0 for cpu-smoke/gpu-short, 1 "
        "for gpu-full)",
    )
    g.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep a finished run's checkpoints (default: delete them once its results exist)",
    )
    g.add_argument(
        "--data-benchmark-batches",
        type=int,
        default=None,
        help="time the training DataLoader alone over this many batches before training, to "
        "show whether the CPU data pipeline can feed the model (0 = skip); default: 60 on a "
        "GPU, 0 on a CPU",
    )

    t = p.add_argument_group("shared training settings (override the profile)")
    t.add_argument("--epochs", type=int, help="training epochs of every run")
    t.add_argument("--batch-size", type=int, help="images per optimiser step (each 2 views)")
    t.add_argument(
        "--train-images",
        type=int,
        help="use the first N images of CIFAR-10's official training order for training and "
        "as the kNN / linear-probe training set",
    )
    t.add_argument("--test-images", type=int, help="evaluate on the first N stored test images")
    t.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed")
    t.add_argument("--accelerator", choices=["cpu", "gpu"], help="Lightning accelerator")
    t.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="solo-learn's channels_last memory format (performance.disable_channel_last); "
        "fast on GPUs, ~4x slower for ResNet-18 on the 2-core dev CPU",
    )
    t.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    t.add_argument("--seed", type=int, help="seed of every run (solo-learn's default is 5)")
    t.add_argument(
        "--augmentations",
        choices=["mocov2plus", "byol"],
        help="solo-learn's CIFAR augmentation recipe used by every run: 'mocov2plus' "
        "(symmetric, colour jitter + blur; also CueCo's) or 'byol' (asymmetric, solarisation)",
    )
    t.add_argument("--warmup-epochs", type=float, help="linear learning-rate warm-up epochs")
    t.add_argument(
        "--queue-size", type=int, help="MoCo queue length of MoCo V2+ and CueCo (multiple of batch)"
    )
    t.add_argument("--num-clusters", type=int, help="CueCo's K, also the k-means K of every run")
    t.add_argument(
        "--freeze-iters", type=int, help="CueCo: steps with cluster losses off after a seeding"
    )
    t.add_argument(
        "--reset-interval", type=int, help="CueCo: re-seed the bank every N steps (0: never)"
    )

    e = p.add_argument_group("evaluation (override the profile)")
    e.add_argument("--knn-k", type=int, help="kNN neighbours (default 200)")
    e.add_argument("--knn-t", type=float, help="kNN temperature for cosine weights (default 0.1)")
    e.add_argument(
        "--knn-distance", choices=["cosine", "euclidean"], help="kNN similarity (default cosine)"
    )
    e.add_argument(
        "--epoch-eval-train",
        type=int,
        help="training images in the cheap kNN run at every epoch end (accuracy-vs-epoch)",
    )
    e.add_argument("--epoch-eval-test", type=int, help="test images in that epoch-end kNN")
    e.add_argument("--probe-iters", type=int, help="L-BFGS iterations of the linear probe")
    e.add_argument("--kmeans-iters", type=int, help="Lloyd iterations of the k-means baseline")
    e.add_argument(
        "--throughput-warmup-steps",
        type=int,
        help="iterations left out of the throughput median at the start of each run",
    )
    return p


_OVERRIDES = (
    "epochs",
    "batch_size",
    "train_images",
    "test_images",
    "precision",
    "accelerator",
    "channels_last",
    "num_workers",
    "seed",
    "augmentations",
    "warmup_epochs",
    "queue_size",
    "num_clusters",
    "freeze_iters",
    "reset_interval",
    "knn_k",
    "knn_t",
    "knn_distance",
    "epoch_eval_train",
    "epoch_eval_test",
    "probe_iters",
    "kmeans_iters",
    "throughput_warmup_steps",
    "checkpoint_every",
)


def resolve_settings(args: argparse.Namespace) -> tuple[Settings, list[Run]]:
    """Profile + overrides, validated before anything is trained.

    Raises:
        ValueError: naming the option, its value and what is allowed.
    """
    changes = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    settings = dataclasses.replace(PROFILES[args.profile], **changes)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    bad = [n for n in names if n not in RUNS]
    if not names or bad:
        raise ValueError(f"--methods has unknown run(s) {bad or names}; allowed: {list(RUNS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods lists a run twice: {names}")
    positive = ("epochs", "batch_size", "epoch_eval_train", "epoch_eval_test", "knn_k")
    for key in positive:
        if getattr(settings, key) < 1:
            raise ValueError(
                f"--{key.replace('_', '-')} must be >= 1, got {getattr(settings, key)}"
            )
    for key in ("num_workers", "probe_iters", "kmeans_iters", "throughput_warmup_steps"):
        if getattr(settings, key) < 0:
            raise ValueError(
                f"--{key.replace('_', '-')} must be >= 0, got {getattr(settings, key)}"
            )
    if settings.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {settings.checkpoint_every}")
    if settings.queue_size % settings.batch_size:
        raise ValueError(
            f"--queue-size ({settings.queue_size}) must be a multiple of --batch-size "
            f"({settings.batch_size}): solo-learn's MoCo V2+ queue writes whole batches"
        )
    if settings.train_images is not None and settings.train_images < settings.batch_size:
        raise ValueError(
            f"--train-images ({settings.train_images}) must be >= --batch-size "
            f"({settings.batch_size}) (the last incomplete batch is dropped)"
        )
    if settings.train_images is not None and settings.epoch_eval_train > settings.train_images:
        settings = dataclasses.replace(settings, epoch_eval_train=settings.train_images)
    if settings.test_images is not None and settings.epoch_eval_test > settings.test_images:
        settings = dataclasses.replace(settings, epoch_eval_test=settings.test_images)
    if settings.knn_t <= 0:
        raise ValueError(f"--knn-t must be > 0, got {settings.knn_t}")
    if settings.num_clusters < 2:
        raise ValueError(f"--num-clusters must be >= 2, got {settings.num_clusters}")
    import torch

    if settings.accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError(
            f"--accelerator gpu (profile {settings.profile}) but torch.cuda.is_available() is "
            "False: use --profile cpu-smoke or --accelerator cpu --precision 32-true"
        )
    return settings, [RUNS[n] for n in names]


def data_dirs(args: argparse.Namespace) -> list[str]:
    if args.data_dir:
        return list(args.data_dir)
    env = os.environ.get("CUECO_CIFAR10_DIRS")
    if env:
        return [d for d in env.split(":") if d]
    return [str(DEFAULT_DATA_DIR)]


class Data:
    """The images of one comparison, loaded once and shared by every run."""

    def __init__(self, dirs: list[str], settings: Settings) -> None:
        from sslbench.data import eval_tensor, load_split

        self.dirs = dirs
        self.train_images, self.train_labels = load_split(dirs, "train", settings.train_images)
        self.test_images, test_labels = load_split(dirs, "test", settings.test_images)
        import torch

        # solo-learn's validation transform applied once; reused by every evaluation
        self.train_x = eval_tensor(self.train_images)
        self.test_x = eval_tensor(self.test_images)
        self.train_y = torch.from_numpy(self.train_labels)
        self.test_y = torch.from_numpy(test_labels)

    def describe(self) -> dict[str, Any]:
        return {
            "source": "real CIFAR-10 .npz files (../shared/datasets/cifar10 layout)",
            "dirs": self.dirs,
            "train_images": int(self.train_y.numel()),
            "test_images": int(self.test_y.numel()),
            "num_classes": NUM_CLASSES,
            "train_class_counts": self.train_y.bincount(minlength=NUM_CLASSES).tolist(),
        }


def train_loader(data: Data, settings: Settings, pin_memory: bool) -> Any:
    import torch
    from sslbench.data import NpzImageDataset, pretrain_transform
    from torch.utils.data import DataLoader

    transform, _ = pretrain_transform(settings.augmentations)
    dataset = NpzImageDataset(data.train_images, data.train_labels, transform, with_index=True)
    workers = settings.num_workers
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(settings.seed),
    )


def data_pipeline_rate(data: Data, settings: Settings, batches: int, pin: bool) -> dict[str, Any]:
    """Images/s of the training DataLoader alone (after 5 batches of start-up)."""
    loader = train_loader(data, settings, pin)
    it = iter(loader)
    skip = min(5, max(len(loader) - batches, 0))
    for _ in range(skip):
        next(it)
    n = min(batches, len(loader) - skip)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    seconds = time.perf_counter() - start
    del it, loader
    return {"batches": n, "img_s": n * settings.batch_size / max(seconds, 1e-9)}


def _median_iqr(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) < 4:
        return statistics.median(values), None
    q = statistics.quantiles(values, n=4)
    return statistics.median(values), q[2] - q[0]


def train_and_evaluate(
    run: Run,
    settings: Settings,
    data: Data,
    run_dir: Path,
    fp: str,
    deadline: float | None,
    keep_checkpoints: bool,
    progress_desc: str,
) -> dict[str, Any]:
    """Trains one run with a real Lightning Trainer and evaluates its frozen backbone."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from solo.methods import METHODS
    from solo.utils.misc import make_contiguous
    from sslbench.callbacks import Deadline, EpochKNN, StepProgressBar, StepTimer
    from sslbench.configs import build_cfg
    from sslbench.evaluation import (
        cluster_scores,
        extract_features,
        kmeans_assignments,
        knn_top1,
        linear_probe_top1,
    )

    if run.method not in METHODS:
        raise RuntimeError(
            f"method {run.method!r} is not in solo.methods.METHODS (cueco_plugin.register() "
            "failed? see the message printed at start-up)"
        )
    device = torch.device("cuda" if settings.accelerator == "gpu" else "cpu")
    pl.seed_everything(settings.seed, workers=True)
    cfg = build_cfg(run, settings, data.dirs[0])
    model = METHODS[run.method](cfg)
    make_contiguous(model)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)

    ep_train = data.train_x[: settings.epoch_eval_train].to(device)
    ep_train_y = data.train_y[: settings.epoch_eval_train].to(device)
    ep_test = data.test_x[: settings.epoch_eval_test].to(device)
    ep_test_y = data.test_y[: settings.epoch_eval_test].to(device)

    def epoch_knn(module: torch.nn.Module) -> float:
        f_tr, _ = extract_features(
            module, ep_train, settings.eval_batch_size, device, settings.precision
        )
        f_te, _ = extract_features(
            module, ep_test, settings.eval_batch_size, device, settings.precision
        )
        return knn_top1(
            f_tr, ep_train_y, f_te, ep_test_y, settings.knn_k, settings.knn_t, settings.knn_distance
        )

    timer = StepTimer(settings.throughput_warmup_steps)
    knn_cb = EpochKNN(epoch_knn)
    stopper = Deadline(deadline, at_epoch_end=settings.checkpoint_every > 0)
    callbacks: list[pl.Callback] = [
        timer,
        knn_cb,
        StepProgressBar(progress_desc, settings.batch_size, knn_cb, timer),
        stopper,
    ]
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = None
    if settings.checkpoint_every > 0:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="epoch{epoch}",
                save_last=True,
                save_top_k=0,
                every_n_epochs=settings.checkpoint_every,
                save_on_train_epoch_end=True,
            )
        )
        stamp = ckpt_dir / "fingerprint.txt"
        if (ckpt_dir / "last.ckpt").is_file() and stamp.is_file() and stamp.read_text() == fp:
            ckpt_path = str(ckpt_dir / "last.ckpt")
            print(f"[compare] {run.name}: resuming from {ckpt_path}", flush=True)
        else:
            for f in ckpt_dir.glob("*.ckpt"):  # other settings: start over
                f.unlink()
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(fp)

    trainer = pl.Trainer(
        max_epochs=settings.epochs,
        accelerator=settings.accelerator,
        devices=1,
        precision=settings.precision,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=settings.checkpoint_every > 0,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        benchmark=device.type == "cuda",
    )
    loader = train_loader(data, settings, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    start = time.perf_counter()
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - start
    peak_mib, peak_kind = timer.peak_memory(device)
    del loader

    # ------------------------------------------------------------ final evaluation
    start = time.perf_counter()
    model = model.to(device)
    f_tr, _ = extract_features(
        model, data.train_x, settings.eval_batch_size, device, settings.precision
    )
    f_te, z_te = extract_features(
        model, data.test_x, settings.eval_batch_size, device, settings.precision
    )
    y_tr, y_te = data.train_y.to(device), data.test_y.to(device)
    knn = knn_top1(f_tr, y_tr, f_te, y_te, settings.knn_k, settings.knn_t, settings.knn_distance)
    probe = linear_probe_top1(
        f_tr, y_tr, f_te, y_te, NUM_CLASSES, settings.probe_iters, settings.probe_weight_decay
    )
    clustering: dict[str, Any] = {
        "features": "L2-normalised online projector output z of the test images",
        "kmeans_k": cluster_scores(
            kmeans_assignments(z_te, settings.num_clusters, settings.kmeans_iters, settings.seed),
            y_te,
        ),
        "kmeans_c": cluster_scores(
            kmeans_assignments(z_te, NUM_CLASSES, settings.kmeans_iters, settings.seed), y_te
        ),
    }
    bank = getattr(model, "bank", None)
    if bank is not None and bank.seeded:
        clustering["bank"] = cluster_scores(bank.assign(z_te), y_te)
        clustering["bank_state"] = {
            "num_seeds": bank.num_seeds,
            "updates_since_seed": bank.updates_since_seed,
            "losses_active_at_end": bool(bank.losses_active),
        }
    eval_seconds = time.perf_counter() - start

    step_med, step_iqr = _median_iqr(timer.intervals)
    logged = {}
    for key, value in trainer.callback_metrics.items():
        try:
            logged[key] = float(value)
        except (TypeError, ValueError):
            pass
    truncated = stopper.stopped_at_step is not None
    if trainer.interrupted:
        status = "interrupted"
    elif truncated:
        status = "truncated (deadline)"
    elif trainer.global_step < settings.epochs * steps_per_epoch:
        status = f"incomplete ({trainer.global_step} of {settings.epochs * steps_per_epoch} steps)"
    else:
        status = "ok"
    record = {
        "label": run.label,
        "method": run.method,
        "method_kwargs_override": run.method_kwargs,
        "status": status,
        "epochs_done": round(trainer.global_step / steps_per_epoch, 2),
        "steps": trainer.global_step,
        "batch_size": settings.batch_size,
        "precision": settings.precision,
        "throughput_img_s": settings.batch_size / step_med if step_med else None,
        "step_ms_median": 1000 * step_med if step_med else None,
        "step_ms_iqr": 1000 * step_iqr if step_iqr is not None else None,
        "timed_steps": len(timer.intervals),
        "peak_mem_mib": peak_mib,
        "peak_mem_kind": peak_kind,
        "rss_at_train_start_mib": timer.rss_at_start / 2**20,
        "knn_top1": knn,
        "linear_probe_top1": probe,
        "clustering": clustering,
        "history": knn_cb.history,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "final_logged_metrics": logged,
        "resumed_from_checkpoint": ckpt_path is not None,
    }
    if not keep_checkpoints and ckpt_dir.is_dir() and status == "ok":
        for f in ckpt_dir.glob("*.ckpt"):
            f.unlink()
    return record


def load_previous(run_dir: Path, fp: str) -> dict[str, Any] | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("fingerprint") != fp or rec.get("status") != "ok":
        return None
    return rec


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    deadline = started + 60 * args.deadline_minutes if args.deadline_minutes else None
    settings, runs = resolve_settings(args)
    dirs = data_dirs(args)
    folder = settings.profile + (f"-{args.tag}" if args.tag else "")
    out_dir = Path(args.out_dir) / folder
    out_dir.mkdir(parents=True, exist_ok=True)

    import torch
    from sslbench.configs import fingerprint
    from sslbench.report import load_average, machine_info, versions, write_all

    register_error = None
    if any(r.method == "cueco" for r in runs):
        try:
            from cueco_plugin.registration import register

            register()
        except Exception as err:  # noqa: BLE001 - recorded per run, the others still train
            register_error = f"{type(err).__name__}: {err}"
            print(f"[compare] cueco_plugin.register() failed: {register_error}", flush=True)

    print(f"[compare] loading CIFAR-10 from {dirs}", flush=True)
    data = Data(dirs, settings)
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv] if argv is None else ["compare.py", *argv],
        "profile": settings.profile,
        "settings": settings.as_dict(),
        "seed": settings.seed,
        "runs_requested": [r.name for r in runs],
        "machine": machine_info(),
        "versions": versions(),
        "data": data.describe(),
        "cuda_available": torch.cuda.is_available(),
        "load_average_start": load_average(),
    }
    pin = settings.accelerator == "gpu"
    batches = args.data_benchmark_batches
    if batches is None:
        batches = 60 if settings.accelerator == "gpu" else 0
    if batches > 0:
        meta["data_pipeline"] = data_pipeline_rate(data, settings, batches, pin)
        print(f"[compare] data pipeline alone: {meta['data_pipeline']}", flush=True)

    records: dict[str, dict[str, Any]] = {}
    durations: list[float] = []
    failed = False
    for i, run in enumerate(runs):
        run_dir = out_dir / "runs" / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        fp = fingerprint(run, settings)
        previous = None if args.force else load_previous(run_dir, fp)
        if previous is not None:
            print(f"[compare] {run.name}: results exist (same settings), skipped", flush=True)
            records[run.name] = previous
            write_all(out_dir, meta, records)
            continue
        if deadline is not None and durations:
            expected = statistics.median(durations)
            if time.monotonic() + expected > deadline:
                print(f"[compare] {run.name}: skipped, would pass the deadline", flush=True)
                failed = True
                records[run.name] = {
                    "label": run.label,
                    "method": run.method,
                    "status": "skipped (deadline)",
                    "fingerprint": fp,
                }
                write_all(out_dir, meta, records)
                continue
        if run.method == "cueco" and register_error:
            rec: dict[str, Any] = {
                "label": run.label,
                "method": run.method,
                "status": f"failed: {register_error}",
            }
        else:
            t0 = time.monotonic()
            try:
                rec = train_and_evaluate(
                    run,
                    settings,
                    data,
                    run_dir,
                    fp,
                    deadline,
                    args.keep_checkpoints,
                    f"[{i + 1}/{len(runs)}] {run.name}",
                )
                durations.append(time.monotonic() - t0)
            except Exception as err:  # noqa: BLE001 - one failing run must not lose the others
                tb = traceback.format_exc()
                (run_dir / "error.txt").write_text(tb)
                print(tb, file=sys.stderr, flush=True)
                rec = {
                    "label": run.label,
                    "method": run.method,
                    "status": f"failed: {type(err).__name__}: {str(err)[:200]}",
                }
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        gc.collect()  # Lightning's trainer <-> module cycle: free the last model now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rec["fingerprint"] = fp
        failed = failed or rec["status"] != "ok"
        (run_dir / "result.json").write_text(json.dumps(rec, indent=2, default=str))
        records[run.name] = rec
        write_all(out_dir, meta, records)
        print(
            f"[compare] {run.name}: {rec['status']}; kNN {rec.get('knn_top1')}, "
            f"linear {rec.get('linear_probe_top1')}, img/s {rec.get('throughput_img_s')}",
            flush=True,
        )
        if rec["status"] == "interrupted":  # Ctrl-C / SIGINT: keep what exists, start nothing new
            break
    meta["total_seconds"] = time.monotonic() - started
    meta["load_average_end"] = load_average()
    write_all(out_dir, meta, records)
    print(f"[compare] wrote {out_dir}/results.md, results.csv, metadata.json, plots", flush=True)
    return 1 if failed else 0  # 0: every requested run has complete results


if __name__ == "__main__":
    sys.exit(main())
