"""CueCo's losses and target functions, pure and stateless.

L1 without a negative mask is solo-learn's own ``mocov2plus_loss_func`` (the method calls it);
:func:`infonce_loss` is the same loss with some queue negatives masked out (by
:func:`negative_mask`), fused into one autograd function that makes fewer (B, Q) passes than
solo-learn's. The arguments are trusted: ``cueco_plugin.config`` validates the options once,
and the bank produces valid assignments. Every loss is computed in float32 whatever the input
dtype and autocast state, with the bank's tensors as stop-gradient targets: gradients reach
``query`` only.

Shapes: ``query`` / ``key`` (B, D) L2-normalised; ``centroids`` (K, D); ``variances`` (K,);
``assignments`` (B,) int64; ``queue`` (D, Q); negative masks (Q, B), queue-major.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from cueco_plugin.bank import nearest_centroid
from cueco_plugin.sampling import BITS, uniform_bits

VARIANCE_SCALINGS: tuple[str, ...] = ("divide", "multiply", "none")


def _fp32(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


_DROP_SCALE = torch.finfo(torch.float32).max  # a dropped logit: -3.4e38 + q.n / t, exp() is 0


class _MaskedInfoNCE(torch.autograd.Function):
    """InfoNCE with dropped negatives in two (B, D) x (D, Q) products and four (Q, B) passes.

    Forward: ``logits = drop * -MAX + queue.T @ q.T / t`` as one GEMM into the memory of ``drop``
    (the mask costs no pass of its own), then the log-sum-exp with the positive logit, without a
    concatenation: a max, a subtraction, an exponential and a sum over Q, in place; then, if a
    gradient is wanted, ``dL/dq_b = (sum_j e_jb n_j / s_b + (e_b+ / s_b - 1) k_b) / (B t)``
    (``e`` the exponentials, ``s`` the softmax denominators): one (B, Q) x (Q, D) product. Only
    that (B, D) gradient is saved, so the queue may change after the forward (no clone needed)
    and the (Q, B) buffer is freed at once; backward scales it by the incoming gradient.
    solo-learn's path (einsum, cat, division, log_softmax, nll, and their backwards) makes about
    ten (B, Q) passes, most into new (B, Q) tensors. Gradients reach ``query`` only; no double
    backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        queue: torch.Tensor,
        temperature: float,
        drop: torch.Tensor | None,
        need_grad: bool,
    ) -> torch.Tensor:
        with _fp32(query.device):
            num_queue, batch = queue.shape[1], query.shape[0]
            if drop is None:  # beta = 0: the empty buffer's contents are ignored
                logits = torch.empty(num_queue, batch, device=query.device)
                logits.addmm_(queue.T, query.T, beta=0.0, alpha=1.0 / temperature)
            else:
                logits = drop.addmm_(queue.T, query.T, beta=-_DROP_SCALE, alpha=1.0 / temperature)
            pos = torch.einsum("nc,nc->n", query, key) / temperature  # (B,)
            shift = torch.maximum(logits.amax(dim=0), pos)  # (B,): no exp() overflows
            e = logits.sub_(shift).exp_()  # (Q, B), dropped negatives exactly 0
            e_pos = (pos - shift).exp()
            denominator = e.sum(dim=0) + e_pos
            loss = (shift + denominator.log() - pos).mean()
            if need_grad:  # dL/dlogit_j = (p_j - [j is the positive]) / (B t)
                scale = 1.0 / (batch * temperature)
                weight = scale / denominator  # (B,)
                grad_query = torch.mm(e.T, queue.T).mul_(weight.unsqueeze(1))  # (B, D)
                grad_query.add_(key * (weight * e_pos - scale).unsqueeze(1))
                ctx.save_for_backward(grad_query)
            return loss

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward: refused, not dropped
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_query,) = ctx.saved_tensors
        return grad_query * grad.float(), None, None, None, None, None


