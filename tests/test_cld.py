"""CLD's cross-view loss with one group per image (CueCo's default second term since the CPU
screen of issue 16): the pure function, and CueCo training with it on its own head."""

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

from cueco_plugin.losses import cross_view_batch_loss


def views(n: int, d: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit views of n random images in d dimensions, each a noisy copy of the image."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=gen)
    v1 = F.normalize(images + noise * torch.randn(n, d, generator=gen), dim=1)
    v2 = F.normalize(images + noise * torch.randn(n, d, generator=gen), dim=1)
    return v1, v2


def test_cross_view_loss_matches_a_hand_computed_value() -> None:
    # two images in 2-d: view 1 = (e1, e2), view 2 = (e1, (0.6, 0.8)); t = 0.5
    v1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v2 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # v1 @ v2.T / t = [[2, 1.2], [0, 1.6]]: row i's positive is column i
    l12 = (-2.0 + math.log(math.exp(2.0) + math.exp(1.2))) + (-1.6 + math.log(1.0 + math.exp(1.6)))
    # v2 @ v1.T / t = [[2, 0], [1.2, 1.6]]
    l21 = (-2.0 + math.log(math.exp(2.0) + 1.0)) + (-1.6 + math.log(math.exp(1.2) + math.exp(1.6)))
    loss = cross_view_batch_loss(v1, v2, 0.5)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx((l12 / 2 + l21 / 2) / 2, rel=1e-6)


def test_cross_view_loss_is_clds_loss_with_one_cluster_per_image_and_reaches_both_views() -> None:
    """CLD's loss against the other view's per-batch k-means centroids (its formula, with the
    k-means of B rows into B clusters started from those rows: every row its own centroid)."""
    v1, v2 = views(32, 8, 0.3, seed=1)
    v1.requires_grad_(True)
    v2.requires_grad_(True)
    loss = cross_view_batch_loss(v1, v2, 0.2)
    own = torch.arange(32)
    want = (F.cross_entropy(v1 @ v2.T / 0.2, own) + F.cross_entropy(v2 @ v1.T / 0.2, own)) / 2
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert v1.grad.abs().sum() > 0 and v2.grad.abs().sum() > 0
    # matching views: the positives dominate, the loss is well below chance (log 32)
    assert loss.item() < 0.5 * math.log(32)


def test_cross_view_loss_is_float32_under_bf16_autocast() -> None:
    v1, v2 = views(16, 8, 0.1, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cross_view_batch_loss(v1.bfloat16(), v2.bfloat16(), 0.2)
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
        cld_dim=16,
    )
    cld = step_rows(rows, "train_cld_loss")
    assert sorted(cld) == [0, 1, 2] and all(math.isfinite(v) and v > 0 for v in cld.values())
    assert model.cld_head.weight.shape[0] == 16
    names = [group["name"] for group in model.learnable_params]
    assert "cld_head" in names
    seed_everything(3)  # as fit_steps: the same initial model
    start = cueco_cls(make_cfg(cifar_folder, lambda_cld=0.8, cld_dim=16))
    assert not torch.equal(model.cld_head.weight, start.cld_head.weight)  # trained


@requires_solo
@pytest.mark.solo
def test_without_lambda_cld_there_is_no_head_and_the_state_dict_has_none(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any  # noqa: F811
) -> None:
    model = cueco_cls(make_cfg(cifar_folder, lambda_cld=0.0))
    assert model.cld_head is None
    assert not any(key.startswith("cld_head") for key in model.state_dict())
    assert not any(group["name"] == "cld_head" for group in model.learnable_params)
