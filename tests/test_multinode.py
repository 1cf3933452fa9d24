"""CueCo across two nodes: two ``torchrun`` agents on this machine act as nodes 0 and 1 (one process
each, gloo, rendezvous on 127.0.0.1), so each process's local rank (0) differs from its global
rank (0, 1), as on a cluster. Through solo-learn's own ``main_pretrain.py`` (torchvision loader)
and ``python -m cueco_plugin.pretrain`` (that script with DALI CIFAR, CPU backend): the centroid
bank and the key queue end identical on both nodes, each node trains on its own shard of the
data, and the DALI run's checkpoint resumes on the two nodes (docs/multinode.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_dali, requires_solo
from gloo import free_port
from solo_runs import (
    DALI_CIFAR_CONFIG,
    all_finite,
    assert_same_bank_and_queue,
    checkpoints,
    linked_image_folder,
    load_checkpoint,
    main_pretrain_command,
    run_env,
    torchrun_command,
)

pytestmark = [requires_solo, requires_dali, pytest.mark.solo, pytest.mark.slow]

BATCH = 16  # per process; 80 images over 2 nodes: 40 each, 2 full batches an epoch
TWO_NODES = ["strategy=ddp", 'devices="1"', "++num_nodes=2", f"optimizer.batch_size={BATCH}"]
COMMON = ["data.val_path=null", "knn_eval.enabled=False", "++seed=7", *TWO_NODES]


def _on_two_nodes(
    solo_root: Path,
    workdir: Path,
    train: Path,
    overrides: list[str],
    probe: Path,
    config_name: str = "cueco.yaml",
) -> str:
    """The run on two nodes, each ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank r``;
    returns both nodes' output once both ended with status 0 (a node that fails stops the
    other)."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = main_pretrain_command(solo_root, workdir, train, overrides, config_name)
    env = {**run_env(solo_root, workdir, probe), "OMP_NUM_THREADS": "1"}
    port = free_port()
    nodes = [
        subprocess.Popen(
            torchrun_command(command, nodes=2, node_rank=rank, port=port),
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a node and the worker it started: one process group
        )
        for rank in (0, 1)
    ]
    deadline = time.time() + 300
    while any(n.poll() is None for n in nodes) and time.time() < deadline:
        if any(n.poll() not in (None, 0) for n in nodes):
            break
        time.sleep(0.2)
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
    outputs = [node.communicate(timeout=60)[0] for node in nodes]
    report = "\n".join(f"--- node {r}:\n{out[-3000:]}" for r, out in enumerate(outputs))
    assert [node.returncode for node in nodes] == [0, 0], report
    return "\n".join(outputs)


def _records(probe: Path) -> list[dict]:
    records = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # two nodes of one process each: local rank 0 on both, global ranks 0 and 1
    assert [(r["node_rank"], r["local_rank"], r["rank"]) for r in records] == [(0, 0, 0), (1, 0, 1)]
    assert all(r["world_size"] == 2 for r in records)
    assert_same_bank_and_queue(*records)
    for record in records:
        assert all_finite([step["loss"] for step in record["steps"]])
    return records


def _served(record: dict) -> list[int]:
    return [i for step in record["steps"] for i in step["indexes"]]


def test_two_nodes_keep_one_bank_and_queue_train_their_own_shards_and_resume(
    solo_root: Path, shared_datasets: Path, small_cifar_npz: Path, tmp_path: Path
) -> None:
    from cueco_plugin.data.dali_cifar import EpochShards

    # solo-learn's main_pretrain.py, torchvision loader: Lightning's DistributedSampler shards
    # the 80 images (8 per class) by global rank
    folder = linked_image_folder(
        shared_datasets / "cifar10-folder-small" / "train", tmp_path / "images", per_class=8
    )
    probe = tmp_path / "probe_tv"
    _on_two_nodes(solo_root, tmp_path / "tv", folder, [*COMMON, "max_epochs=1"], probe)
    records = _records(probe)
    assert [r["global_step"] for r in records] == [2, 2]
    served = [_served(r) for r in records]
    assert len(served[0]) == len(served[1]) == 2 * BATCH
    assert not set(served[0]) & set(served[1]) and len(set(served[0] + served[1])) == 4 * BATCH
    assert records[0]["queue"]["_extra_state"]["num_filled"] == 2 * 2 * BATCH  # both nodes' keys

    # DALI CIFAR, one epoch, checkpointed: node r serves the r-th half of epoch 0's permutation
    images = np.load(small_cifar_npz)["images"]
    shards = [EpochShards(images, BATCH, rank, 2, seed=7) for rank in (0, 1)]
    dali = [*COMMON, "checkpoint.enabled=True"]
    probe = tmp_path / "probe_dali"
    workdir = tmp_path / "dali"
    _on_two_nodes(
        solo_root, workdir, small_cifar_npz, [*dali, "max_epochs=1"], probe, DALI_CIFAR_CONFIG
    )
    records = _records(probe)
    assert [_served(r) for r in records] == [s.epoch_indexes(0).tolist() for s in shards]
    (saved,) = checkpoints(workdir)
    assert load_checkpoint(saved)["global_step"] == 2

    # resumed on the two nodes for a second epoch: both load rank 0's checkpoint and go on
    probe = tmp_path / "probe_resumed"
    resume = [*dali, "max_epochs=2", f"resume_from_checkpoint='{saved}'"]
    _on_two_nodes(solo_root, workdir, small_cifar_npz, resume, probe, DALI_CIFAR_CONFIG)
    records = _records(probe)
    assert [r["global_step"] for r in records] == [4, 4]
    assert [[s["epoch"] for s in r["steps"]] for r in records] == [[1, 1], [1, 1]]
    assert [_served(r) for r in records] == [s.epoch_indexes(1).tolist() for s in shards]
    (final,) = checkpoints(workdir)
    state = load_checkpoint(final)
    assert state["global_step"] == 4 and final.name.endswith("-ep=1.ckpt")
    for key, value in records[1]["bank"].items():  # rank 0 wrote what both nodes hold
        if isinstance(value, torch.Tensor):
            assert torch.equal(state["state_dict"][f"bank.{key}"], value), key
