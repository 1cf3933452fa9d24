"""End-to-end pretraining throughput and peak memory of MoCo V2+ and CueCo, torchvision loader
against DALI CIFAR, on one GPU (or, at a tiny budget, on the CPU to test this script).

Every run is solo-learn's own ``main_pretrain.py`` (loaded by ``cueco_plugin.cli.pretrain``, the
package's entry point; ``--stock`` runs leave its four names unswapped) on this repository's
configs, in a fresh subprocess. The one instrument added is a callback, passed in by replacing
``main_pretrain``'s ``Trainer`` with a subclass of identical signature, that reads the host clock
at every training-batch start without device syncs (one sync opens the measured window, one
closes it). Per run:

- ``images_per_s``: batch size / median iteration time over the measured steps (after
  ``--warmup`` steps: cudnn autotuning, DALI and worker start-up, the bank's first seeding);
  ``window_images_per_s``: measured images / wall time of the whole window (synced ends);
- ``peak_memory_mib``: ``torch.cuda.max_memory_allocated`` over the window;
  ``device_used_peak_mib``: GPU memory in use (all of it: DALI's pools, the CUDA context),
  sampled every 10 steps.

Lightning's progress bar stays on, as in a user's run (it reads the metrics logged with
``prog_bar=True`` every step).

Runs (in priority order; a run that would not finish inside ``--budget-s`` is skipped and
recorded as skipped): the loaders alone (DALI CIFAR on the GPU with the arrays held on the GPU,
the default, and with them in host memory; solo-learn's torchvision loader), then MoCo V2+ and
CueCo with DALI CIFAR at batch 256, eager and with the backbones torch.compiled (CueCo:
``method_kwargs.compile_backbones=True``; MoCo V2+: the same in-place ``nn.Module.compile`` on
its two backbones, done by the instrumented Trainer), both with the torchvision loader at 256,
solo-learn's own DALI path (``data.format: dali``, ``mixed`` JPEG decoding) on Imagenette through
stock ``main_pretrain.py`` with ``configs/pretrain/custom/cueco_dali.yaml``
(``--imagenette-steps`` steps), then both x {DALI CIFAR, torchvision} at batch 512 (from
``configs/pretrain/cifar/cueco_b512.yaml``) and CueCo + DALI at 1024. Both methods run the same
config (``method=mocov2plus`` swaps the method; its ``method_kwargs`` are the same keys);
CueCo's ``freeze_iters`` is set below the warm-up so the measured steps include its cluster
losses; a compiled run's compilation falls in its warm-up steps.

Writes ``--out`` (default ``benchmarks/results/gpu_throughput.json``: a list of records with
``method``, ``loader``, ``batch_size``, ``images_per_s``, ``peak_memory_mib``, ``device``, ...) and
a Markdown table beside it (``.md``), with the machine record.

    python benchmarks/gpu_throughput.py --data <CIFAR-10 .npz folder> --imagenette <folder>
    python benchmarks/gpu_throughput.py --device cpu --tiny --data <small .npz folder> \
        --steps 3 --warmup 1 --out /tmp/gpu_throughput.json   # this script's CPU test
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretrain"
SHARED = (REPO / ".." / "shared" / "datasets").resolve()
RESULTS = REPO / "benchmarks" / "results"
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

METHOD_NAMES = {"cueco": "CueCo", "mocov2plus": "MoCo V2+"}
# (method, loader, batch, compiled) in the order they run; solo-learn's DALI path on Imagenette
# runs after the first IMAGENETTE_AFTER of them
E2E_RUNS = [
    ("cueco", "dali", 256, False),
    ("mocov2plus", "dali", 256, False),
    ("cueco", "dali", 256, True),  # the first compiled run fills inductor's cache ...
    ("mocov2plus", "dali", 256, True),  # ... which the second one's identical backbone reuses
    ("cueco", "torchvision", 256, False),
    ("mocov2plus", "torchvision", 256, False),
    ("cueco", "dali", 512, False),
    ("mocov2plus", "dali", 512, False),
    ("cueco", "torchvision", 512, False),
    ("mocov2plus", "torchvision", 512, False),
    ("cueco", "dali", 1024, False),
]
IMAGENETTE_AFTER = 6


# ------------------------------------------------------------------------------ one run


class IterationClock:
    """Lightning callback: host time at each training-batch start (no per-step sync), a synced
    window from step ``warmup`` to the end of training, and sampled GPU memory."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.starts, self.end = warmup, [], None
        self.device_used_peak = 0

    @staticmethod
    def _cuda() -> bool:
        import torch

        return torch.cuda.is_available()

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        import torch

        if len(self.starts) == self.warmup and self._cuda():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.starts.append(time.perf_counter())
        if self._cuda() and len(self.starts) % 10 == 0:
            free, total = torch.cuda.mem_get_info()
            self.device_used_peak = max(self.device_used_peak, total - free)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        import torch

        if self._cuda():
            torch.cuda.synchronize()
        self.end = time.perf_counter()

    def summary(self, batch_size: int) -> dict[str, Any]:
        import torch

        window = self.starts[self.warmup :]
        if len(window) < 2 or self.end is None:
            raise RuntimeError(f"only {len(self.starts)} steps ran; warm-up is {self.warmup}")
        intervals = [b - a for a, b in zip(window, window[1:])]
        median = statistics.median(intervals)
        gpu = self._cuda()
        return {
            "images_per_s": batch_size / median,
            "window_images_per_s": len(window) * batch_size / (self.end - window[0]),
            "median_step_ms": 1000 * median,
            "measured_steps": len(window),
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
            "device_used_peak_mib": self.device_used_peak / 2**20 if gpu else None,
        }


