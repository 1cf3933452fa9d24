"""CueCo's ``method_kwargs``: the one place that holds their defaults and checks them.

``CueCo.add_and_assert_specific_cfg`` calls :func:`add_and_validate_method_kwargs` when the method
is built, before any training step; the classes behind it (bank, queue, losses) trust what passes.
Every error is a ValueError naming the key, the bad value and what is allowed. Needs only
omegaconf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: every CueCo key under ``method_kwargs``: (default, what is allowed). docs/options.md explains
#: each; the ints and numbers below are checked against the rule named in the second field.
CUECO_OPTIONS: dict[str, tuple[Any, str]] = {
    # projector and L1 (MoCo V2+)
    "proj_hidden_dim": (2048, "int>=1"),
    "proj_output_dim": (256, "int>=1"),
    "temperature": (0.2, "number>0"),
    "queue_size": (65536, "int>=1"),
    # centroid bank and the cluster losses L2, L3
    "num_clusters": (100, "int>=2"),
    "centroid_temperature": (0.1, "number>0"),
    # the defaults are the CPU screen's winner (docs/results.md, issue 16): L1 + CLD, the bank's
    # losses off; the paper's reading is lambda_centroid 1, lambda_variance 0.1, lambda_cld 0
    "lambda_nce": (1.0, "number>=0"),
    "lambda_centroid": (0.0, "number>=0"),
    "lambda_variance": (0.0, "number>=0"),
    "centroid_momentum": (0.99, "momentum"),
    "variance_momentum": (0.99, "momentum"),
    "variance_scaling": ("divide", ("divide", "multiply", "none")),
    "variance_eps": (1e-4, "number>0"),
    "min_variance": (1e-3, "number>=0"),
    "assignment_source": ("key", ("key", "query")),
    # schedule, in optimiser steps
    "warmup_iters": (0, "int>=0"),
    "freeze_iters": (313, "int>=0"),
    "ramp_iters": (0, "int>=0"),
    "recluster_interval": (1000, "int>=0"),
    "recluster_init": ("kmeans++", ("warm", "kmeans++")),
    "dead_cluster_steps": (100, "int>=0"),
    "lloyd_iters": (10, "int>=0"),
    # the bank's balanced update: Sinkhorn shares of the keys and the queue's newest keys
    "sinkhorn_epsilon": (0.05, "number>0"),
    "sinkhorn_iters": (3, "int>=1"),
    "sinkhorn_queue_keys": (4096, "int>=0"),
    # CLD's cross-view loss with one group per image, on its own normalised head (0: off, no
    # head)
    "lambda_cld": (0.8, "number>=0"),
    "cld_temperature": (0.2, "number>0"),
    "cld_dim": (128, "int>=1"),
    # collapse guard
    "collapse_threshold": (0.05, "number>=0"),
    "stop_on_collapse": (False, "bool"),
    # speed: torch.compile of the online and momentum backbones (in place, same state dict)
    "compile_backbones": (False, "bool"),
    # only the measured mode: the CUDA-graph modes (reduce-overhead, max-autotune) never ran, and
    # the momentum backbone runs twice a step under no_grad with its weights changed in place
    # between the calls (docs/options.md)
    "compile_mode": ("default", ("default",)),
}

#: every CueCo key with its default
CUECO_DEFAULTS: dict[str, Any] = {key: default for key, (default, _) in CUECO_OPTIONS.items()}

_RULES = {
    "int>=0": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 disables it)"),
    "int>=1": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "int>=2": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "number>0": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "number>=0": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"method_kwargs.{key} must be {allowed}, got {value!r}")


def add_and_validate_method_kwargs(cfg: DictConfig) -> DictConfig:
    """Fills in CueCo's defaults under ``cfg.method_kwargs`` and validates every key and the
    crop layout.

    Args:
        cfg: the full solo-learn config.

    Returns:
        ``cfg``, modified in place.

    Raises:
        ValueError: naming the key, its value and what is allowed.
    """
    if "method_kwargs" in cfg and cfg.method_kwargs is None:
        raise ValueError(
            "method_kwargs is null: give CueCo's options as a mapping (or {} for the defaults)"
        )
    kwargs = OmegaConf.select(cfg, "method_kwargs", default=None)
    if kwargs is None:
        cfg.method_kwargs = kwargs = {}
    if not isinstance(kwargs, (DictConfig, Mapping)):
        raise ValueError(f"method_kwargs must be a mapping of CueCo options, got {kwargs!r}")
    unknown = sorted(set(kwargs.keys()) - set(CUECO_OPTIONS))
    if unknown:
        raise ValueError(
            f"method_kwargs has unknown key(s) {unknown} for method 'cueco'; allowed keys: "
            f"{sorted(CUECO_OPTIONS)}"
        )
    mk = cfg.method_kwargs
    for key, (default, rule) in CUECO_OPTIONS.items():
        if OmegaConf.select(mk, key, default=None) is None:
            mk[key] = default
        value = mk[key]
        if isinstance(rule, tuple):
            if value not in rule:
                _fail(key, value, f"one of {list(rule)}")
        elif not _RULES[rule][0](value):
            _fail(key, value, _RULES[rule][1])

    if mk.lambda_nce == mk.lambda_centroid == mk.lambda_variance == mk.lambda_cld == 0:
        raise ValueError(
            "method_kwargs.lambda_nce, lambda_centroid, lambda_variance and lambda_cld must not "
            "all be 0 (got 0, 0, 0, 0): at least one loss must be on"
        )
    if mk.recluster_interval > 0 and mk.freeze_iters >= mk.recluster_interval:
        raise ValueError(
            f"method_kwargs.freeze_iters must be smaller than method_kwargs.recluster_interval "
            f"unless recluster_interval is 0, got freeze_iters={mk.freeze_iters!r} and "
            f"recluster_interval={mk.recluster_interval!r} (the cluster losses would never be on)"
        )

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
