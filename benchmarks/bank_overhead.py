"""Cost of CueCo's cluster machinery next to the MoCo V2+ InfoNCE step it is added to.

Times, interleaved in one process on one device:

- **moco**: solo-learn's MoCo V2+ contrastive step as solo-learn's ``MoCoV2Plus.training_step``
  computes it, forward + backward: ``(mocov2plus_loss_func(q1, k2, queue[1]) +
  mocov2plus_loss_func(q2, k1, queue[0])) / 2`` with a (2, D, queue) queue;
- **cluster**: what CueCo adds per step for K clusters: ``assign`` of both views' keys (2B),
  the centroid-contrast and variance-scaled-distance losses on both views' queries, forward +
  backward, and the bank ``update`` from the 2B keys.

and, separately, the bank's seeding (k-means++ + Lloyd on the full queue), which runs once every
``reset_interval`` steps. Prints the results and saves them as JSON and Markdown in
``benchmarks/results/bank_overhead_<device-tag>.{json,md}``.

Usage::

    python3 benchmarks/bank_overhead.py                  # CPU, torch's default threads
    python3 benchmarks/bank_overhead.py --threads 1      # CPU, one thread
    python3 benchmarks/bank_overhead.py --device cuda    # first GPU (also checks for host syncs)

On a CPU shared with other busy processes, multi-threaded torch pays an OpenMP wake-up latency
of up to a scheduler time slice (milliseconds) per parallelised op, however small the op: the
cluster step, many small ops, suffers far more than the MoCo step, a few large matrix products.
The saved results name the thread count and the load average, so compare like with like.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cueco_plugin.centroids import CentroidBank
from cueco_plugin.losses import centroid_contrast_loss, variance_scaled_distance_loss

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--batch", type=int, default=256, help="per-view batch size B (default 256)")
    p.add_argument("--dim", type=int, default=256, help="projection dimension D (default 256)")
    p.add_argument("--queue", type=int, default=65536, help="MoCo queue size (default 65536)")
    p.add_argument(
        "--clusters", type=int, nargs="+", default=[10, 100, 1000], help="values of K to time"
    )
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (0: 20 CPU, 200 GPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed warm-up steps (0: 3 / 20)")
    p.add_argument(
        "--seed-clusters",
        type=int,
        nargs="*",
        default=[100, 1000],
        help="values of K for which to time seeding (k-means++ + Lloyd) on the queue",
    )
    p.add_argument("--seed-repeats", type=int, default=2, help="timed seedings per K")
    p.add_argument("--lloyd-iters", type=int, default=10, help="Lloyd iterations in seeding")
    p.add_argument("--reset-interval", type=int, default=1000, help="for the amortised cost")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tag", default="", help="device tag in the file names (default: derived)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where to save results")
    args = p.parse_args(argv)
    for name in ("batch", "dim", "queue", "repeats", "warmup", "seed_repeats", "reset_interval"):
        value = getattr(args, name)
        if value < (0 if name in ("repeats", "warmup") else 1):
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if any(k < 1 for k in args.clusters + args.seed_clusters):
        raise SystemExit(f"--clusters/--seed-clusters must be >= 1, got {args.clusters}")
    return args


# ------------------------------------------------------------------ machine description
def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        ),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    try:
        info["solo_learn"] = importlib.metadata.version("solo-learn")
    except importlib.metadata.PackageNotFoundError:
        info["solo_learn"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = {"before": [round(v, 2) for v in os.getloadavg()]}
    if device.type == "cpu":
        info["small_op_latency_us"] = small_op_latency()
    return info


def small_op_latency() -> dict[str, float]:
    """Median microseconds of one (512, 256) float32 add at the current and at one thread: on
    a CPU shared with busy processes the multi-threaded figure shows the OpenMP wake-up cost
    every parallelised op pays."""
    x, y = torch.randn(512, 256), torch.randn(512, 256)
    threads = torch.get_num_threads()
    out = {}
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        times = []
        for _ in range(50):
            start = time.perf_counter()
            torch.add(x, y)
            times.append(time.perf_counter() - start)
        out[f"{n}_threads"] = round(statistics.median(times) * 1e6, 1)
    torch.set_num_threads(threads)
    return out


def device_tag(device: torch.device, info: dict[str, Any]) -> str:
    if device.type == "cuda":
        name = str(info["gpu"]).lower()
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"cpu-{info['torch_threads']}thread" + ("s" if info["torch_threads"] != 1 else "")


# ------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds for one call of ``fn``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "p25_ms": q[0],
        "p75_ms": q[2],
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "n": len(ms),
    }


# ------------------------------------------------------------------ the two workloads
class Workloads:
    """Inputs shared by both timed steps: two views' queries (leaf tensors with gradients),
    keys, the MoCo queue, and one CentroidBank per K seeded from the queue."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        try:
            from solo.losses.mocov2plus import mocov2plus_loss_func
        except ImportError as err:
            raise SystemExit(
                "bank_overhead.py times solo-learn's own MoCo V2+ loss: install solo-learn "
                "first (see README.md, 'Install')"
            ) from err

        self.moco_loss = mocov2plus_loss_func
        gen = torch.Generator(device="cpu").manual_seed(0)
        b, d = args.batch, args.dim

        def unit(*shape: int, dim: int = -1) -> torch.Tensor:
            return F.normalize(torch.randn(*shape, generator=gen), dim=dim).to(device)

        self.q1 = unit(b, d).requires_grad_(True)
        self.q2 = unit(b, d).requires_grad_(True)
        self.k1, self.k2 = unit(b, d), unit(b, d)
        self.queue = unit(2, d, args.queue, dim=1)  # solo-learn's layout: (2, D, queue)
        self.device = device

    def moco_step(self) -> None:
        self.q1.grad = self.q2.grad = None
        queue = self.queue  # solo-learn also clones it each step; not counted here
        loss = (
            self.moco_loss(self.q1, self.k2, queue[1], 0.2)
            + self.moco_loss(self.q2, self.k1, queue[0], 0.2)
        ) / 2
        loss.backward()

    def cluster_step(self, bank: CentroidBank) -> None:
        """assign + both cluster losses on both views (forward + backward) + bank update."""
        self.q1.grad = self.q2.grad = None
        keys = torch.cat([self.k1, self.k2])
        assignments = bank.assign(keys)
        a1, a2 = assignments.chunk(2)
        c, v = bank.centroids, bank.variances
        l2 = (
            centroid_contrast_loss(self.q1, c, a1, 0.1)
            + centroid_contrast_loss(self.q2, c, a2, 0.1)
        ) / 2
        l3 = (
            variance_scaled_distance_loss(self.q1, c, v, a1)
            + variance_scaled_distance_loss(self.q2, c, v, a2)
        ) / 2
        (l2 + 0.1 * l3).backward()
        bank.update(keys, assignments)


