"""CueCo's method_kwargs: one source of defaults, one validation boundary (no solo-learn needed)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cueco_plugin.config import CUECO_DEFAULTS, CUECO_OPTIONS, add_and_validate_method_kwargs


def test_empty_method_kwargs_get_every_default() -> None:
    cfg = OmegaConf.create({"optimizer": {"batch_size": 256}, "devices": [0]})
    add_and_validate_method_kwargs(cfg)
    assert dict(cfg.method_kwargs) == CUECO_DEFAULTS
    assert set(CUECO_DEFAULTS) == set(CUECO_OPTIONS)


def test_null_method_kwargs_is_an_error_not_the_defaults() -> None:
    cfg = OmegaConf.create({"method_kwargs": None})
    with pytest.raises(ValueError, match="method_kwargs is null"):
        add_and_validate_method_kwargs(cfg)


def test_a_queue_of_any_positive_size_is_accepted_whatever_the_batch() -> None:
    # enqueue keeps the newest keys when a global batch exceeds the queue: no size rule
    cfg = OmegaConf.create({"optimizer": {"batch_size": 7}, "method_kwargs": {"queue_size": 5}})
    assert add_and_validate_method_kwargs(cfg).method_kwargs.queue_size == 5


def test_freeze_window_must_be_shorter_than_the_reclustering_interval() -> None:
    cfg = OmegaConf.create({"method_kwargs": {"freeze_iters": 10, "recluster_interval": 10}})
    with pytest.raises(ValueError, match="freeze_iters must be smaller than"):
        add_and_validate_method_kwargs(cfg)
    cfg = OmegaConf.create({"method_kwargs": {"freeze_iters": 10, "recluster_interval": 0}})
    add_and_validate_method_kwargs(cfg)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_large_crops": 1, "num_small_crops": 0}, "data.num_large_crops must be 2"),
        ({"num_large_crops": 2, "num_small_crops": 4}, "data.num_small_crops must be 0"),
    ],
)
def test_crop_layout_other_than_two_large_crops_is_rejected(data, message) -> None:
    cfg = OmegaConf.create({"optimizer": {"batch_size": 256}, "devices": [0], "data": data})
    with pytest.raises(ValueError, match=message):
        add_and_validate_method_kwargs(cfg)
