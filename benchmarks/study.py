#!/usr/bin/env python3
"""Study harness: named arms trained one after another in one process on the same data, seed and
budget, then scored the same way (docs/benchmarks.md).

An arms file (``benchmarks/studies/*.yaml``) lists arms, each a list of Hydra overrides on top of a
profile (``benchmarks/studies/profiles.yaml``: a ``configs/pretrain/`` YAML and the budget). The
control ``mocov2plus`` is solo-learn's MoCo V2+ built from the same YAML; CueCo arms' names start
with ``cueco``. Each run: solo-learn's class from ``solo.methods.METHODS``, a real Lightning
``Trainer`` on the real CIFAR-10 ``.npz`` images, solo-learn's online kNN per epoch (Lightning's
``CSVLogger``), then the final kNN and linear probe on every image and the health of the
clusters (the bank's, and a fresh k-means of the same features). Every seed also scores the
``untrained`` network (the control's, built with that seed): the floor that training must clear.
``--seeds``: every arm on each seed, paired (same data order and views for a seed); the table
gives each arm's mean, SD and paired deltas. ``--rerun-seed``: the best CueCo arm (kNN, first
seed) and the control again with that seed. ``--budget-minutes``: no run starts that would not
end in time, Lightning's ``Timer`` stops one at the budget. Writes
``<out-dir>/<name>/results.{csv,md}``, ``knn_per_epoch.png``, ``bank_health.png``,
``metadata.json``, ``runs/``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import hashlib
import json
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sslbench.configs import CONTROL, REPO, cli, load_profile, prepare, trainer_kwargs  # noqa: E402

UNTRAINED = "untrained"
CSV_COLUMNS = (
    "arm seed status knn_top1 knn_delta linear_top1 linear_delta "
    "epoch_live_clusters epoch_usage_entropy "
    "bank_live bank_entropy bank_m2o kmeans_live kmeans_entropy kmeans_m2o num_clusters "
    "epochs steps train_seconds eval_seconds device profile overrides"
).split()
ARMS_KEYS = {"name", "description", "profile", "seed", "seeds", "rerun_seed", "arms"}
#: the bank's health the method logs at each epoch end, and per logging step (the plot)
EPOCH_HEALTH = ("epoch_live_clusters", "epoch_usage_entropy")
STEP_HEALTH = ("live_clusters", "usage_entropy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli(__doc__)
    p.add_argument("--arms", type=Path, required=True, help="arms file (YAML)")
    p.add_argument("--profile", help="profile of studies/profiles.yaml; None: the arms file's")
    p.add_argument("--name", help="study name, must contain 'study'; None: the arms file's")
    p.add_argument("--only", help="comma-separated arms to run (the control always runs)")
    p.add_argument("--seed", type=int, help="first seed; None: the arms file's, else 5")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="every arm on each of these seeds (paired); overrides --seed and the arms file's",
    )
    p.add_argument(
        "--rerun-seed",
        type=int,
        help="train the best CueCo arm (kNN, first seed) and the control again with this seed; "
        "0: no rerun; None: the arms file's rerun_seed, else 0",
    )
    p.add_argument("--budget-minutes", type=float, help="wall-clock budget of the whole study")
    p.add_argument("--train-images", type=int, help="override the profile's training images")
    p.add_argument("--test-images", type=int, help="override the profile's test images")
    p.add_argument("--force", action="store_true", help="retrain runs whose results exist")
    p.add_argument(
        "--record-keys",
        default="",
        help="comma-separated arms whose runs save every step's momentum keys to "
        "runs/<arm>-s<seed>/keys.pt (for bank_replay.py)",
    )
    return p.parse_args(argv)


def load_arms(path: Path) -> dict[str, Any]:
    """The arms file, checked: a name with 'study', the control and ``cueco*`` arms as lists.

    Raises:
        ValueError: naming the file, the key or arm, and what is allowed.
    """
    from omegaconf import OmegaConf

    if not path.is_file():
        raise ValueError(f"--arms {str(path)!r} is not a file")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    unknown = sorted(set(spec) - ARMS_KEYS) if isinstance(spec, dict) else None
    if unknown is None or unknown or not isinstance(spec.get("arms"), dict):
        raise ValueError(f"{path}: a mapping with 'arms' and only {sorted(ARMS_KEYS)}; {unknown}")
    spec.setdefault("name", path.stem)
    for arm, overrides in spec["arms"].items():
        if not arm.startswith(("cueco", CONTROL)):
            raise ValueError(
                f"{path}: arm {arm!r}: names are {CONTROL!r}, {CONTROL}-<variant> (the control "
                "with other settings) or start with 'cueco'"
            )
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"{path}: arm {arm!r} must be a list of Hydra overrides")
    if CONTROL not in spec["arms"]:
        raise ValueError(f"{path}: the control arm {CONTROL!r} is missing")
    return spec


def fingerprint(cfg: Any, data: tuple[int, int]) -> str:
    from omegaconf import OmegaConf

    blob = OmegaConf.to_yaml(cfg) + repr(data)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def best_cueco_arm(records: list[dict[str, Any]], seed: int) -> str | None:
    """The CueCo arm with the highest kNN top-1 among the finished runs of ``seed``."""
    done = [
        r
        for r in records
        if r["seed"] == seed and r["arm"].startswith("cueco") and r["status"] == "ok"
    ]
    return max(done, key=lambda r: r["knn_top1"])["arm"] if done else None


def fits(left: float | None, durations: list[float], runs: int = 1) -> bool:
    """Whether ``runs`` more runs, each as long as the median of ``durations``, end within
    ``left`` seconds (None: no budget; the first run only needs time left)."""
    if left is None:
        return True
    return left > 0 and (not durations or left > runs * statistics.median(durations))


def with_deltas(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record plus ``knn_delta`` / ``linear_delta``: minus the control of the same seed."""
    control = {r["seed"]: r for r in records if r["arm"] == CONTROL and r["status"] == "ok"}
    out = []
    for r in records:
        c = control.get(r["seed"])
        row = dict(r)
        for key in ("knn", "linear"):
            ok = c is not None and r["status"] == "ok"
            row[f"{key}_delta"] = r[f"{key}_top1"] - c[f"{key}_top1"] if ok else None
        out.append(row)
    return out