def make_bank(k: int, args: argparse.Namespace, device: torch.device) -> CentroidBank:
    return CentroidBank(
        k,
        args.dim,
        freeze_iters=0,
        reset_interval=args.reset_interval,
        lloyd_iters=args.lloyd_iters,
    ).to(device)


def check_no_host_sync(work: Workloads, bank: CentroidBank) -> str:
    """On CUDA: one cluster step under ``torch.cuda.set_sync_debug_mode("error")``."""
    if work.device.type != "cuda":
        return "not checked (CPU)"
    torch.cuda.set_sync_debug_mode("error")
    try:
        work.cluster_step(bank)
        result = "ok: no synchronising CUDA call in assign/losses/backward/update"
    except RuntimeError as err:
        result = f"FAILED: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (200 if device.type == "cuda" else 20)
    warmup = args.warmup or (20 if device.type == "cuda" else 3)
    info = machine_info(device)
    work = Workloads(args, device)
    seed_feats = work.queue[0].T.contiguous()  # (queue, D), the keys seeding draws from

    rows = []
    for k in args.clusters:
        bank = make_bank(k, args, device)
        bank.seed(seed_feats)
        for _ in range(warmup):
            work.moco_step()
            work.cluster_step(bank)
        sync_check = check_no_host_sync(work, bank)
        moco_t, cluster_t = [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
            moco_t.append(timed(work.moco_step, device))
            cluster_t.append(timed(lambda bank=bank: work.cluster_step(bank), device))
        per_repeat = sorted(c / m for c, m in zip(cluster_t, moco_t))
        moco_s, cluster_s = summary(moco_t), summary(cluster_t)
        rows.append(
            {
                "K": k,
                "moco": moco_s,
                "cluster": cluster_s,
                "ratio_of_medians": cluster_s["median_ms"] / moco_s["median_ms"],
                "ratio_per_repeat": {
                    "median": statistics.median(per_repeat),
                    "p25": (
                        statistics.quantiles(per_repeat, n=4)[0] if repeats > 1 else per_repeat[0]
                    ),
                    "p75": (
                        statistics.quantiles(per_repeat, n=4)[2] if repeats > 1 else per_repeat[0]
                    ),
                },
                "host_sync_check": sync_check,
            }
        )
        print(
            f"K={k:5d}  moco {moco_s['median_ms']:9.3f} ms"
            f"  cluster {cluster_s['median_ms']:8.3f} ms"
            f"  ratio {100 * rows[-1]['ratio_of_medians']:6.2f} %  [{sync_check}]",
            flush=True,
        )

    moco_median = statistics.median(r["moco"]["median_ms"] for r in rows) if rows else None
    seeding = []
    for k in args.seed_clusters:
        bank = make_bank(k, args, device)
        bank.seed(seed_feats[: min(4096, seed_feats.shape[0])])  # warm-up on a slice
        times = [
            timed(lambda bank=bank: bank.seed(seed_feats), device) for _ in range(args.seed_repeats)
        ]
        s = summary(times)
        amortised = s["median_ms"] / args.reset_interval
        seeding.append(
            {
                "K": k,
                "points": seed_feats.shape[0],
                "seed": s,
                "amortised_ms_per_step": amortised,
                "amortised_ratio": amortised / moco_median if moco_median else None,
            }
        )
        print(
            f"seed K={k:5d} on {seed_feats.shape[0]} x {args.dim}: {s['median_ms']:9.1f} ms"
            f"  (every {args.reset_interval} steps: {amortised:.3f} ms/step)",
            flush=True,
        )

    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"]["after"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "benchmark": "bank_overhead",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {
            "batch_per_view": args.batch,
            "dim": args.dim,
            "queue": args.queue,
            "clusters": args.clusters,
            "repeats": repeats,
            "warmup": warmup,
            "moco_temperature": 0.2,
            "centroid_temperature": 0.1,
            "variance_scaling": "divide",
            "lloyd_iters": args.lloyd_iters,
            "reset_interval": args.reset_interval,
            "moco_step": "solo.losses.mocov2plus.mocov2plus_loss_func on both views "
            "(q1,k2,queue[1]) + (q2,k1,queue[0]), forward + backward",
            "cluster_step": "CentroidBank.assign(2B keys) + centroid_contrast_loss + "
            "variance_scaled_distance_loss on both views, forward + backward, "
            "+ CentroidBank.update(2B keys)",
            "command": " ".join([Path(sys.executable).name] + sys.argv),
        },
        "results": rows,
        "seeding": seeding,
    }


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"# Centroid-bank overhead ({m['device']})",
        "",
        f"Measured {result['date']} with `{s['command']}`.",
        "",
        f"- Machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['torch_threads']} torch "
        f"thread(s)"
        + (
            f"; GPU {m['gpu']} ({m.get('gpu_memory_gib')} GiB), CUDA {m.get('cuda')}"
            if m["gpu"]
            else ""
        ),
        f"- Load average (1, 5, 15 min) before / after: "
        f"{m.get('load_average_1_5_15min', {}).get('before')} / "
        f"{m.get('load_average_1_5_15min', {}).get('after')}"
        + (
            f"; median time of one (512, 256) add, µs: {m['small_op_latency_us']}"
            if "small_op_latency_us" in m
            else ""
        ),
        f"- Versions: Python {m['python']}, torch {m['torch']}, solo-learn {m['solo_learn']}",
        f"- Settings: B = {s['batch_per_view']} per view, D = {s['dim']}, queue {s['queue']}, "
        f"{s['repeats']} interleaved repeats after {s['warmup']} warm-up steps",
        f"- moco: {s['moco_step']}",
        f"- cluster: {s['cluster_step']}",
        "",
        "| K | MoCo InfoNCE step, ms (median [p25, p75]) | cluster step, ms (median [p25, p75]) "
        "| ratio of medians | per-repeat ratio (median [p25, p75]) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        mo, cl, pr = r["moco"], r["cluster"], r["ratio_per_repeat"]
        lines.append(
            f"| {r['K']} | {mo['median_ms']:.3f} [{mo['p25_ms']:.3f}, {mo['p75_ms']:.3f}] "
            f"| {cl['median_ms']:.3f} [{cl['p25_ms']:.3f}, {cl['p75_ms']:.3f}] "
            f"| {100 * r['ratio_of_medians']:.2f} % "
            f"| {100 * pr['median']:.2f} % [{100 * pr['p25']:.2f}, {100 * pr['p75']:.2f}] |"
        )
    checks = {r["host_sync_check"] for r in result["results"]}
    lines += ["", f"Host-sync check (CUDA sync debug mode): {', '.join(sorted(checks))}"]
    if result["seeding"]:
        lines += [
            "",
            f"Seeding (k-means++ + {s['lloyd_iters']} Lloyd steps on the queue), once every "
            f"{s['reset_interval']} steps:",
            "",
            "| K | points x D | seed, ms (median [min, max]) | amortised ms/step | vs MoCo step |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in result["seeding"]:
            sd = r["seed"]
            ratio = f"{100 * r['amortised_ratio']:.2f} %" if r["amortised_ratio"] else "n/a"
            lines.append(
                f"| {r['K']} | {r['points']} x {s['dim']} | {sd['median_ms']:.1f} "
                f"[{sd['min_ms']:.1f}, {sd['max_ms']:.1f}] | {r['amortised_ms_per_step']:.3f} "
                f"| {ratio} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    tag = args.tag or device_tag(torch.device(args.device), result["machine"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f"bank_overhead_{tag}.json"
    md_path = args.out_dir / f"bank_overhead_{tag}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    md_path.write_text(md)
    print()
    print(md)
    print(f"saved {json_path} and {md_path}")


if __name__ == "__main__":
    main()
