"""Loader throughput: torchvision DataLoader against NVIDIA DALI, with CueCo's two views.

Two measurements on the same image folders:

1. **Loader only**: source images per second that arrive at the training step (two augmented
   views each, in the training device's memory), for solo-learn's torchvision loader with
   ``num_workers`` swept and for solo-learn's DALI pipeline (``cueco_plugin.dali``; CPU DALI on
   a host without CUDA, ``--dali-device gpu`` where a GPU exists). Warm-up batches are dropped;
   loaders cycle through epochs, so epoch turnover is part of the cost.
2. **End to end**: CueCo pretraining images/s through ``trainer.fit`` (``cueco_plugin.pretrain``,
   i.e. solo-learn's pretraining flow), the median over steps after warm-up of batch size divided
   by the time between consecutive ``on_train_batch_end`` calls (data wait included).

Datasets: ``imagenette`` (the real Imagenette JPEGs, 224 px views, the CueCo custom/ImageNet
augmentations of ``configs/pretrain/custom/augmentations/mocov2plus.yaml``) and ``cifar`` (real
CIFAR-10 exported as PNGs with ``cueco-cifar-to-folder`` into ``--work-dir``, 32 px views,
``configs/pretrain/cpu/augmentations/cifar_small.yaml``).

Writes ``benchmarks/results/loader_throughput_<tag>.{json,md}`` with the machine, versions,
settings and every number measured (plus the 1-minute load average before and after, since
other processes on the machine slow every loader down).

    python benchmarks/loader_throughput.py                      # CPU here, a few minutes
    python benchmarks/loader_throughput.py --device cuda --dali-device gpu --tag h100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretrain"
SHARED = (REPO / ".." / "shared" / "datasets").resolve()
RESULTS = REPO / "benchmarks" / "results"
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

# machine, versions and load average: the same records as the other benchmarks
from sslbench.report import load_average, machine_info, versions  # noqa: E402

# dataset -> (config dir and name for the end-to-end run, augmentation file, crop size)
DATASETS = {
    "imagenette": ("custom", "cueco_dali.yaml", "custom/augmentations/mocov2plus.yaml", 224),
    "cifar": ("cpu", "cueco_dali.yaml", "cpu/augmentations/cifar_small.yaml", 32),
}


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def ensure_cifar_folder(work_dir: Path, per_class: int) -> Path:
    """The real CIFAR-10 train images, ``per_class`` per class, as PNGs (our exporter)."""
    out = work_dir / f"cifar10-folder-{per_class}"
    if not (out / "train").is_dir():
        from cueco_plugin.cifar_folder import main as export

        sources = [str(p) for p in sorted((SHARED / "cifar10").glob("cifar10_train_*.npz"))]
        if not sources:
            raise SystemExit(f"no CIFAR-10 .npz files in {SHARED / 'cifar10'}")
        export([*sources, "-o", str(out), "--limit-per-class", str(per_class), "--no-progress"])
    return out / "train"


def augmentations(dataset: str) -> Any:
    return OmegaConf.load(CONFIGS / DATASETS[dataset][2])


def cycle(loader: Any) -> Iterator[Any]:
    """Batches from ``loader`` across epochs, forever."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the loader yielded no batch (dataset smaller than one batch?)")


def _deliver(batch: Any, device: torch.device) -> torch.Tensor:
    """Moves the views to ``device`` as a training step receives them; returns the last view."""
    _, views, _ = batch
    moved = [v.to(device, non_blocking=True) for v in views]
    return moved[-1]


