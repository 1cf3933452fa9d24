"""``python -m cueco_plugin.evaluate CHECKPOINT_OR_RUN_FOLDER DATA [DATA_TEST] [options]``
(console script ``cueco-evaluate``): evaluate and look at a CueCo checkpoint on CPU or GPU.

- DATA: an image folder (one subfolder per class) or a CIFAR-style ``.npz`` (``images`` (N, H,
  W, 3) uint8, ``labels``). With two, the first is the k-NN bank (train) and the second is
  evaluated (val/test); with one, k-NN uses its even-indexed images as the bank and the odd ones
  as queries.
- Reports solo-learn's weighted k-NN (``WeightedKNNClassifier``, cosine, on backbone and projector
  features) and the bank's unsupervised classification (nearest centroid of each projection:
  Hungarian accuracy, many-to-one accuracy, NMI).
- Writes ``results.json``, ``embedding.png`` (2-D UMAP where umap-learn is installed, else t-SNE,
  coloured by class and by cluster) and ``gallery.png`` (sample images of the largest clusters)
  into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cueco_plugin.evaluation import (
    EvaluationError,
    LabelledImages,
    bank_clusters,
    cluster_evaluation,
    extract_features,
    image_transform,
    load_cueco,
    normalisation,
    weighted_knn,
)
from cueco_plugin.figures import embed_2d, embedding_method, plot_embedding, plot_gallery


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cueco-evaluate",
        description="Weighted k-NN, the bank's unsupervised classification and pictures of a "
        "CueCo checkpoint, on CPU or GPU.",
    )
    parser.add_argument("checkpoint", help="a CueCo .ckpt, or its run folder (with args.json)")
    parser.add_argument(
        "data", nargs="+", help="image folder or .npz; two: the k-NN bank (train) then val/test"
    )
    parser.add_argument("--out", default="cueco_evaluation", help="output folder")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--image-size", type=int, default=None, help="resize + centre-crop to N x N"
    )
    parser.add_argument("--k", type=int, default=20, help="k-NN neighbours")
    parser.add_argument("--temperature", type=float, default=0.07, help="k-NN temperature")
    parser.add_argument("--embedding", choices=("auto", "umap", "tsne"), default="auto")
    parser.add_argument("--max-points", type=int, default=3000, help="points in the embedding")
    parser.add_argument("--gallery-clusters", type=int, default=8)
    parser.add_argument("--gallery-size", type=int, default=8, help="images per gallery row")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def evaluate(args: argparse.Namespace) -> dict:
    """Runs the evaluation ``args`` describe; returns what it writes to ``results.json``."""
    if len(args.data) > 2:
        raise EvaluationError(f"give one or two DATA paths, got {len(args.data)}: {args.data}")
    for name in ("batch_size", "k", "max_points", "gallery_clusters", "gallery_size"):
        if getattr(args, name) < 1:
            raise EvaluationError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda, but torch.cuda.is_available() is False here")
    method = embedding_method(args.embedding)
    for path in args.data:
        if not Path(path).exists():
            raise EvaluationError(f"data not found: {path}")

    model, cfg, ckpt = load_cueco(args.checkpoint, device)
    transform = image_transform(*normalisation(cfg), args.image_size)
    sets = [LabelledImages(path, transform) for path in args.data]
    if args.image_size is None:
        for images in sets:
            images.check_one_size()
    if len(sets) == 2 and sets[0].class_names != sets[1].class_names:
        raise EvaluationError(
            f"{args.data[0]} and {args.data[1]} have different classes: "
            f"{sets[0].class_names} vs {sets[1].class_names}"
        )
    test = sets[-1]
    extract = dict(device=device, batch_size=args.batch_size, num_workers=args.num_workers)
    feats = [extract_features(model, s, desc=f"features {s.path.name}", **extract) for s in sets]
    test_feats = feats[-1]

    knn = {}
    for kind in ("feats", "z"):
        if len(sets) == 2:
            bank_x, bank_y = getattr(feats[0], kind), feats[0].labels
            query_x, query_y = getattr(test_feats, kind), test_feats.labels
        else:
            x, y = getattr(test_feats, kind), test_feats.labels
            bank_x, bank_y, query_x, query_y = x[::2], y[::2], x[1::2], y[1::2]
        name = "backbone" if kind == "feats" else "projector"
        knn[name] = weighted_knn(bank_x, bank_y, query_x, query_y, args.k, args.temperature)

    clusters = bank_clusters(model, test_feats.z, device)
    num_classes = len(test.class_names)
    scores = cluster_evaluation(clusters, test_feats.labels, model.bank.num_clusters, num_classes)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    shown = np.sort(rng.permutation(len(test))[: args.max_points])
    xy = embed_2d(test_feats.feats[shown], method, seed=args.seed)
    labels, cluster_ids = test_feats.labels.numpy(), clusters.numpy()
    plot_embedding(
        xy,
        labels[shown],
        cluster_ids[shown],
        test.class_names,
        out / "embedding.png",
        titles=(
            f"backbone features ({method.upper() if method == 'umap' else 't-SNE'}), by class: "
            f"k-NN acc@1 {knn['backbone']['acc1']:.1f}%",
            f"by bank cluster (K={model.bank.num_clusters}): Hungarian acc "
            f"{scores['acc']:.1%}, NMI {scores['nmi']:.2f}",
        ),
    )
    plot_gallery(
        test,
        labels,
        cluster_ids,
        test.class_names,
        out / "gallery.png",
        num_clusters=args.gallery_clusters,
        per_cluster=args.gallery_size,
        seed=args.seed,
    )
    results = {
        "checkpoint": str(ckpt),
        "data": [str(p) for p in args.data],
        "images": [len(s) for s in sets],
        "device": device,
        "knn": {"k": args.k, "temperature": args.temperature, **knn},
        "clusters": {"num_clusters": model.bank.num_clusters, **scores},
        "embedding": {"method": method, "points": int(len(shown))},
        "pictures": [str(out / "embedding.png"), str(out / "gallery.png")],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = evaluate(args)
    except (EvaluationError, ValueError) as err:
        parser.exit(2, f"cueco-evaluate: error: {err}\n")
    knn, clusters = results["knn"], results["clusters"]
    print(
        f"k-NN (k={knn['k']}): backbone acc@1 {knn['backbone']['acc1']:.2f}%, "
        f"projector acc@1 {knn['projector']['acc1']:.2f}%"
    )
    print(
        f"bank clusters (K={clusters['num_clusters']}, {clusters['clusters_used']} used): "
        f"Hungarian acc {clusters['acc']:.4f}, many-to-one {clusters['acc_m2o']:.4f}, "
        f"NMI {clusters['nmi']:.4f}"
    )
    print(f"wrote {args.out}/results.json, " + ", ".join(results["pictures"]))


if __name__ == "__main__":
    sys.exit(main())