def train_and_score(
    cfg: Any,
    data: Any,
    run_dir: Path,
    profile: Any,
    seconds: float | None,
    num_clusters: int,
    train: bool = True,
    record_keys: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains one run with a real Lightning Trainer (``train=False``: the untrained network,
    built the same way with the same seed) and scores its frozen backbone and clusters."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Timer
    from lightning.pytorch.loggers import CSVLogger
    from solo.methods import METHODS
    from solo.utils.misc import make_contiguous
    from sslbench.evaluation import cluster_health, frozen_scores

    pl.seed_everything(cfg.seed, workers=True)
    model = METHODS[cfg.method](cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)
    cuda = cfg.accelerator == "gpu"
    device = torch.device("cuda" if cuda else "cpu")
    if not train:
        start = time.monotonic()
        scores = frozen_scores(model, data.eval_train, data.eval_test, profile.evaluation, device)
        health = cluster_health(model, data.eval_train, num_clusters, int(cfg.seed), device)
        eval_seconds = round(time.monotonic() - start, 1)
        return {
            **scores,
            **health,
            "status": "ok",
            "epochs": 0,
            "steps": 0,
            "train_seconds": 0.0,
            "eval_seconds": eval_seconds,
            "history": [],
        }

    shutil.rmtree(run_dir, ignore_errors=True)  # a failed run's logs must not meet this one's
    timer = Timer(duration=dt.timedelta(seconds=seconds) if seconds else None, interval="step")
    logger = CSVLogger(str(run_dir), name="", version="")
    callbacks: list[Any] = [timer]
    if record_keys is not None:
        from sslbench.keys import KeyRecorder

        callbacks.append(KeyRecorder(int(cfg.optimizer.batch_size)))
    kwargs = {**trainer_kwargs(cfg), "logger": logger, "callbacks": callbacks}
    trainer = pl.Trainer(**kwargs, enable_checkpointing=False)
    trainer.fit(model, data.train_loader(cfg, pin_memory=cuda), data.val_loader(cfg))
    if trainer.interrupted:
        raise KeyboardInterrupt
    if record_keys is not None:
        callbacks[-1].save(run_dir / "keys.pt", trainer.num_training_batches, **record_keys)
    start = time.monotonic()
    scores = frozen_scores(model, data.eval_train, data.eval_test, profile.evaluation, device)
    health = cluster_health(model, data.eval_train, num_clusters, int(cfg.seed), device)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))

    def series(key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]

    # online kNN per epoch (absent with knn_eval.enabled=False)
    history = [
        (int(r["epoch"]) + 1, float(r["val_knn_acc1"])) for r in rows if r.get("val_knn_acc1")
    ]
    epoch_health = {key: series(f"train_{key}") for key in EPOCH_HEALTH}
    expected = trainer.max_epochs * trainer.num_training_batches
    return {
        **scores,
        **health,
        "status": "ok" if trainer.global_step >= expected else "truncated (budget)",
        **{key: values[-1][1] if values else None for key, values in epoch_health.items()},
        "epochs": round(trainer.global_step / trainer.num_training_batches, 2),
        "steps": trainer.global_step,
        "train_seconds": round(timer.time_elapsed("train"), 1),
        "eval_seconds": round(time.monotonic() - start, 1),
        "history": history,
        "health_history": {key: series(f"train_{key}") for key in STEP_HEALTH + EPOCH_HEALTH},
    }


