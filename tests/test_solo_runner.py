"""``python -m cueco_plugin.solo SCRIPT ...`` registers CueCo and runs solo-learn's entry scripts
unchanged: argparse scripts that look the method up in ``METHODS`` load a real CueCo checkpoint
(stock ``main_knn.py`` and ``main_umap.py`` get as far as their hard-coded CUDA calls on a host
without a GPU), and a Hydra script (``main_linear.py``) trains on its backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, requires_solo
from solo_runs import all_finite, read_metrics, small_val_folder

from cueco_plugin.cli.solo import main

pytestmark = [requires_solo, pytest.mark.solo, pytest.mark.slow]

KNN_CPU = REPO_ROOT / "tests" / "solo_scripts" / "knn_cpu.py"


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def val20(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real CIFAR-10 PNGs, 2 per class."""
    return small_val_folder(shared_datasets, tmp_path_factory.mktemp("val20") / "val")


def knn_args(run_dir: Path, data: Path) -> list[str]:
    """main_knn.py's arguments (also accepted by tests/solo_scripts/knn_cpu.py)."""
    return [
        "--dataset", "custom",
        "--train_data_path", str(data),
        "--val_data_path", str(data),
        "--data_format", "image_folder",
        "--batch_size", "4",
        "--num_workers", "0",
        "--pretrained_checkpoint_dir", str(run_dir),
        "--k", "5",
        "--temperature", "0.07",
        "--feature_type", "backbone",
        "--distance_function", "cosine",
    ]  # fmt: skip


def test_argparse_script_looks_up_cueco_in_methods_and_loads_the_checkpoint(
    tiny_cueco_run: Path, val20: Path, tmp_path: Path
) -> None:
    args = knn_args(tiny_cueco_run, val20)
    done = run(["-m", "cueco_plugin.solo", str(KNN_CPU), *args], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["argv"] == [str(KNN_CPU), *args]  # the script sees its own argv
    assert record["model"] == "CueCo" and record["bank_seeded"] is True
    assert record["val_images"] == 20 and 0.0 <= record["acc1"] <= 100.0


def test_argparse_script_without_the_runner_does_not_find_cueco(
    tiny_cueco_run: Path, val20: Path, tmp_path: Path
) -> None:
    done = run([str(KNN_CPU), *knn_args(tiny_cueco_run, val20)], cwd=tmp_path)
    assert done.returncode != 0
    assert "KeyError: 'cueco'" in done.stdout, done.stdout[-4000:]


@pytest.mark.parametrize(
    "script, cuda_line",
    [
        ("main_knn.py", "im = im.cuda(non_blocking=True)"),
        ("main_umap.py", "model = model.to(device)"),
    ],
    ids=["main_knn", "main_umap"],
)
def test_stock_main_knn_and_main_umap_load_cueco_through_the_runner(
    solo_root: Path, tiny_cueco_run: Path, val20: Path, tmp_path: Path, script: str, cuda_line: str
) -> None:
    """Both rebuild the model with METHODS[...].load_from_checkpoint, then move it to CUDA
    (main_knn: every batch ``.cuda()``; main_umap: ``device = "cuda:0"``)."""
    args = knn_args(tiny_cueco_run, val20)
    if script == "main_umap.py":  # main_umap has no k-NN options
        args = args[: args.index("--k")]
    done = run(["-m", "cueco_plugin.solo", str(solo_root / script), *args], cwd=tmp_path)
    if torch.cuda.is_available():
        assert done.returncode == 0, done.stdout[-4000:]
        return
    assert done.returncode != 0
    assert "KeyError" not in done.stdout, done.stdout[-4000:]
    # the last frame in the script is its CUDA call: past the METHODS lookup and the loading
    lines = done.stdout.splitlines()
    frames = [i for i, line in enumerate(lines) if line.strip().startswith(f'File "{solo_root}')]
    frames = [i for i in frames if f'{script}"' in lines[i]]
    assert frames and lines[frames[-1] + 1].strip() == cuda_line, done.stdout[-4000:]


def test_hydra_main_linear_runs_on_the_cueco_backbone_through_the_runner(
    solo_root: Path, tiny_cueco_run: Path, shared_datasets: Path, val20: Path, tmp_path: Path
) -> None:
    ckpt = next(tiny_cueco_run.glob("*.ckpt"))
    done = run(
        [
            "-m", "cueco_plugin.solo", str(solo_root / "main_linear.py"),
            "--config-path", str(REPO_ROOT / "configs" / "linear" / "cpu"),
            "--config-name", "cueco.yaml",
            f"pretrained_feature_extractor='{ckpt}'",
            f"data.train_path={shared_datasets / 'cifar10-folder-small' / 'train'}",
            f"data.val_path={val20}",
            f"checkpoint.dir={tmp_path / 'trained_models'}",
            f"+default_root_dir={tmp_path / 'logs'}",
            "data.num_workers=0",
            "limit_train_batches=1",
            "+enable_progress_bar=False",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert all_finite(read_metrics(tmp_path).get("val_acc1", []))


def test_runner_rejects_a_path_that_is_not_a_python_script(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "main_knn.py"), "--k", "5"])
    assert "is not a Python script" in str(info.value) and "main_knn.py" in str(info.value)
