"""The prepared GPU measurement (benchmarks/gpu_throughput.py) runs end to end on this CPU at a
tiny budget, so that a lent GPU's minutes are not spent finding a broken script. Real DALI, real
solo-learn main_pretrain.py, real CIFAR-10 images; the results go to tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, requires_dali, requires_solo

pytestmark = [requires_solo, requires_dali]


@pytest.mark.slow
def test_gpu_throughput_script_writes_loader_and_end_to_end_records_on_cpu(
    shared_datasets: Path, solo_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "cifar10"
    data.mkdir()
    with np.load(shared_datasets / "cifar10" / "cifar10_train_0.npz") as arrays:
        np.savez(
            data / "part_train.npz", images=arrays["images"][:256], labels=arrays["labels"][:256]
        )
    out = tmp_path / "gpu_throughput.json"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "gpu_throughput.py"),
        "--device",
        "cpu",
        "--tiny",
        "--data",
        str(data),
        "--no-imagenette",
        "--runs",
        "cueco:dali:256",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--loader-batches",
        "2",
        "--loader-warmup",
        "1",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
    ]
    env = {**os.environ, "SOLO_LEARN_ROOT": str(solo_root)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads(out.read_text())
    loaders = [r for r in report["records"] if r["kind"] == "loader"]
    assert {(r["loader"].split()[0], r["batch_size"]) for r in loaders} == {
        ("dali-cifar", 32),
        ("torchvision", 32),
        ("dali-cifar", 64),
        ("torchvision", 64),
    }
    (e2e,) = [r for r in report["records"] if r["kind"] == "e2e"]
    assert e2e["method"] == "CueCo" and e2e["loader"].startswith("dali-cifar")
    assert e2e["batch_size"] == 32 and e2e["measured_steps"] == 2 and e2e["device"] == "cpu"
    for record in report["records"]:
        assert record["images_per_s"] > 0 and "peak_memory_mib" in record
    assert "| CueCo | dali-cifar (cpu" in out.with_suffix(".md").read_text()


def test_gpu_throughput_runs_name_compiled_arms_and_reject_bad_ones(capsys) -> None:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import gpu_throughput

    args = gpu_throughput.parse_args(["--runs", "cueco:dali:256:compiled", "mocov2plus:dali:512"])
    assert args.runs == [("cueco", "dali", 256, True), ("mocov2plus", "dali", 512, False)]
    default = gpu_throughput.parse_args([]).runs
    assert ("cueco", "dali", 256, True) in default and ("mocov2plus", "dali", 256, True) in default
    for bad, why in (
        ("cueco:dali:256:fast", "expected method:loader:batch[:compiled]"),
        ("cueco:dali", "expected method:loader:batch[:compiled]"),
        ("simclr:dali:256", "methods ['cueco', 'mocov2plus']"),
        ("cueco:dali:big", "the batch size 'big' is not a positive integer"),
    ):
        with pytest.raises(SystemExit):
            gpu_throughput.parse_args(["--runs", bad])
        assert why in capsys.readouterr().err, bad
