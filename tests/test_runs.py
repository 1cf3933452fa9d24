"""Runs never share a checkpoint folder unless one resumes the other, and auto-resume takes only
the newest complete checkpoint saved with the same config (everything that shapes the model and
the schedule), saying why it took it or why it started a new run."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import requires_solo
from solo_runs import load_checkpoint, run_main_pretrain, tail

from cueco_plugin.runs import config_differences

STEPS = 2
TINY = ["data.val_path=null", f"limit_train_batches={STEPS}", "optimizer.batch_size=8"]


def _run_folders(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "trained_models" / "cueco").iterdir() if p.is_dir())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_only_settings_that_do_not_shape_model_or_schedule_may_differ() -> None:
    saved = {
        "method_kwargs": {"num_clusters": 10, "lambda_variance": 0.1},
        "max_epochs": 100,
        "augmentations": [{"crop_size": 32}],
        "data": {"num_workers": 4, "train_path": "a"},
        "checkpoint": {"dir": "x"},
        "auto_resume": {"enabled": True},
        "wandb_run_id": None,
    }
    current = json.loads(json.dumps(saved))
    current["data"]["num_workers"] = 0
    current["checkpoint"]["dir"] = "y"
    current["auto_resume"]["enabled"] = False
    current["resume_from_checkpoint"] = "z.ckpt"
    assert config_differences(saved, current) == []

    current["method_kwargs"]["lambda_variance"] = 0.2
    current["max_epochs"] = 200
    current["augmentations"][0]["crop_size"] = 64
    current["data"]["train_path"] = "b"
    current["seed"] = 3
    assert config_differences(saved, current) == [
        "augmentations.0.crop_size: 32 -> 64",
        "data.train_path: 'a' -> 'b'",
        "max_epochs: 100 -> 200",
        "method_kwargs.lambda_variance: 0.1 -> 0.2",
        "seed: '<absent>' -> 3",
    ]


def test_a_cueco_option_absent_from_an_older_run_counts_as_its_default() -> None:
    saved = {"method": "cueco", "method_kwargs": {"num_clusters": 10}}
    current = {"method": "cueco", "method_kwargs": {"num_clusters": 10, "lambda_cld": 0.8}}
    assert config_differences(saved, current) == []
    current["method_kwargs"].update(compile_backbones=True, compile_mode="max-autotune")
    assert config_differences(saved, current) == []  # speed only
    current["method_kwargs"]["lambda_cld"] = 0.0
    assert config_differences(saved, current) == ["method_kwargs.lambda_cld: 0.8 -> 0.0"]


@pytest.fixture(scope="module")
def small_train(shared_datasets: Path) -> Path:
    return shared_datasets / "cifar10-folder-small" / "train"


@pytest.fixture(scope="module")
def first_run(
    solo_root: Path, small_train: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("runs")
    done = run_main_pretrain(solo_root, workdir, small_train, TINY)
    assert done.returncode == 0, tail(done)
    return workdir, done


@requires_solo
@pytest.mark.solo
@pytest.mark.slow
def test_a_second_run_with_another_log_folder_gets_its_own_checkpoint_folder(
    solo_root: Path, small_train: Path, first_run: tuple[Path, subprocess.CompletedProcess]
) -> None:
    """The reported fault: with W&B off, two runs with different +default_root_dir both wrote
    trained_models/cueco/0/ and the second replaced the first's checkpoint and args.json."""
    workdir, _ = first_run
    (folder,) = _run_folders(workdir)
    (ckpt,) = folder.glob("*.ckpt")
    before = {p.name: _digest(p) for p in (ckpt, folder / "args.json")}

    second = run_main_pretrain(
        solo_root, workdir, small_train, [*TINY, f"default_root_dir={workdir / 'other_logs'}"]
    )
    assert second.returncode == 0, tail(second)
    folders = _run_folders(workdir)
    assert len(folders) == 2 and folder in folders
    assert {p.name: _digest(p) for p in (ckpt, folder / "args.json")} == before
    (other,) = [f for f in folders if f != folder]
    (other_ckpt,) = other.glob("*.ckpt")
    assert other.name in other_ckpt.name and load_checkpoint(other_ckpt)["global_step"] == STEPS
    args = json.loads((other / "args.json").read_text())
    assert args["default_root_dir"] == str(workdir / "other_logs")


@requires_solo
@pytest.mark.solo
@pytest.mark.slow
def test_auto_resume_starts_a_new_run_when_the_config_differs_and_names_the_difference(
    solo_root: Path, small_train: Path, tmp_path: Path
) -> None:
    """The reported fault: after changing num_clusters every auto-resumed retry crashed on a size
    mismatch (solo-learn compares a few keys only)."""
    first = run_main_pretrain(solo_root, tmp_path, small_train, TINY)
    assert first.returncode == 0, tail(first)
    (folder,) = _run_folders(tmp_path)
    changed = run_main_pretrain(
        solo_root,
        tmp_path,
        small_train,
        [*TINY, "auto_resume.enabled=True", "method_kwargs.num_clusters=12"],
    )
    assert changed.returncode == 0, tail(changed)
    assert "CueCo auto-resume: starting a new run" in changed.stdout, tail(changed)
    assert "method_kwargs.num_clusters: 10 -> 12" in changed.stdout
    new = [f for f in _run_folders(tmp_path) if f != folder]
    assert len(new) == 1
    (ckpt,) = new[0].glob("*.ckpt")
    assert load_checkpoint(ckpt)["state_dict"]["bank.centroids"].shape[0] == 12


@requires_solo
@pytest.mark.solo
@pytest.mark.slow
def test_auto_resume_takes_the_newest_complete_checkpoint_of_the_same_config(
    solo_root: Path, small_train: Path, tmp_path: Path
) -> None:
    """The reported fault: a kill during the (non-atomic) write of the epoch-1 checkpoint left a
    partial .ckpt beside the good epoch-0 one, and auto-resume took the partial file and crashed
    on every retry. It is skipped and named; the run continues in its folder from epoch 0."""
    first = run_main_pretrain(
        solo_root, tmp_path, small_train, [*TINY, "max_epochs=2", "checkpoint.keep_prev=True"]
    )
    assert first.returncode == 0, tail(first)
    (folder,) = _run_folders(tmp_path)
    epoch0, epoch1 = sorted(folder.glob("*.ckpt"))
    assert load_checkpoint(epoch0)["global_step"] == STEPS
    epoch1.write_bytes(epoch1.read_bytes()[: epoch1.stat().st_size // 2])

    resumed = run_main_pretrain(
        solo_root, tmp_path, small_train, [*TINY, "max_epochs=2", "auto_resume.enabled=True"]
    )
    assert resumed.returncode == 0, tail(resumed)
    assert f"CueCo auto-resume: resuming from {epoch0}" in resumed.stdout, tail(resumed)
    assert f"skipped incomplete checkpoint {epoch1}" in resumed.stdout
    assert _run_folders(tmp_path) == [folder]  # it continued in the folder it resumed from
    assert sorted(folder.glob("*.ckpt")) == [epoch1]  # rewritten whole; epoch 0 replaced
    assert load_checkpoint(epoch1)["global_step"] == 2 * STEPS
