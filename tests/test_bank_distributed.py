"""The centroid bank under torch.distributed: two CPU processes (gloo), each stepping with half of
every batch (step() all-reduces the statistics; cluster() broadcasts rank 0's clustering), end
with banks identical to each other and to one process that saw the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from gloo import free_port, gloo_group

from cueco_plugin.bank import CentroidBank

WORLD_SIZE = 2
DIM = 16
BANK_ARGS = dict(
    num_clusters=10,
    dim=DIM,
    centroid_momentum=0.9,
    variance_momentum=0.8,
    min_variance=1e-3,
    warmup_iters=1,
    freeze_iters=2,
    ramp_iters=2,
    recluster_interval=6,
    dead_cluster_steps=2,
    lloyd_iters=3,
    seed=5,
)
STEPS = 10
SKIPPED_STEP = 4  # the optimiser skips this step (e.g. fp16 inf gradients) on every rank
BATCH = 64  # global; 32 per rank
BUFFERS = ("centroids", "variances", "usage", "last_active")


def features(seed: int, n: int, blobs: int) -> torch.Tensor:
    """Unit vectors around the first ``blobs`` axes; fewer blobs than clusters leaves some
    clusters empty, so dead-cluster revival triggers."""
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(blobs, (n,), generator=gen)
    return F.normalize(torch.eye(blobs, DIM)[which] + 0.15 * torch.randn(n, DIM, generator=gen), 1)


def batch(step: int) -> torch.Tensor:
    return features(1000 + step, BATCH, blobs=3 if step < 5 else 10)


def queue_for_clustering(num: int) -> torch.Tensor:
    return features(num, 200, blobs=10)


def make_bank(recluster_init: str) -> CentroidBank:
    return CentroidBank(**BANK_ARGS, recluster_init=recluster_init)  # type: ignore[arg-type]


def run_bank(bank: CentroidBank, rank: int, world_size: int) -> dict[str, list]:
    """The training loop's use of the bank: cluster when the schedule asks, then assign +
    accumulate this rank's share of each global batch and step. Returns the per-step usage
    (the EMA of the all-reduced member shares) and activity, the loss weights, the cluster
    health of the global batch and the steps at which a clustering happened."""
    record: dict[str, list] = {
        "usage": [],
        "last_active": [],
        "weights": [],
        "live": [],
        "clustered_at": [],
    }
    for step in range(STEPS):
        if bank.wants_clustering:
            queue = queue_for_clustering(bank.num_clusterings)
            if rank > 0:  # rank 0's clustering is broadcast: other ranks' features do not matter
                queue = -queue
            assert bank.cluster(queue)
            record["clustered_at"].append(bank.num_updates)
        record["weights"].append(bank.loss_weight)
        local = batch(step).chunk(world_size)[rank]
        if bank.seeded:
            bank.accumulate(local, bank.assign(local))
            record["live"].append(bank.health(bank.assign(batch(step)))["live_clusters"].item())
        bank.step(skipped=torch.tensor(step == SKIPPED_STEP))
        record["usage"].append(bank.usage.clone())
        record["last_active"].append(bank.last_active.clone())
    return record


def worker(rank: int, port: int, out_dir: str, recluster_init: str) -> None:
    with gloo_group(rank, port, WORLD_SIZE):
        bank = make_bank(recluster_init)
        record = run_bank(bank, rank, WORLD_SIZE)
        torch.save({"state": bank.state_dict(), **record}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.parametrize("recluster_init", ["warm", "kmeans++"])
def test_two_gloo_ranks_with_half_batches_match_one_process_with_the_whole_batch(
    tmp_path: Path, recluster_init: str
) -> None:
    args = (free_port(), str(tmp_path), recluster_init)
    mp.spawn(worker, args=args, nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]

    reference = make_bank(recluster_init)
    ref = run_bank(reference, rank=0, world_size=1)
    ref_state = reference.state_dict()

    # the scenario really covers empty clusters, a skipped step, the ramp and a re-clustering
    assert ref["clustered_at"] == [1, 7]
    assert reference.num_clusterings == 2 and reference.num_updates == STEPS
    assert min(ref["live"][:SKIPPED_STEP]) < BANK_ARGS["num_clusters"]
    assert torch.equal(ref["usage"][SKIPPED_STEP], ref["usage"][SKIPPED_STEP - 1])
    assert not torch.equal(ref["usage"][SKIPPED_STEP + 1], ref["usage"][SKIPPED_STEP])
    assert ref["weights"] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert int(reference.last_active.max()) == STEPS

    # ranks hold identical banks: bit for bit, buffers and schedule counters
    for name in BUFFERS:
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
    assert ranks[0]["state"]["_extra_state"] == ranks[1]["state"]["_extra_state"]
    for key in ("usage", "last_active"):
        for got, other in zip(ranks[0][key], ranks[1][key]):
            assert torch.equal(got, other), key
    # ... equal to the single process up to float summation order
    for name in ("centroids", "variances", "usage"):
        torch.testing.assert_close(ranks[0]["state"][name], ref_state[name], rtol=0, atol=1e-6)
    assert torch.equal(ranks[0]["state"]["last_active"], ref_state["last_active"])
    assert ranks[0]["state"]["_extra_state"] == ref_state["_extra_state"]
    for key in ("weights", "live", "clustered_at"):
        assert ranks[0][key] == ref[key], key
    for got, want in zip(ranks[0]["usage"], ref["usage"]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for got, want in zip(ranks[0]["last_active"], ref["last_active"]):
        assert torch.equal(got, want)


def test_revival_triggers_in_the_distributed_scenario() -> None:
    """Guards the test above: some cluster is empty for dead_cluster_steps steps and gets moved
    while empty, which only revival does."""
    bank = make_bank("warm")
    revived = 0
    for step in range(STEPS):
        if bank.wants_clustering:
            assert bank.cluster(queue_for_clustering(bank.num_clusterings))
        before = bank.centroids.clone()
        x = batch(step)
        a = bank.assign(x)
        if bank.seeded:
            bank.accumulate(x, a)
        bank.step()
        empty = torch.bincount(a, minlength=bank.num_clusters) == 0
        revived += int((empty & (bank.centroids != before).any(dim=1)).sum())
    assert revived > 0