def compile_backbones(model: Any) -> None:
    """What CueCo's ``method_kwargs.compile_backbones`` does, for any solo-learn momentum
    method (MoCo V2+): ``nn.Module.compile`` of its two backbones, in place; no-op when done."""
    for name in ("backbone", "momentum_backbone"):
        backbone = getattr(model, name, None)
        if backbone is not None and backbone._compiled_call_impl is None:
            backbone.compile()


def with_clock(module: Any, clock: Any, compile: bool = False) -> None:
    """Replaces ``module.Trainer`` by a subclass that adds ``clock`` to the callbacks (and,
    with ``compile``, compiles the model's backbones before fitting); ``functools.wraps`` keeps
    the signature ``main_pretrain.py`` filters its arguments with."""
    from lightning.pytorch import Callback, Trainer

    callback = type("Clock", (Callback,), {})()
    for hook in ("on_train_batch_start", "on_train_end"):
        setattr(callback, hook, getattr(clock, hook))

    class ClockedTrainer(Trainer):
        @functools.wraps(Trainer.__init__)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), callback]
            super().__init__(*args, **kwargs)

        def fit(self, model: Any, *args: Any, **kwargs: Any) -> Any:
            if compile:
                compile_backbones(model)
            return super().fit(model, *args, **kwargs)

    module.Trainer = ClockedTrainer


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One pretraining run in this process (``args.config`` + ``args.overrides``)."""
    import torch

    from cueco_plugin.cli.pretrain import import_main_pretrain, load_main_pretrain
    from cueco_plugin.registration import register

    register()
    module = import_main_pretrain() if args.stock else load_main_pretrain()
    clock = IterationClock(args.warmup)
    with_clock(module, clock, compile=args.compile)
    config = Path(args.config)
    saved = sys.argv
    sys.argv = [saved[0], "--config-path", str(config.parent), "--config-name", config.name]
    sys.argv += args.overrides
    started = time.perf_counter()
    try:
        module.main()
    finally:
        sys.argv = saved
    record = clock.summary(args.batch_size)
    record["wall_s"] = time.perf_counter() - started
    record["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    record["backbones_compiled"] = args.compile or "++method_kwargs.compile_backbones=True" in (
        args.overrides
    )
    return record


# ------------------------------------------------------------------------------ the plan


def common_overrides(args: argparse.Namespace, root: Path, steps: int) -> list[str]:
    gpu = args.device == "cuda"
    return [
        "data.val_path=null",
        f"++max_steps={steps}",
        "max_epochs=1000",
        "++limit_val_batches=0",
        "++num_sanity_val_steps=0",
        "checkpoint.enabled=False",
        "auto_resume.enabled=False",
        "wandb.enabled=False",
        "++enable_model_summary=False",
        f"++default_root_dir={root}",
        f"precision={'bf16-mixed' if gpu else '32'}",
        f"accelerator={'gpu' if gpu else 'cpu'}",
        "devices=[0]" if gpu else 'devices="1"',
        *([] if gpu else ["strategy=auto", "sync_batchnorm=False"]),
    ]


def e2e_plan(
    args: argparse.Namespace, method: str, loader: str, batch: int, compiled: bool = False
) -> dict[str, Any]:
    cifar = CONFIGS / "cifar"
    config = cifar / ("cueco.yaml" if batch == 256 else f"cueco_b{batch}.yaml")
    dali_device = "gpu" if args.device == "cuda" else "cpu"
    overrides = [
        f"data.train_path={args.data}",
        f"optimizer.batch_size={args.batch_scale(batch)}",
        f"method={method}",
        "method_kwargs.freeze_iters=5",  # cluster losses on in the measured window
        *common_overrides(
            args,
            args.work / f"{method}-{loader}-{batch}{'-compiled' if compiled else ''}",
            args.steps,
        ),
    ]
    if compiled and method == "cueco":
        overrides.append("++method_kwargs.compile_backbones=True")
    if args.tiny:
        overrides += ["method_kwargs.queue_size=1024", "method_kwargs.num_clusters=10"]
    if loader == "dali":
        overrides += [
            "data.format=dali",
            f"+dali.device={dali_device}",
            f"data.num_workers={args.dali_threads}",
        ]
        arrays = "gpu" if args.device == "cuda" else "host"  # DALI CIFAR's default placement
        label = f"dali-cifar ({dali_device}, {args.dali_threads} threads, arrays on {arrays})"
    else:
        overrides += [f"data.num_workers={args.workers}"]
        label = f"torchvision ({args.workers} workers)"
    return {
        "kind": "e2e",
        "method": METHOD_NAMES[method],
        "loader": label,
        "batch_size": args.batch_scale(batch),
        "compiled": compiled,
        "config": str(config.relative_to(REPO)),
        "overrides": overrides,
        "stock": False,
        # MoCo V2+ (solo-learn's class) is compiled by the instrumented Trainer
        "compile_hook": compiled and method != "cueco",
        "timeout_s": args.compiled_run_timeout_s if compiled else args.run_timeout_s,
    }


def imagenette_plan(args: argparse.Namespace) -> dict[str, Any]:
    gpu = args.device == "cuda"
    batch = args.batch_scale(128)
    overrides = [
        f"data.train_path={args.imagenette / 'train'}",
        f"optimizer.batch_size={batch}",
        "method_kwargs.freeze_iters=5",
        f"data.num_workers={args.dali_threads}",
        *common_overrides(args, args.work / "solo-dali-imagenette", args.imagenette_steps),
    ]
    if args.tiny:
        overrides += ["method_kwargs.queue_size=1024", "method_kwargs.num_clusters=10"]
        overrides += ["augmentations.0.crop_size=64"]
    if not gpu:
        overrides.append("dali.device=cpu")
    return {
        "kind": "e2e",
        "method": "CueCo",
        "loader": f"solo-learn dali ({'mixed JPEG decoding' if gpu else 'cpu'}, imagenette)",
        "batch_size": batch,
        "config": str((CONFIGS / "custom" / "cueco_dali.yaml").relative_to(REPO)),
        "overrides": overrides,
        # stock main_pretrain.py; on a CPU test host solo-learn's module needs our device_id swap
        "stock": gpu,
        "compiled": False,
        "compile_hook": False,
        "timeout_s": args.run_timeout_s,
        "warmup": min(args.warmup, args.imagenette_steps // 2),
    }


def run_loaders(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The loaders alone (in this process): DALI CIFAR on the device, solo-learn's torchvision
    loader, at each batch size."""
    import torch
    from loader_throughput import (
        dali_loader,
        dali_settings,
        load_images,
        time_loader,
        torchvision_loader,
    )

    images, labels = load_images(args.data, None)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    dali_device = "gpu" if args.device == "cuda" else "cpu"
    records = []
    for batch in args.batches:
        per_epoch = len(images) // batch
        batches = max(1, min(args.loader_batches, per_epoch - args.loader_warmup))
        settings = dali_settings(dali_device, args.dali_threads)
        settings.append((f"torchvision ({args.workers} workers)", "torchvision"))
        for label, kind in settings:
            if kind == "torchvision":
                loader = torchvision_loader(images, labels, batch, args.workers)
            else:  # kind: where DALI CIFAR holds the arrays
                loader = dali_loader(images, labels, batch, args.dali_threads, dali_device, kind)
            result = time_loader(loader, batch, args.loader_warmup, batches, device)
            del loader
            records.append(
                {
                    "kind": "loader",
                    "method": "loader alone",
                    "loader": label,
                    "batch_size": batch,
                    "peak_memory_mib": None,
                    "device": name,
                    "images": len(images),
                    "measured_batches": batches,
                    **result,
                }
            )
            print(f"loader alone, batch {batch}: {label}: {result['images_per_s']:.0f} img/s")
    return records


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def child(args: argparse.Namespace, mode_args: list[str], name: str, timeout: float) -> Any:
    """``python gpu_throughput.py <mode_args>`` in a fresh process (its own CUDA context and
    DALI pools); returns what it wrote to its record file, or raises RuntimeError with the
    end of its output. The full output is kept in ``args.work/<name>.log``."""
    record = args.work / f"{name}.json"
    record.unlink(missing_ok=True)
    mode, *rest = mode_args  # --record before a "--" that ends the options
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, "--record", str(record), *rest]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=args.work)
        log, ok = done.stdout + done.stderr, done.returncode == 0 and record.is_file()
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        log, ok = f"{out}\ntimed out after {timeout:.0f} s", False
    (args.work / f"{name}.log").write_text(log)
    if not ok:
        raise RuntimeError("\n".join(log.strip().splitlines()[-12:]))
    return json.loads(record.read_text())