def time_loader(loader: Any, batch_size: int, warmup: int, batches: int, device: torch.device):
    """Images/s over ``batches`` batches after ``warmup`` batches (first batch included in
    warm-up: worker start-up and pipeline build are not steady state)."""
    stream = cycle(loader)
    last = None
    for _ in range(warmup):
        last = _deliver(next(stream), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        last = _deliver(next(stream), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert last is not None and last.shape[0] == batch_size
    return {"images_per_s": batches * batch_size / elapsed, "seconds": elapsed}


def torchvision_loader(dataset: str, folder: Path, batch_size: int, workers: int):
    from solo.data.pretrain_dataloader import (
        FullTransformPipeline,
        NCropAugmentation,
        build_transform_pipeline,
        prepare_dataloader,
        prepare_datasets,
    )

    transform = FullTransformPipeline(
        [
            NCropAugmentation(build_transform_pipeline("custom", aug), aug.num_crops)
            for aug in augmentations(dataset)
        ]
    )
    data = prepare_datasets("custom", transform, train_data_path=folder)
    return prepare_dataloader(data, batch_size=batch_size, num_workers=workers)


def dali_loader(dataset: str, folder: Path, batch_size: int, threads: int, dali_device: str):
    from cueco_plugin.dali import CPUCapablePretrainDALIDataModule, build_dali_transforms

    module = CPUCapablePretrainDALIDataModule(
        dataset="custom",
        train_data_path=folder,
        transforms=build_dali_transforms("custom", augmentations(dataset), dali_device),
        num_large_crops=2,
        num_small_crops=0,
        batch_size=batch_size,
        num_workers=threads,
        dali_device=dali_device,
    )
    module.setup("fit")
    return module.train_dataloader()


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------


class StepTimer(Callback):
    """Wall time between consecutive training-batch ends (data wait + step); on a GPU also the
    device memory in use after each step (``mem_get_info``: includes DALI's own pools and the
    CUDA context, which torch's allocator statistics do not see)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.device_used_peak = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            self.device_used_peak = max(self.device_used_peak, total - free)
        self.ends.append(time.perf_counter())


def compose_cfg(config_dir: str, config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS / config_dir), version_base="1.2"):
        cfg = compose(config_name=config_name, overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


def end_to_end(
    dataset: str,
    folder: Path,
    loader: str,
    workers: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """CueCo pretraining images/s with ``loader`` ('dali' or 'torchvision')."""
    from cueco_plugin.pretrain import fit, prepare_run

    config_dir, config_name, _, _ = DATASETS[dataset]
    steps = args.e2e_warmup + args.e2e_steps
    gpu = device.type == "cuda"
    overrides = [
        f"data.train_path={folder}",
        "data.val_path=null",
        f"data.format={'dali' if loader == 'dali' else 'image_folder'}",
        f"data.num_workers={workers}",
        f"dali.device={args.dali_device}",
        f"optimizer.batch_size={args.e2e_batch_size}",
        f"method_kwargs.queue_size={args.e2e_batch_size * 64}",
        f"method_kwargs.num_clusters={args.e2e_clusters}",
        "checkpoint.enabled=False",
        "auto_resume.enabled=False",
        "max_epochs=1000",
        f"+max_steps={steps}",
        "++limit_train_batches=1.0",
        "++limit_val_batches=0",
        f"accelerator={'gpu' if gpu else 'cpu'}",
        "devices=[0]" if gpu else "devices='1'",  # a string on CPU, as the CPU configs
        "strategy=auto",
        "sync_batchnorm=False",
        f"precision={'16-mixed' if gpu else '32'}",
        f"++default_root_dir={args.work_dir / 'e2e'}",
        "++enable_progress_bar=False",
        "++enable_model_summary=False",
    ]
    cfg = compose_cfg(config_dir, config_name, overrides)
    run = prepare_run(cfg)
    timer = StepTimer()
    used_before = None
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        free, total = torch.cuda.mem_get_info()
        used_before = (total - free) / 2**20
    started = time.perf_counter()
    fit(run, extra_callbacks=[timer])
    total = time.perf_counter() - started
    intervals = [b - a for a, b in zip(timer.ends, timer.ends[1:])][args.e2e_warmup - 1 :]
    if not intervals:
        raise RuntimeError(f"only {len(timer.ends)} steps ran; raise --e2e-steps")
    median = statistics.median(intervals)
    return {
        "images_per_s": args.e2e_batch_size / median,
        "median_step_s": median,
        "step_s_min_max": [min(intervals), max(intervals)],
        "measured_steps": len(intervals),
        "fit_seconds": total,
        "peak_torch_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "device_used_before_mib": used_before,
        "device_used_peak_mib": timer.device_used_peak / 2**20 if gpu else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    m, v, s = report["machine"], report["versions"], report["settings"]
    lines = [
        f"# Loader throughput ({report['tag']})",
        "",
        f"Measured {report['date']} on {m.get('cpu_model', '?')} ({m['usable_cores']} usable "
        f"cores, {m.get('memory_gib')} GiB), GPU: {m['gpu'] or 'none'}. Load average (1, 5, 15 "
        "min) before/after: "
        f"{report['load_before']} / {report['load_after']}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        "",
        f"Training device: {s['device']}; DALI device: {s['dali_device']}, "
        f"{s['dali_threads']} DALI threads; {s['torch_threads']} torch intra-op threads in the "
        "training process. Images/s count source images (two views each).",
        "",
        "## Loader only (two CueCo views delivered to the training device)",
        "",
        "| dataset | crop | batch | loader | images/s | ratio to DALI |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["loader"].items():
        dali = entry["dali"]["images_per_s"]
        for label, result in entry.items():
            lines.append(
                f"| {name} | {entry_crop(report, name)} | {s['batch_size'][name]} | {label} | "
                f"{result['images_per_s']:.1f} | {result['images_per_s'] / dali:.2f}x |"
            )
    if report.get("end_to_end"):
        lines += [
            "",
            "## End to end (CueCo pretraining through trainer.fit)",
            "",
            f"Batch {s['e2e_batch_size']}, ResNet-18, median over {s['e2e_steps']} steps after "
            f"{s['e2e_warmup']} warm-up steps.",
            "",
            "Peak torch MiB: torch allocator peak. Device MiB: GPU memory in use (all of it, DALI "
            "pools and CUDA context included), before the run -> peak during it. RSS: the "
            "process's peak resident memory so far.",
            "",
            "| dataset | loader | images/s | median step (s) | peak torch MiB | device MiB "
            "| peak RSS MiB |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, entry in report["end_to_end"].items():
            for label, r in entry.items():
                torch_mem, device_mem = "-", "-"
                if r["peak_torch_gpu_mib"] is not None:
                    torch_mem = f"{r['peak_torch_gpu_mib']:.0f}"
                    device_mem = (
                        f"{r['device_used_before_mib']:.0f} -> {r['device_used_peak_mib']:.0f}"
                    )
                lines.append(
                    f"| {name} | {label} | {r['images_per_s']:.1f} | {r['median_step_s']:.3f} | "
                    f"{torch_mem} | {device_mem} | {r['peak_rss_mib']:.0f} |"
                )
    lines += ["", "## Ratios", ""]
    for line in report["ratios"]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def entry_crop(report: dict[str, Any], name: str) -> int:
    return report["settings"]["crop"][name]


def ratios(report: dict[str, Any]) -> list[str]:
    out = []
    for name, entry in report["loader"].items():
        dali = entry["dali"]["images_per_s"]
        tv = {k: r["images_per_s"] for k, r in entry.items() if k != "dali"}
        best = max(tv, key=tv.get)
        out.append(
            f"{name}, loader only: DALI {dali:.1f} img/s = {dali / tv[best]:.2f}x the best "
            f"torchvision setting ({best}, {tv[best]:.1f} img/s)"
        )
    for name, entry in report.get("end_to_end", {}).items():
        if "dali" in entry and len(entry) > 1:
            dali = entry["dali"]["images_per_s"]
            for label, r in entry.items():
                if label != "dali":
                    out.append(
                        f"{name}, end to end: DALI {dali:.1f} img/s = "
                        f"{dali / r['images_per_s']:.2f}x {label} ({r['images_per_s']:.1f} img/s)"
                    )
    return out


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=sorted(DATASETS), default=["imagenette", "cifar"]
    )
    parser.add_argument(
        "--imagenette-dir", type=Path, default=SHARED / "imagenette-small" / "train"
    )
    parser.add_argument(
        "--cifar-dir", type=Path, default=None, help="CIFAR PNG train folder (default: export)"
    )
    parser.add_argument("--cifar-per-class", type=int, default=200, help="images per class")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/cueco_loader_bench"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dali-threads", type=int, default=2)
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device"
    )
    parser.add_argument(
        "--dali-device", choices=["cpu", "gpu"], default=None, help="default: gpu with CUDA"
    )
    parser.add_argument("--batch-imagenette", type=int, default=32)
    parser.add_argument("--batch-cifar", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3, help="loader warm-up batches")
    parser.add_argument("--batches", type=int, default=10, help="loader measured batches")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--e2e-batch-size", type=int, default=16)
    parser.add_argument("--e2e-warmup", type=int, default=2, help="steps not measured")
    parser.add_argument("--e2e-steps", type=int, default=6, help="steps measured")
    parser.add_argument("--e2e-clusters", type=int, default=10)
    parser.add_argument(
        "--e2e-workers", type=int, default=2, help="torchvision num_workers in the e2e run"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads in the training process (default: torch's own choice)",
    )
    parser.add_argument("--tag", default=None, help="results file suffix (default: cpu/gpu name)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dali_device is None:
        args.dali_device = "gpu" if args.device == "cuda" else "cpu"
    if args.tag is None:
        gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
        args.tag = (gpu or f"cpu{os.cpu_count()}").lower().replace(" ", "-")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    folders = {}
    if "imagenette" in args.datasets:
        folders["imagenette"] = args.imagenette_dir
    if "cifar" in args.datasets:
        folders["cifar"] = args.cifar_dir or ensure_cifar_folder(
            args.work_dir, args.cifar_per_class
        )
    batch = {"imagenette": args.batch_imagenette, "cifar": args.batch_cifar}
    report: dict[str, Any] = {
        "tag": args.tag,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "load_before": load_average(),
        "settings": {
            "device": args.device,
            "dali_device": args.dali_device,
            "dali_threads": args.dali_threads,
            "torch_threads": torch.get_num_threads(),
            "workers": args.workers,
            "folders": {k: str(v) for k, v in folders.items()},
            "images": {
                k: sum(1 for p in Path(v).rglob("*") if p.is_file()) for k, v in folders.items()
            },
            "batch_size": {k: batch[k] for k in folders},
            "crop": {k: DATASETS[k][3] for k in folders},
            "warmup_batches": args.warmup,
            "measured_batches": args.batches,
            "e2e_batch_size": args.e2e_batch_size,
            "e2e_warmup": args.e2e_warmup,
            "e2e_steps": args.e2e_steps,
            "e2e_clusters": args.e2e_clusters,
            "e2e_torchvision_workers": args.e2e_workers,
        },
        "loader": {},
    }
    for name, folder in folders.items():
        results: dict[str, Any] = {}
        for workers in args.workers:
            label = f"torchvision num_workers={workers}"
            loader = torchvision_loader(name, folder, batch[name], workers)
            results[label] = time_loader(loader, batch[name], args.warmup, args.batches, device)
            print(f"{name:10s} {label:28s} {results[label]['images_per_s']:8.1f} img/s", flush=True)
            del loader
        label = f"dali ({args.dali_device}, {args.dali_threads} threads)"
        loader = dali_loader(name, folder, batch[name], args.dali_threads, args.dali_device)
        results["dali"] = time_loader(loader, batch[name], args.warmup, args.batches, device)
        results["dali"]["label"] = label
        print(f"{name:10s} {label:28s} {results['dali']['images_per_s']:8.1f} img/s", flush=True)
        del loader
        report["loader"][name] = results
    if not args.skip_e2e:
        report["end_to_end"] = {}
        for name, folder in folders.items():
            entry = {}
            label = f"torchvision num_workers={args.e2e_workers}"
            entry[label] = end_to_end(name, folder, "torchvision", args.e2e_workers, args, device)
            print(
                f"{name:10s} e2e {label:24s} {entry[label]['images_per_s']:8.1f} img/s", flush=True
            )
            entry["dali"] = end_to_end(name, folder, "dali", args.dali_threads, args, device)
            print(
                f"{name:10s} e2e {'dali':24s} {entry['dali']['images_per_s']:8.1f} img/s",
                flush=True,
            )
            report["end_to_end"][name] = entry
    report["load_after"] = load_average()
    report["ratios"] = ratios(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"loader_throughput_{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return report


if __name__ == "__main__":
    main()
