#!/usr/bin/env python3
"""Whether a study profile's training runs at the model's speed: the model's compute-only rate
and the harness's end-to-end rate, measured in one run (docs/benchmarks.md).

- **Compute only**: forward and backward of the online backbone and projector on two fixed
  views of a batch, plus the momentum backbone and projector's forward on both, under the
  profile's precision (autocast), timed with ``torch.utils.benchmark``; also at the other
  precision (float32 / bf16 autocast), to show which is faster.
- **End to end**: a real Lightning fit of the control (solo-learn's MoCo V2+) as ``study.py``
  trains it (the profile's loader, views made per batch, loss, optimiser, momentum update,
  logging), validation off; the rate from the step ends after the first ``--warmup`` steps.
- **Loader alone**: the profile's training loader iterated without the model.

Writes ``benchmarks/results/study_throughput_<profile>.{json,md}``; the bar is an end-to-end
rate of at least 85 % of the compute-only rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sslbench.configs import cli, compose, load_profile, prepare, trainer_kwargs  # noqa: E402
from sslbench.report import describe, machine_record, save_result  # noqa: E402

BAR = 0.85


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli(__doc__)
    p.add_argument("--profile", default="cpu-study", help="profile of studies/profiles.yaml")
    p.add_argument("--steps", type=int, default=40, help="steps of the end-to-end fit")
    p.add_argument("--warmup", type=int, default=8, help="untimed first steps of the fit")
    p.add_argument("--min-seconds", type=float, default=30.0, help="compute-only timing span")
    p.add_argument("--tag", help="file tag (default: the profile's name)")
    args = p.parse_args(argv)
    if not 1 <= args.warmup < args.steps - 1:
        p.error(f"need 1 <= --warmup < --steps - 1, got {args.warmup}, {args.steps}")
    return args


class StepClock:
    """Lightning callback: ``time.perf_counter()`` at the end of every training batch."""

    def __init__(self) -> None:
        import lightning.pytorch as pl

        class _Clock(pl.Callback):
            def __init__(self, stamps: list[float]) -> None:
                self.stamps = stamps

            def on_train_batch_end(self, *_: Any) -> None:
                self.stamps.append(time.perf_counter())

        self.stamps: list[float] = []
        self.callback = _Clock(self.stamps)

    def rate(self, batch: int, skip: int) -> float:
        """Images per second between the end of step ``skip`` and the last step."""
        t = self.stamps[skip - 1 :]
        return batch * (len(t) - 1) / (t[-1] - t[0])


def compute_only(model: Any, views: list[Any], bf16: bool, min_seconds: float) -> float:
    """Images per second of the model's own compute on fixed views (see the module doc)."""
    import torch
    from torch.utils import benchmark

    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = [model.projector(model.backbone(v)) for v in views]
            with torch.no_grad():
                for v in views:
                    model.momentum_projector(model.momentum_backbone(v))
        sum(x.float().sum() for x in z).backward()

    step()  # allocations, oneDNN's first-call kernels
    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_seconds)
    model.zero_grad(set_to_none=True)
    return views[0].shape[0] / m.median


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import lightning.pytorch as pl
    import torch
    from solo.methods import METHODS
    from solo.utils.misc import make_contiguous
    from sslbench.data import CifarData

    prepare(args.threads)
    profile = load_profile(args.profile)
    batch_overrides = ["method=mocov2plus", *args.set, "++seed=5"]
    cfg = compose(profile, batch_overrides, profile.train_images)
    batch = int(cfg.optimizer.batch_size)
    n_train = max(batch * (args.steps + 1), int(cfg.method_kwargs.queue_size) + batch)
    data = CifarData(args.data_dir, n_train, 1, profile.resolution, profile.loader)
    bf16 = "bf16" in str(cfg.precision)

    def build() -> Any:
        pl.seed_everything(5)
        model = METHODS[cfg.method](cfg)
        make_contiguous(model)
        if not cfg.performance.disable_channel_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # the loader alone, then one batch of its views for the compute-only timing
    loader = data.train_loader(cfg, pin_memory=False)
    start, count = time.perf_counter(), 0
    for i, (_, views, _) in enumerate(loader):
        count += views[0].shape[0]
        if i + 1 == args.steps:
            break
    loader_rate = count / (time.perf_counter() - start)
    fixed = [v.contiguous() for v in views]
    rates = {}
    for name, flag in (
        ("bf16" if bf16 else "float32", bf16),
        ("float32" if bf16 else "bf16", not bf16),
    ):
        rates[name] = compute_only(build(), fixed, flag, args.min_seconds)
        print(f"[study_throughput] compute only, {name}: {rates[name]:.1f} img/s", flush=True)

    clock = StepClock()
    kwargs = {**trainer_kwargs(cfg), "max_epochs": 1, "max_steps": args.steps}
    kwargs.update(logger=False, enable_checkpointing=False, limit_val_batches=0)
    kwargs.update(callbacks=[clock.callback])
    model = build()
    pl.Trainer(**kwargs).fit(model, data.train_loader(cfg, pin_memory=False))
    end_to_end = clock.rate(batch, args.warmup)
    own = rates["bf16" if bf16 else "float32"]
    record = machine_record()
    result = {
        "machine": record,
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out_dir"},
            "batch_size": batch,
            "precision": str(cfg.precision),
            "resolution": profile.resolution,
            "loader": profile.loader,
            "channels_last": not cfg.performance.disable_channel_last,
        },
        "compute_only_img_s": rates,
        "end_to_end_img_s": end_to_end,
        "loader_alone_img_s": loader_rate,
        "ratio": end_to_end / own,
        "bar": BAR,
        "passes": end_to_end / own >= BAR,
    }
    save_result(
        args.out_dir / f"study_throughput_{args.tag or profile.name}", result, markdown(result)
    )
    return 0


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    rows = [
        f"| compute only, {name} | {rate:.1f} |" for name, rate in r["compute_only_img_s"].items()
    ]
    return "\n".join(
        [
            f"# Study throughput: profile `{s['profile']}` ({r['machine']['device']})",
            "",
            *describe(r["machine"]),
            f"- Batch {s['batch_size']}, two views each, at {s['resolution']} px, precision "
            f"`{s['precision']}`, channels_last {s['channels_last']}, loader `{s['loader']}`; "
            f"the control (MoCo V2+). Compute only: `torch.utils.benchmark` over at least "
            f"{s['min_seconds']:.0f} s. End to end: a Lightning fit of {s['steps']} steps, "
            f"timed after the first {s['warmup']}.",
            "",
            "| what | images per second |",
            "|---|---|",
            *rows,
            f"| end to end (`study.py`'s training), `{s['precision']}` | "
            f"{r['end_to_end_img_s']:.1f} |",
            f"| the loader alone | {r['loader_alone_img_s']:.1f} |",
            "",
            f"**End to end / compute only at `{s['precision']}`: {r['ratio']:.3f}** "
            f"(bar {r['bar']}: {'met' if r['passes'] else 'NOT met'}).",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