def infonce_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    negative_mask: torch.Tensor | None = None,
    overwrite_mask: bool = False,
) -> torch.Tensor:
    """L1 (MoCo's InfoNCE) with the negatives that ``negative_mask`` marks left out.

    ``CE([q.k, q.queue] / temperature, 0)`` with each dropped logit removed from the softmax
    denominator: with nothing dropped it equals ``solo.losses.mocov2plus.mocov2plus_loss_func``
    (to float32 rounding). Computed by :class:`_MaskedInfoNCE`, in float32 whatever the input
    dtype and autocast state; gradients reach ``query`` only.

    Args:
        query: (B, D). key: (B, D) positives. queue: (D, Q) negatives. temperature: > 0.
        negative_mask: (Q, B) float32, 1.0 where query b drops queue key j and 0.0 elsewhere
            (queue-major, as :func:`negative_mask` returns it; ``.T.bool()`` is the (B, Q)
            view), or None: nothing dropped.
        overwrite_mask: reuse ``negative_mask``'s memory for the logits (saves a (Q, B) copy;
            the mask is garbage afterwards). The method passes True; the default copies.

    Returns:
        Scalar float32 loss.
    """
    q = query.float()
    k, n = key.detach().float(), queue.detach().float()
    if negative_mask is not None:
        expected = (n.shape[1], q.shape[0])
        if negative_mask.dtype != torch.float32 or tuple(negative_mask.shape) != expected:
            raise ValueError(
                f"infonce_loss: negative_mask must be a (Q, B) = {expected} float32 tensor (from "
                f"negative_mask()), got {tuple(negative_mask.shape)} {negative_mask.dtype}"
            )
        negative_mask = negative_mask.detach()
        if not overwrite_mask or not negative_mask.is_contiguous():
            negative_mask = negative_mask.clone(memory_format=torch.contiguous_format)
    need_grad = torch.is_grad_enabled() and q.requires_grad
    return _MaskedInfoNCE.apply(q, k, n, temperature, negative_mask, need_grad)


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


def hcsc_drop_probabilities(centroids: torch.Tensor) -> torch.Tensor:
    """HCSC's drop probability of a queue key of cluster c for a query of cluster a.

    Args:
        centroids: (K, D) unit centroids.

    Returns:
        (K + 1, K + 1) float32 ``P[a, c] = clamp(cos(c_a, c_c), 0, 1)``, exactly 1 on the
        diagonal (the same cluster: always dropped) and 0 in the last row and column (label -1).
    """
    k = centroids.shape[0]
    with _fp32(centroids.device):
        c = centroids.float()
        table = torch.zeros(k + 1, k + 1, device=c.device)
        table[:k, :k] = (c @ c.T).clamp_(0.0, 1.0).fill_diagonal_(1.0)
        return table


@torch.no_grad()
def negative_mask(
    targets: torch.Tensor,
    queue_labels: torch.Tensor,
    centroids: torch.Tensor,
    mode: str,
    bits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which queue negatives to drop for each query, from cluster labels.

    - ``"hard"``: the queue keys of the query's own target cluster;
    - ``"hcsc"``: HCSC's sampling: each (query, key) pair is dropped independently with
      probability ``clamp(s, 0, 1)``, ``s`` the cosine similarity of the query's and the key's
      centroids (always dropped in the same cluster, kept when the clusters are orthogonal).
      Probabilities are rounded to multiples of 2^-15 (:data:`cueco_plugin.sampling.BITS`): a
      drawn 15-bit integer below ``round(p 2^15)`` drops the pair, so 0 and 1 stay exact.

    Queue slots without a label (``-1``: random initial vectors, keys from before the bank's
    seeding) are never dropped. One (Q, B) row gather from a (K + 1, B) table per mode, plus for
    ``hcsc`` the draw, an add, a compare and the int16-to-float copy; no host sync.

    Args:
        targets: (B,) int64 target cluster of each query. queue_labels: (Q,) int64 or -1.
        centroids: (K, D) unit centroids. mode: ``"hard"`` or ``"hcsc"``.
        bits: ``hcsc`` only: (Q, B) int16 draws uniform on [0, 2^15), consumed, e.g. from
            :meth:`cueco_plugin.sampling.NegativeSampler.bits`; None: drawn from torch's
            default generator on the centroids' device.

    Returns:
        (Q, B) float32, 1.0 where query b drops queue key j, else 0.0: the layout
        :func:`infonce_loss` takes (``.T.bool()`` is the (B, Q) mask).
    """
    k, device = centroids.shape[0], centroids.device
    labels = torch.where(queue_labels < 0, k, queue_labels)  # (Q,): -1 -> row K
    num_queue, batch = labels.shape[0], targets.shape[0]
    if mode == "hard":  # (K + 1, B): 1 where cluster c is query b's target; row K stays 0
        clusters = torch.arange(k + 1, device=device).unsqueeze(1)
        return (clusters == targets.unsqueeze(0)).float().index_select(0, labels)
    # thresholds round(p 2^15) in [0, 2^15], negated to fit int16: (K + 1, B)
    scaled = hcsc_drop_probabilities(centroids).index_select(0, targets).T * float(1 << BITS)
    neg_thresholds = scaled.round_().neg_().to(torch.int16).contiguous()
    if bits is None:
        bits = uniform_bits(num_queue, batch, device)
    out = torch.empty(num_queue, batch, device=device)
    # the gathered thresholds live in the output's memory until the last copy overwrites it
    gathered = out.view(-1).view(torch.int16)[: num_queue * batch].view(num_queue, batch)
    torch.index_select(neg_thresholds, 0, labels, out=gathered)
    # bits - threshold < 0 (no int16 overflow: both in [0, 2^15]): 1 (dropped), else 0
    return out.copy_(bits.add_(gathered).lt_(0))


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
