"""The GPU calls' software stack, checked on the CPU before a lent GPU's minutes are spent on it
(benchmarks/gpu/stack.py): every module the GPU scripts import is carried (benchmarks/gpu/
wheels.txt, the one list both prepare scripts download) or on the GPU image's documented package
list (benchmarks/gpu/image_packages.txt) in a version the stack accepts, and a list that leaves a
needed wheel out fails, naming the module and why. The imports are the real stack's (solo-learn,
Lightning, DALI, solo-learn's main_pretrain.py), run here as on the GPU image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, requires_dali, requires_solo
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = [requires_solo, requires_dali]

GPU = REPO_ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))
import stack  # noqa: E402


def _check(script: str, solo_root: Path, wheels: Path | None = None) -> subprocess.CompletedProcess:
    """``stack.py check --for script --device cpu --as-gpu-image`` in a fresh process."""
    command = [sys.executable, str(GPU / "stack.py"), "check", "--for", script, "--device", "cpu"]
    command += ["--as-gpu-image", *(["--wheels", str(wheels)] if wheels else [])]
    env = {**os.environ, "SOLO_LEARN_ROOT": str(solo_root), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("script", ["study", "throughput"])
def test_every_module_the_gpu_scripts_import_is_carried_or_on_the_gpu_image(
    script: str, solo_root: Path
) -> None:
    done = _check(script, solo_root)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "distributions installed here are missing" in done.stdout  # the emulation was on
    assert "stack check passed: " in done.stdout and "lightning 2.1.2" in done.stdout
    if script == "throughput":  # DALI imported, a CIFAR pipeline with conditionals built and run
        assert "a pipeline ran, [4, 3, 32, 32]" in done.stdout


@pytest.mark.parametrize(
    "dropped, module, why",
    [
        # on the image, but lightning 2.1.2 needs pkg_resources, gone from newer setuptools
        ("setuptools", "pkg_resources", "setuptools<81 is needed"),
        ("hydra-core", "hydra", "neither carried (wheels.txt) nor on the GPU image"),
        ("gast", "gast", "neither carried (wheels.txt) nor on the GPU image"),  # DALI's autograph
    ],
)
def test_a_wheel_list_without_a_needed_wheel_fails_the_check_naming_the_module(
    dropped: str, module: str, why: str, solo_root: Path, tmp_path: Path
) -> None:
    lines = (GPU / "wheels.txt").read_text().splitlines()
    kept = [line for line in lines if f" {dropped}==" not in line]
    assert len(kept) == len(lines) - 1
    wheels = tmp_path / "wheels.txt"
    wheels.write_text("\n".join(kept) + "\n")
    done = _check("throughput", solo_root, wheels)
    assert done.returncode != 0
    assert f"No module named '{module}' on the GPU machine" in done.stderr, done.stderr[-4000:]
    assert why in done.stderr, done.stderr[-4000:]
    assert "stack check passed" not in done.stdout


def test_both_prepare_scripts_carry_the_one_list_and_both_gpu_scripts_check_it() -> None:
    text = {name: (GPU / name).read_text() for name in os.listdir(GPU) if name.endswith(".sh")}
    assert "stack.py download --groups stack --dest" in text["study_prepare.sh"]
    assert "stack.py download --groups stack dali --dest" in text["throughput_prepare.sh"]
    for name in ("study_prepare.sh", "throughput_prepare.sh"):
        assert "pip download" not in text[name] and "pip wheel" not in text[name], name
    assert "stack.py check --for study --device cuda" in text["study.sh"]
    assert 'stack.py check --for throughput --device "$DEVICE"' in text["throughput.sh"]


def test_the_carried_versions_meet_what_the_carried_stack_requires() -> None:
    import importlib.metadata as metadata

    from packaging.utils import canonicalize_name

    carried = stack.read_wheels()
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    requirements = stack.stack_requirements(carried, installed)
    names = {stack.family(w.requirement.name) for w in carried}
    assert {"lightning", "torchmetrics", "setuptools", "six", "nvidia-dali"} <= names
    assert stack.missing_on_gpu(names, carried, stack.read_image(), requirements) == {}
    # solo-learn's pins are among what was checked
    assert any(str(r) == "lightning==2.1.2" and strict for r, strict in requirements)


def test_image_versions_are_trusted_only_where_documented_and_only_as_far_as_they_meet_pins() -> (
    None
):
    image = {"torchmetrics": Version("1.9.0"), "packaging": None, "lightning": None}
    requirements = [
        (Requirement("torchmetrics<0.12"), False),  # a bound: checked against 1.9.0
        (Requirement("packaging<25"), False),  # a bound on an undocumented version: assumed met
        (Requirement("lightning==2.1.2"), True),  # an exact pin on it: cannot be assumed
    ]
    missing = stack.missing_on_gpu(
        ["torchmetrics", "packaging", "lightning", "wandb"], [], image, requirements
    )
    assert missing == {
        "torchmetrics": "the GPU image has 1.9.0, torchmetrics<0.12 is needed: carry it",
        "lightning": "on the GPU image in a version the documentation does not give, and "
        "lightning==2.1.2 is needed: carry it (wheels.txt)",
        "wandb": "neither carried (wheels.txt) nor on the GPU image",
    }
    assert stack.family("nvidia-dali-cuda120") == stack.family("nvidia-dali-cuda130")
    assert stack.family("nvidia-nvjpeg-cu12") == stack.family("nvidia-nvjpeg")


def test_a_wheel_list_line_that_is_not_a_pinned_wheel_is_refused_naming_it(tmp_path: Path) -> None:
    for line in ("stack lightning>=2.1", "gpu six==1.17.0", "dali six==1.17.0 conda", "stack"):
        path = tmp_path / "wheels.txt"
        path.write_text(f"# a comment\n{line}\n")
        with pytest.raises(ValueError, match=rf"wheels.txt:2: {line!r}: expected '<group>"):
            stack.read_wheels(path)
