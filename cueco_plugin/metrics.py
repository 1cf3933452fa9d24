"""Unsupervised classification scores of a clustering, from one contingency table.

The table is built on the device (:func:`contingency_table`, no host sync, summable across ranks
with one all-reduce); the scores are computed from it on the host (:func:`cluster_scores`):

- ``acc``: one-to-one accuracy, clusters matched to classes by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``); samples of unmatched clusters count as wrong;
- ``acc_m2o``: many-to-one accuracy, each cluster labelled with its majority class;
- ``nmi``: normalised mutual information, arithmetic normalisation (scikit-learn's default for
  ``normalized_mutual_info_score``), with scikit-learn's ``mutual_info_score`` on the table.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score


def contingency_table(
    clusters: torch.Tensor, labels: torch.Tensor, num_clusters: int, num_classes: int
) -> torch.Tensor:
    """Counts of samples per (cluster, class).

    Args:
        clusters: (N,) int64 cluster of each sample, in [0, K).
        labels: (N,) int64 class of each sample, in [0, C); samples with a label < 0 (unlabelled)
            or >= C are left out.
        num_clusters: K. num_classes: C.

    Returns:
        (K, C) int64 on the device of ``clusters``.
    """
    keep = (labels >= 0) & (labels < num_classes)
    flat = clusters.long() * num_classes + labels.long().clamp(0, num_classes - 1)
    table = torch.zeros(num_clusters * num_classes, dtype=torch.long, device=clusters.device)
    table.index_add_(0, flat, keep.long())
    return table.view(num_clusters, num_classes)


def cluster_scores(table: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``{"acc", "acc_m2o", "nmi"}`` of the clustering a (K, C) contingency table describes.

    Raises:
        ValueError: for a table that is not 2-D, has negative entries or counts no sample.
    """
    if isinstance(table, torch.Tensor):
        table = table.detach().cpu().numpy()
    table = np.asarray(table, dtype=np.int64)
    if table.ndim != 2 or (table < 0).any() or table.sum() == 0:
        raise ValueError(
            f"table must be a 2-D (clusters x classes) count matrix with at least one sample, "
            f"got shape {table.shape} and total {int(table.sum())}"
        )
    total = table.sum()
    rows, cols = linear_sum_assignment(table, maximize=True)
    h_clusters, h_classes = entropy(table.sum(axis=1)), entropy(table.sum(axis=0))
    if h_clusters == 0.0 and h_classes == 0.0:
        nmi = 1.0
    elif h_clusters == 0.0 or h_classes == 0.0:
        nmi = 0.0
    else:
        mutual = mutual_info_score(None, None, contingency=table)
        nmi = float(np.clip(mutual / ((h_clusters + h_classes) / 2.0), 0.0, 1.0))
    return {
        "acc": float(table[rows, cols].sum() / total),
        "acc_m2o": float(table.max(axis=1).sum() / total),
        "nmi": nmi,
    }
