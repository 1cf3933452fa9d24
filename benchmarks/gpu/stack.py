#!/usr/bin/env python3
"""The software stack of the GPU calls: one wheel list, its download, and the import check.

- ``wheels.txt`` (beside this file) is the one list of the wheels the GPU calls carry; both
  prepare scripts download it with ``download`` (the ``stack`` group; the throughput also the
  ``dali`` group).
- ``check`` imports what the GPU scripts import (``--for study``: ``benchmarks/study.py`` and its
  ``sslbench``; ``--for throughput``: ``benchmarks/gpu_throughput.py``, DALI, solo-learn's
  ``main_pretrain.py``) and builds a DALI CIFAR pipeline with solo-learn's augmentations on
  ``--device``. ``study.sh`` and ``throughput.sh`` run it on the GPU before they measure anything.
- ``check --as-gpu-image`` runs it here as on the GPU machine: a module from an installed
  distribution that is neither carried nor on the image's documented package list
  (``image_packages.txt``) in a version the stack accepts (:func:`missing_on_gpu`) cannot be
  imported. An import that needs one fails, naming the module and why; an optional one (a
  ``try: import``) is skipped as it would be there. tests/test_gpu_stack.py runs this on the CPU.

Usage::

    python benchmarks/gpu/stack.py download --groups stack dali --dest .gpu/wheels
    python benchmarks/gpu/stack.py check --for throughput --device cuda
    python benchmarks/gpu/stack.py check --for study --device cpu --as-gpu-image
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata as metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WHEELS = HERE / "wheels.txt"
IMAGE = HERE / "image_packages.txt"
SOURCES = ("pypi", "sdist", "shared")

#: what the stack needs that no distribution declares: lightning 2.1.2 imports pkg_resources
#: unguarded without requiring setuptools, and setuptools 82 has no pkg_resources (81 warns)
UNDECLARED_NEEDS = (Requirement("setuptools<81"),)

#: travels with the working tree (the repository itself), installed here in editable mode
TRAVELS = ("cueco-plugin",)

#: the modules each GPU script imports (besides the check's own: lightning, torch, torchmetrics,
#: solo-learn, hydra, omegaconf, CueCo); ``benchmarks/`` is on sys.path as the scripts put it
IMPORTS = {
    "study": (
        "study",
        "sslbench.configs",
        "sslbench.data",
        "sslbench.augment",
        "sslbench.evaluation",
        "sslbench.report",
        "solo.methods",
        "solo.utils.misc",
        "lightning.pytorch.callbacks",
        "lightning.pytorch.loggers",
        "sklearn.linear_model",
        "sklearn.pipeline",
        "sklearn.preprocessing",
        "matplotlib.pyplot",
    ),
    "throughput": (
        "gpu_throughput",
        "loader_throughput",
        "sslbench.report",
        "nvidia.dali",
        "nvidia.dali.plugin.pytorch",
        "solo.data.dali_dataloader",
        "cueco_plugin.data.dali_cifar",
        "cueco_plugin.data.cifar_arrays",
        "cueco_plugin.cli.pretrain",
    ),
}


def family(name: str) -> str:
    """A distribution's name without its CUDA build suffix (``nvidia-dali-cuda120`` and the
    carried ``nvidia-dali-cuda130`` are both ``nvidia-dali``), canonicalised."""
    return re.sub(r"-cu(da)?\d+x?$", "", canonicalize_name(name))


@dataclass(frozen=True)
class Wheel:
    """One line of ``wheels.txt``."""

    group: str
    requirement: Requirement
    source: str

    @property
    def version(self) -> Version:
        (spec,) = self.requirement.specifier
        return Version(spec.version)


def read_wheels(path: Path = WHEELS, groups: Iterable[str] = ("stack", "dali")) -> list[Wheel]:
    """The wheels of ``groups`` in ``path``, in order.

    Raises:
        ValueError: a line that is not ``<group> <name>==<version> [<source>]``, naming it.
    """
    wheels = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        requirement = Requirement(fields[1]) if len(fields) in (2, 3) else None
        source = fields[2] if len(fields) == 3 else "pypi"
        pinned = requirement is not None and [s.operator for s in requirement.specifier] == ["=="]
        if not pinned or fields[0] not in ("stack", "dali") or source not in SOURCES:
            raise ValueError(
                f"{path}:{number}: {raw!r}: expected '<group> <name>==<version> [<source>]' with "
                f"group stack or dali and source one of {list(SOURCES)}"
            )
        if fields[0] in groups:
            wheels.append(Wheel(fields[0], requirement, source))
    return wheels


def read_image(path: Path = IMAGE) -> dict[str, Version | None]:
    """The GPU image's documented packages: family name -> version (``None``: not documented)."""
    image: dict[str, Version | None] = {}
    for raw in path.read_text().splitlines():
        fields = raw.split("#", 1)[0].split()
        if fields:
            image[family(fields[0])] = Version(fields[1]) if len(fields) > 1 else None
    return image