def write_results(out: Path, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """results.csv, results.md, knn_per_epoch.png, bank_health.png and metadata.json from the
    runs so far."""
    order = [UNTRAINED, *meta["arms"]]
    rank = {arm: i for i, arm in enumerate(order)}
    records = sorted(records, key=lambda r: (int(r["seed"]), rank.get(r["arm"], len(order))))
    rows = with_deltas(records)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "overrides": " ".join(r["overrides"])} for r in rows)
    (out / "results.md").write_text(markdown(meta, rows))
    plot_history(out / "knn_per_epoch.png", rows, meta["name"])
    plot_bank_health(out / "bank_health.png", rows, meta["name"])
    (out / "metadata.json").write_text(json.dumps({**meta, "runs": records}, indent=2))


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.2f}" if signed else f"{value:.2f}"
    return str(value)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{sd}"


def arm_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm, over its finished seeds: kNN and linear means and SDs, and the paired kNN
    deltas against the control of the same seed (each, and the smallest)."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok":
            arms.setdefault(r["arm"], []).append(r)
    out = []
    for arm, runs in arms.items():
        deltas = [r["knn_delta"] for r in runs if r.get("knn_delta") is not None]
        out.append(
            {
                "arm": arm,
                "seeds": [r["seed"] for r in runs],
                "knn": [r["knn_top1"] for r in runs],
                "linear": [r["linear_top1"] for r in runs],
                "knn_deltas": deltas,
                "linear_deltas": [
                    r["linear_delta"] for r in runs if r.get("linear_delta") is not None
                ],
            }
        )
    return out


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    from sslbench.report import describe

    p = meta["profile"]
    lines = [f"# Study `{meta['name']}`: profile `{p['name']}`", ""]
    if p["name"] == "cpu-tiny":
        lines += ["> **Smoke result, not evidence**: a few CPU steps check the harness.", ""]
    lines += describe(meta["machine"])
    seeds = meta.get("seeds") or [meta["seed"]]
    lines += [
        f"- Profile: {p['description']}. Base config `{p['config']}` with overrides "
        f"`{' '.join(p['overrides'])}`; {meta['train_images']} training / {meta['test_images']} "
        f"test images at {p.get('resolution', 32)} px ({meta['steps_per_epoch']} steps per "
        f"epoch), loader `{p.get('loader', 'torchvision')}`; every arm: same data, order and "
        "augmentations for the same seed.",
        f"- Arms file `{meta['arms_file']}`; seeds {', '.join(map(str, seeds))}"
        + (
            f"; second seed {meta['rerun_seed']} for the best CueCo arm by kNN on seed "
            f"{meta['seed']} (`{meta.get('best_arm') or 'none finished'}`) and the control"
            if meta["rerun_seed"]
            else ""
        ),
        f"- Wall clock {meta.get('total_seconds', 0):.0f} s"
        + (f" of a {meta['budget_minutes']} min budget" if meta["budget_minutes"] else ""),
        "",
    ]
    summary = arm_summary(rows)
    control = next((a for a in summary if a["arm"] == CONTROL), None)
    sd = (
        f"{statistics.stdev(control['knn']):.2f} kNN points over seeds "
        f"{', '.join(map(str, control['seeds']))}"
        if control and len(control["knn"]) > 1
        else "needs two seeds or more"
    )
    floor = {
        r["seed"]: r["knn_top1"] for r in rows if r["arm"] == UNTRAINED and r["status"] == "ok"
    }
    gains = [
        f"{r['knn_top1'] - floor[r['seed']]:+.2f} (seed {r['seed']})"
        for r in rows
        if r["arm"] == CONTROL and r["status"] == "ok" and r["seed"] in floor
    ]
    lines += [
        "## Summary over seeds",
        "",
        f"**Control ({CONTROL}) seed-to-seed SD: {sd}.**",
        "",
        f"Control minus untrained, kNN: {', '.join(gains) or 'no paired run yet'}.",
        "",
        f"| arm | seeds | kNN top-1 mean ± SD | Δ kNN vs {CONTROL}, per seed | smallest Δ kNN | "
        f"linear top-1 mean ± SD | mean Δ linear |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in summary:
        per_seed = ", ".join(f"{d:+.2f}" for d in a["knn_deltas"]) or "–"
        smallest = f"{min(a['knn_deltas']):+.2f}" if a["knn_deltas"] else "–"
        linear_delta = f"{statistics.mean(a['linear_deltas']):+.2f}" if a["linear_deltas"] else "–"
        lines.append(
            f"| {a['arm']} | {', '.join(map(str, a['seeds']))} | {_mean_sd(a['knn'])} | "
            f"{per_seed} | {smallest} | {_mean_sd(a['linear'])} | {linear_delta} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "| arm | seed | status | kNN top-1 (%) | Δ kNN | linear top-1 (%) | Δ linear | "
        "live clusters, last epoch | usage entropy, last epoch | bank: live / entropy / m:1 | "
        "fresh k-means: live / entropy / m:1 | train (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bank = " / ".join(_fmt(r.get(f"bank_{k}")) for k in ("live", "entropy", "m2o"))
        fresh = " / ".join(_fmt(r.get(f"kmeans_{k}")) for k in ("live", "entropy", "m2o"))
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['status']} | {_fmt(r.get('knn_top1'))} | "
            f"{_fmt(r.get('knn_delta'), True)} | {_fmt(r.get('linear_top1'))} | "
            f"{_fmt(r.get('linear_delta'), True)} | {_fmt(r.get('epoch_live_clusters'))} | "
            f"{_fmt(r.get('epoch_usage_entropy'))} | {bank} | {fresh} | "
            f"{_fmt(r.get('train_seconds'))} |"
        )
    lines += ["", "## Arms (Hydra overrides on top of the profile)", ""]
    lines += [f"- `{UNTRAINED}`: the control's network as built with the seed, not trained"]
    lines += [f"- `{arm}`: `{' '.join(o) or '(none)'}`" for arm, o in meta["arms"].items()]
    k = next((r.get("num_clusters") for r in rows if r.get("num_clusters")), "K")
    lines += [
        "",
        f"kNN: solo-learn's `WeightedKNNClassifier` (cosine, k {p['evaluation']['knn_k']}, T "
        f"{p['evaluation']['knn_temperature']}), linear: scikit-learn `LogisticRegression` (at "
        f"most {p['evaluation']['probe_max_iter']} L-BFGS steps, standardised features), both on "
        "the frozen backbone's features of every unaugmented training and test image. Δ: minus "
        "the control of the same seed. Clusters: *last epoch* is what the bank's momentum "
        "update saw during training's last epoch (clusters with a member, and the normalised "
        "entropy of their shares, 1 = even); *bank* and *fresh k-means* assign the momentum "
        "keys of every unaugmented training image to the bank's centroids and to a fresh "
        f"k-means of those keys with the same K ({k}; the control: CueCo's default K), with the "
        "many-to-one purity (%) of each. The plots: solo-learn's online kNN (`knn_eval`) at each "
        "epoch end; the bank's live clusters per batch and usage entropy over steps.",
        "",
    ]
    return "\n".join(lines)


