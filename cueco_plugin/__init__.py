"""CueCo (Cluster Contrast) as a method plugin for solo-learn.

Importing this package needs only torch. ``register()`` (or the Hydra callback
``cueco_plugin.registration.RegisterCueCo`` named in a YAML) adds ``"cueco"`` to solo-learn's
``solo.methods.METHODS``; that, and ``cueco_plugin.CueCo``, need solo-learn installed.
"""

from __future__ import annotations

from typing import Any

from cueco_plugin.bank import CentroidBank
from cueco_plugin.config import CUECO_DEFAULTS
from cueco_plugin.losses import centroid_contrast_loss, variance_scaled_distance_loss
from cueco_plugin.registration import SOLO_LEARN_INSTALL_HINT, register

__version__ = "0.1.0"

__all__ = [
    "CUECO_DEFAULTS",
    "CentroidBank",
    "CueCo",
    "SOLO_LEARN_INSTALL_HINT",
    "centroid_contrast_loss",
    "register",
    "variance_scaled_distance_loss",
]


def __getattr__(name: str) -> Any:
    if name == "CueCo":
        from cueco_plugin.registration import require_solo_learn

        require_solo_learn()
        from cueco_plugin.method import CueCo

        return CueCo
    raise AttributeError(f"module 'cueco_plugin' has no attribute {name!r}")