def _active(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def stack_requirements(
    carried: Sequence[Wheel], installed: dict[str, metadata.Distribution]
) -> list[tuple[Requirement, bool]]:
    """What the carried stack asks of other distributions: ``(requirement, strict)`` for the
    ``Requires-Dist`` of every carried distribution installed here (and of CueCo, which travels as
    source), plus :data:`UNDECLARED_NEEDS`. Strict: an exact pin (``==``) or an undeclared need,
    which a version the image's documentation does not give cannot be assumed to meet; the other
    bounds are checked only against documented versions."""
    owners = {family(w.requirement.name) for w in carried} | {"cueco-plugin"}
    found = [(req, True) for req in UNDECLARED_NEEDS]
    for name, dist in installed.items():
        if name in owners:
            for text in dist.requires or []:
                req = Requirement(text)
                if _active(req):
                    exact = any(s.operator in ("==", "===") for s in req.specifier)
                    found.append((req, exact))
    return found


def missing_on_gpu(
    installed: Iterable[str],
    carried: Sequence[Wheel],
    image: dict[str, Version | None],
    requirements: Sequence[tuple[Requirement, bool]],
) -> dict[str, str]:
    """Of the ``installed`` distributions (families), those the GPU machine will lack, with why:
    neither carried nor on the image, or on the image in a version that does not meet (or, not
    documented, cannot be assumed to meet) what the stack requires. Carried ones are there in the
    carried version; a requirement it does not meet is reported too."""
    carried_versions = {family(w.requirement.name): w.version for w in carried}
    missing: dict[str, str] = {}
    for name in sorted(set(installed) - set(TRAVELS)):
        asks = [(r, strict) for r, strict in requirements if family(r.name) == name]
        if name in carried_versions:
            version = carried_versions[name]
            bad = [str(r) for r, _ in asks if version not in r.specifier]
            if bad:
                missing[name] = f"carried at {version}, but the stack requires {bad}"
            continue
        if name not in image:
            missing[name] = "neither carried (wheels.txt) nor on the GPU image"
            continue
        version = image[name]
        for req, strict in asks:
            if version is None and strict and req.specifier != SpecifierSet():
                missing[name] = (
                    f"on the GPU image in a version the documentation does not give, and {req} "
                    "is needed: carry it (wheels.txt)"
                )
            elif version is not None and version not in req.specifier:
                missing[name] = f"the GPU image has {version}, {req} is needed: carry it"
    return missing


class GPUImageFinder(importlib.abc.MetaPathFinder):
    """Imports as on the GPU machine: a module whose file belongs to a distribution of
    ``missing`` is not found (the search goes on in later path entries, as it would there), and
    when nothing else provides it the import fails naming the distribution and why."""

    def __init__(self, missing: dict[str, str]) -> None:
        self.reasons: dict[Path, str] = {}
        for dist in metadata.distributions():
            name = family(dist.metadata["Name"])
            if name in missing:
                for file in dist.files or []:
                    path = Path(dist.locate_file(file)).resolve()
                    self.reasons[path] = f"{dist.metadata['Name']}: {missing[name]}"

    def _why_missing(self, spec: importlib.machinery.ModuleSpec | None) -> str | None:
        if spec is None or not spec.origin or not spec.has_location:
            return None
        return self.reasons.get(Path(spec.origin).resolve())

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ):
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        why = self._why_missing(spec)
        if why is None:
            return None  # not ours to judge: the usual finders import it
        for entry in path if path is not None else sys.path:
            other = importlib.machinery.PathFinder.find_spec(fullname, [entry])
            if other is not None and self._why_missing(other) is None:
                return other
        raise ModuleNotFoundError(
            f"No module named {fullname!r} on the GPU machine ({why})", name=fullname
        )


def emulate_gpu_image(wheels: Path = WHEELS, image: Path = IMAGE) -> dict[str, str]:
    """Installs :class:`GPUImageFinder` for the distributions installed here that the GPU machine
    lacks (:func:`missing_on_gpu`); returns them with why."""
    carried = read_wheels(wheels)
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    requirements = stack_requirements(carried, installed)
    missing = missing_on_gpu(
        {family(n) for n in installed}, carried, read_image(image), requirements
    )
    sys.meta_path.insert(0, GPUImageFinder(missing))
    return missing


def check_dali_pipeline(device: str) -> str:
    """Builds and runs a DALI CIFAR pipeline (solo-learn's augmentations, conditionals on) on
    ``device`` (``cuda``: DALI on GPU 0); returns its output's shape."""
    import numpy as np
    from omegaconf import OmegaConf
    from solo.data.dali_dataloader import build_transform_pipeline_dali
    from solo.data.pretrain_dataloader import FullTransformPipeline, NCropAugmentation

    from cueco_plugin.data.dali_cifar import EpochShards, cifar_pipeline

    dali_device = "gpu" if device == "cuda" else "cpu"
    augs = OmegaConf.load(
        REPO / "configs" / "pretrain" / "cifar" / "augmentations" / "mocov2plus.yaml"
    )
    transforms = FullTransformPipeline(
        [
            NCropAugmentation(build_transform_pipeline_dali("cifar10", a, dali_device), a.num_crops)
            for a in augs
        ]
    )
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    pipe = cifar_pipeline(
        EpochShards(images, 4, 0, 1, seed=0),
        transforms,
        dali_device,
        batch_size=4,
        num_threads=1,
        device_id=0 if device == "cuda" else None,
        seed=0,
    )
    pipe.build()
    return str(pipe.run()[0].as_tensor().shape())


