"""Stock solo-learn ``main_pretrain.py`` trains CueCo with two-process DDP on CPU (gloo): both
ranks end with the same centroid bank and queue, and the losses are finite on both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import requires_solo
from solo_runs import (
    TRAIN_METRICS,
    VAL_CLUSTER_METRICS,
    all_finite,
    assert_same_bank_and_queue,
    checkpoints,
    load_checkpoint,
    read_metrics,
    run_main_pretrain,
    small_val_folder,
    tail,
)

pytestmark = [requires_solo, pytest.mark.solo, pytest.mark.slow]

STEPS = 4


def test_two_process_ddp_on_cpu_keeps_identical_banks_and_finite_losses(
    solo_root: Path, shared_datasets: Path, tmp_path: Path
) -> None:
    small_cifar = shared_datasets / "cifar10-folder-small"
    val = small_val_folder(shared_datasets, tmp_path / "val")
    probe = tmp_path / "probe"
    run = run_main_pretrain(
        solo_root,
        tmp_path / "run",
        small_cifar / "train",
        [
            f"data.val_path={val}",
            "strategy=ddp",
            # on CPU Lightning takes an int or a digit string; parse_cfg takes len(devices)
            'devices="02"',
            f"limit_train_batches={STEPS}",
        ],
        probe_dir=probe,
    )
    assert run.returncode == 0, tail(run)

    rank0 = torch.load(probe / "rank0.pt", weights_only=True)
    rank1 = torch.load(probe / "rank1.pt", weights_only=True)
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["global_step"] == rank1["global_step"] == STEPS
    assert_same_bank_and_queue(rank0, rank1)
    assert rank0["bank"]["_extra_state"]["num_updates"] == STEPS
    # the queue holds the keys of both ranks: 2 processes x batch 16 per step
    assert rank0["queue"]["_extra_state"]["num_filled"] == STEPS * 2 * 16

    # each rank trained on its own shard (different local losses), all finite
    losses0 = [step["loss"] for step in rank0["steps"]]
    losses1 = [step["loss"] for step in rank1["steps"]]
    assert len(losses0) == len(losses1) == STEPS
    assert all_finite(losses0) and all_finite(losses1)
    assert losses0 != losses1
    for step in rank0["steps"] + rank1["steps"]:
        assert all_finite([step[key] for key in TRAIN_METRICS if key in step])
    assert any(step["train_centroid_loss"] > 0 for step in rank1["steps"])

    # rank 0 wrote the checkpoint and the logs: its bank is the one both ranks hold
    state = load_checkpoint(checkpoints(tmp_path / "run")[-1])["state_dict"]
    for key, value in rank1["bank"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(state[f"bank.{key}"], value), key
    metrics = read_metrics(tmp_path / "run")
    for key in TRAIN_METRICS:
        assert len(metrics.get(key, [])) == STEPS and all_finite(metrics[key]), key
    for key in VAL_CLUSTER_METRICS:
        assert all_finite(metrics.get(key, [])), key
