#!/usr/bin/env python3
"""Why the centroid bank collapses, measured on the keys of a real run (docs/results.md).

``study.py --record-keys mocov2plus`` saves every optimiser step's momentum keys (2, B, D) of the
MoCo V2+ control: the trajectory CueCo's network follows when its cluster losses are weighted 0.
This script feeds that stream, step by step, to fresh CueCo models built with other bank
options, through the method's own ``loss_terms`` and ``bank.step`` (the code a training step
runs: seeding from the queue, re-clustering, assignments, balanced codes, the momentum update,
revival); the network's trajectory is the recorded one, so only the bank differs. For each option
set it reports, per epoch, the clusters the update met (live clusters, usage entropy) beside a
fresh k-means (scikit-learn, same K) of that epoch's keys. Writes
``benchmarks/results/bank_replay_<tag>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sslbench.configs import cli, compose, load_profile, prepare  # noqa: E402
from sslbench.report import describe, machine_record, save_result  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli(__doc__)
    p.add_argument("keys", type=Path, help="keys.pt of a study run (study.py --record-keys)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDE[,OVERRIDE...]",
        help="a named set of Hydra overrides for CueCo (repeatable)",
    )
    p.add_argument("--tag", default="cpu-study", help="result file tag")
    return p.parse_args(argv)


def _usage(counts: Any) -> tuple[int, float]:
    share = counts / counts.sum()
    entropy = -(share * share.clamp_min(1e-12).log()).sum() / math.log(len(counts))
    return int((counts > 0).sum()), float(entropy)


def replay(args: argparse.Namespace) -> None:
    import torch
    from sklearn.cluster import KMeans
    from solo.methods import METHODS

    saved = torch.load(args.keys)
    stream, per_epoch = saved["keys"].float(), int(saved["steps_per_epoch"])
    profile = load_profile(saved["profile"])
    variants = dict(v.split("=", 1) for v in args.variant) or {"default": ""}
    results: dict[str, Any] = {}
    fresh: list[dict[str, float]] = []
    for name, overrides in variants.items():
        extra = [o for o in overrides.split(",") if o]
        cfg = compose(
            profile,
            [*saved["overrides"], *extra, f"++seed={saved['seed']}"],
            int(saved["train_images"]),
        )
        torch.manual_seed(saved["seed"])
        model = METHODS["cueco"](cfg).eval()
        k = model.bank.num_clusters
        epochs, per_step = [], []
        model.bank.reset_epoch()
        for step, keys in enumerate(stream, start=1):
            batch = keys.shape[1]
            k_cat = torch.cat([keys[0], keys[1]])  # (2B, D): [k1; k2]
            with torch.no_grad():
                *_, assign = model.loss_terms(k_cat, k_cat, keys, slice(0, batch))
            model.bank.step()
            if model.bank.seeded:
                health = model.bank.health(assign.view(-1))
                per_step.append(
                    (step, float(health["live_clusters"]), float(health["usage_entropy"]))
                )
            if step % per_epoch == 0:
                live, entropy = (
                    _usage(model.bank.epoch_counts)
                    if model.bank.epoch_counts.sum() > 0
                    else (0, 0.0)
                )
                epochs.append({"epoch": step // per_epoch, "live": live, "entropy": entropy})
                model.bank.reset_epoch()
        results[name] = {"overrides": extra, "K": k, "epochs": epochs, "per_step": per_step}
        print(f"[bank_replay] {name}: {epochs}", flush=True)
        if not fresh:  # a fresh k-means of each epoch's keys, at the first variant's K
            for e in range(len(stream) // per_epoch):
                x = stream[e * per_epoch : (e + 1) * per_epoch].reshape(-1, stream.shape[-1])
                x = torch.nn.functional.normalize(x, dim=1)
                labels = KMeans(k, n_init=1, random_state=saved["seed"]).fit(x.numpy()).labels_
                counts = torch.bincount(torch.from_numpy(labels), minlength=k).double()
                live, entropy = _usage(counts)
                fresh.append({"epoch": e + 1, "live": live, "entropy": entropy})
    result = {
        "machine": machine_record(),
        "recorded": {key: saved[key] for key in ("profile", "overrides", "seed", "train_images")},
        "steps": len(stream),
        "steps_per_epoch": per_epoch,
        "fresh_kmeans": fresh,
        "variants": results,
    }
    base = args.out_dir / f"bank_replay_{args.tag}"
    save_result(base, result, markdown(result))
    plot(base.with_suffix(".png"), result)


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# The bank replayed on recorded keys (`{r['recorded']['profile']}`)",
        "",
        *describe(r["machine"]),
        f"- Keys of every step ({r['steps']} steps, {r['steps_per_epoch']} per epoch) of the "
        f"MoCo V2+ control trained with `{' '.join(r['recorded']['overrides']) or '(the profile)'}`"
        f" (seed {r['recorded']['seed']}), replayed through CueCo's `loss_terms` and "
        "`bank.step` with the option sets below.",
        "- Per epoch: live clusters (with a member) / normalised usage entropy of the clusters "
        "the bank's update met; *fresh k-means*: scikit-learn's KMeans of the same epoch's keys.",
        "",
    ]
    names = list(r["variants"])
    lines += ["| epoch | fresh k-means | " + " | ".join(names) + " |"]
    lines += ["|---" * (len(names) + 2) + "|"]
    for i, f in enumerate(r["fresh_kmeans"]):
        cells = []
        for n in names:
            e = r["variants"][n]["epochs"][i]
            cells.append(f"{e['live']} / {e['entropy']:.3f}")
        lines.append(
            f"| {f['epoch']} | {f['live']} / {f['entropy']:.3f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Option sets:", ""]
    lines += [
        f"- `{n}`: `{' '.join(v['overrides']) or '(the defaults)'}`"
        for n, v in r["variants"].items()
    ]
    return "\n".join(lines) + "\n"


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, v in r["variants"].items():
        if v["per_step"]:
            steps, live, entropy = zip(*v["per_step"])
            axes[0].plot(steps, live, lw=0.8, label=name)
            axes[1].plot(steps, entropy, lw=0.8, label=name)
    per = r["steps_per_epoch"]
    fresh = [f["entropy"] for f in r["fresh_kmeans"]]
    axes[1].plot([per * (i + 1) for i in range(len(fresh))], fresh, "ko", label="fresh k-means")
    axes[0].set(xlabel="step", ylabel="clusters with a member in the batch", title="live clusters")
    axes[1].set(xlabel="step", ylabel="normalised entropy", title="usage entropy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare(args.threads)
    replay(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
