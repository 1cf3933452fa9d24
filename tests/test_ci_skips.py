"""Under CI=true a test whose solo-learn, DALI, shared data or solo-learn scripts are missing fails,
naming what is missing; outside CI it is skipped with that reason. Runs a real inner pytest on a
project that holds this repository's conftest.py and nothing else (no data, no solo-learn clone)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SOLO_AVAILABLE

INNER_TESTS = """
import pytest
from conftest import DALI_SKIP_REASON, SOLO_SKIP_REASON


def test_plain():
    pass


def test_needs_shared_data(shared_datasets):
    pass


def test_needs_solo_learn_scripts(solo_root):
    pass


@pytest.mark.skipif(True, reason=SOLO_SKIP_REASON)
def test_needs_solo_learn():
    pass


@pytest.mark.skipif(True, reason=DALI_SKIP_REASON)
def test_needs_dali():
    pass


def test_skipped_for_another_reason():
    pytest.skip("a GPU is available here")
"""

INNER_MODULE_SKIP = 'import pytest\npytest.importorskip("cueco_module_that_does_not_exist")\n'

MISSING = (
    "real datasets not found",
    "main_pretrain.py not found" if SOLO_AVAILABLE else "solo-learn is not importable",
    "solo-learn is not importable",
    "nvidia-dali is not installed",
    "could not import 'cueco_module_that_does_not_exist'",
)


@pytest.fixture(scope="module")
def inner_project(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("inner") / "project"
    (project / "tests").mkdir(parents=True)
    shutil.copy(repo_root / "tests" / "conftest.py", project / "tests" / "conftest.py")
    (project / "tests" / "test_inner.py").write_text(INNER_TESTS)
    (project / "tests" / "test_inner_module.py").write_text(INNER_MODULE_SKIP)
    (project / "empty").mkdir()
    return project


def run_inner(project: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["SOLO_LEARN_ROOT"] = str(project / "empty")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
        + ["--continue-on-collection-errors", "tests"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def summary(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_missing_requirements_are_skipped_with_their_reason_outside_ci(inner_project: Path):
    done = run_inner(inner_project, ci=False)
    assert done.returncode == 0, done.stdout
    assert re.search(r"\b1 passed, 6 skipped\b", summary(done.stdout)), done.stdout
    for reason in MISSING:
        assert reason in done.stdout, (reason, done.stdout)


def test_missing_requirements_fail_under_ci_naming_what_is_missing(inner_project: Path):
    done = run_inner(inner_project, ci=True)
    assert done.returncode == 1, done.stdout
    # the skip for another reason stays a skip; the five missing requirements fail
    assert re.search(r"\b1 passed, 1 skipped, 5 errors\b", summary(done.stdout)), done.stdout
    assert "a GPU is available here" in done.stdout
    failures = [
        line for line in done.stdout.splitlines() if "CI=true, so this is a failure" in line
    ]
    for reason in MISSING:
        assert any(reason in line for line in failures), (reason, done.stdout)
