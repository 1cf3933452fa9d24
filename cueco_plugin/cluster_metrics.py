"""Unsupervised classification metrics of a clustering against ground-truth labels.

Pure functions on 1-D integer arrays (NumPy arrays, sequences or CPU torch tensors), needing only
NumPy and SciPy, so this module imports without solo-learn or torch.

- :func:`cluster_accuracy_one_to_one`: each cluster is matched to at most one class and each class
  to at most one cluster by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
  maximising the number of correctly labelled samples; samples of unmatched clusters count as
  wrong, so over-clustering (K > number of classes) is penalised.
- :func:`cluster_accuracy_many_to_one`: each cluster is labelled with its majority class (any
  number of clusters may share a class); meaningful for any K, and >= the one-to-one accuracy.
- :func:`normalized_mutual_info`: NMI with the arithmetic-mean normalisation
  ``I(P; Y) / ((H(P) + H(Y)) / 2)``, the default of scikit-learn's
  ``normalized_mutual_info_score``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment


def _as_labels(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0, got the value {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


def contingency_matrix(predictions: Any, labels: Any) -> np.ndarray:
    """Counts of samples per (cluster, class) pair.

    Args:
        predictions: (N,) cluster index of each sample, ints >= 0.
        labels: (N,) class of each sample, ints >= 0.

    Returns:
        (K, C) int64 with ``K = max(predictions) + 1`` and ``C = max(labels) + 1``; entry
        ``[k, c]`` is the number of samples in cluster k with class c.
    """
    pred = _as_labels("predictions", predictions)
    true = _as_labels("labels", labels)
    if pred.shape != true.shape:
        raise ValueError(
            f"predictions and labels must have the same length, got {pred.size} and {true.size}"
        )
    if pred.size == 0:
        raise ValueError("predictions and labels must not be empty")
    k, c = int(pred.max()) + 1, int(true.max()) + 1
    counts = np.bincount(pred * c + true, minlength=k * c)
    return counts.reshape(k, c)


def cluster_accuracy_one_to_one(predictions: Any, labels: Any) -> float:
    """Accuracy after the optimal one-to-one matching of clusters to classes (Hungarian).

    Args:
        predictions: (N,) cluster indices. labels: (N,) classes.

    Returns:
        Fraction of samples whose cluster is matched to their class, in [0, 1].
    """
    table = contingency_matrix(predictions, labels)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def cluster_accuracy_many_to_one(predictions: Any, labels: Any) -> float:
    """Accuracy when every cluster predicts its majority class.

    Args:
        predictions: (N,) cluster indices. labels: (N,) classes.

    Returns:
        Fraction of samples that belong to their cluster's majority class, in [0, 1].
    """
    table = contingency_matrix(predictions, labels)
    return float(table.max(axis=1).sum() / table.sum())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(predictions: Any, labels: Any) -> float:
    """Normalised mutual information ``I(P; Y) / mean(H(P), H(Y))`` (natural log), in [0, 1].

    Equal to ``sklearn.metrics.normalized_mutual_info_score`` (arithmetic normalisation): 1.0
    when both partitions are a single group, 0.0 when only one of them is.

    Args:
        predictions: (N,) cluster indices. labels: (N,) classes.
    """
    table = contingency_matrix(predictions, labels).astype(np.float64)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]  # drop empty rows/columns
    n = table.sum()
    h_pred, h_true = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    if table.shape[0] == 1 and table.shape[1] == 1:
        return 1.0
    if h_pred == 0.0 or h_true == 0.0:
        return 0.0
    joint = table / n
    outer = np.outer(table.sum(axis=1), table.sum(axis=0)) / (n * n)
    nz = joint > 0
    mutual = float((joint[nz] * (np.log(joint[nz]) - np.log(outer[nz]))).sum())
    return float(np.clip(mutual / ((h_pred + h_true) / 2.0), 0.0, 1.0))


def cluster_metrics(predictions: Any, labels: Any) -> dict[str, float]:
    """All three metrics at once: ``{"acc": one-to-one, "acc_m2o": many-to-one, "nmi": NMI}``."""
    return {
        "acc": cluster_accuracy_one_to_one(predictions, labels),
        "acc_m2o": cluster_accuracy_many_to_one(predictions, labels),
        "nmi": normalized_mutual_info(predictions, labels),
    }
