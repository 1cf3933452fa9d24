"""Frozen-backbone scores of a trained model: weighted kNN top-1 (solo-learn's
``WeightedKNNClassifier`` through ``cueco_plugin.evaluation``) and a linear probe
(scikit-learn's ``LogisticRegression`` on standardised features), both on the backbone's pooled
features of the unaugmented images (512-d for ResNet-18)."""

from __future__ import annotations

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
