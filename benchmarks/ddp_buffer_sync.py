#!/usr/bin/env python3
"""What DDP's per-forward buffer broadcast costs CueCo, and what leaving the queue and the bank
out of it saves: a real ``DistributedDataParallel`` over ``--world`` processes (gloo on CPU, NCCL
with one GPU each), CueCo from ``configs/pretrain/cifar/cueco.yaml`` (Hydra, ``--set`` adds
overrides), forward + backward of a small batch, timed per step (median over interleaved
rounds), two arms:

- ``shipped``: CueCo as it is, its queue and bank in ``_ddp_params_and_buffers_to_ignore``;
- ``broadcast-all``: the same model with that list emptied, so DDP broadcasts the queue and the
  bank from rank 0 before every forward, as it does solo-learn's MoCo V2+ queue.

The backbone work is the same in both; the difference is the broadcast (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sslbench.configs import cli  # noqa: E402
from sslbench.report import describe, machine_record, save_result  # noqa: E402

ARMS = ("shipped", "broadcast-all")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli(__doc__, data=False)
    p.add_argument("--world", type=int, default=2, help="processes")
    p.add_argument("--batch", type=int, default=8, help="images per process and step")
    p.add_argument("--dim", type=int, default=256, help="projection dimension D")
    p.add_argument("--queue", type=int, default=65536, help="MoCo queue size Q")
    p.add_argument("--steps", type=int, default=10, help="timed steps per arm and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--port", type=int, default=29533, help="rendezvous port on 127.0.0.1")
    p.add_argument("--tag", default="", help="file tag (default: from the device)")
    args = p.parse_args(argv)
    if min(args.world, args.batch, args.dim, args.queue, args.steps, args.rounds) < 1:
        p.error(f"every count must be >= 1, got {vars(args)}")
    return args


def build(args: argparse.Namespace, device: torch.device) -> Any:
    from sslbench.configs import compose, load_profile

    from cueco_plugin.registration import register

    overrides = [
        f"method_kwargs.proj_output_dim={args.dim}",
        f"method_kwargs.queue_size={args.queue}",
        f"optimizer.batch_size={args.batch}",
        *args.set,
    ]
    cfg = compose(load_profile("gpu-short"), overrides, train_images=2 * args.queue)
    return register()(cfg).to(device)


def worker(rank: int, args: argparse.Namespace, out: str) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.world))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=rank,
        world_size=args.world,
    )
    try:
        models = {}
        for arm in ARMS:
            torch.manual_seed(0)
            model = build(args, device)
            if arm == "broadcast-all":
                model._ddp_params_and_buffers_to_ignore = []
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rank] if cuda else None
            )
            models[arm] = (model, ddp, len(ddp.modules_buffers))
        x = torch.rand(args.batch, 3, 32, 32, device=device)
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}

        def step(ddp: Any) -> float:
            start = time.perf_counter()
            out = ddp(x)
            (out["z"].sum() + out["logits"].sum()).backward()  # every parameter gets a grad
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start

        for arm in ARMS:  # warm-up
            step(models[arm][1])
        for _ in range(args.rounds):
            for arm in ARMS:
                times[arm] += [step(models[arm][1]) for _ in range(args.steps)]
        if rank == 0:
            sizes = {
                arm: sum(b.numel() * b.element_size() for b in ddp.modules_buffers) / 2**20
                for arm, (_, ddp, _) in models.items()
            }
            rows = [
                {
                    "arm": arm,
                    "median_ms": 1e3 * statistics.median(times[arm]),
                    "steps": len(times[arm]),
                    "buffers_broadcast": models[arm][2],
                    "broadcast_mib": sizes[arm],
                }
                for arm in ARMS
            ]
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# DDP buffer broadcast: CueCo's queue and bank left out ({result['machine']['device']})",
        "",
        *describe(result["machine"]),
        f"- Settings: {s['world']} processes ({result['backend']}), batch {s['batch']} per "
        f"process, D = {s['dim']}, Q = {s['queue']}, overrides `{' '.join(s['set']) or '(none)'}`;"
        f" forward + backward per step, {s['rounds']} interleaved rounds x {s['steps']} steps",
        "",
        "| arm | buffers DDP broadcasts | their size (MiB) | step, ms (median) |",
        "|---|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['arm']} | {r['buffers_broadcast']} | {r['broadcast_mib']:.1f} | "
            f"{r['median_ms']:.1f} |"
        )
    shipped, full = (r["median_ms"] for r in result["results"])
    lines += ["", f"Saved per step by leaving them out: {full - shipped:.1f} ms."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < args.world:
        raise SystemExit(f"--world {args.world}: only {torch.cuda.device_count()} GPUs visible")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    raw = args.out_dir / ".ddp_buffer_sync_rank0.json"
    record = machine_record()
    mp.spawn(worker, args=(args, str(raw)), nprocs=args.world, join=True)
    rows = json.loads(raw.read_text())
    raw.unlink()
    record["load_average_end"] = machine_record()["load_average"]
    result = {
        "benchmark": "ddp_buffer_sync",
        "machine": record,
        "backend": "nccl" if cuda else "gloo",
        "settings": {**vars(args), "out_dir": str(args.out_dir)},
        "results": rows,
    }
    tag = args.tag or (f"{args.world}gpu" if cuda else f"cpu-{args.world}proc")
    save_result(args.out_dir / f"ddp_buffer_sync_{tag}", result, markdown(result))


if __name__ == "__main__":
    main()
