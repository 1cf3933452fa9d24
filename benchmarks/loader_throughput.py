"""Loader throughput on CIFAR-10: solo-learn's torchvision loader against DALI CIFAR.

Both loaders serve the same real CIFAR-10 arrays (``.npz``) with the same two-view MoCo V2+ CIFAR
augmentations (``configs/pretrain/cifar/augmentations/mocov2plus.yaml``):

- ``torchvision``: solo-learn's ``build_transform_pipeline`` (PIL) over the arrays and its
  ``prepare_dataloader`` (shuffled, ``drop_last``, pinned memory, ``num_workers`` processes);
- ``dali``: :func:`cueco_plugin.data.dali_cifar.cifar_train_loader` with solo-learn's DALI
  augmentations on ``--dali-device`` (``cpu``: DALI's CPU operators; ``gpu``: on the GPU, twice:
  the arrays held on the GPU and gathered there by torch, the default, and the arrays in host
  memory with each batch copied).

Images/s = source images (two views each) delivered to the training device per second, over
``--batches`` batches after ``--warmup`` (worker start-up and pipeline build left out; epochs
turn over inside the window, as in training). Writes
``benchmarks/results/loader_throughput_cifar_<tag>.{json,md}`` (or ``--out``) with the machine,
versions, load average and settings.

    python benchmarks/loader_throughput.py                  # this CPU, about a minute
    python benchmarks/loader_throughput.py --device cuda --dali-device gpu --workers 14
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
AUGMENTATIONS = REPO / "configs" / "pretrain" / "cifar" / "augmentations" / "mocov2plus.yaml"
SHARED_CIFAR = (REPO / ".." / "shared" / "datasets" / "cifar10").resolve()
RESULTS = REPO / "benchmarks" / "results"
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

from sslbench.report import describe, load_average, machine_record  # noqa: E402


def load_images(data: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The training split of a CIFAR-10 source, the first ``limit`` images."""
    from cueco_plugin.data.cifar_arrays import load_cifar_arrays

    images, labels = load_cifar_arrays("cifar10", data, train=True)
    return images[:limit], labels[:limit]


def torchvision_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int):
    from solo.data.pretrain_dataloader import (
        FullTransformPipeline,
        NCropAugmentation,
        build_transform_pipeline,
        dataset_with_index,
        prepare_dataloader,
    )

    from cueco_plugin.data.cifar_arrays import CIFARArrays

    transform = FullTransformPipeline(
        [
            NCropAugmentation(build_transform_pipeline("cifar10", aug), aug.num_crops)
            for aug in OmegaConf.load(AUGMENTATIONS)
        ]
    )
    dataset = dataset_with_index(CIFARArrays)(images, labels, transform=transform)
    return prepare_dataloader(dataset, batch_size=batch_size, num_workers=workers)


def dali_loader(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    threads: int,
    dali_device: str,
    arrays: str | None = None,
):
    """DALI CIFAR's training loader; ``arrays``: where the images are held (``None``: the
    default, :func:`cueco_plugin.data.dali_cifar.arrays_device`)."""
    from solo.data.dali_dataloader import build_transform_pipeline_dali
    from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation

    from cueco_plugin.data.dali import batch_device, pipeline_device_id
    from cueco_plugin.data.dali_cifar import cifar_train_loader

    augmentations = OmegaConf.load(AUGMENTATIONS)
    transforms = FullTransformPipeline(
        [
            NCropAugmentation(
                build_transform_pipeline_dali("cifar10", aug, dali_device), aug.num_crops
            )
            for aug in augmentations
        ]
    )
    model = torch.device("cuda", 0) if dali_device == "gpu" else torch.device("cpu")
    return cifar_train_loader(
        images,
        labels,
        transforms,
        [f"large{i}" for i in range(sum(aug.num_crops for aug in augmentations))],
        batch_size=batch_size,
        num_threads=threads,
        dali_device=dali_device,
        device_id=pipeline_device_id(dali_device, model),
        model_device=batch_device(dali_device, model),
        arrays=arrays,
    )


