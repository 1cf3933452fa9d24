"""Frozen-backbone scores of a trained model: weighted kNN top-1 (solo-learn's
``WeightedKNNClassifier`` through ``cueco_plugin.evaluation``) and a linear probe
(scikit-learn's ``LogisticRegression`` on standardised features), both on the backbone's pooled
features of the unaugmented images (512-d for ResNet-18); and the health of the clusters of its
momentum keys (:func:`cluster_health`)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.utils.data import TensorDataset


def linear_probe_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    max_iter: int,
) -> float:
    """Test top-1 (%) of multinomial logistic regression (L-BFGS, L2, C = 1) fitted on
    standardised (N, F) training features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the budget
        probe.fit(train_x.numpy(), train_y.numpy())
    return 100.0 * float(probe.score(test_x.numpy(), test_y.numpy()))


def frozen_scores(
    model: Any,
    train: TensorDataset,
    test: TensorDataset,
    evaluation: dict[str, Any],
    device: torch.device,
) -> dict[str, float]:
    """``{"knn_top1", "linear_top1"}`` (%) of ``model``'s backbone, trained on ``train``'s
    features, scored on ``test``'s.

    Args:
        evaluation: ``knn_k``, ``knn_temperature``, ``probe_max_iter``, ``batch_size``.
    """
    from cueco_plugin.evaluation import extract_features, weighted_knn

    model = model.to(device).eval()
    size = int(evaluation["batch_size"])
    f_train = extract_features(model, train, device, batch_size=size, desc="train features")
    f_test = extract_features(model, test, device, batch_size=size, desc="test features")
    knn = weighted_knn(
        f_train.feats.to(device),
        f_train.labels.to(device),
        f_test.feats.to(device),
        f_test.labels.to(device),
        k=int(evaluation["knn_k"]),
        temperature=float(evaluation["knn_temperature"]),
    )
    iters = int(evaluation["probe_max_iter"])
    linear = linear_probe_top1(f_train.feats, f_train.labels, f_test.feats, f_test.labels, iters)
    return {"knn_top1": knn["acc1"], "linear_top1": linear}


def _clusters(assign: torch.Tensor, labels: torch.Tensor, k: int) -> dict[str, float]:
    """Live clusters, normalised usage entropy (1: even) and many-to-one purity (%) of the
    assignments (N,) in [0, k) of images with labels (N,)."""
    from cueco_plugin.metrics import cluster_scores, contingency_table

    counts = torch.bincount(assign, minlength=k).double()
    share = counts / counts.sum()
    entropy = -(share * share.clamp_min(1e-12).log()).sum() / math.log(k)
    table = contingency_table(assign, labels, k, int(labels.max()) + 1)
    return {
        "live": int((counts > 0).sum()),
        "entropy": round(float(entropy), 4),
        "m2o": round(100.0 * cluster_scores(table)["acc_m2o"], 2),
    }


@torch.no_grad()
def cluster_health(
    model: Any, images: TensorDataset, num_clusters: int, seed: int, device: torch.device
) -> dict[str, Any]:
    """The clusters of the momentum keys ``normalise(momentum_projector(momentum_backbone(x)))``
    of ``images`` (unaugmented, with labels): ``bank_*`` for CueCo's bank (nearest centroid,
    once seeded) and ``kmeans_*`` for a fresh k-means of the same keys at the same K
    (scikit-learn's ``KMeans``, one k-means++ start), each as live clusters, usage entropy and
    many-to-one purity (:func:`_clusters`). Models without a momentum projector get Nones."""
    from sklearn.cluster import KMeans

    out: dict[str, Any] = {"num_clusters": num_clusters}
    for part in ("bank", "kmeans"):
        out.update({f"{part}_{key}": None for key in ("live", "entropy", "m2o")})
    if not hasattr(model, "momentum_projector"):
        return out
    model = model.to(device).eval()
    keys = []
    for (x,) in torch.utils.data.DataLoader(TensorDataset(images.tensors[0]), batch_size=512):
        z = model.momentum_projector(model.momentum_backbone(x.to(device)))
        keys.append(torch.nn.functional.normalize(z.float(), dim=1).cpu())
    keys, labels = torch.cat(keys), images.tensors[1]
    bank = getattr(model, "bank", None)
    if bank is not None and bank.seeded:
        assign = bank.assign(keys.to(device)).cpu()
        out.update({f"bank_{k}": v for k, v in _clusters(assign, labels, num_clusters).items()})
    kmeans = KMeans(num_clusters, n_init=1, random_state=seed).fit(keys.numpy())
    fresh = torch.from_numpy(kmeans.labels_).long()
    out.update({f"kmeans_{k}": v for k, v in _clusters(fresh, labels, num_clusters).items()})
    return out
