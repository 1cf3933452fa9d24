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


def cross_view_batch_loss(
    view1: torch.Tensor, view2: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CLD's cross-view loss (Wang, Liu and Yu, CVPR 2021) with one group per image: each view's
    features are contrasted against the other view's features of the same batch, the same
    image's the positive, symmetrised.

    ``(CE(v1 @ v2.T / t, i) + CE(v2 @ v1.T / t, i)) / 2``, ``i`` each row's own index. This is
    CLD's loss against the other view's per-batch k-means centroids in its limit of as many
    clusters as images (k-means from the batch's rows is then the identity): the form that beat
    MoCo V2+ on three seeds of the CPU screen, where real groups of about two images kept a
    quarter of the gain (docs/results.md, issue 16). Gradients reach both views.

    Args:
        view1, view2: (B, D) L2-normalised features of the two views of the same B images.
        temperature: > 0 (CLD: 0.2).

    Returns:
        Scalar float32 loss.
    """
    with _fp32(view1.device):
        v1, v2 = view1.float(), view2.float()
        logits = v1 @ v2.T / temperature  # (B, B); its transpose holds v2's logits
        images = torch.arange(v1.shape[0], device=v1.device)
        return (F.cross_entropy(logits, images) + F.cross_entropy(logits.T, images)) / 2
