"""Shared fixtures: where the real data and solo-learn are, and skips that say why.

Outside CI a test whose solo-learn, DALI, shared data or solo-learn entry scripts are missing is
skipped with the reason. Under ``CI=true`` the same test FAILS (as a setup or collection error)
naming what is missing, so CI cannot pass by skipping: :func:`pytest_runtest_makereport` and
:func:`pytest_make_collect_report` turn every skip whose reason says something is missing (see
:data:`MISSING_MARKERS`) into a failure. Skips for other reasons (e.g. "a GPU is available here")
stay skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = (REPO_ROOT / ".." / "shared" / "datasets").resolve()
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

SOLO_AVAILABLE = importlib.util.find_spec("solo") is not None
SOLO_SKIP_REASON = (
    "solo-learn is not importable: install it from GitHub (see README.md, 'Install'); "
    "PyPI's solo-learn 1.0.2 is a different API"
)
requires_solo = pytest.mark.skipif(not SOLO_AVAILABLE, reason=SOLO_SKIP_REASON)

DALI_AVAILABLE = importlib.util.find_spec("nvidia.dali") is not None
DALI_SKIP_REASON = "nvidia-dali is not installed: pip install -e '.[dali]'"
requires_dali = pytest.mark.skipif(not DALI_AVAILABLE, reason=DALI_SKIP_REASON)

# solo-learn's entry scripts the tests run (a wheel install has none: set SOLO_LEARN_ROOT)
SOLO_SCRIPTS = ("main_pretrain.py", "main_linear.py", "main_knn.py", "main_umap.py")

# A skip whose reason contains one of these (case-insensitive) fails under CI=true.
MISSING_MARKERS = (
    "not importable",
    "not installed",
    "not found",
    "missing",
    "could not import",  # pytest.importorskip
    "is not in this clone",
)


def _is_missing_reason(reason: str) -> bool:
    return any(marker in reason.lower() for marker in MISSING_MARKERS)


def _skip_reason(longrepr: object) -> str:
    """The reason of a skip report (pytest stores ``(path, lineno, "Skipped: reason")``)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_if_missing_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (IN_CI and report.skipped):
        return
    reason = _skip_reason(report.longrepr)
    if _is_missing_reason(reason):
        report.outcome = "failed"
        report.longrepr = f"CI=true, so this is a failure, not a skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_if_missing_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _fail_if_missing_in_ci(outcome.get_result())


def solo_learn_root() -> Path | None:
    """The solo-learn checkout holding main_pretrain.py: $SOLO_LEARN_ROOT, else the clone that
    an editable install (``pip install -e ./solo-learn``) imports ``solo`` from, else a sibling
    clone named solo-learn next to this repository or its parent."""
    candidates = []
    if os.environ.get("SOLO_LEARN_ROOT"):
        candidates.append(Path(os.environ["SOLO_LEARN_ROOT"]))
    spec = importlib.util.find_spec("solo") if SOLO_AVAILABLE else None
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).resolve().parents[1])
    candidates += [REPO_ROOT.parent / "solo-learn", REPO_ROOT.parent.parent / "solo-learn"]
    for path in candidates:
        if (path / "main_pretrain.py").is_file():
            return path.resolve()
    return None


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS} (../shared/datasets)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def solo_root() -> Path:
    """solo-learn's checkout with its entry scripts (``main_pretrain.py``, ``main_knn.py``...)."""
    if not SOLO_AVAILABLE:
        pytest.skip(SOLO_SKIP_REASON)
    root = solo_learn_root()
    if root is None:
        where = os.environ.get("SOLO_LEARN_ROOT") or "unset"
        pytest.skip(
            f"solo-learn's main_pretrain.py not found (SOLO_LEARN_ROOT={where}): set "
            "SOLO_LEARN_ROOT to your solo-learn clone"
        )
    absent = [name for name in SOLO_SCRIPTS if not (root / name).is_file()]
    if absent:
        pytest.skip(f"solo-learn's {', '.join(absent)} not found in {root} (SOLO_LEARN_ROOT)")
    return root


