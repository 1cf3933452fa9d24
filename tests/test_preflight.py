"""The pre-flight checks of the Hydra callback: CueCo's named errors come before solo-learn's bare
asserts under stock ``main_pretrain.py``; ``method_kwargs: null``, a run that can take no step
and a DALI folder with a non-image file stop with exit status 2 and a message; cluster losses
that can never switch on are announced. Run on the real CPU config, composed by Hydra."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import requires_solo
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from solo_runs import CPU_CONFIG_DIR, linked_image_folder, run_main_pretrain

from cueco_plugin.registration import RegisterCueCo

pytestmark = [requires_solo, pytest.mark.solo]


def _config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CPU_CONFIG_DIR), version_base="1.2"):
        return compose("cueco.yaml", overrides=overrides, return_hydra_config=True)


def _preflight(overrides: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Runs the callback's ``on_job_start``: (exit status or 0, what it printed on stderr)."""
    try:
        RegisterCueCo().on_job_start(config=_config(overrides))
    except SystemExit as stop:
        return int(stop.code), capsys.readouterr().err
    return 0, capsys.readouterr().err


@pytest.fixture()
def tiny_train(shared_datasets: Path, tmp_path: Path) -> Path:
    """Two classes of three real CIFAR-10 PNGs each (symlinks)."""
    source = shared_datasets / "cifar10-folder-small" / "train"
    return linked_image_folder(source, tmp_path / "tiny", per_class=3, num_classes=2)


@pytest.fixture()
def data(shared_datasets: Path) -> list[str]:
    small = shared_datasets / "cifar10-folder-small"
    return [f"data.train_path={small / 'train'}", f"data.val_path={small / 'val'}"]


def test_the_shipped_cpu_config_passes_quietly(
    data: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _preflight(data, capsys) == (0, "")


def test_main_pretrain_names_the_crop_count_before_solo_learns_bare_assert(
    solo_root: Path, shared_datasets: Path, tmp_path: Path
) -> None:
    """The reported fault: three crops hit solo-learn's `assert cfg.method in ["wmse", "mae"]`
    (a bare AssertionError) before CueCo's named check."""
    done = run_main_pretrain(
        solo_root,
        tmp_path,
        shared_datasets / "cifar10-folder-small" / "train",
        ["data.val_path=null", "augmentations.0.num_crops=3"],
    )
    assert done.returncode == 2, done.stdout[-3000:]
    assert "data.num_large_crops must be 2 for CueCo (two views, as MoCo V2+), got 3" in done.stdout
    assert "AssertionError" not in done.stdout


def test_null_method_kwargs_is_an_error(data: list[str], capsys) -> None:
    status, err = _preflight([*data, "method_kwargs=null"], capsys)
    assert status == 2 and "method_kwargs is null" in err


@pytest.mark.parametrize(
    "batch, devices, per_process", [(8, "1", "8 x 1"), (4, "02", "4 x 2")], ids=["1proc", "2procs"]
)
def test_a_dataset_smaller_than_one_batch_per_process_is_refused(
    tiny_train: Path, capsys, batch: int, devices: str, per_process: str
) -> None:
    """The reported fault: it trained 0 steps and exited 0."""
    overrides = [f"data.train_path={tiny_train}", "data.val_path=null"]
    overrides += [f"optimizer.batch_size={batch}", f"devices='{devices}'"]
    status, err = _preflight(overrides, capsys)
    assert status == 2
    assert "no training step can run: data.train_path holds 6 images" in err
    assert f"optimizer.batch_size={per_process} process(es)" in err
    assert _preflight([*overrides, "optimizer.batch_size=2"], capsys)[0] == 0


def test_cluster_losses_that_can_never_switch_on_are_announced(data: list[str], capsys) -> None:
    """The reported fault: freeze_iters longer than the run gave no warning."""
    overrides = [*data, "limit_train_batches=3", "method_kwargs.freeze_iters=5"]
    overrides.append("method_kwargs.lambda_centroid=1.0")  # the paper's L2 (off by default)
    status, err = _preflight(overrides, capsys)
    assert status == 0
    assert "the cluster losses can never switch on: the run has 3 optimiser steps" in err
    assert "warmup_iters + freeze_iters = 0 + 5" in err
    status, err = _preflight(
        [*overrides, "method_kwargs.lambda_centroid=0", "method_kwargs.lambda_variance=0"], capsys
    )
    assert (status, err) == (0, "")  # no cluster loss asked for: nothing to announce


def test_a_readme_in_a_dali_class_folder_is_named_before_dali_reads_it(
    tiny_train: Path, capsys
) -> None:
    readme = tiny_train / sorted(p.name for p in tiny_train.iterdir())[0] / "README.txt"
    readme.write_text("notes")
    overrides = [f"data.train_path={tiny_train}", "data.val_path=null", "optimizer.batch_size=2"]
    assert _preflight(overrides, capsys)[0] == 0  # torchvision's ImageFolder skips it
    status, err = _preflight([*overrides, "data.format=dali"], capsys)
    assert status == 2 and "not image files" in err and str(readme) in err