def run_plan(args: argparse.Namespace, plan: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One planned pretraining run in a child process; its record, or the failure."""
    keys = ("kind", "method", "loader", "batch_size", "compiled", "config", "stock")
    base = {k: plan[k] for k in keys}
    base["overrides"] = plan["overrides"]
    mode_args = [
        "one",
        "--config",
        str(REPO / plan["config"]),
        "--batch-size",
        str(plan["batch_size"]),
        "--warmup",
        str(plan.get("warmup", args.warmup)),
        *(["--stock"] if plan["stock"] else []),
        *(["--compile"] if plan["compile_hook"] else []),
        "--",
        *plan["overrides"],
    ]
    started = time.perf_counter()
    try:
        name = _slug(plan["method"], plan["loader"], plan["batch_size"], plan["compiled"])
        record = child(args, mode_args, name, timeout)
    except RuntimeError as err:
        print(f"FAILED {plan['method']} / {plan['loader']} / {plan['batch_size']}:\n{err}")
        return {**base, "images_per_s": None, "peak_memory_mib": None, "error": str(err)}
    record = {**base, **record, "process_s": time.perf_counter() - started}
    print(
        f"{plan['method']:9s} {plan['loader']:34s} batch {plan['batch_size']:4d}"
        f"{' compiled' if plan['compiled'] else ''}: "
        f"{record['images_per_s']:9.0f} img/s, peak {record['peak_memory_mib'] or 0:.0f} MiB"
    )
    return record


def ratios(records: list[dict[str, Any]]) -> list[str]:
    """CueCo / MoCo V2+ step-time ratios and DALI / torchvision speed-ups, where both ran."""
    ok = {
        (r["method"], r["loader"].split()[0], r["batch_size"], bool(r.get("compiled"))): r[
            "images_per_s"
        ]
        for r in records
        if r.get("images_per_s") and r["kind"] == "e2e"
    }
    lines = []
    for (method, loader, batch, compiled), speed in sorted(ok.items()):
        tag = ", compiled" if compiled else ""
        if method == "CueCo" and ("MoCo V2+", loader, batch, compiled) in ok:
            lines.append(
                f"CueCo / MoCo V2+ step time, {loader}, batch {batch}{tag}: "
                f"{ok[('MoCo V2+', loader, batch, compiled)] / speed:.3f}"
            )
        if loader == "dali-cifar" and (method, "torchvision", batch, compiled) in ok:
            gain = speed / ok[(method, "torchvision", batch, compiled)]
            lines.append(
                f"{method}, batch {batch}{tag}: DALI CIFAR {gain:.2f}x the torchvision loader"
            )
        if compiled and (method, loader, batch, False) in ok:
            gain = speed / ok[(method, loader, batch, False)]
            lines.append(f"{method}, {loader}, batch {batch}: compiled backbones {gain:.3f}x eager")
    return lines


def markdown(report: dict[str, Any]) -> str:
    from sslbench.report import describe

    s = report["settings"]
    lines = [
        "# GPU throughput: MoCo V2+ and CueCo, torchvision loader vs DALI CIFAR",
        "",
        *describe(report["machine"]),
        f"- DALI {report['dali_version']}; ResNet-18, {s['precision']}, channels_last "
        f"(solo-learn's default); {s['images']} real CIFAR-10 training images; "
        f"{s['warmup']} warm-up steps, then {s['steps'] - s['warmup']} measured",
        "- images/s: batch / median iteration (host clock at each batch start, no per-step "
        "sync); window: images / synced wall time of the measured steps; peak MiB: "
        "torch.cuda.max_memory_allocated over the window; device MiB: all GPU memory in use "
        "(DALI pools and CUDA context included), sampled",
        "",
        "| method | loader | batch | compiled | images/s | window images/s | median step (ms) "
        "| peak MiB | device MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value: Any, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    for r in report["records"]:
        head = f"| {r['method']} | {r['loader']} | {r['batch_size']} | "
        head += "yes | " if r.get("compiled") else ("no | " if r["kind"] == "e2e" else "- | ")
        if r.get("skipped") or r.get("error"):
            why = r.get("skipped") or "failed: " + r["error"].splitlines()[-1][:80]
            lines.append(f"{head}{why} |||||")
            continue
        lines.append(
            f"{head}{fmt(r['images_per_s'])} | "
            f"{fmt(r.get('window_images_per_s'))} | {fmt(r.get('median_step_ms'), 1)} | "
            f"{fmt(r['peak_memory_mib'])} | {fmt(r.get('device_used_peak_mib'))} |"
        )
    lines += ["", *[f"- {line}" for line in report["ratios"]]]
    return "\n".join(lines) + "\n"


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile cannot run here, or None: inductor needs a C compiler (CPU kernels;
    on CUDA, Triton builds its launchers with one) and, on CUDA, Triton."""
    import importlib.util
    import shutil

    compilers = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    if not any(c and shutil.which(c) for c in compilers):
        return "skipped: no C compiler (cc, gcc, clang) for torch.compile"
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        return "skipped: triton is not installed (torch.compile on CUDA needs it)"
    return None


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    import nvidia.dali
    from sslbench.report import load_average, machine_record

    from cueco_plugin.data.cifar_arrays import load_cifar_arrays

    deadline = time.perf_counter() + args.budget_s
    args.work.mkdir(parents=True, exist_ok=True)
    load_at_start = load_average()
    images = len(load_cifar_arrays("cifar10", args.data, train=True)[1])
    loader_args = ["loaders", "--device", args.device, "--data", str(args.data)]
    loader_args += ["--workers", str(args.workers), "--dali-threads", str(args.dali_threads)]
    loader_args += ["--loader-warmup", str(args.loader_warmup)]
    loader_args += ["--loader-batches", str(args.loader_batches)]
    loader_args += ["--batches", *[str(args.batch_scale(b)) for b in (256, 512)]]
    try:
        records = child(args, loader_args, "loaders", args.run_timeout_s)
    except RuntimeError as err:
        print(f"FAILED the loaders alone:\n{err}")
        records = [
            {
                "kind": "loader",
                "method": "loader alone",
                "loader": "all",
                "batch_size": None,
                "images_per_s": None,
                "peak_memory_mib": None,
                "error": str(err),
            }
        ]
    plans = [e2e_plan(args, *run) for run in args.runs]
    if args.imagenette is not None:
        plans.insert(min(IMAGENETTE_AFTER, len(plans)), imagenette_plan(args))
    no_compile = compile_unavailable(args.device)
    for plan in plans:
        if plan["compiled"] and no_compile:
            print(f"{no_compile}: {plan['method']} {plan['loader']} {plan['batch_size']}")
            records.append({**plan, "images_per_s": None, "peak_memory_mib": None})
            records[-1]["skipped"] = no_compile
            continue
        left = deadline - time.perf_counter()
        if left < args.min_run_s * (3 if plan["compiled"] else 1):  # compilation takes a while
            print(f"skipped (time): {plan['method']} {plan['loader']} {plan['batch_size']}")
            records.append(
                {
                    **plan,
                    "images_per_s": None,
                    "peak_memory_mib": None,
                    "skipped": f"skipped: {left:.0f} s of the budget left",
                }
            )
            continue
        records.append(run_plan(args, plan, min(plan["timeout_s"], left)))
    machine = machine_record()  # after the runs: this process never opened a CUDA context
    machine["load_average"], machine["load_average_end"] = load_at_start, machine["load_average"]
    report = {
        "machine": machine,
        "dali_version": nvidia.dali.__version__,
        "settings": {
            "device": args.device,
            "data": str(args.data),
            "images": images,
            "imagenette": str(args.imagenette),
            "precision": "bf16-mixed" if args.device == "cuda" else "32",
            "warmup": args.warmup,
            "steps": args.steps,
            "torchvision_workers": args.workers,
            "dali_threads": args.dali_threads,
            "budget_s": args.budget_s,
            "tiny": args.tiny,
        },
        "records": records,
        "ratios": ratios(records),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["loaders"]:
        parser = argparse.ArgumentParser(description="the loaders alone (internal)")
        parser.add_argument("--device", choices=["cuda", "cpu"], required=True)
        parser.add_argument("--data", type=Path, required=True)
        parser.add_argument("--workers", type=int, required=True)
        parser.add_argument("--dali-threads", type=int, required=True)
        parser.add_argument("--loader-warmup", type=int, required=True)
        parser.add_argument("--loader-batches", type=int, required=True)
        parser.add_argument("--batches", type=int, nargs="+", required=True)
        parser.add_argument("--record", type=Path, required=True)
        args = parser.parse_args(argv[1:])
        args.mode = "loaders"
        return args
    if argv[:1] == ["one"]:
        parser = argparse.ArgumentParser(description="one run (internal)")
        parser.add_argument("--config", required=True)
        parser.add_argument("--batch-size", type=int, required=True)
        parser.add_argument("--warmup", type=int, required=True)
        parser.add_argument("--record", type=Path, required=True)
        parser.add_argument("--stock", action="store_true")
        parser.add_argument("--compile", action="store_true", help="compile the backbones")
        parser.add_argument("overrides", nargs="*")
        args = parser.parse_args(argv[1:])
        args.mode = "one"
        return args
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--data", type=Path, default=SHARED / "cifar10", help="CIFAR-10 source")
    parser.add_argument("--imagenette", type=Path, default=SHARED / "imagenette-small")
    parser.add_argument("--no-imagenette", action="store_true")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[":".join(map(str, run[:3])) + (":compiled" if run[3] else "") for run in E2E_RUNS],
        help="end-to-end runs as method:loader:batch[:compiled] (default: all, in this order)",
    )
    parser.add_argument("--warmup", type=int, default=30, help="steps before the window")
    parser.add_argument("--steps", type=int, default=130, help="steps per run (warm-up included)")
    parser.add_argument("--imagenette-steps", type=int, default=50)
    parser.add_argument("--loader-warmup", type=int, default=5)
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--workers", type=int, default=14, help="torchvision loader processes")
    parser.add_argument("--dali-threads", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=450, help="all runs together")
    parser.add_argument("--run-timeout-s", type=float, default=150)
    parser.add_argument("--compiled-run-timeout-s", type=float, default=240)
    parser.add_argument("--min-run-s", type=float, default=25, help="skip a run with less left")
    parser.add_argument("--tiny", action="store_true", help="CPU test: batch/8, few steps")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_throughput"))
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_throughput.json")
    args = parser.parse_args(argv)
    args.mode = "all"
    runs = []
    for run in args.runs:
        parts = run.split(":")
        compiled = parts[3:] == ["compiled"]
        if len(parts) not in (3, 4) or (len(parts) == 4 and not compiled):
            parser.error(
                f"--runs {run}: expected method:loader:batch[:compiled], e.g. cueco:dali:256"
            )
        method, loader, batch = parts[:3]
        if method not in METHOD_NAMES or loader not in ("dali", "torchvision"):
            parser.error(f"--runs {run}: methods {sorted(METHOD_NAMES)}, loaders dali, torchvision")
        if not batch.isdigit():
            parser.error(f"--runs {run}: the batch size {batch!r} is not a positive integer")
        runs.append((method, loader, int(batch), compiled))
    args.runs = runs
    if args.no_imagenette:
        args.imagenette = None
    args.data, args.work = args.data.resolve(), args.work.resolve()
    if args.imagenette is not None:
        args.imagenette = args.imagenette.resolve()
    scale = 8 if args.tiny else 1
    args.batch_scale = lambda batch: batch // scale
    if args.tiny and args.device == "cuda":
        parser.error("--tiny is the CPU test of this script; use it with --device cpu")
    if args.tiny:
        args.workers, args.dali_threads = min(args.workers, 1), min(args.dali_threads, 2)
    return args


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    if args.mode in ("one", "loaders"):
        record = run_one(args) if args.mode == "one" else run_loaders(args)
        args.record.write_text(json.dumps(record) + "\n")
        return record
    os.environ.setdefault("OMP_NUM_THREADS", "1" if args.device == "cpu" else "4")
    return run_all(args)


if __name__ == "__main__":
    main()
