"""Registers CueCo in solo-learn's method table without editing solo-learn.

``register()`` adds ``"cueco"`` to ``solo.methods.METHODS`` (idempotent). Stock
``main_pretrain.py`` looks methods up there, so a YAML that names the Hydra callback below gets
CueCo registered before ``parse_cfg`` runs, in every process Hydra starts, including the ones
Lightning's DDP launcher re-executes with the same config::

    hydra:
      callbacks:
        cueco:
          _target_: cueco_plugin.registration.RegisterCueCo
"""

from __future__ import annotations

import sys
from typing import Any

SOLO_LEARN_INSTALL_HINT = (
    "CueCo needs solo-learn, which is not importable here. solo-learn 1.0.6 is not on PyPI "
    "(PyPI's 'solo-learn' is the unrelated 1.0.2 API). Install it from GitHub:\n"
    "    git clone https://github.com/vturrisi/solo-learn.git\n"
    '    pip install -U pip "setuptools>=77,<81" wheel\n'
    "    pip install --no-build-isolation ./solo-learn\n"
    "(see this package's docs/install.md)."
)


def require_solo_learn() -> None:
    """Raises ImportError with install instructions when solo-learn is missing."""
    try:
        import solo.methods  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without solo-learn
        raise ImportError(SOLO_LEARN_INSTALL_HINT) from err


def register() -> type:
    """Adds ``"cueco"`` to ``solo.methods.METHODS`` and returns the CueCo class. Idempotent."""
    require_solo_learn()
    import solo.methods

    from cueco_plugin.method import CueCo

    solo.methods.METHODS["cueco"] = CueCo
    return CueCo


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    _HydraCallback = object  # type: ignore[misc,assignment]


class RegisterCueCo(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback that calls :func:`register` before the run and before each job, and
    checks each job's config first (:func:`cueco_plugin.preflight.preflight`): CueCo's named
    errors, the data folders and the step count, before ``main_pretrain.py`` starts."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        register()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        register()

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        """Registers CueCo, then runs the pre-flight checks. Hydra turns an exception of a
        callback into a warning and goes on, so a failed check prints its message and ends the
        process here with exit status 2."""
        register()
        from cueco_plugin.preflight import preflight

        try:
            preflight(config)
        except ValueError as err:
            message = f"CueCo pre-flight check failed: {err} ({type(err).__name__})"
            print(message, file=sys.stderr, flush=True)
            raise SystemExit(2) from None
