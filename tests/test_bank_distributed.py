"""The centroid bank under torch.distributed: two CPU processes (gloo), each updating with half
of every batch, end with banks identical to each other and to one process that saw it all."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cueco_plugin.centroids import CentroidBank

WORLD_SIZE = 2
DIM = 16
BANK_ARGS = dict(
    num_clusters=10,
    dim=DIM,
    centroid_momentum=0.9,
    variance_momentum=0.8,
    freeze_iters=2,
    reset_interval=6,
    dead_cluster_steps=2,
    lloyd_iters=3,
    seed=5,
)
STEPS = 10
BATCH = 64  # global; 32 per rank
BUFFERS = ("centroids", "variances", "usage", "counts", "last_active")


def features(seed: int, n: int, blobs: int) -> torch.Tensor:
    """Unit vectors around the first ``blobs`` axes; fewer blobs than clusters leaves some
    clusters empty, so dead-cluster revival triggers."""
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(blobs, (n,), generator=gen)
    return F.normalize(torch.eye(blobs, DIM)[which] + 0.15 * torch.randn(n, DIM, generator=gen), 1)


def batch(step: int) -> torch.Tensor:
    return features(1000 + step, BATCH, blobs=3 if step < 5 else 10)


def queue_for_seed(num: int) -> torch.Tensor:
    return features(num, 200, blobs=10)


def run_bank(bank: CentroidBank, rank: int, world_size: int) -> list[torch.Tensor]:
    """The training-loop use of the bank: seed when asked, then assign + update with this
    rank's share of each global batch. Returns the global per-step counts."""
    all_counts = []
    for step in range(STEPS):
        if bank.needs_seed:
            queue = queue_for_seed(bank.num_seeds)
            if rank > 0:  # rank 0's seeding is broadcast: other ranks' features do not matter
                queue = -queue
            bank.seed(queue)
        local = batch(step).chunk(world_size)[rank]
        all_counts.append(bank.update(local, bank.assign(local)).clone())
    return all_counts


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        bank = CentroidBank(**BANK_ARGS)  # type: ignore[arg-type]
        counts = run_bank(bank, rank, WORLD_SIZE)
        torch.save({"state": bank.state_dict(), "counts": counts}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_with_half_batches_match_one_process_with_the_whole_batch(
    tmp_path: Path,
) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]

    reference = CentroidBank(**BANK_ARGS)  # type: ignore[arg-type]
    ref_counts = run_bank(reference, rank=0, world_size=1)
    ref_state = reference.state_dict()

    # the scenario really covers empty clusters, revival and a scheduled re-seed
    assert any((c == 0).any() for c in ref_counts)
    assert reference.num_seeds == 2 and reference.num_updates == STEPS
    assert int(reference.last_active.max()) == STEPS

    # ranks hold identical banks: bit for bit, buffers and schedule counters
    for name in BUFFERS:
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
    assert ranks[0]["state"]["_extra_state"] == ranks[1]["state"]["_extra_state"]
    # ... equal to the single process up to float summation order
    for name in ("centroids", "variances", "usage"):
        torch.testing.assert_close(ranks[0]["state"][name], ref_state[name], rtol=0, atol=1e-6)
    for name in ("counts", "last_active"):
        assert torch.equal(ranks[0]["state"][name], ref_state[name]), name
    assert ranks[0]["state"]["_extra_state"] == ref_state["_extra_state"]
    for got, want in zip(ranks[0]["counts"], ref_counts):
        assert torch.equal(got, want)


def test_revival_triggers_in_the_distributed_scenario() -> None:
    """Guards the test above: some cluster is empty for dead_cluster_steps updates and gets
    moved while empty, which only revival does."""
    bank = CentroidBank(**BANK_ARGS)  # type: ignore[arg-type]
    revived = 0
    for step in range(STEPS):
        if bank.needs_seed:
            bank.seed(queue_for_seed(bank.num_seeds))
        before = bank.centroids.clone()
        x = batch(step)
        counts = bank.update(x, bank.assign(x))
        revived += int(((counts == 0) & (bank.centroids != before).any(dim=1)).sum())
    assert revived > 0
