"""Frozen-feature evaluation: kNN (solo-learn's ``WeightedKNNClassifier``), an offline linear
probe, and clustering scores (k-means with ``cueco_plugin.centroids``, CueCo's own bank, scored
with ``cueco_plugin.cluster_metrics``).

Features: ``feats`` = the online backbone's pooled output (512-d for ResNet-18), used for kNN and
the linear probe; ``z`` = the online projector's output, L2-normalised (solo-learn's ``forward``
of each method; BYOL's projector output before its predictor), used for clustering, since
CueCo's bank lives in that space.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F


def autocast_for(device: torch.device, precision: str) -> Any:
    """The autocast context matching a Lightning precision string on ``device``."""
    if device.type == "cuda" and precision.startswith("bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cuda" and precision.startswith("16"):
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features and normalised projector outputs of ``images`` in eval mode.

    Args:
        model: a solo-learn method (its ``forward`` returns ``feats`` and ``z``).
        images: (N, 3, H, W) float32, already normalised (CPU or ``device``).

    Returns:
        feats (N, F) float32 and z (N, D) float32 unit-norm, on ``device``.
    """
    model.eval()
    feats, zs = [], []
    with autocast_for(device, precision):
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device, non_blocking=True)
            out = model(x)
            feats.append(out["feats"].float())
            zs.append(F.normalize(out["z"].float(), dim=-1))
    return torch.cat(feats), torch.cat(zs)


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    temperature: float,
    distance: str,
) -> float:
    """Weighted kNN top-1 (percent) with solo-learn's ``WeightedKNNClassifier`` (with cosine
    distance each neighbour votes ``exp(similarity / T)``)."""
    from solo.utils.knn import WeightedKNNClassifier

    knn = WeightedKNNClassifier(k=k, T=temperature, distance_fx=distance)
    knn.update(train_features=train_feats, train_targets=train_labels)
    knn.update(test_features=test_feats, test_targets=test_labels)
    top1, _ = knn.compute()
    return float(top1)


def linear_probe_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    max_iters: int,
    weight_decay: float,
) -> float:
    """Offline linear probe: multinomial logistic regression on standardised frozen features
    (train-set mean/std), full-batch L-BFGS from zero weights (deterministic), L2 penalty
    ``weight_decay * ||W||^2``. Returns test top-1 in percent."""
    mean = train_feats.mean(dim=0)
    std = train_feats.std(dim=0).clamp_min(1e-6)
    x_train = (train_feats - mean) / std
    x_test = (test_feats - mean) / std
    with torch.enable_grad():
        weight = torch.zeros(
            x_train.shape[1], num_classes, device=x_train.device, requires_grad=True
        )
        bias = torch.zeros(num_classes, device=x_train.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=max_iters,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x_train @ weight + bias, train_labels)
            loss = loss + weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        pred = (x_test @ weight + bias).argmax(dim=1)
        return float((pred == test_labels).float().mean() * 100.0)


@torch.no_grad()
def kmeans_assignments(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Spherical k-means (k-means++ seeding, then ``iters`` Lloyd steps) with the same functions
    CueCo's bank seeds with. x: (N, D) unit-norm. Returns (N,) int64 cluster indices."""
    from cueco_plugin.centroids import kmeans_plus_plus, lloyd_step, nearest_centroid

    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    centroids = kmeans_plus_plus(x, k, gen)
    for _ in range(iters):
        centroids = lloyd_step(x, centroids, normalize=True)
    return nearest_centroid(x, centroids)


def cluster_scores(assignments: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """One-to-one (Hungarian) and many-to-one accuracy (percent) and NMI of a clustering."""
    from cueco_plugin.cluster_metrics import cluster_metrics

    scores = cluster_metrics(assignments.cpu().numpy(), labels.cpu().numpy())
    return {
        "acc_1to1": 100.0 * scores["acc"],
        "acc_m2o": 100.0 * scores["acc_m2o"],
        "nmi": scores["nmi"],
    }
