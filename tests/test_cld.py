"""The CLD ablation (issue 11 d): per-batch k-means and CLD's cross-view loss as pure
functions, and CueCo training with it on its own head."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_solo
from lightning.pytorch import seed_everything
from test_method import cifar_folder, cueco_cls, fit_steps, make_cfg, step_rows  # noqa: F401

from cueco_plugin.losses import batch_kmeans, cross_view_cluster_loss


def blobs(
    n: int, centres: torch.Tensor, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    which = torch.arange(n) % centres.shape[0]
    x = centres[which] + noise * torch.randn(n, centres.shape[1], generator=gen)
    return F.normalize(x, dim=1), which


def test_batch_kmeans_recovers_separated_blobs_and_returns_member_means() -> None:
    centres = torch.eye(4, 8)
    x, truth = blobs(40, centres, 0.05, seed=0)
    labels, centroids = batch_kmeans(x, 4, iterations=5)
    # the first 4 rows start one centroid in each blob: labels equal the blobs up to naming
    assert len(set(zip(labels.tolist(), truth.tolist()))) == 4
    for j in range(4):
        torch.testing.assert_close(centroids[j], x[labels == j].mean(0))


def test_batch_kmeans_gives_an_empty_cluster_a_zero_centroid() -> None:
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    # both centroids start on the same row: ties go to the first, the second stays empty
    labels, centroids = batch_kmeans(x, 2, iterations=1)
    assert labels.tolist() == [0, 0, 0, 0]
    assert centroids[1].tolist() == [0.0, 0.0]
    torch.testing.assert_close(centroids[0], x.mean(0))


def test_cross_view_loss_matches_its_formula_and_reaches_both_views() -> None:
    centres = torch.eye(3, 6)
    v1, _ = blobs(12, centres, 0.1, seed=1)
    v2, _ = blobs(12, centres, 0.1, seed=2)
    v1.requires_grad_(True)
    v2.requires_grad_(True)
    loss = cross_view_cluster_loss(v1, v2, 3, iterations=4, temperature=0.2)
    l1, c1 = batch_kmeans(v1.detach(), 3, 4)
    l2, c2 = batch_kmeans(v2.detach(), 3, 4)
    want = (
        F.cross_entropy(v1.detach() @ c2.T / 0.2, l2)
        + F.cross_entropy(v2.detach() @ c1.T / 0.2, l1)
    ) / 2
    torch.testing.assert_close(loss.detach(), want)
    loss.backward()
    assert v1.grad.abs().sum() > 0 and v2.grad.abs().sum() > 0
    # matching views of well-separated blobs: the positive cluster dominates, the loss is small
    assert loss.item() < math.log(3)


def test_cross_view_loss_is_float32_under_bf16_autocast() -> None:
    v1, _ = blobs(16, torch.eye(4, 8), 0.1, seed=3)
    v2, _ = blobs(16, torch.eye(4, 8), 0.1, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cross_view_cluster_loss(v1.bfloat16(), v2.bfloat16(), 4, 3, 0.2)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


@requires_solo
@pytest.mark.solo
def test_cueco_with_lambda_cld_trains_its_own_head_and_logs_the_loss(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any  # noqa: F811
) -> None:
    model, rows = fit_steps(
        cifar_folder,
        cueco_cls,
        3,
        freeze_iters=0,
        recluster_interval=0,
        lambda_cld=0.8,
        cld_clusters=4,
        cld_dim=16,
    )
    cld = step_rows(rows, "train_cld_loss")
    assert sorted(cld) == [0, 1, 2] and all(math.isfinite(v) and v > 0 for v in cld.values())
    assert model.cld_head.weight.shape[0] == 16
    names = [group["name"] for group in model.learnable_params]
    assert "cld_head" in names
    seed_everything(3)  # as fit_steps: the same initial model
    start = cueco_cls(make_cfg(cifar_folder, lambda_cld=0.8, cld_clusters=4, cld_dim=16))
    assert not torch.equal(model.cld_head.weight, start.cld_head.weight)  # trained


@requires_solo
@pytest.mark.solo
def test_without_lambda_cld_there_is_no_head_and_too_many_cld_clusters_are_refused(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any  # noqa: F811
) -> None:
    model = cueco_cls(make_cfg(cifar_folder))
    assert model.cld_head is None
    assert not any(key.startswith("cld_head") for key in model.state_dict())
    cfg = make_cfg(cifar_folder, lambda_cld=0.5, cld_clusters=9)  # batch 8 per process
    with pytest.raises(ValueError, match=r"cld_clusters must be at most optimizer.batch_size=8"):
        cueco_cls.add_and_assert_specific_cfg(cfg)