def dali_settings(dali_device: str, threads: int) -> list[tuple[str, str]]:
    """(label, arrays) of the DALI CIFAR settings to time: on ``gpu`` the arrays held on the
    GPU (the default) and in host memory; on ``cpu`` in host memory."""
    places = ["gpu", "host"] if dali_device == "gpu" else ["host"]
    return [(f"dali-cifar ({dali_device}, {threads} threads, arrays on {a})", a) for a in places]


def cycle(loader: Any) -> Iterator[Any]:
    """Batches from ``loader`` across epochs, forever."""
    for _ in itertools.count():
        yield from loader


def time_loader(
    loader: Any, batch_size: int, warmup: int, batches: int, device: torch.device
) -> dict[str, float]:
    """Images/s over ``batches`` batches after ``warmup``, each batch's views moved to
    ``device`` as a training step receives them."""
    stream = cycle(loader)

    def deliver() -> torch.Tensor:
        _, views, _ = next(stream)
        return [v.to(device, non_blocking=True) for v in views][-1]

    for _ in range(warmup):
        deliver()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        last = deliver()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert last.shape[0] == batch_size
    return {"images_per_s": batches * batch_size / seconds, "seconds": seconds}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per loader setting: loader, batch_size, images_per_s, seconds, device."""
    images, labels = load_images(args.data, args.images)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    records = []
    for batch_size in args.batch_sizes:
        settings = [(f"torchvision num_workers={w}", "tv", w) for w in args.workers]
        settings += [
            (label, arrays, 0)
            for label, arrays in dali_settings(args.dali_device, args.dali_threads)
        ]
        for label, kind, workers in settings:
            if kind == "tv":
                loader = torchvision_loader(images, labels, batch_size, workers)
            else:
                loader = dali_loader(
                    images, labels, batch_size, args.dali_threads, args.dali_device, kind
                )
            result = time_loader(loader, batch_size, args.warmup, args.batches, device)
            del loader
            records.append({"loader": label, "batch_size": batch_size, "device": name, **result})
            print(f"batch {batch_size:4d}  {label:34s} {result['images_per_s']:9.1f} img/s")
    return records


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# Loader throughput, CIFAR-10 ({report['tag']})",
        "",
        *describe(report["machine"]),
        "",
        f"{s['images']} real CIFAR-10 training images ({s['data']}), two MoCo V2+ CIFAR views "
        f"each, delivered to `{s['device']}`; {s['warmup']} warm-up batches, then "
        f"{s['batches']} measured. Images/s counts source images.",
        "",
        "| batch | loader | images/s | ratio to DALI |",
        "| --- | --- | --- | --- |",
    ]
    for r in report["records"]:
        dali = next(
            d["images_per_s"]
            for d in report["records"]
            if d["batch_size"] == r["batch_size"] and d["loader"].startswith("dali")
        )
        lines.append(
            f"| {r['batch_size']} | {r['loader']} | {r['images_per_s']:.1f} | "
            f"{r['images_per_s'] / dali:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_CIFAR, help="CIFAR-10 source")
    parser.add_argument("--images", type=int, default=10000, help="first N training images")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dali-device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--dali-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--tag", default=None, help="results name suffix (default: device)")
    parser.add_argument("--out", type=Path, default=None, help="results .json path")
    args = parser.parse_args(argv)
    if args.tag is None:
        gpu = args.device == "cuda" and torch.cuda.get_device_name(0)
        args.tag = (gpu or f"cpu{len(os.sched_getaffinity(0))}").lower()
        args.tag = args.tag.replace(" ", "-")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import nvidia.dali

    machine = machine_record()
    report: dict[str, Any] = {
        "tag": args.tag,
        "machine": machine,
        "dali_version": nvidia.dali.__version__,
        "settings": {
            "data": str(args.data),
            "images": args.images,
            "device": args.device,
            "dali_device": args.dali_device,
            "dali_threads": args.dali_threads,
            "torchvision_workers": args.workers,
            "torch_threads": torch.get_num_threads(),
            "batch_sizes": args.batch_sizes,
            "warmup": args.warmup,
            "batches": args.batches,
            "augmentations": str(AUGMENTATIONS.relative_to(REPO)),
        },
    }
    report["records"] = measure(args)
    machine["load_average_end"] = load_average()
    out = args.out or RESULTS / f"loader_throughput_cifar_{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
