"""Stock solo-learn ``main_pretrain.py`` trains CueCo from this package's CPU YAML on the real
CIFAR-10 PNGs (single process); its checkpoint holds the bank, exports to torchvision, feeds
solo-learn's ``main_linear.py`` and loads the way ``main_knn.py`` loads it; a resumed run equals
an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT, requires_solo
from solo_runs import (
    TRAIN_METRICS,
    TWO_EPOCHS,
    VAL_CLUSTER_METRICS,
    all_finite,
    assert_same_training_state,
    checkpoints,
    load_checkpoint,
    read_metrics,
    run_main_pretrain,
    small_val_folder,
    tail,
    write_probe_metadata,
)

pytestmark = [requires_solo, pytest.mark.solo, pytest.mark.slow]

STEPS = 8  # limit_train_batches of configs/pretrain/cpu/cueco.yaml, one epoch
BANK_TENSORS = ("centroids", "variances", "usage", "last_active")


@pytest.fixture(scope="module")
def small_cifar(shared_datasets: Path) -> Path:
    return shared_datasets / "cifar10-folder-small"


@pytest.fixture(scope="module")
def smoke_run(
    solo_root: Path, small_cifar: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    """One run of the CPU config as shipped (8 steps, k-NN and cluster validation on)."""
    workdir = tmp_path_factory.mktemp("smoke")
    val = small_val_folder(small_cifar.parent, workdir / "val")
    run = run_main_pretrain(solo_root, workdir, small_cifar / "train", [f"data.val_path={val}"])
    return workdir, run


@pytest.fixture(scope="module")
def smoke_checkpoint(smoke_run: tuple[Path, subprocess.CompletedProcess]) -> Path:
    workdir, run = smoke_run
    assert run.returncode == 0, tail(run)
    found = checkpoints(workdir)
    assert len(found) == 1, found
    return found[0]


def test_main_pretrain_trains_cueco_and_logs_finite_losses_and_cluster_metrics(
    smoke_run: tuple[Path, subprocess.CompletedProcess],
) -> None:
    workdir, run = smoke_run
    assert run.returncode == 0, tail(run)
    metrics = read_metrics(workdir)
    for key in TRAIN_METRICS:
        assert len(metrics.get(key, [])) == STEPS, (key, metrics.get(key))
        assert all_finite(metrics[key]), (key, metrics[key])
    # freeze_iters=2 after each seeding (steps 0 and 6): the cluster losses are on in between
    assert any(v > 0 for v in metrics["train_centroid_loss"][2:6])
    assert any(v > 0 for v in metrics["train_variance_loss"][2:6])
    assert metrics["train_centroid_loss"][:2] == [0.0, 0.0]
    # the bank moves: its mean variance is not constant over the run
    assert len(set(metrics["train_mean_variance"])) > 1
    for key in VAL_CLUSTER_METRICS + ("val_knn_acc1", "val_acc1"):
        assert all_finite(metrics.get(key, [])), (key, metrics.get(key))
    for key in VAL_CLUSTER_METRICS:
        assert 0.0 <= metrics[key][-1] <= 1.0


def test_main_pretrain_checkpoint_holds_bank_queue_and_schedule(smoke_checkpoint: Path) -> None:
    ckpt = load_checkpoint(smoke_checkpoint)
    state = ckpt["state_dict"]
    assert ckpt["global_step"] == STEPS
    args = json.loads((smoke_checkpoint.parent / "args.json").read_text())
    mk = args["method_kwargs"]
    k, d = mk["num_clusters"], mk["proj_output_dim"]
    assert state["bank.centroids"].shape == (k, d)
    for name in BANK_TENSORS[1:]:
        assert state[f"bank.{name}"].shape == (k,)
    assert torch.isfinite(state["bank.centroids"]).all()
    assert torch.allclose(state["bank.centroids"].norm(dim=1), torch.ones(k), atol=1e-4)
    assert (state["bank.variances"] > 0).all()
    extra = state["bank._extra_state"]
    # seeded at step 0, re-seeded at step recluster_interval=6, one bank step per optimiser step
    assert extra["num_updates"] == STEPS
    assert (
        extra["num_clusterings"] == 2 and extra["last_cluster_update"] == mk["recluster_interval"]
    )
    assert state["queue.keys"].shape == (2, d, mk["queue_size"])
    queue_extra = state["queue._extra_state"]
    assert queue_extra["num_filled"] == STEPS * args["optimizer"]["batch_size"]


def test_exported_backbone_loads_into_torchvision_resnet18_strict(
    smoke_checkpoint: Path, tmp_path: Path
) -> None:
    import torchvision

    out = tmp_path / "resnet18_cueco.pth"
    # the run folder is accepted too (its newest .ckpt is used)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cueco_plugin.cli.export_backbone",
            str(smoke_checkpoint.parent),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "strict=True" in done.stdout
    info = json.loads(Path(f"{out}.json").read_text())
    assert info == {**info, "arch": "resnet18", "cifar_stem": False, "num_classes": 10}
    weights = torch.load(out, weights_only=True)
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(weights, strict=True)
    state = load_checkpoint(smoke_checkpoint)["state_dict"]
    for key, value in model.state_dict().items():
        source = state[f"backbone.{key}"] if not key.startswith("fc.") else None
        expected = source if source is not None else state[key.replace("fc.", "classifier.")]
        assert torch.equal(value, expected), key


def test_main_linear_trains_on_the_cueco_backbone_it_loaded(
    solo_root: Path, smoke_checkpoint: Path, small_cifar: Path, tmp_path: Path
) -> None:
    env = dict(os.environ)
    meta = write_probe_metadata(tmp_path / "probe_meta")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "tests" / "probe"), str(meta)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env["CUECO_PROBE_DIR"] = str(tmp_path / "probe")
    env["PYTHONWARNINGS"] = "ignore"
    val = small_val_folder(small_cifar.parent, tmp_path / "val")
    done = subprocess.run(
        [
            sys.executable,
            str(solo_root / "main_linear.py"),
            "--config-path",
            str(REPO_ROOT / "configs" / "linear" / "cpu"),
            "--config-name",
            "cueco.yaml",
            f"pretrained_feature_extractor='{smoke_checkpoint}'",
            f"data.train_path={small_cifar / 'train'}",
            f"data.val_path={val}",
            f"checkpoint.dir={tmp_path / 'trained_models'}",
            f"+default_root_dir={tmp_path / 'logs'}",
            "data.num_workers=0",
            "+enable_progress_bar=False",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    metrics = read_metrics(tmp_path)
    assert all_finite(metrics.get("val_acc1", [])), metrics.keys()
    # main_linear.py loads with strict=False: check it really took the CueCo weights
    probe = torch.load(tmp_path / "probe" / "rank0.pt", weights_only=True)
    state = load_checkpoint(smoke_checkpoint)["state_dict"]
    assert probe["backbone"], "the probe saw no backbone"
    for key, value in probe["backbone"].items():
        assert torch.equal(value, state[f"backbone.{key}"]), key


def test_cueco_checkpoint_loads_the_way_main_knn_loads_it(smoke_checkpoint: Path) -> None:
    """main_knn.py rebuilds the model from args.json with METHODS[method].load_from_checkpoint(
    ..., strict=False): with CueCo registered every tensor comes back, bank included."""
    from omegaconf import OmegaConf
    from solo.methods import METHODS

    from cueco_plugin import register

    register()
    cfg = OmegaConf.create(json.loads((smoke_checkpoint.parent / "args.json").read_text()))
    model = METHODS[cfg.method].load_from_checkpoint(smoke_checkpoint, strict=False, cfg=cfg)
    state = load_checkpoint(smoke_checkpoint)["state_dict"]
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(loaded[key], value), key
        else:
            assert loaded[key] == value, key
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out["feats"].shape == (2, 512) and out["z"].shape == (
        2,
        cfg.method_kwargs.proj_output_dim,
    )


def _probe_state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def test_main_pretrain_resumed_from_checkpoint_equals_uninterrupted_run(
    solo_root: Path, small_cifar: Path, two_epoch_run: dict, tmp_path: Path
) -> None:
    """2N steps in one run (conftest.two_epoch_run) == its checkpoint after N steps resumed
    (resume_from_checkpoint) for N more: same bank, queue, weights and per-step losses
    (solo_runs.TWO_EPOCHS makes both runs see the same batches and puts a re-seed after the
    resume point)."""
    n = 3
    middle, last = two_epoch_run["checkpoints"]
    assert load_checkpoint(middle)["global_step"] == n
    resumed = run_main_pretrain(
        solo_root,
        tmp_path / "resumed",
        small_cifar / "train",
        # quoted: solo-learn's checkpoint names contain '='
        [*TWO_EPOCHS, f"resume_from_checkpoint='{middle}'"],
        tmp_path / "resumed_probe",
    )
    assert resumed.returncode == 0, tail(resumed)

    a = load_checkpoint(last)
    b = load_checkpoint(checkpoints(tmp_path / "resumed")[-1])
    assert a["global_step"] == 2 * n
    assert a["state_dict"]["bank._extra_state"]["num_clusterings"] == 2
    assert_same_training_state(a, b)

    steps_whole = two_epoch_run["probe"]["steps"]
    steps_resumed = _probe_state(tmp_path / "resumed_probe" / "rank0.pt")["steps"]
    assert len(steps_whole) == 2 * n and len(steps_resumed) == n
    assert steps_whole[n:] == steps_resumed
