"""Writes a comparison's results: ``results.md`` (tables), ``results.csv`` (one row per run),
``metadata.json`` (machine, versions, settings, seed, every run's full record), and two plots
(``accuracy_vs_epoch.png``, ``throughput.png``). Only measured values are written; a run that
failed or was skipped shows its status instead of numbers."""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

CSV_COLUMNS = (
    "run",
    "label",
    "method",
    "status",
    "epochs_done",
    "steps",
    "batch_size",
    "precision",
    "throughput_img_s",
    "step_ms_median",
    "step_ms_iqr",
    "peak_mem_mib",
    "knn_top1",
    "linear_probe_top1",
    "kmeans_k_acc_1to1",
    "kmeans_k_acc_m2o",
    "kmeans_k_nmi",
    "kmeans_c_acc_1to1",
    "kmeans_c_acc_m2o",
    "kmeans_c_nmi",
    "bank_acc_1to1",
    "bank_acc_m2o",
    "bank_nmi",
    "train_seconds",
    "eval_seconds",
)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (Linux), to judge timings on a shared machine."""
    text = _read("/proc/loadavg")
    try:
        return [float(x) for x in text.split()[:3]] if text else None
    except ValueError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (if any) and OS of this machine."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "usable_cores": (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ),
        "torch_threads": torch.get_num_threads(),
    }
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            info["cpu_model"] = line.split(":", 1)[1].strip()
            break
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal"):
            info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info


def versions() -> dict[str, str | None]:
    """Versions of the libraries a result depends on (and where solo-learn was imported from)."""
    out: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "lightning", "torchmetrics", "numpy", "omegaconf"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - report what is there
            out[name] = None
    try:
        import solo

        out["solo_learn_path"] = str(Path(solo.__file__).resolve().parent)
        try:
            from importlib.metadata import version

            out["solo_learn"] = version("solo-learn")
        except Exception:  # noqa: BLE001 - not installed, only on PYTHONPATH
            out["solo_learn"] = "not installed (on PYTHONPATH)"
    except ImportError:
        out["solo_learn"] = None
    for dist in ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "pillow"):
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: BLE001 - not installed
            pass
    try:
        import cueco_plugin

        out["cueco_plugin"] = cueco_plugin.__version__
    except ImportError:
        out["cueco_plugin"] = None
    repo = Path(__file__).resolve().parents[2]
    try:
        out["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        # tracked files changed since that commit (untracked files are not counted)
        out["git_dirty"] = (
            subprocess.run(
                ["git", "-C", str(repo), "diff", "--quiet", "HEAD"], timeout=20, check=False
            ).returncode
            != 0
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def _flat_row(name: str, rec: dict[str, Any]) -> dict[str, Any]:
    row = {c: rec.get(c) for c in CSV_COLUMNS}
    row["run"] = name
    clus = rec.get("clustering") or {}
    for key, prefix in (("kmeans_k", "kmeans_k_"), ("kmeans_c", "kmeans_c_"), ("bank", "bank_")):
        scores = clus.get(key) or {}
        for metric in ("acc_1to1", "acc_m2o", "nmi"):
            row[prefix + metric] = scores.get(metric)
    return row


def write_csv(path: Path, records: dict[str, dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for name, rec in records.items():
            writer.writerow(_flat_row(name, rec))


def write_markdown(path: Path, meta: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    s = meta["settings"]
    m = meta["machine"]
    v = meta["versions"]
    device = m.get("gpu") or f"CPU only ({m.get('cpu_model', '?')}, {m.get('cpu_count')} cores)"
    lines = [f"# CueCo vs solo-learn's BYOL and MoCo V2+: profile `{s['profile']}`", ""]
    if s["smoke"]:
        lines += [
            "> **Smoke result, not evidence.** A few steps on a slice of CIFAR-10 check that the "
            "harness runs end to end; the accuracies below say nothing about the methods.",
            "",
        ]
    lines += [
        f"- Date: {meta['date']}; machine: {device}; {m.get('cpu_count')} CPU cores; "
        f"{m.get('platform')}",
        f"- Versions: torch {v.get('torch')}, torchvision {v.get('torchvision')}, lightning "
        f"{v.get('lightning')}, torchmetrics {v.get('torchmetrics')}, solo-learn "
        f"{v.get('solo_learn')}, cueco_plugin {v.get('cueco_plugin')}, commit "
        f"{(v.get('git_commit') or '?')[:12]}"
        f"{' (with uncommitted changes)' if v.get('git_dirty') else ''}",
        f"- Load average (1/5/15 min) at start {meta.get('load_average_start')}, at end "
        f"{meta.get('load_average_end', '–')} (timings on a shared machine vary with load)",
        f"- Profile: {s['description']}",
        f"- Shared by every run: backbone {s['backbone']} with solo-learn's CIFAR stem, "
        f"{meta['data']['train_images']} training images, {meta['data']['test_images']} test "
        f"images, augmentations `{s['augmentations']}` (solo-learn's CIFAR recipe of that name), "
        f"{s['epochs']} epochs, batch {s['batch_size']}, precision {s['precision']}, "
        f"channels_last {s['channels_last']}, {s['num_workers']} DataLoader workers, seed "
        f"{s['seed']}. Optimiser, learning rate and target momentum: solo-learn's CIFAR recipe of "
        "each method (CueCo: MoCo V2+'s).",
        f"- CueCo: K = {s['num_clusters']} clusters, freeze {s['freeze_iters']} steps after each "
        f"(re-)seeding, re-seed every {s['reset_interval']} steps; queue {s['queue_size']} "
        "(MoCo V2+ and CueCo).",
        "",
        "## Main table",
        "",
        "| Run | Status | Epochs (steps) | Throughput (img/s) | Step (ms, median) | Peak memory "
        "(MiB) | kNN top-1 (%) | Linear probe top-1 (%) | Train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in records.items():
        lines.append(
            f"| {r.get('label', name)} | {r.get('status')} | {_fmt(r.get('epochs_done'))} "
            f"({_fmt(r.get('steps'))}) | {_fmt(r.get('throughput_img_s'), 0)} | "
            f"{_fmt(r.get('step_ms_median'), 1)} | {_fmt(r.get('peak_mem_mib'), 0)} | "
            f"{_fmt(r.get('knn_top1'))} | {_fmt(r.get('linear_probe_top1'))} | "
            f"{_fmt(r.get('train_seconds'), 0)} |"
        )
    k = s["num_clusters"]
    c = meta["data"]["num_classes"]
    lines += [
        "",
        "## Clustering of the test set (unsupervised accuracy and NMI)",
        "",
        "| Run | Clustering | K | Acc one-to-one (%) | Acc many-to-one (%) | NMI |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in records.items():
        clus = r.get("clustering") or {}
        rows = [
            ("bank", "CueCo's centroid bank (nearest centroid)", k),
            ("kmeans_k", "k-means on projector features", k),
            ("kmeans_c", "k-means on projector features", c),
        ]
        for key, what, kk in rows:
            sc = clus.get(key)
            if sc is None:
                continue
            lines.append(
                f"| {r.get('label', name)} | {what} | {kk} | {_fmt(sc['acc_1to1'])} | "
                f"{_fmt(sc['acc_m2o'])} | {_fmt(sc['nmi'], 3)} |"
            )
    for name, r in records.items():
        state = (r.get("clustering") or {}).get("bank_state")
        if state:
            lines.append(
                f"\n{r.get('label', name)}: bank seeded {state['num_seeds']} time(s), last "
                f"seeding {state['updates_since_seed']} steps before the end, cluster losses "
                f"active at the end: {state['losses_active_at_end']}."
            )
    max_ep = max((len(r.get("history") or []) for r in records.values()), default=0)
    if max_ep:
        lines += [
            "",
            f"## kNN top-1 (%) at each epoch end (subsets: {s['epoch_eval_train']} train / "
            f"{s['epoch_eval_test']} test images)",
            "",
            "| Run | " + " | ".join(f"ep {i + 1}" for i in range(max_ep)) + " |",
            "|---|" + "---|" * max_ep,
        ]
        for name, r in records.items():
            hist = [h["knn_top1"] for h in r.get("history") or []]
            cells = [_fmt(x, 1) for x in hist] + ["–"] * (max_ep - len(hist))
            lines.append(f"| {r.get('label', name)} | " + " | ".join(cells) + " |")
    data_note = meta.get("data_pipeline")
    lines += [
        "",
        "## What the numbers are",
        "",
        "- Throughput: training images per second (each image gives 2 augmented views) = batch "
        "size / median wall-clock time of one training iteration, measured between consecutive "
        "`on_train_batch_start` hooks (CUDA synchronised), after "
        f"{s['throughput_warmup_steps']} warm-up iterations, excluding iterations that span an "
        "epoch end. It includes data loading, forward, backward, optimiser step, the momentum "
        "and centroid-bank updates and Lightning's overhead.",
        "- Peak memory: `torch.cuda.max_memory_allocated` during training on a GPU (reset before "
        "each run); on a CPU the main process's peak resident set size sampled during training "
        "(DataLoader workers excluded; the runs share one process, so it includes the loaded "
        "data and whatever earlier runs left in the allocator: not a per-method figure).",
        f"- kNN: weighted kNN (solo-learn's `WeightedKNNClassifier`, k = {s['knn_k']}, "
        f"{s['knn_distance']} similarity, T = {s['knn_t']}) on the frozen online backbone's "
        "pooled features of the unaugmented training images against the test set.",
        "- Linear probe: multinomial logistic regression on the same frozen, standardised "
        f"features (full-batch L-BFGS, at most {s['probe_iters']} iterations, L2 "
        f"{s['probe_weight_decay']}), test top-1. This is not solo-learn's 100-epoch linear "
        "evaluation with augmentations, so it is not directly comparable to published numbers.",
        "- Clustering: the test images' L2-normalised online projector outputs (CueCo's bank "
        "lives in that space), clustered by CueCo's own bank (nearest centroid, CueCo runs "
        f"only) and by spherical k-means (k-means++ then {s['kmeans_iters']} Lloyd steps, "
        "`cueco_plugin.centroids`) with the bank's K and with K = number of classes, for every "
        "run. One-to-one: Hungarian matching of clusters to classes, samples of unmatched "
        "clusters count as wrong (penalises K > classes); many-to-one: each cluster votes its "
        "majority class; NMI: arithmetic normalisation (`cueco_plugin.cluster_metrics`).",
    ]
    if data_note:
        lines.append(
            f"- Data pipeline alone (the training DataLoader iterated without a model, "
            f"{data_note['batches']} batches): {data_note['img_s']:.0f} img/s."
        )
    lines.append("")
    path.write_text("\n".join(lines))


def write_plots(out_dir: Path, records: dict[str, dict[str, Any]], smoke: bool) -> list[str]:
    """accuracy_vs_epoch.png and throughput.png; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tag = " (smoke result, not evidence)" if smoke else ""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    plotted = False
    styles = ("-", "--", "-.", ":")
    for i, (name, r) in enumerate(records.items()):
        hist = r.get("history") or []
        if hist:
            ax.plot(
                [h["epoch"] for h in hist],
                [h["knn_top1"] for h in hist],
                marker="os^vD"[i % 5],
                linestyle=styles[i % len(styles)],
                label=r.get("label", name),
            )
            plotted = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1 (%) on the epoch-end subsets")
    ax.set_title("kNN accuracy against epoch" + tag, fontsize=10)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_epoch.png", dpi=120)
    plt.close(fig)
    written.append("accuracy_vs_epoch.png")

    names = [n for n, r in records.items() if r.get("throughput_img_s") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if names:
        values = [records[n]["throughput_img_s"] for n in names]
        bars = ax.bar(range(len(names)), values, color="tab:blue")
        ax.bar_label(bars, labels=[f"{x:.0f}" for x in values], fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([records[n].get("label", n) for n in names], rotation=20, ha="right")
    ax.set_ylabel("training images / s (median iteration)")
    ax.set_title("Training throughput" + tag, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=120)
    plt.close(fig)
    written.append("throughput.png")
    return written


def write_all(out_dir: Path, meta: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    """Writes every report file of ``out_dir`` from the records gathered so far."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "results.csv", records)
    write_markdown(out_dir / "results.md", meta, records)
    write_plots(out_dir, records, meta["settings"]["smoke"])
    full = dict(meta)
    full["runs"] = records
    (out_dir / "metadata.json").write_text(json.dumps(full, indent=2, default=str))
