"""The queue and the centroid bank are the same on every rank by construction, so DDP does not
broadcast them before each forward (128 MiB at Q = 65536, D = 256); ``on_fit_start`` hands rank
0's once to every rank. Two CPU processes (gloo) with a real ``DistributedDataParallel``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from conftest import requires_solo
from gloo import free_port, gloo_group
from omegaconf import OmegaConf
from test_method import make_cfg

from cueco_plugin import register

pytestmark = [requires_solo, pytest.mark.solo]

WORLD_SIZE = 2


def replicated(model: Any) -> dict[str, torch.Tensor]:
    return {f"queue.{n}": b for n, b in model.queue.named_buffers()} | {
        f"bank.{n}": b for n, b in model.bank.named_buffers()
    }


def worker(rank: int, port: int, out_dir: str, cfg_yaml: str) -> None:
    with gloo_group(rank, port, WORLD_SIZE):
        cls = register()
        cfg = OmegaConf.create(cfg_yaml)
        OmegaConf.set_struct(cfg, False)
        torch.manual_seed(100 + rank)  # different initial queues and bank on each rank
        model = cls(cls.add_and_assert_specific_cfg(cfg))
        before = {name: b.clone() for name, b in replicated(model).items()}
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # syncs the backbones only
        after_ddp = {name: b.clone() for name, b in replicated(model).items()}
        model.on_fit_start()
        after_fit_start = {name: b.clone() for name, b in replicated(model).items()}
        # per-rank changes survive a DDP forward (no broadcast); BN statistics are broadcast
        model.queue.keys.fill_(float(rank))
        model.backbone.bn1.running_mean.add_(rank)
        model.eval()  # BN statistics not updated by the forward itself
        ddp(torch.rand(4, 3, 32, 32))
        torch.save(
            {
                "ignored": sorted(ddp.parameters_to_ignore),
                "before": before,
                "after_ddp": after_ddp,
                "after_fit_start": after_fit_start,
                "after_forward": model.queue.keys.clone(),
                "bn_mean": model.backbone.bn1.running_mean.clone(),
                "buffers": sorted(name for name, _ in model.named_buffers()),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )


def test_ddp_skips_queue_and_bank_and_fit_start_replicates_rank_zeros(
    tmp_path: Path, shared_datasets: Path
) -> None:
    cfg = make_cfg(shared_datasets / "cifar10-folder-small")
    args = (free_port(), str(tmp_path), OmegaConf.to_yaml(cfg))
    mp.spawn(worker, args=args, nprocs=WORLD_SIZE, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))

    names = sorted(r0["before"])
    assert "queue.keys" in names and "bank.centroids" in names
    assert r0["ignored"] == r1["ignored"] == names
    assert not any(name.startswith(("backbone", "momentum_backbone")) for name in r0["ignored"])
    assert any(name.startswith("backbone") for name in r0["buffers"])  # BN statistics: synced

    # the ranks started apart; DDP's own start-up sync left the queue alone ...
    assert not torch.equal(r0["before"]["queue.keys"], r1["before"]["queue.keys"])
    for name in names:
        assert torch.equal(r1["after_ddp"][name], r1["before"][name]), name
    # ... and on_fit_start gave every rank rank 0's queue and bank
    for name in names:
        assert torch.equal(r1["after_fit_start"][name], r0["before"][name]), name
    # a forward through DDP broadcasts BN statistics, not the queue
    assert torch.equal(r0["bn_mean"], r1["bn_mean"])
    assert bool((r0["after_forward"] == 0).all()) and bool((r1["after_forward"] == 1).all())
