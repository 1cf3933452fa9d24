"""Shared fixtures: where the real data and solo-learn are, and skips that say why."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = (REPO_ROOT / ".." / "shared" / "datasets").resolve()

SOLO_AVAILABLE = importlib.util.find_spec("solo") is not None
SOLO_SKIP_REASON = (
    "solo-learn is not importable: install it from GitHub (see README.md, 'Install'); "
    "PyPI's solo-learn 1.0.2 is a different API"
)
requires_solo = pytest.mark.skipif(not SOLO_AVAILABLE, reason=SOLO_SKIP_REASON)

DALI_AVAILABLE = importlib.util.find_spec("nvidia.dali") is not None
requires_dali = pytest.mark.skipif(
    not DALI_AVAILABLE, reason="nvidia-dali is not installed: pip install -e '.[dali]'"
)


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
    if not SOLO_AVAILABLE:
        pytest.skip(SOLO_SKIP_REASON)
    root = solo_learn_root()
    if root is None:
        pytest.skip(
            "solo-learn's main_pretrain.py not found: set SOLO_LEARN_ROOT to your solo-learn clone"
        )
    return root
