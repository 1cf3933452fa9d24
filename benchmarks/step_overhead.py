#!/usr/bin/env python3
"""Step overhead of CueCo over MoCo V2+: one full training step, same backbone, batch, data,
recipe and machine, in one process (docs/benchmarks.md).

Both models are solo-learn classes built from one profile config (the control derived as in
``study.py``), trained by real Lightning fits on real CIFAR-10 batches augmented once with
solo-learn's transforms and replayed (no loading cost). Each round times, with
``torch.utils.benchmark``, a short and a long fit per model in alternating order; the step time
is ``(T_long - T_short) / (long - short)``, so the cost of starting a fit cancels. CueCo's cluster
losses are on in every timed step. Writes ``benchmarks/results/step_overhead_<tag>.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sslbench.configs import (  # noqa: E402
    CONTROL,
    cli,
    compose,
    load_profile,
    prepare,
    trainer_kwargs,
)
from sslbench.report import describe, machine_record, save_result  # noqa: E402

STEADY = ("method_kwargs.warmup_iters=0", "method_kwargs.freeze_iters=0")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli(__doc__)
    p.add_argument("--profile", default="gpu-short", help="profile of studies/profiles.yaml")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (2 views each)")
    p.add_argument("--rounds", type=int, default=6, help="rounds of short + long blocks")
    p.add_argument("--short", type=int, default=2, help="steps of the short block")
    p.add_argument("--long", type=int, default=12, help="steps of the long block")
    p.add_argument("--tag", default=None, help="file tag (default: <device>-b<batch>)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile both models' backbones (CueCo: method_kwargs.compile_backbones; "
        "MoCo V2+: the same in-place nn.Module.compile); tag suffix -compiled",
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or not 1 <= args.short < args.long:
        p.error(f"need --rounds >= 1 and 1 <= --short < --long, got {vars(args)}")
    return args


class Replay:
    """A map-style dataset of pre-collated batches, cycled: item i is batch ``i % n``."""

    def __init__(self, batches: list[Any], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.batches[i % len(self.batches)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import lightning.pytorch as pl
    import torch
    from solo.methods import METHODS
    from solo.utils.misc import make_contiguous
    from sslbench.data import NpzViews, load_npz, pretrain_transform
    from torch.utils import benchmark
    from torch.utils.data import DataLoader

    prepare(args.threads)
    profile = load_profile(args.profile)
    shared = [f"optimizer.batch_size={args.batch_size}", *args.set, "++seed=5"]
    cfgs = {
        CONTROL: compose(profile, ["method=mocov2plus", *shared], profile.train_images),
        "cueco": compose(
            profile,
            [*STEADY, "method_kwargs.recluster_interval=0", *shared]
            + (["++method_kwargs.compile_backbones=True"] if args.compile else []),
            profile.train_images,
        ),
    }
    images, labels = load_npz(args.data_dir, "train", 4 * args.batch_size)
    views = NpzViews(images, labels, pretrain_transform(cfgs["cueco"]))
    batches = list(DataLoader(views, batch_size=args.batch_size))
    models = {}
    for name, cfg in cfgs.items():
        pl.seed_everything(5)
        model = METHODS[cfg.method](cfg)
        if args.compile and name == CONTROL:  # what CueCo's compile_backbones does
            model.backbone.compile()
            model.momentum_backbone.compile()
        make_contiguous(model)
        if not cfg.performance.disable_channel_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = model

    def fit(name: str, steps: int) -> None:
        kwargs = {**trainer_kwargs(cfgs[name]), "max_epochs": 1, "max_steps": steps}
        kwargs.update(logger=False, enable_checkpointing=False, limit_val_batches=0)
        loader = DataLoader(Replay(batches, steps), batch_size=None)
        pl.Trainer(**kwargs).fit(models[name], loader)

    def seconds(name: str, steps: int) -> float:
        timer = benchmark.Timer(
            "fit(name, steps)",
            globals={"fit": fit, "name": name, "steps": steps},
            num_threads=torch.get_num_threads(),
        )
        return timer.timeit(1).median

    warmup_s = {}  # untimed: allocations, cudnn autotuning, compilation, the first clustering
    for name in models:
        warmup_s[name] = seconds(name, args.short + 1)
    bank = models["cueco"].bank
    if not bank.losses_active:
        raise RuntimeError("CueCo's cluster losses are not active after the warm-up block")
    per_step: dict[str, list[float]] = {name: [] for name in models}
    ratios = []
    for r in range(args.rounds):
        for name in list(models)[:: 1 if r % 2 == 0 else -1]:
            t_short, t_long = seconds(name, args.short), seconds(name, args.long)
            per_step[name].append((t_long - t_short) / (args.long - args.short))
        ratios.append(per_step["cueco"][-1] / per_step[CONTROL][-1])
        print(f"[step_overhead] round {r + 1}: {per_step} ratio {ratios[-1]:.4f}", flush=True)
    if not bank.losses_active or bank.num_clusterings != 1:
        raise RuntimeError("CueCo's bank left its steady state during the timed blocks")

    summary = {}
    for name, values in per_step.items():
        m = benchmark.Measurement(1, values, benchmark.TaskSpec("step", "", sub_label=name))
        summary[name] = {"median_s": m.median, "iqr_s": m.iqr, "rounds": len(values)}
    ratio = summary["cueco"]["median_s"] / summary[CONTROL]["median_s"]
    record = machine_record()
    result = {
        "machine": record,
        "settings": {**vars(args), "out_dir": str(args.out_dir), "profile_overrides": shared},
        "per_step_s": per_step,
        "summary": summary,
        "ratio_of_medians": ratio,
        "per_round_ratios": ratios,
        "warmup_fit_s": warmup_s,
        "threshold": 1.05,
        "passes": ratio <= 1.05,
    }
    tag = args.tag or f"{'gpu' if record['device'] != 'cpu' else 'cpu'}-b{args.batch_size}"
    tag += "-compiled" if args.compile and not args.tag else ""
    save_result(args.out_dir / f"step_overhead_{tag}", result, markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    s, mo, cu = r["settings"], r["summary"][CONTROL], r["summary"]["cueco"]
    q = statistics.quantiles(r["per_round_ratios"], n=4) if len(r["per_round_ratios"]) > 1 else []
    spread = f", IQR {q[0]:.4f}-{q[2]:.4f}" if q else ""
    return "\n".join(
        [
            f"# Step overhead: CueCo / MoCo V2+ ({r['machine']['device']}, "
            f"batch {s['batch_size']})",
            "",
            *describe(r["machine"]),
            f"- Profile `{s['profile']}` with `{' '.join(s['profile_overrides'])}`; {s['rounds']} "
            f"rounds, each a {s['short']}- and a {s['long']}-step block per model (real "
            "Lightning fits on replayed real batches, torch.utils.benchmark); CueCo's cluster "
            "losses on in every timed step."
            + (" Both backbones torch.compiled (mode default)." if s.get("compile") else ""),
            f"- Untimed warm-up fit of {s['short'] + 1} steps (compilation included): "
            + ", ".join(f"{n} {t:.1f} s" for n, t in r.get("warmup_fit_s", {}).items()),
            "",
            "| model | step (ms, median over rounds) | IQR (ms) |",
            "|---|---|---|",
            f"| MoCo V2+ | {1e3 * mo['median_s']:.2f} | {1e3 * mo['iqr_s']:.2f} |",
            f"| CueCo | {1e3 * cu['median_s']:.2f} | {1e3 * cu['iqr_s']:.2f} |",
            "",
            f"**Ratio of median step times CueCo / MoCo V2+: {r['ratio_of_medians']:.4f}** "
            f"(per-round ratios median {statistics.median(r['per_round_ratios']):.4f}{spread}); "
            f"threshold 1.05: {'met' if r['passes'] else 'NOT met'}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
