#!/usr/bin/env python3
"""Cost of CueCo's cluster part next to the MoCo V2+ InfoNCE step it is added to, per K, timed
with ``torch.utils.benchmark`` (CUDA synchronised; docs/benchmarks.md):

- infonce: solo-learn's ``mocov2plus_loss_func`` on both views against a clone of the (2, D,
  queue) queue, forward + backward, as ``MoCoV2Plus.training_step`` computes it;
- cueco: CueCo's loss step as its ``training_step`` computes it after the backbones (assignment
  of the 2B keys, L2 targets, L1, L2, L3, one batched call each),
  backward, the bank's ``accumulate`` and ``step``; the cluster part is ``cueco - infonce``;
- clustering: one (re-)clustering from 2 x queue keys, amortised over ``recluster_interval``.

CueCo comes from ``configs/pretrain/cifar/cueco.yaml`` (Hydra, ``--set`` adds overrides). On CUDA
one step runs under ``torch.cuda.set_sync_debug_mode("error")``. On a loaded CPU, OpenMP wake-ups
hurt the many small cluster ops most: compare like with like (``--threads``; load is saved).
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import benchmark

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sslbench.configs import cli  # noqa: E402
from sslbench.report import describe, machine_record, save_result  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli(__doc__, data=False)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, default=256, help="per-view batch B")
    p.add_argument("--dim", type=int, default=256, help="projection dimension D")
    p.add_argument("--queue", type=int, default=65536, help="MoCo queue size")
    p.add_argument("--clusters", type=int, nargs="+", default=[10, 100, 1000], help="K values")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds of measurements")
    p.add_argument("--tag", default="", help="file tag (default: from the device)")
    args = p.parse_args(argv)
    if min(args.batch, args.dim, args.queue) < 1 or min(args.clusters) < 2:
        p.error(f"need --batch, --dim, --queue >= 1 and --clusters >= 2, got {vars(args)}")
    return args


def build_cueco(k: int, args: argparse.Namespace, device: torch.device) -> Any:
    """CueCo from the CIFAR YAML with K clusters, D dims, the queue of ``args`` and ``--set``."""
    from sslbench.configs import compose, load_profile

    from cueco_plugin.registration import register

    overrides = [
        f"method_kwargs.num_clusters={k}",
        f"method_kwargs.proj_output_dim={args.dim}",
        f"method_kwargs.queue_size={args.queue}",
        f"optimizer.batch_size={args.batch}",
        "method_kwargs.warmup_iters=0",
        "method_kwargs.freeze_iters=0",  # cluster losses active in every timed step
        *args.set,
    ]
    cfg = compose(load_profile("gpu-short"), overrides, train_images=2 * args.queue)
    return register()(cfg).to(device)


def cueco_loss(model: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """CueCo's loss from queries q (2B, D) and keys k (2B, D) of one process, through the
    method's own ``loss_terms`` (what ``CueCo.training_step`` runs after the backbones)."""
    gathered = torch.stack(k.chunk(2))  # (2, B, D): gather() is the identity in one process
    nce, l2, l3, weight, _ = model.loss_terms(q, k, gathered, slice(0, q.shape[0] // 2))
    mk = model.mk
    return mk.lambda_nce * nce + weight * (mk.lambda_centroid * l2 + mk.lambda_variance * l3)


def cueco_step(model: Any, q: torch.Tensor, k: torch.Tensor) -> None:
    """One timed CueCo loss step: :func:`cueco_loss`, backward, the bank's step."""
    q.grad = None
    cueco_loss(model, q, k).backward()
    model.bank.step()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from solo.losses.mocov2plus import mocov2plus_loss_func

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    b, d = args.batch, args.dim
    q = F.normalize(torch.randn(2 * b, d, generator=gen), dim=1).to(device).requires_grad_()
    k = F.normalize(torch.randn(2 * b, d, generator=gen), dim=1).to(device)
    queue = F.normalize(torch.randn(2, d, args.queue, generator=gen), dim=1).to(device)

    def infonce() -> None:
        q.grad = None
        (q1, q2), (k1, k2) = q.chunk(2), k.chunk(2)
        # solo-learn's loss saves the queue for its backward, after the enqueue: MoCoV2Plus
        # (and CueCo's L1) clone it
        keys = queue.clone().detach()
        loss = mocov2plus_loss_func(q1, k2, keys[1], 0.2)
        (loss + mocov2plus_loss_func(q2, k1, keys[0], 0.2)).div(2).backward()

    rows = []
    for num_clusters in args.clusters:
        model = build_cueco(num_clusters, args, device)
        feats = queue.transpose(1, 2).reshape(-1, d)  # (2 x queue, D): view 0, then view 1
        if not model.bank.cluster(feats):
            raise RuntimeError(f"K={num_clusters}: the bank did not cluster {args.queue} keys")
        model.queue.keys.copy_(queue)
        model.queue.real.fill_(True)  # a full queue: the Sinkhorn shares use its newest keys
        model.queue.num_filled = args.queue

        cueco = partial(cueco_step, model, q, k)
        sync = "not checked (CPU)"
        if device.type == "cuda":
            cueco()
            torch.cuda.set_sync_debug_mode("error")
            try:
                cueco()
                sync = "ok: no synchronising CUDA call"
            except RuntimeError as err:
                sync = f"FAILED: {err}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
        calls = {
            "infonce": infonce,
            "cueco": cueco,
            "clustering": partial(model.bank.cluster, feats),
        }
        once = ("clustering",)  # seconds per call: one round
        # the two steps in interleaved rounds (drift on a shared machine hits both alike)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                if name in once and times[name]:
                    continue
                threads = torch.get_num_threads()
                timer = benchmark.Timer("f()", globals={"f": call}, num_threads=threads)
                times[name] += timer.blocked_autorange(min_run_time=args.min_run_time).times
        ms = {}
        for name, values in times.items():
            t = torch.tensor(values)
            q1, med, q3 = (1e3 * torch.quantile(t, torch.tensor([0.25, 0.5, 0.75]))).tolist()
            ms[name] = {"median_ms": med, "iqr_ms": q3 - q1, "blocks": len(values)}
        interval = int(model.mk.recluster_interval) or None
        cluster_ms = ms["cueco"]["median_ms"] - ms["infonce"]["median_ms"]
        amortised = ms["clustering"]["median_ms"] / interval if interval else None
        ratio = cluster_ms / ms["infonce"]["median_ms"]
        rows.append({"K": num_clusters, **ms, "cluster_part_ms": cluster_ms, "host_sync": sync})
        rows[-1].update(cluster_part_ratio=ratio, clustering_amortised_ms=amortised)
        print(f"K={num_clusters}: {ms} cluster part {100 * ratio:.2f} % [{sync}]", flush=True)
    return {
        "benchmark": "bank_overhead",
        "machine": machine_record(),
        "settings": {**vars(args), "out_dir": str(args.out_dir), "device": str(device)},
        "results": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Cluster-part overhead of CueCo vs the InfoNCE step ({s['device']})",
        "",
        *describe(result["machine"]),
        f"- Settings: B = {s['batch']} per view, D = {s['dim']}, queue {s['queue']}, overrides "
        f"`{' '.join(s['set']) or '(none)'}`; torch.utils.benchmark blocked_autorange, "
        f"{s['rounds']} interleaved rounds of {s['min_run_time']} s per step kind",
        "- infonce: solo-learn's mocov2plus_loss_func on both views, forward + backward; "
        "cueco: CueCo's loss part of the step (assignment, targets, L1, L2, L3 in batched "
        "calls, backward, bank accumulate + step); cluster part = cueco - infonce",
        "",
        "| K | InfoNCE step, ms (median, IQR) | CueCo loss step, ms (median, IQR) | cluster "
        "part, ms | cluster part / InfoNCE | clustering, ms (amortised per step) | host sync |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["results"]:
        i, c, cl = r["infonce"], r["cueco"], r["clustering"]
        amortised = r["clustering_amortised_ms"]
        lines.append(
            f"| {r['K']} | {i['median_ms']:.3f} ({i['iqr_ms']:.3f}) | {c['median_ms']:.3f} "
            f"({c['iqr_ms']:.3f}) | {r['cluster_part_ms']:.3f} | "
            f"{100 * r['cluster_part_ratio']:.2f} % | {cl['median_ms']:.1f} "
            f"({'never' if amortised is None else f'{amortised:.3f}'}) | "
            f"{r['host_sync']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    gpu = re.sub(r"[^a-z0-9]+", "-", result["machine"]["device"].lower()).strip("-")
    threads = torch.get_num_threads()
    cpu = f"cpu-{threads}thread" + ("s" if threads != 1 else "")  # as the earlier files
    tag = args.tag or (f"cuda-{gpu}" if args.device.startswith("cuda") else cpu)
    save_result(args.out_dir / f"bank_overhead_{tag}", result, markdown(result))


if __name__ == "__main__":
    main()
