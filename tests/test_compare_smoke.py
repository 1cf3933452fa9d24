"""A reduced form of ``benchmarks/compare.py --profile cpu-smoke``: the real harness end to end
(real CIFAR-10 images, solo-learn's BYOL and MoCo V2+, CueCo and its ablation runs, real Lightning
Trainers) on a tiny slice, then its outputs and its resume behaviour."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
from conftest import requires_solo

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_LABELS = {
    "mocov2plus": "MoCo V2+ (solo-learn)",
    "cueco": "CueCo L1+L2+L3",
    "byol": "BYOL (solo-learn)",
    "cueco-l1": "CueCo L1 only (ablation)",
    "cueco-l1l2": "CueCo L1+L2 (ablation)",
}


def _load_compare():
    spec = importlib.util.spec_from_file_location(
        "cueco_bench_compare", REPO_ROOT / "benchmarks" / "compare.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _tiny_argv(out_dir: Path, data_dir: Path) -> list[str]:
    return [
        "--profile",
        "cpu-smoke",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out_dir),
        "--train-images",
        "16",
        "--test-images",
        "100",
        "--batch-size",
        "8",
        "--queue-size",
        "16",
        "--epochs",
        "1",
        "--epoch-eval-train",
        "16",
        "--epoch-eval-test",
        "100",
        "--num-clusters",
        "10",
        "--freeze-iters",
        "0",
        "--reset-interval",
        "0",
        "--probe-iters",
        "30",
        "--kmeans-iters",
        "3",
        "--throughput-warmup-steps",
        "0",
    ]


@requires_solo
@pytest.mark.solo
@pytest.mark.slow
def test_compare_cpu_smoke_writes_table_csv_plots_with_finite_numbers_and_resumes(
    tmp_path: Path, shared_datasets: Path
) -> None:
    compare = _load_compare()
    argv = _tiny_argv(tmp_path, shared_datasets / "cifar10")
    assert compare.main(argv) == 0

    out = tmp_path / "cpu-smoke"
    table = (out / "results.md").read_text()
    assert "Smoke result, not evidence" in table
    for label in RUN_LABELS.values():
        assert label in table

    with open(out / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(RUN_LABELS)
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["status"])
        assert row["steps"] == "2"
        for col in ("throughput_img_s", "peak_mem_mib", "knn_top1", "linear_probe_top1"):
            assert math.isfinite(float(row[col])), (name, col, row[col])
        for col in ("kmeans_k_acc_1to1", "kmeans_k_acc_m2o", "kmeans_c_acc_1to1"):
            assert 0.0 <= float(row[col]) <= 100.0, (name, col, row[col])
        assert 0.0 <= float(row["kmeans_k_nmi"]) <= 1.0
        # only CueCo runs have a centroid bank to score
        assert (row["bank_acc_m2o"] != "") == name.startswith("cueco"), name

    for png in ("accuracy_vs_epoch.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["seed"] == 5 and meta["settings"]["epochs"] == 1
    assert meta["machine"]["cpu_count"] >= 1 and meta["versions"]["torch"]
    assert meta["data"]["train_images"] == 16 and meta["data"]["test_images"] == 100
    for name in RUN_LABELS:
        hist = meta["runs"][name]["history"]
        assert [h["epoch"] for h in hist] == [1] and math.isfinite(hist[0]["knn_top1"])

    # same command again: every run's results exist with the same settings, nothing retrains
    stamps = {n: (out / "runs" / n / "result.json").stat().st_mtime_ns for n in RUN_LABELS}
    assert compare.main(argv) == 0
    assert stamps == {n: (out / "runs" / n / "result.json").stat().st_mtime_ns for n in RUN_LABELS}


@requires_solo
@pytest.mark.solo
@pytest.mark.slow
def test_compare_records_a_failing_run_and_still_trains_the_others(
    tmp_path: Path, shared_datasets: Path
) -> None:
    # batch 1 is a real failure for BYOL only: its projector's BatchNorm1d cannot train on one
    # sample, while MoCo V2+'s projector has no BatchNorm
    compare = _load_compare()
    argv = [
        *_tiny_argv(tmp_path, shared_datasets / "cifar10"),
        "--methods",
        "byol,mocov2plus",
        "--train-images",
        "2",
        "--batch-size",
        "1",
        "--queue-size",
        "2",
        "--epoch-eval-train",
        "2",
    ]
    assert compare.main(argv) == 1

    out = tmp_path / "cpu-smoke"
    with open(out / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert rows["byol"]["status"].startswith("failed: ValueError")
    assert "batch_norm" in (out / "runs" / "byol" / "error.txt").read_text()
    assert rows["mocov2plus"]["status"] == "ok"
    assert math.isfinite(float(rows["mocov2plus"]["knn_top1"]))
    assert "failed: ValueError" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "mocov2plus,simclr"], "--methods has unknown run(s) ['simclr']"),
        (["--batch-size", "24", "--queue-size", "32"], "--queue-size (32) must be a multiple"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--accelerator", "gpu"], "torch.cuda.is_available() is False"),
    ],
)
def test_compare_rejects_bad_options_before_training(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    import torch

    if "--accelerator" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    compare = _load_compare()
    args = compare.build_parser().parse_args(["--profile", "cpu-smoke", *extra])
    with pytest.raises(ValueError) as info:
        compare.resolve_settings(args)
    assert message in str(info.value)
