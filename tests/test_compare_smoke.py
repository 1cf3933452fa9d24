"""A reduced real run of the study harness ``benchmarks/study.py``: the MoCo V2+ control and one
CueCo arm (solo-learn's real classes, real Lightning Trainers, real CIFAR-10 images) on a tiny
slice, its table, CSV and plot, the second seed, the resume, the budget and its input checks."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import requires_solo

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {"arm", "seed", "status", "knn_top1", "knn_delta", "linear_top1", "linear_delta"}
ARMS = """\
name: smoke_study
profile: cpu-tiny
seed: 5
rerun_seed: 6
arms:
  mocov2plus: [method=mocov2plus]
  cueco-soft: [method_kwargs.lambda_centroid=0.25, method_kwargs.centroid_temperature=0.2,
               method_kwargs.lambda_variance=0, method_kwargs.freeze_iters=0]
"""


def _study():
    spec = importlib.util.spec_from_file_location("study", REPO_ROOT / "benchmarks" / "study.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Runs the tiny study on one torch thread (steady on a loaded 2-core machine), then puts
    the thread count back for the other tests of this process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _argv(tmp_path: Path, data: Path, arms: str = ARMS, *extra: str) -> list[str]:
    (tmp_path / "arms.yaml").write_text(arms)
    return [
        "--arms",
        str(tmp_path / "arms.yaml"),
        "--data-dir",
        str(data),
        "--out-dir",
        str(tmp_path / "out"),
        "--train-images",
        "32",
        "--test-images",
        "100",
        "--threads",
        "1",
        "--set",
        "optimizer.batch_size=16",
        "method_kwargs.queue_size=16",
        "max_epochs=1",
        *extra,
    ]


def _rows(tmp_path: Path, name: str = "smoke_study") -> list[dict[str, str]]:
    with open(tmp_path / "out" / name / "results.csv") as f:
        return list(csv.DictReader(f))


@requires_solo
@pytest.mark.solo
@pytest.mark.slow
def test_study_trains_both_arms_on_both_seeds_and_writes_table_csv_plot_then_resumes(
    tmp_path: Path, shared_datasets: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _study()
    argv = _argv(tmp_path, shared_datasets / "cifar10")
    assert study.main(argv) == 0

    rows = _rows(tmp_path)
    assert COLUMNS | {"device"} <= set(rows[0])
    pairs = [(r["arm"], r["seed"]) for r in rows]
    arms = ("untrained", "mocov2plus", "cueco-soft")
    assert pairs == [(arm, seed) for seed in "56" for arm in arms]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    control = {r["seed"]: r for r in rows if r["arm"] == "mocov2plus"}
    untrained = {r["seed"]: r for r in rows if r["arm"] == "untrained"}
    for r in rows:
        steps = "0" if r["arm"] == "untrained" else "2"
        assert (r["status"], r["steps"], r["device"]) == ("ok", steps, device), r
        # a fresh k-means of every row's keys at the K of the CueCo YAML (10); the bank's only
        # where there is one
        assert r["num_clusters"] == "10" and 1 <= int(r["kmeans_live"]) <= 10, r
        assert 0.0 < float(r["kmeans_entropy"]) <= 1.0 and 0 < float(r["kmeans_m2o"]) <= 100
        has_bank = r["arm"] == "cueco-soft"
        assert (r["bank_live"] != "") == has_bank and (r["epoch_live_clusters"] != "") == has_bank
        for key in ("knn", "linear"):
            value, delta = float(r[f"{key}_top1"]), float(r[f"{key}_delta"])
            assert 0.0 <= value <= 100.0 and math.isfinite(delta), r
            assert delta == pytest.approx(value - float(control[r["seed"]][f"{key}_top1"]))
    assert float(control["5"]["knn_delta"]) == 0.0

    out = tmp_path / "out" / "smoke_study"
    table = (out / "results.md").read_text()
    assert "Smoke result, not evidence" in table
    assert "| arm | seed | status | kNN top-1 (%) | Δ kNN | linear top-1 (%) | Δ linear |" in table
    cueco6 = rows[5]
    knn6 = f"{float(cueco6['knn_top1']):.2f} | {float(cueco6['knn_delta']):+.2f}"
    assert f"| cueco-soft | 6 | ok | {knn6} |" in table
    assert "best CueCo arm by kNN on seed 5 (`cueco-soft`)" in table
    sd = statistics.stdev(float(control[s]["knn_top1"]) for s in "56")
    assert (
        f"**Control (mocov2plus) seed-to-seed SD: {sd:.2f} kNN points over seeds 5, 6.**" in table
    )
    gains = [float(control[s]["knn_top1"]) - float(untrained[s]["knn_top1"]) for s in "56"]
    line = f"Control minus untrained, kNN: {gains[0]:+.2f} (seed 5), {gains[1]:+.2f} (seed 6)."
    assert line in table
    for png in ("knn_per_epoch.png", "bank_health.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads((out / "metadata.json").read_text())["runs"]
    assert [[epoch for epoch, _ in r["history"]] for r in runs] == [[], [1], [1]] * 2
    assert (
        runs[2]["health_history"]["live_clusters"]
        and runs[2]["health_history"]["epoch_live_clusters"]
    )
    assert not any(runs[1].get("health_history", {}).values())  # the control has no bank
    assert (
        runs[2]["method_kwargs"]["lambda_centroid"] == 0.25
        and "num_clusters" not in runs[1]["method_kwargs"]
    )

    # the same command again: every run finished with the same config, nothing trains
    logs = sorted(out.glob("runs/*/metrics.csv"))
    stamps = [p.stat().st_mtime_ns for p in logs]
    assert len(logs) == 4 and study.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in logs] == stamps
    assert [(r["arm"], r["seed"], r["knn_top1"]) for r in _rows(tmp_path)] == [
        (r["arm"], r["seed"], r["knn_top1"]) for r in rows
    ]
    # a later invocation of some arms and seeds keeps the other finished runs in the results
    assert study.main([*argv, "--only", "mocov2plus", "--seeds", "5"]) == 0
    assert [p.stat().st_mtime_ns for p in logs] == stamps
    assert [(r["arm"], r["seed"], r["knn_top1"]) for r in _rows(tmp_path)] == [
        (r["arm"], r["seed"], r["knn_top1"]) for r in rows
    ]
    # an invocation of paired seeds stopped (Ctrl-C) at its first new run keeps the finished
    # runs it would have reused later (seed 6 here) in what it writes
    meta_path = out / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["runs"] = [r for r in meta["runs"] if (r["arm"], r["seed"]) != ("cueco-soft", 5)]
    meta_path.write_text(json.dumps(meta))

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "train_and_score", stopped)
    study.main([*argv, "--seeds", "5", "6"])
    assert [(r["arm"], r["seed"]) for r in _rows(tmp_path)] == [
        (r["arm"], r["seed"]) for r in rows if (r["arm"], r["seed"]) != ("cueco-soft", "5")
    ]


@requires_solo
@pytest.mark.solo
def test_study_starts_no_arm_past_its_budget_and_still_writes_the_table(
    tmp_path: Path, shared_datasets: Path, one_thread: None
) -> None:
    argv = _argv(tmp_path, shared_datasets / "cifar10", ARMS, "--budget-minutes", "1e-6")
    assert _study().main(argv) == 1
    rows = _rows(tmp_path)
    assert [(r["arm"], r["seed"], r["status"]) for r in rows] == [
        ("untrained", "5", "ok"),  # scoring only: no training to budget
        ("mocov2plus", "5", "skipped (budget)"),
        ("cueco-soft", "5", "skipped (budget)"),
    ]
    assert (
        "| cueco-soft | 5 | skipped (budget) | – |"
        in (tmp_path / "out" / "smoke_study" / "results.md").read_text()
    )


@requires_solo
@pytest.mark.solo
@pytest.mark.parametrize(
    ("arms", "extra", "message"),
    [
        (ARMS.replace("smoke_study", "smoke"), [], "must contain 'study'"),
        (ARMS.replace("mocov2plus: [method=mocov2plus]", ""), [], "control arm 'mocov2plus'"),
        (ARMS.replace("cueco-soft:", "soft:"), [], "arm 'soft': names are 'mocov2plus',"),
        (
            ARMS.replace("method_kwargs.freeze_iters", "+method_kwargs.freeze"),
            [],
            "key(s) ['freeze']",
        ),
        (ARMS.replace("freeze_iters=0", "freeze_iters=-1"), [], "freeze_iters must be"),
        (
            ARMS.replace("method_kwargs.freeze_iters=0", "method=mocov2plus"),
            [],
            "must build 'cueco'",
        ),
        (ARMS.replace("freeze_iters", "freeze_itrs"), [], "arm 'cueco-soft': Could not override"),
        (ARMS, ["--profile", "gpu-long"], "--profile 'gpu-long' is not in"),
        (ARMS, ["--set", "method_kwargs.queue_size=32"], "smaller than the training set"),
        (ARMS, ["--only", "cueco-x"], "--only names unknown arm(s) ['cueco-x']"),
        (ARMS, ["--record-keys", "cueco-x"], "--record-keys names unknown arm(s) ['cueco-x']"),
        (ARMS, ["--seeds", "5", "5"], "--seeds must be distinct"),
    ],
)
def test_study_rejects_bad_arms_and_options_before_training(
    tmp_path: Path, arms: str, extra: list[str], message: str
) -> None:
    argv = _argv(tmp_path, tmp_path / "no-data", arms, *extra)
    with pytest.raises(ValueError) as info:
        _study().main(argv)
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


@requires_solo
@pytest.mark.solo
def test_control_arm_is_solo_learns_mocov2plus_with_its_own_cifar_recipe(solo_root: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS
    from solo.methods.mocov2plus import MoCoV2Plus

    _study()  # puts benchmarks/ on sys.path
    from sslbench.configs import Profile
    from sslbench.configs import compose as compose_arm

    profile = Profile("recipe", "", REPO_ROOT / "configs/pretrain/cifar/cueco.yaml", 1, 1, (), {})
    ours = compose_arm(profile, ["method=mocov2plus"], 50_000)
    with initialize_config_dir(str(solo_root / "scripts/pretrain/cifar"), version_base="1.2"):
        theirs = compose("mocov2plus.yaml")
    OmegaConf.set_struct(theirs, False)
    theirs = parse_cfg(theirs)
    assert METHODS[ours.method] is MoCoV2Plus
    for key in ("method_kwargs", "momentum", "optimizer", "scheduler", "backbone", "data.dataset"):
        assert OmegaConf.select(ours, key) == OmegaConf.select(theirs, key), key
    assert OmegaConf.to_container(ours.augmentations) == OmegaConf.to_container(
        theirs.augmentations
    )


@requires_solo
@pytest.mark.solo
def test_study_trains_over_a_failed_runs_logs_without_online_knn_and_records_keys(
    tmp_path: Path, shared_datasets: Path, one_thread: None
) -> None:
    """A rerun over a failed run's folder (its metrics.csv has other columns) and a profile
    with online kNN off both finish; --record-keys saves each step's keys of the control."""
    control_only = (
        "name: smoke_study\nprofile: cpu-tiny\narms:\n  mocov2plus: [method=mocov2plus]\n"
    )
    stale = tmp_path / "out" / "smoke_study" / "runs" / "mocov2plus-s7"
    stale.mkdir(parents=True)
    (stale / "metrics.csv").write_text("other,columns\n1,2\n")
    (stale / "error.txt").write_text("an earlier failure")
    extra = ["knn_eval.enabled=False", "--seeds", "7", "--record-keys", "mocov2plus"]
    argv = _argv(tmp_path, shared_datasets / "cifar10", control_only, *extra)
    assert _study().main(argv) == 0
    rows = _rows(tmp_path)
    assert [(r["arm"], r["seed"], r["status"]) for r in rows] == [
        ("untrained", "7", "ok"),
        ("mocov2plus", "7", "ok"),
    ]
    runs = json.loads((tmp_path / "out" / "smoke_study" / "metadata.json").read_text())["runs"]
    assert runs[1]["history"] == [] and not (stale / "error.txt").exists()
    keys = torch.load(stale / "keys.pt")
    assert keys["keys"].shape == (2, 2, 16, 128) and keys["steps_per_epoch"] == 2
    assert torch.allclose(keys["keys"].float().norm(dim=-1), torch.ones(2, 2, 16), atol=1e-2)


def test_best_cueco_arm_is_the_highest_knn_of_the_first_seed_among_finished_runs() -> None:
    study = _study()
    records = [
        {"arm": "mocov2plus", "seed": 5, "status": "ok", "knn_top1": 90.0},
        {"arm": "cueco-a", "seed": 5, "status": "ok", "knn_top1": 41.0},
        {"arm": "cueco-b", "seed": 5, "status": "ok", "knn_top1": 43.0},
        {"arm": "cueco-c", "seed": 5, "status": "failed: RuntimeError: x"},
        {"arm": "cueco-d", "seed": 6, "status": "ok", "knn_top1": 99.0},
    ]
    assert study.best_cueco_arm(records, 5) == "cueco-b"
    assert study.best_cueco_arm(records[:1], 5) is None
