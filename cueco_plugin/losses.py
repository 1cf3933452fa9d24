"""CueCo's losses and target functions, pure and stateless.

L1 without a negative mask is solo-learn's own ``mocov2plus_loss_func`` (the method calls it);
:func:`infonce_loss` is the same loss with some queue negatives masked out. The arguments are
trusted: ``cueco_plugin.config`` validates the options once, and the bank produces valid
assignments. Every loss is computed in float32 whatever the input dtype and autocast state, with
the bank's tensors as stop-gradient targets: gradients reach ``query`` only.

Shapes: ``query`` / ``key`` (B, D) L2-normalised; ``centroids`` (K, D); ``variances`` (K,);
``assignments`` (B,) int64; ``queue`` (D, Q).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VARIANCE_SCALINGS: tuple[str, ...] = ("divide", "multiply", "none")


def _fp32(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def infonce_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    negative_mask: torch.Tensor,
) -> torch.Tensor:
    """L1 (MoCo's InfoNCE) with the negatives where ``negative_mask`` is True left out.

    ``CE([q.k, q.queue] / temperature, 0)`` with masked logits set to ``-inf``: with no
    negative masked it equals ``solo.losses.mocov2plus.mocov2plus_loss_func``.

    Args:
        query: (B, D). key: (B, D) positives. queue: (D, Q) negatives.
        temperature: > 0. negative_mask: (B, Q) bool, True drops that negative for that query.

    Returns:
        Scalar float32 loss.
    """
    with _fp32(query.device):
        q = query.float()
        pos = torch.einsum("nc,nc->n", q, key.detach().float()).unsqueeze(-1)
        neg = (q @ queue.detach().float()).masked_fill_(negative_mask, float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / temperature
        return F.cross_entropy(logits, logits.new_zeros(q.shape[0], dtype=torch.long))


def centroid_contrast_loss(
    query: torch.Tensor,
    centroids: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor,
) -> torch.Tensor:
    """L2: cross-entropy of a softmax over the K centroids.

    ``mean_b CE(query_b @ centroids.T / temperature, targets_b)``.

    Args:
        query: (B, D). centroids: (K, D), stop-gradient.
        targets: (B,) int64 assigned centroid (hard) or (B, K) float target distribution
            (soft, e.g. from :func:`sinkhorn`; rows sum to 1).
        temperature: a float > 0, or (K,) per-cluster temperatures (PCL's concentration).

    Returns:
        Scalar float32 loss.
    """
    with _fp32(query.device):
        logits = (query.float() @ centroids.detach().float().T) / temperature
        if targets.is_floating_point():
            targets = targets.detach().float()
        return F.cross_entropy(logits, targets)


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


@torch.no_grad()
def negative_mask(
    targets: torch.Tensor,
    queue_labels: torch.Tensor,
    centroids: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    """Which queue negatives to drop for each query, from cluster labels.

    - ``"hard"``: the queue keys of the query's own target cluster;
    - ``"hcsc"``: HCSC's sampling: a queue key is dropped with probability ``clamp(s, 0, 1)``,
      ``s`` the cosine similarity of the query's and the key's centroids (always dropped in the
      same cluster, kept when the clusters are orthogonal).

    Queue slots without a label (``-1``: random initial vectors, keys from before the bank's
    seeding) are never dropped.

    Args:
        targets: (B,) int64 target cluster of each query. queue_labels: (Q,) int64 or -1.
        centroids: (K, D) unit centroids. mode: ``"hard"`` or ``"hcsc"``.

    Returns:
        (B, Q) bool.
    """
    if mode == "hard":  # a label of -1 never equals a target: one (B, Q) comparison
        return targets.unsqueeze(1) == queue_labels.unsqueeze(0)
    k = centroids.shape[0]
    with _fp32(centroids.device):
        c = centroids.float()
        # (K + 1, K + 1) drop probabilities: cosine similarities clipped to [0, 1], exactly 1 on
        # the diagonal (same cluster: always dropped), 0 in the last row and column (label -1)
        table = torch.zeros(k + 1, k + 1, device=c.device)
        table[:k, :k] = (c @ c.T).clamp_(0.0, 1.0).fill_diagonal_(1.0)
        labels = torch.where(queue_labels < 0, k, queue_labels)
        drop = table.index_select(0, targets).index_select(1, labels)  # (B, Q)
        return torch.rand_like(drop) < drop  # rand is in [0, 1): probability 1 always drops
