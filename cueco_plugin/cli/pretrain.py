"""``python -m cueco_plugin.pretrain``: solo-learn's own ``main_pretrain.py``, plus DALI on CPU
hosts and for CIFAR.

It registers CueCo, loads ``main_pretrain.py`` (from ``$SOLO_LEARN_ROOT``, else the clone that an
editable solo-learn install imports ``solo`` from) as a module, replaces four names in that
module, and runs its ``main``; the flow, the checkpointing, resuming, logging and Trainer
arguments are solo-learn's, for every solo-learn method:

- ``PretrainDALIDataModule``: :func:`cueco_plugin.data.dali_cifar.pretrain_dali_datamodule`:
  DALI CIFAR from arrays for ``cifar10``/``cifar100``, else solo-learn's module, building its
  pipelines with ``device_id=None`` where ``dali.device: cpu`` runs without CUDA;
- ``parse_cfg``: solo-learn's, which also accepts ``data.format: dali`` for CIFAR;
- ``prepare_datasets`` and ``prepare_data_classification``: solo-learn's, which also read CIFAR
  from ``.npz`` files (:mod:`cueco_plugin.data.cifar_arrays`).

Arguments are ``main_pretrain.py``'s (Hydra); a relative ``--config-path`` is taken from the
current directory::

    python -m cueco_plugin.pretrain --config-path configs/pretrain/cpu \
        --config-name cueco_dali_cifar.yaml
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from cueco_plugin.data.cifar_arrays import parse_cfg
from cueco_plugin.registration import register


def solo_learn_root() -> Path:
    """The solo-learn checkout holding ``main_pretrain.py``: ``$SOLO_LEARN_ROOT``, else the
    clone an editable install (``pip install -e ./solo-learn``) imports ``solo`` from."""
    candidates = [Path(os.environ["SOLO_LEARN_ROOT"])] if os.environ.get("SOLO_LEARN_ROOT") else []
    spec = importlib.util.find_spec("solo")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).resolve().parents[1])
    for path in candidates:
        if (path / "main_pretrain.py").is_file():
            return path.resolve()
    raise FileNotFoundError(
        f"main_pretrain.py not found in {[str(p) for p in candidates]}: set SOLO_LEARN_ROOT to "
        "your solo-learn clone (git clone https://github.com/vturrisi/solo-learn.git)"
    )


def import_main_pretrain(root: Path | None = None) -> ModuleType:
    """solo-learn's ``main_pretrain.py`` imported as a module (its ``main`` not run)."""
    path = (root or solo_learn_root()) / "main_pretrain.py"
    spec = importlib.util.spec_from_file_location("main_pretrain", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_main_pretrain(root: Path | None = None) -> ModuleType:
    """solo-learn's ``main_pretrain.py`` as a module, with the four names above replaced."""
    from cueco_plugin.data import cifar_arrays, dali_cifar

    module = import_main_pretrain(root)
    module.PretrainDALIDataModule = dali_cifar.pretrain_dali_datamodule
    module.parse_cfg = parse_cfg
    module.prepare_datasets = cifar_arrays.prepare_datasets
    module.prepare_data_classification = cifar_arrays.prepare_data_classification
    return module


def absolute_config_path(argv: Sequence[str]) -> list[str]:
    """``argv`` with a relative ``--config-path``/``-cp`` made absolute from the current
    directory (Hydra would resolve it from ``main_pretrain.py``'s folder)."""
    out = list(argv)
    for i, arg in enumerate(out):
        for flag in ("--config-path", "-cp"):
            if arg == flag and i + 1 < len(out):
                out[i + 1] = os.path.abspath(out[i + 1])
            elif arg.startswith(flag + "="):
                out[i] = f"{flag}={os.path.abspath(arg[len(flag) + 1:])}"
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Runs ``main_pretrain.py``'s ``main`` with ``argv`` (default: ``sys.argv[1:]``)."""
    register()
    module = load_main_pretrain()
    saved = sys.argv
    # Hydra reads sys.argv; Lightning's DDP launcher re-runs it in each new process
    sys.argv = [saved[0], *absolute_config_path(saved[1:] if argv is None else argv)]
    try:
        module.main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