def check(script: str, device: str) -> None:
    """Imports what ``script`` (``study`` / ``throughput``) imports and prints the versions; for
    the throughput also ``main_pretrain.py`` (``$SOLO_LEARN_ROOT``) and a DALI pipeline run.

    Raises:
        AssertionError: lightning other than 2.1.2 (the carried one must shadow the image's), or
            no GPU for ``device='cuda'``.
    """
    sys.path.insert(0, str(REPO / "benchmarks"))
    import hydra
    import lightning
    import omegaconf
    import solo
    import torch
    import torchmetrics

    from cueco_plugin.registration import register

    register()
    assert lightning.__version__ == "2.1.2", f"lightning {lightning.__version__}: carry 2.1.2 first"
    if device == "cuda":
        assert torch.cuda.is_available(), "no GPU visible to torch"
    for name in IMPORTS[script]:
        importlib.import_module(name)
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    line = [
        f"torch {torch.__version__} ({where})",
        f"lightning {lightning.__version__}",
        f"torchmetrics {torchmetrics.__version__}",
        f"hydra {hydra.__version__}",
        f"omegaconf {omegaconf.__version__}",
        f"solo {solo.__file__}",
    ]
    if script == "throughput":
        import nvidia.dali

        from cueco_plugin.cli.pretrain import load_main_pretrain

        load_main_pretrain()
        line.append(
            f"dali {nvidia.dali.__version__}: a pipeline ran, {check_dali_pipeline(device)}"
        )
        triton = importlib.util.find_spec("triton")  # torch.compile's runs need it and a compiler
        compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), "MISSING")
        line.append(
            f"torch.compile: triton {'found' if triton else 'MISSING'}, C compiler {compiler}"
        )
    print("stack check passed: " + " | ".join(line), flush=True)


def download(groups: Sequence[str], dest: Path, python: str, shared: Path) -> list[Path]:
    """Fetches the wheels of ``groups`` into ``dest`` for the GPU machine (CPython 3.12,
    manylinux x86_64): ``pypi`` ones with ``pip download``, ``sdist`` ones built into wheels here,
    ``shared`` ones copied from ``shared``. Returns the wheel files, in the list's order."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = read_wheels(WHEELS, groups)
    platform = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for tag in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17"):
        platform += ["--platform", f"{tag}_x86_64"]
    platform += ["--platform", "manylinux2014_x86_64", "--platform", "any"]
    pip = [python, "-m", "pip"]
    index = [str(w.requirement) for w in wheels if w.source == "pypi"]
    if index:
        subprocess.run(
            [*pip, "download", "-q", "--no-deps", *platform, "-d", dest, *index], check=True
        )
    for wheel in wheels:
        if wheel.source == "sdist" and not _wheel_file(dest, wheel):
            subprocess.run(
                [
                    *pip,
                    "wheel",
                    "-q",
                    "--no-deps",
                    "--no-binary=:all:",
                    "-w",
                    dest,
                    str(wheel.requirement),
                ],
                check=True,
            )
        elif wheel.source == "shared" and not _wheel_file(dest, wheel):
            found = _wheel_file(shared, wheel)
            if found is None:
                raise FileNotFoundError(f"{wheel.requirement}: no wheel of it in {shared}")
            (dest / found.name).write_bytes(found.read_bytes())
    files = [_wheel_file(dest, w) for w in wheels]
    absent = [str(w.requirement) for w, f in zip(wheels, files) if f is None]
    if absent:
        raise FileNotFoundError(f"no wheel in {dest} for {absent}")
    return [f for f in files if f is not None]


def _wheel_file(folder: Path, wheel: Wheel) -> Path | None:
    """The wheel of ``wheel``'s name and version in ``folder``, if there is one."""
    for path in sorted(folder.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        if canonicalize_name(name) == canonicalize_name(wheel.requirement.name):
            if Version(version) == wheel.version:
                return path
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="fetch the wheels of the list's groups; print them")
    get.add_argument("--groups", nargs="+", choices=["stack", "dali"], default=["stack"])
    get.add_argument("--dest", type=Path, required=True)
    get.add_argument("--python", default=sys.executable, help="the pip that downloads")
    get.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "wheels")
    run = sub.add_parser("check", help="import what a GPU script imports")
    run.add_argument("--for", dest="script", choices=sorted(IMPORTS), required=True)
    run.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    run.add_argument(
        "--as-gpu-image", action="store_true", help="here: only what the GPU machine will hold"
    )
    run.add_argument("--wheels", type=Path, default=WHEELS, help="the carried list (wheels.txt)")
    args = parser.parse_args(argv)
    if args.command == "download":
        for path in download(args.groups, args.dest, args.python, args.shared):
            print(path)
        return 0
    if args.as_gpu_image:
        missing = emulate_gpu_image(args.wheels)
        print(f"as on the GPU image: {len(missing)} distributions installed here are missing")
    check(args.script, args.device)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
