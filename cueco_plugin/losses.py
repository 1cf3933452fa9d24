"""CueCo's two cluster losses (L2 and L3) as pure functions.

L1, the instance contrast, is solo-learn's own ``mocov2plus_loss_func`` and is not repeated here.

Both losses treat the centroid bank as a stop-gradient target: gradients reach ``query`` only.
They are computed in float32 whatever the input dtype and autocast state, so that mixed-precision
training (fp16/bf16) gets the same numbers as full precision.

Shapes: ``query`` (B, D), ``centroids`` (K, D), ``variances`` (K,), ``assignments`` (B,) int64.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

VarianceScaling = Literal["divide", "multiply", "none"]
VARIANCE_SCALINGS: tuple[str, ...] = ("divide", "multiply", "none")


def _check_positive_number(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and 0 < value < math.inf):  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_inputs(
    query: torch.Tensor,
    centroids: torch.Tensor,
    assignments: torch.Tensor,
    check_range: bool | None,
) -> None:
    """Validates shapes and dtypes (free) and, where cheap, the assignment range.

    The range check reads tensor values, which is a host-device synchronisation on an
    accelerator; with ``check_range=None`` it runs only for CPU tensors.
    """
    if query.dim() != 2:
        raise ValueError(f"query must be 2-D (B, D), got shape {tuple(query.shape)}")
    if not query.is_floating_point():
        raise ValueError(f"query must be a floating-point tensor, got dtype {query.dtype}")
    if query.shape[0] < 1:
        raise ValueError("query must hold at least one sample (B >= 1), got B=0")
    if centroids.dim() != 2:
        raise ValueError(f"centroids must be 2-D (K, D), got shape {tuple(centroids.shape)}")
    if not centroids.is_floating_point():
        raise ValueError(f"centroids must be a floating-point tensor, got dtype {centroids.dtype}")
    if centroids.shape[1] != query.shape[1]:
        raise ValueError(
            f"centroids have dimension {centroids.shape[1]} but query has {query.shape[1]}; "
            "both must share D"
        )
    if centroids.shape[0] < 1:
        raise ValueError("centroids must hold at least one cluster (K >= 1), got K=0")
    if assignments.dtype != torch.int64:
        raise ValueError(f"assignments must be int64 (torch.long), got dtype {assignments.dtype}")
    if assignments.shape != (query.shape[0],):
        raise ValueError(
            f"assignments must have shape (B,) = ({query.shape[0]},), "
            f"got {tuple(assignments.shape)}"
        )
    if check_range is None:
        check_range = assignments.device.type == "cpu"
    if check_range and assignments.numel() > 0:
        lo, hi = int(assignments.min()), int(assignments.max())
        k = centroids.shape[0]
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"assignments contain {bad}, outside the allowed range [0, {k - 1}] for K={k}"
            )


def centroid_contrast_loss(
    query: torch.Tensor,
    centroids: torch.Tensor,
    assignments: torch.Tensor,
    temperature: float,
    check_range: bool | None = None,
) -> torch.Tensor:
    """L2: cross-entropy of a softmax over the K centroids, the assigned centroid positive.

    ``mean_b CE(query_b @ centroids.T / temperature, assignments_b)``

    Args:
        query: (B, D) query features (normally L2-normalised projections).
        centroids: (K, D) centroids; detached, they only move by the bank's momentum update.
        assignments: (B,) int64 index of each sample's assigned centroid.
        temperature: softmax temperature, > 0.
        check_range: check ``0 <= assignments < K`` (a host sync on GPU). ``None``: CPU only.

    Returns:
        Scalar float32 loss.
    """
    _check_positive_number("temperature", temperature)
    _check_inputs(query, centroids, assignments, check_range)
    with torch.autocast(device_type=query.device.type, enabled=False):
        logits = query.float() @ centroids.detach().float().T
        return F.cross_entropy(logits / temperature, assignments)


def variance_scaled_distance_loss(
    query: torch.Tensor,
    centroids: torch.Tensor,
    variances: torch.Tensor,
    assignments: torch.Tensor,
    scaling: VarianceScaling = "divide",
    eps: float = 1e-4,
    check_range: bool | None = None,
) -> torch.Tensor:
    """L3: squared distance of each query to its assigned centroid, scaled by that cluster's
    running variance, averaged over the batch.

    - ``"divide"``: ``||q - c_a||^2 / (var_a + eps)`` (a Gaussian negative log-likelihood term);
    - ``"multiply"``: ``||q - c_a||^2 * var_a``;
    - ``"none"``: ``||q - c_a||^2``.

    Args:
        query: (B, D) query features.
        centroids: (K, D) centroids, stop-gradient.
        variances: (K,) running per-cluster variances, stop-gradient, >= 0.
        assignments: (B,) int64 assigned cluster of each sample.
        scaling: one of ``"divide"``, ``"multiply"``, ``"none"``.
        eps: > 0, keeps ``"divide"`` finite for zero-variance clusters.
        check_range: as in :func:`centroid_contrast_loss`.

    Returns:
        Scalar float32 loss.
    """
    if scaling not in VARIANCE_SCALINGS:
        raise ValueError(f"scaling must be one of {VARIANCE_SCALINGS}, got {scaling!r}")
    _check_positive_number("eps", eps)
    _check_inputs(query, centroids, assignments, check_range)
    if variances.shape != (centroids.shape[0],):
        raise ValueError(
            f"variances must have shape (K,) = ({centroids.shape[0]},), "
            f"got {tuple(variances.shape)}"
        )
    if not variances.is_floating_point():
        raise ValueError(f"variances must be a floating-point tensor, got dtype {variances.dtype}")
    with torch.autocast(device_type=query.device.type, enabled=False):
        target = centroids.detach().float().index_select(0, assignments)
        sq_dist = (query.float() - target).pow(2).sum(dim=1)
        if scaling == "none":
            return sq_dist.mean()
        var = variances.detach().float().index_select(0, assignments)
        if scaling == "divide":
            return (sq_dist / (var + eps)).mean()
        return (sq_dist * var).mean()