@pytest.fixture(scope="session")
def two_epoch_run(
    solo_root: Path, shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """The uninterrupted :data:`solo_runs.TWO_EPOCHS` run of stock ``main_pretrain.py`` on the
    CIFAR-10 PNGs, probed, both epochs' checkpoints kept; the reference of every resume test
    through the entry point. Made once per test session.

    Returns:
        ``checkpoints`` (after epoch 0 and 1, oldest first) and ``probe`` (rank 0's record).
    """
    import torch
    from solo_runs import TWO_EPOCHS, checkpoints, run_main_pretrain, tail

    workdir = tmp_path_factory.mktemp("two_epochs")
    run = run_main_pretrain(
        solo_root,
        workdir,
        shared_datasets / "cifar10-folder-small" / "train",
        [*TWO_EPOCHS, "checkpoint.keep_prev=True"],
        workdir / "probe",
    )
    if run.returncode != 0:
        raise subprocess.SubprocessError(f"main_pretrain.py failed:\n{tail(run)}")
    probe = torch.load(workdir / "probe" / "rank0.pt", weights_only=True)
    return {"checkpoints": checkpoints(workdir), "probe": probe}


@pytest.fixture(scope="session")
def tiny_cueco_run(
    solo_root: Path, shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A real CueCo run folder (``args.json`` + one ``.ckpt``, bank seeded): 2 steps of stock
    ``main_pretrain.py`` on ``configs/pretrain/cpu/cueco.yaml`` and the real CIFAR-10 PNGs, no
    validation. Made once per test session."""
    from solo_runs import checkpoints, run_main_pretrain, tail

    workdir = tmp_path_factory.mktemp("tiny_cueco")
    run = run_main_pretrain(
        solo_root,
        workdir,
        shared_datasets / "cifar10-folder-small" / "train",
        ["limit_train_batches=2", "data.val_path=null", "knn_eval.enabled=False"],
    )
    if run.returncode != 0:
        raise subprocess.SubprocessError(f"main_pretrain.py failed:\n{tail(run)}")
    found = checkpoints(workdir)
    assert len(found) == 1, found
    assert json.loads((found[0].parent / "args.json").read_text())["method"] == "cueco"
    return found[0].parent


@pytest.fixture(scope="session")
def small_cifar_npz(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 80 real CIFAR-10 training images (``images``, ``labels``) as one .npz file."""
    import numpy as np

    path = tmp_path_factory.mktemp("cifar80") / "train.npz"
    with np.load(shared_datasets / "cifar10" / "cifar10_train_0.npz") as data:
        np.savez(path, images=data["images"][:80], labels=data["labels"][:80])
    return path


@pytest.fixture(scope="session")
def dali_cifar_run(
    solo_root: Path, small_cifar_npz: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """Issue 17's partial-epoch run (``solo_runs.DALI_PARTIAL_EPOCHS``) through
    ``python -m cueco_plugin.pretrain`` with ``configs/pretrain/cpu/cueco_dali_cifar.yaml`` on
    :func:`small_cifar_npz`, probed (``tests/probe``). Made once per test session.

    Returns:
        ``output`` (the run's stdout and stderr), ``record`` (rank 0's probe record) and
        ``final`` (the final checkpoint, loaded).
    """
    if not DALI_AVAILABLE:
        pytest.skip(DALI_SKIP_REASON)
    import torch
    from solo_runs import (
        DALI_CIFAR_CONFIG,
        DALI_PARTIAL_EPOCHS,
        checkpoints,
        load_checkpoint,
        run_main_pretrain,
        tail,
    )

    workdir = tmp_path_factory.mktemp("dali_cifar_run")
    run = run_main_pretrain(
        solo_root,
        workdir,
        small_cifar_npz,
        list(DALI_PARTIAL_EPOCHS),
        probe_dir=workdir / "probe",
        config_name=DALI_CIFAR_CONFIG,
    )
    if run.returncode != 0:
        raise subprocess.SubprocessError(f"the DALI CIFAR run failed:\n{tail(run)}")
    (final,) = checkpoints(workdir)
    return {
        "output": run.stdout,
        "record": torch.load(workdir / "probe" / "rank0.pt", weights_only=True),
        "final": load_checkpoint(final),
    }
