"""CueCo's losses, pure and stateless.

L1 is solo-learn's own ``mocov2plus_loss_func`` (the method calls it). The arguments are trusted:
``cueco_plugin.config`` validates the options once, and the bank produces valid assignments.
Every loss is computed in float32 whatever the input dtype and autocast state, with the bank's
tensors as stop-gradient targets: gradients reach ``query`` only (CLD's loss: both views).

Shapes: ``query`` / ``key`` (B, D) L2-normalised; ``centroids`` (K, D); ``variances`` (K,);
``assignments`` (B,) int64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cueco_plugin.bank import nearest_centroid

VARIANCE_SCALINGS: tuple[str, ...] = ("divide", "multiply", "none")


def _fp32(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def centroid_contrast_loss(
    query: torch.Tensor,
    centroids: torch.Tensor,
    assignments: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """L2: cross-entropy of a softmax over the K centroids, the assigned one the positive.

    ``mean_b CE(query_b @ centroids.T / temperature, assignments_b)``.

    Args:
        query: (B, D). centroids: (K, D), stop-gradient. assignments: (B,) int64.
        temperature: > 0.

    Returns:
        Scalar float32 loss.
    """
    with _fp32(query.device):
        logits = (query.float() @ centroids.detach().float().T) / temperature
        return F.cross_entropy(logits, assignments)


def variance_scaled_distance_loss(
    query: torch.Tensor,
    centroids: torch.Tensor,
    variances: torch.Tensor,
    assignments: torch.Tensor,
    scaling: str = "divide",
    eps: float = 1e-4,
) -> torch.Tensor:
    """L3: squared distance of each query to its assigned centroid, scaled by that cluster's
    running variance, averaged over the batch.

    - ``"divide"``: ``||q - c_a||^2 / (var_a + eps)`` (a Gaussian negative log-likelihood term);
    - ``"multiply"``: ``||q - c_a||^2 * var_a``;
    - ``"none"``: ``||q - c_a||^2``.

    Args:
        query: (B, D). centroids: (K, D) and variances: (K,), both stop-gradient.
        assignments: (B,) int64. scaling: one of :data:`VARIANCE_SCALINGS`. eps: > 0.

    Returns:
        Scalar float32 loss.
    """
    with _fp32(query.device):
        target = centroids.detach().float().index_select(0, assignments)
        sq_dist = (query.float() - target).pow(2).sum(dim=1)
        if scaling == "none":
            return sq_dist.mean()
        var = variances.detach().float().index_select(0, assignments)
        if scaling == "divide":
            return (sq_dist / (var + eps)).mean()
        return (sq_dist * var).mean()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Balanced soft assignments by Sinkhorn-Knopp (SwAV's ``distributed_sinkhorn``).

    Args:
        scores: (N, K) similarities of N features to K centroids.
        epsilon: entropic regularisation (SwAV: 0.05). iterations: SwAV: 3.

    Returns:
        (N, K) float32, each row a distribution over the K centroids, the columns summing to
        about N / K each (every centroid gets an equal share of the N features).
    """
    with _fp32(scores.device):  # in the log domain: no underflow for a small epsilon
        log_q = scores.float().T / epsilon  # (K, N)
        k, n = log_q.shape
        log_q = log_q - torch.logsumexp(log_q.reshape(-1), dim=0)
        for _ in range(iterations):
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(k)
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(n)
        return (log_q + math.log(n)).exp().T


def batch_kmeans(
    features: torch.Tensor, num_clusters: int, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of one batch (CLD's per-batch clustering): Lloyd steps from the first K rows.

    The assignments are found without gradients; the returned centroids are the means of their
    members computed from ``features`` with gradients, as in CLD. An empty cluster's centroid
    is the zero vector.

    Args:
        features: (N, D), N >= K. num_clusters: K. iterations: Lloyd steps, >= 1.

    Returns:
        labels (N,) int64 and centroids (K, D), ``centroids[j]`` the mean of the rows labelled j.
    """
    with _fp32(features.device):
        x = features.float()
        fixed = x.detach()
        centroids = fixed[:num_clusters]
        for _ in range(iterations - 1):  # the last step's means are the ones returned
            centroids = _cluster_means(fixed, nearest_centroid(fixed, centroids), num_clusters)
        labels = nearest_centroid(fixed, centroids)
        return labels, _cluster_means(x, labels, num_clusters)


def _cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(K, D) means of the rows of x (N, D) per label (N,); zero for an empty label. Sums and
    counts by ``index_add`` (``bincount`` would read its input's range on the host)."""
    sums = x.new_zeros(k, x.shape[1]).index_add(0, labels, x)
    counts = x.new_zeros(k).index_add_(0, labels, x.new_ones(labels.shape[0]))
    return sums / counts.clamp_min(1.0).unsqueeze(1)


def cross_view_cluster_loss(
    view1: torch.Tensor,
    view2: torch.Tensor,
    num_clusters: int,
    iterations: int,
    temperature: float,
) -> torch.Tensor:
    """CLD's instance-group loss (Wang, Liu and Yu, CVPR 2021): each view's features are
    contrasted against the other view's per-batch k-means centroids, with the other view's
    cluster of the same image as the positive, symmetrised.

    ``(CE(v1 @ c2.T / t, l2) + CE(v2 @ c1.T / t, l1)) / 2`` with ``l_i, c_i =
    batch_kmeans(v_i)``. Gradients reach both views' features, through the logits and the
    centroids.

    Args:
        view1, view2: (B, D) L2-normalised features of the two views of the same B images,
            B >= num_clusters. iterations: Lloyd steps. temperature: > 0 (CLD: 0.2).

    Returns:
        Scalar float32 loss.
    """
    with _fp32(view1.device):
        v1, v2 = view1.float(), view2.float()
        labels1, centroids1 = batch_kmeans(v1, num_clusters, iterations)
        labels2, centroids2 = batch_kmeans(v2, num_clusters, iterations)
        loss12 = F.cross_entropy(v1 @ centroids2.T / temperature, labels2)
        loss21 = F.cross_entropy(v2 @ centroids1.T / temperature, labels1)
        return (loss12 + loss21) / 2