def plot_history(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(r for r in rows if r.get("history")):
        epochs, knn = zip(*r["history"])
        style = "-" if r["arm"] == CONTROL else ("--", "-.", ":")[i % 3]
        ax.plot(epochs, knn, style, marker="o", ms=3, label=f"{r['arm']} (seed {r['seed']})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="epoch", ylabel="online kNN top-1 (%)", title=f"{title}: kNN per epoch")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bank_health(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Live clusters (per logged batch) and usage entropy over steps, one line per CueCo run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in rows:
        series = r.get("health_history") or {}
        for ax, key in zip(axes, STEP_HEALTH):
            if series.get(key):
                steps, values = zip(*series[key])
                ax.plot(steps, values, lw=1, label=f"{r['arm']} (seed {r['seed']})")
    axes[0].set(xlabel="step", ylabel="clusters with a member in the batch", title="live clusters")
    axes[1].set(xlabel="step", ylabel="normalised entropy of usage", title="usage entropy")
    axes[1].set_ylim(0, 1.02)
    for ax in axes:
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=6)
    fig.suptitle(f"{title}: the bank's health")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    spec = load_arms(args.arms)
    name = args.name or spec["name"]
    if "study" not in name:
        raise ValueError(f"study name {name!r} must contain 'study' (results/<name>/)")
    profile = load_profile(args.profile or spec.get("profile") or "cpu-tiny")
    seeds = (
        args.seeds
        or spec.get("seeds")
        or [args.seed if args.seed is not None else int(spec.get("seed", 5))]
    )
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct, got {seeds}")
    seed = seeds[0]
    rerun = args.rerun_seed if args.rerun_seed is not None else int(spec.get("rerun_seed", 0))
    if len(seeds) > 1:
        rerun = 0  # every arm runs on every seed already
    arms = dict(spec["arms"])
    if args.only:
        keep = {a.strip() for a in args.only.split(",")} | {CONTROL}
        if keep - set(arms):
            raise ValueError(f"--only names unknown arm(s) {sorted(keep - set(arms))}")
        arms = {a: o for a, o in arms.items() if a in keep}
    n_train = args.train_images or profile.train_images
    n_test = args.test_images or profile.test_images
    recorded = {a.strip() for a in args.record_keys.split(",") if a.strip()}
    if recorded - set(arms):
        raise ValueError(f"--record-keys names unknown arm(s) {sorted(recorded - set(arms))}")

    from sslbench.configs import compose, validate
    from sslbench.report import load_average, machine_record

    prepare(args.threads)

    def config(arm: str, s: int) -> Any:
        overrides = spec["arms"][CONTROL if arm == UNTRAINED else arm]
        try:
            cfg = compose(profile, [*args.set, *overrides, f"++seed={s}"], n_train)
        except Exception as err:  # Hydra's own errors (bad override, unknown key): name the arm
            raise ValueError(f"arm {arm!r}: {err}") from err
        want = "cueco" if arm.startswith("cueco") else CONTROL
        if cfg.method != want:
            raise ValueError(f"arm {arm!r} builds method {cfg.method!r}; it must build {want!r}")
        return cfg

    cfgs = {arm: config(arm, seed) for arm in arms}  # every arm checked before any training
    for arm, cfg in cfgs.items():
        validate(cfg, n_train, f"arm {arm!r}")
    # the K of the fresh k-means beside the control (and the untrained network): CueCo's own
    default_k = int(compose(profile, [*args.set, "++seed=0"], n_train).method_kwargs.num_clusters)
    out = args.out_dir / name
    previous = {}
    if (out / "metadata.json").is_file() and not args.force:
        runs = json.loads((out / "metadata.json").read_text())["runs"]
        previous = {r["fingerprint"]: r for r in runs if r["status"] == "ok"}
    # finished runs of arms or seeds this invocation leaves out (--only, other --seeds) stay in
    # the results while their config is still the arms file's
    earlier, arms_listed = [], dict(arms)
    for fp, r in previous.items():
        arm, s = r["arm"], int(r["seed"])
        runs_now = (arm in arms or arm == UNTRAINED) and s in seeds
        if runs_now or (arm not in spec["arms"] and arm != UNTRAINED):
            continue
        tag = (n_train, n_test) if arm != UNTRAINED else (n_train, n_test, UNTRAINED, default_k)
        if fingerprint(config(arm, s), tag) == fp:
            earlier.append(r)
            if arm != UNTRAINED:
                arms_listed[arm] = spec["arms"][arm]
    # finished runs this invocation will reuse: kept in every save until their turn comes, so a
    # run interrupted before then loses none of them
    reusable = []
    for s in seeds:
        for arm in [UNTRAINED, *arms]:
            tag = (n_train, n_test) if arm != UNTRAINED else (n_train, n_test, UNTRAINED, default_k)
            fp = fingerprint(cfgs[arm] if arm != UNTRAINED and s == seed else config(arm, s), tag)
            if fp in previous:
                reusable.append({**previous[fp], "arm": arm})
    meta = {
        "name": name,
        "arms_file": str(args.arms),
        "arms": {a: arms_listed[a] for a in spec["arms"] if a in arms_listed},
        "seed": seed,
        "seeds": seeds,
        "rerun_seed": rerun,
        "budget_minutes": args.budget_minutes,
        "profile": {**profile.__dict__, "config": str(profile.config.relative_to(REPO))},
        "train_images": n_train,
        "test_images": n_test,
        "steps_per_epoch": n_train // int(next(iter(cfgs.values())).optimizer.batch_size),
        "extra_overrides": args.set,
        "data_dirs": args.data_dir,
        "machine": machine_record(),
    }
    from sslbench.data import CifarData

    data = CifarData(args.data_dir, n_train, n_test, profile.resolution, profile.loader)
    deadline = started + 60 * args.budget_minutes if args.budget_minutes else None
    records: list[dict[str, Any]] = []
    durations: list[float] = []  # seconds per run (training and evaluation)
    evals: list[float] = []

    def run(arm: str, s: int, cfg: Any, pair_fits: bool = True) -> None:
        import torch

        base = {"arm": arm, "seed": s, "overrides": arms.get(arm, []), "profile": profile.name}
        base["device"] = meta["machine"]["device"]
        trained = arm != UNTRAINED
        tag = (n_train, n_test) if trained else (n_train, n_test, UNTRAINED, default_k)
        base["fingerprint"] = fingerprint(cfg, tag)
        if base["fingerprint"] in previous:
            print(f"[study] {arm} seed {s}: finished before with the same config, reused")
            records.append({**previous[base["fingerprint"]], "arm": arm})  # renamed arms too
            return
        left = None if deadline is None else deadline - time.monotonic()
        if trained and not (pair_fits and fits(left, durations)):
            print(f"[study] {arm} seed {s}: skipped, it would not end inside the budget")
            records.append({**base, "status": "skipped (budget)"})
            return
        print(f"[study] {arm} seed {s}: {'training' if trained else 'scoring'}", flush=True)
        t0 = time.monotonic()
        run_dir = out / "runs" / f"{arm}-s{s}"
        k = int(cfg.method_kwargs.get("num_clusters", default_k))
        try:
            reserve = statistics.median(evals) if evals else 0.0  # for the final evaluation
            seconds = None if left is None else max(left - reserve, 1.0)
            record = None
            if arm in recorded:
                record = {"profile": profile.name, "overrides": list(args.set), "seed": s}
                record["train_images"] = n_train
            result = train_and_score(cfg, data, run_dir, profile, seconds, k, trained, record)
            if trained:
                durations.append(time.monotonic() - t0)
                evals.append(result["eval_seconds"])
        except Exception as err:  # noqa: BLE001 - a failing arm must not lose the others
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            traceback.print_exc()
            result = {"status": f"failed: {type(err).__name__}: {str(err)[:300]}"}
        records.append({**base, **result, "method_kwargs": dict(cfg.method_kwargs)})
        gc.collect()  # Lightning's trainer <-> module cycle: free the last model now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        r = records[-1]
        print(f"[study] {arm} seed {s}: {r['status']}, kNN {r.get('knn_top1')}", flush=True)

    def save() -> None:
        meta["total_seconds"] = time.monotonic() - started
        meta["machine"]["load_average_end"] = load_average()
        meta["best_arm"] = best_cueco_arm(records, seed)
        used = {r.get("fingerprint") for r in records}
        kept = [r for r in earlier + reusable if r["fingerprint"] not in used]
        write_results(out, meta, records + kept)

    try:
        for s in seeds:
            run(UNTRAINED, s, config(UNTRAINED, s))
            save()
            for arm in cfgs:
                run(arm, s, cfgs[arm] if s == seed else config(arm, s))
                save()
        best = best_cueco_arm(records, seed)
        if rerun and best is not None:
            left = None if deadline is None else deadline - time.monotonic()
            both = fits(left, durations, runs=2)  # one alone has nothing to compare to
            run(UNTRAINED, rerun, config(UNTRAINED, rerun))
            for arm in (CONTROL, best):
                run(arm, rerun, config(arm, rerun), both)
                save()
    except KeyboardInterrupt:
        print("[study] interrupted: writing what exists", flush=True)
    save()
    print(f"[study] wrote {out}/results.csv, results.md, knn_per_epoch.png, metadata.json")
    return 0 if records and all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
