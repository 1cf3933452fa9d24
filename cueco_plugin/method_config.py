"""Defaults and validation of CueCo's ``method_kwargs`` (used by
``CueCo.add_and_assert_specific_cfg``); needs only omegaconf, not solo-learn.

Every error is a ValueError naming the key, the bad value and what is allowed, raised when the
method is built, before any training step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cueco_plugin.losses import VARIANCE_SCALINGS

ASSIGNMENT_SOURCES: tuple[str, ...] = ("key", "query")

#: every CueCo key under ``method_kwargs`` with its default
CUECO_DEFAULTS: dict[str, Any] = {
    "proj_hidden_dim": 2048,
    "proj_output_dim": 256,
    "temperature": 0.2,
    "queue_size": 65536,
    "num_clusters": 100,
    "centroid_temperature": 0.1,
    "lambda_nce": 1.0,
    "lambda_centroid": 1.0,
    "lambda_variance": 0.1,
    "centroid_momentum": 0.99,
    "variance_momentum": 0.99,
    "variance_scaling": "divide",
    "variance_eps": 1e-4,
    "min_variance": 1e-3,
    "assignment_source": "key",
    "freeze_iters": 313,
    "reset_interval": 1000,
    "dead_cluster_steps": 100,
    "lloyd_iters": 10,
}

_POSITIVE_INTS = ("proj_hidden_dim", "proj_output_dim", "queue_size")
_NON_NEGATIVE_INTS = ("freeze_iters", "reset_interval", "dead_cluster_steps", "lloyd_iters")
_POSITIVE_NUMBERS = ("temperature", "centroid_temperature", "variance_eps")
_LAMBDAS = ("lambda_nce", "lambda_centroid", "lambda_variance")
_NON_NEGATIVE_NUMBERS = (*_LAMBDAS, "min_variance")
_MOMENTA = ("centroid_momentum", "variance_momentum")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"method_kwargs.{key} must be {allowed}, got {value!r}")


def number_of_devices(devices: Any) -> int | None:
    """Processes per node that Lightning starts for ``Trainer(devices=...)``.

    A list (solo-learn's ``devices: [0, 1]``) counts its entries; an int > 0 or a string of
    one is that number; ``"0,1"`` counts the ids. ``-1`` and ``"auto"`` depend on the machine:
    ``None`` (unknown until the Trainer runs).
    """
    if isinstance(devices, (ListConfig, Sequence)) and not isinstance(devices, str):
        return len(devices)
    if _is_int(devices):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None


def global_batch_size(cfg: DictConfig) -> int | None:
    """``optimizer.batch_size`` x devices x ``num_nodes``, or None where not yet known."""
    batch = OmegaConf.select(cfg, "optimizer.batch_size", default=None)
    devices = number_of_devices(OmegaConf.select(cfg, "devices", default=1))
    nodes = OmegaConf.select(cfg, "num_nodes", default=1)
    if not _is_int(batch) or devices is None or not _is_int(nodes):
        return None
    return batch * devices * nodes


def check_queue_size(queue_size: int, global_batch: int, where: str) -> None:
    """The queue must hold a whole number of global batches (MoCo's FIFO writes whole batches)."""
    if global_batch > 0 and (queue_size < global_batch or queue_size % global_batch):
        raise ValueError(
            f"method_kwargs.queue_size must be a positive multiple of the global batch size "
            f"({where} = {global_batch}), got {queue_size!r}"
        )


def add_and_validate_method_kwargs(cfg: DictConfig) -> DictConfig:
    """Fills in CueCo's defaults under ``cfg.method_kwargs`` and validates every key.

    Args:
        cfg: the full solo-learn config (``method_kwargs``, ``optimizer.batch_size``,
            ``devices``, ``num_nodes`` and ``data`` are read).

    Returns:
        ``cfg``, modified in place.

    Raises:
        ValueError: naming the key, its value and what is allowed.
    """
    kwargs = OmegaConf.select(cfg, "method_kwargs", default=None)
    if kwargs is None:
        cfg.method_kwargs = {}
        kwargs = cfg.method_kwargs
    if not isinstance(kwargs, (DictConfig, Mapping)):
        raise ValueError(f"method_kwargs must be a mapping of CueCo options, got {kwargs!r}")
    unknown = sorted(set(kwargs.keys()) - set(CUECO_DEFAULTS))
    if unknown:
        raise ValueError(
            f"method_kwargs has unknown key(s) {unknown} for method 'cueco'; allowed keys: "
            f"{sorted(CUECO_DEFAULTS)}"
        )
    for key, default in CUECO_DEFAULTS.items():
        if OmegaConf.select(cfg, f"method_kwargs.{key}", default=None) is None:
            cfg.method_kwargs[key] = default
    mk = cfg.method_kwargs

    for key in _POSITIVE_INTS:
        if not _is_int(mk[key]) or mk[key] < 1:
            _fail(key, mk[key], "an integer >= 1")
    for key in _NON_NEGATIVE_INTS:
        if not _is_int(mk[key]) or mk[key] < 0:
            _fail(key, mk[key], "an integer >= 0 (0 disables it)")
    if not _is_int(mk.num_clusters) or mk.num_clusters < 2:
        _fail("num_clusters", mk.num_clusters, "an integer >= 2")
    for key in _POSITIVE_NUMBERS:
        if not _is_number(mk[key]) or mk[key] <= 0:
            _fail(key, mk[key], "a finite number > 0")
    for key in _NON_NEGATIVE_NUMBERS:
        if not _is_number(mk[key]) or mk[key] < 0:
            _fail(key, mk[key], "a finite number >= 0")
    if sum(float(mk[key]) for key in _LAMBDAS) == 0.0:
        raise ValueError(
            "method_kwargs.lambda_nce, lambda_centroid and lambda_variance must not all be 0 "
            "(got 0, 0, 0): at least one loss must be on"
        )
    for key in _MOMENTA:
        if not _is_number(mk[key]) or not 0.0 <= mk[key] < 1.0:
            _fail(key, mk[key], "a number in [0, 1)")
    if mk.variance_scaling not in VARIANCE_SCALINGS:
        _fail("variance_scaling", mk.variance_scaling, f"one of {list(VARIANCE_SCALINGS)}")
    if mk.assignment_source not in ASSIGNMENT_SOURCES:
        _fail("assignment_source", mk.assignment_source, f"one of {list(ASSIGNMENT_SOURCES)}")
    if mk.reset_interval > 0 and mk.freeze_iters >= mk.reset_interval:
        raise ValueError(
            f"method_kwargs.freeze_iters must be smaller than method_kwargs.reset_interval "
            f"unless reset_interval is 0, got freeze_iters={mk.freeze_iters!r} and "
            f"reset_interval={mk.reset_interval!r} (the cluster losses would never be on)"
        )

    global_batch = global_batch_size(cfg)
    if global_batch is not None:
        check_queue_size(mk.queue_size, global_batch, "optimizer.batch_size x devices x num_nodes")

    large = OmegaConf.select(cfg, "data.num_large_crops", default=2)
    small = OmegaConf.select(cfg, "data.num_small_crops", default=0)
    if large != 2:
        raise ValueError(
            f"data.num_large_crops must be 2 for CueCo (two views, as MoCo V2+), got {large!r}"
        )
    if small not in (0, None):
        raise ValueError(
            f"data.num_small_crops must be 0 for CueCo (multi-crop is not supported), "
            f"got {small!r}"
        )
    return cfg
