"""CueCo's method_kwargs defaults and global-batch arithmetic (no solo-learn needed)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cueco_plugin.method_config import (
    CUECO_DEFAULTS,
    add_and_validate_method_kwargs,
    global_batch_size,
    number_of_devices,
)


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([0], 1),
        ([0, 1, 2], 3),
        (OmegaConf.create({"d": [0, 1]}).d, 2),
        (4, 4),
        ("2", 2),
        ("0,1", 2),
        ("0,1,", 2),
        (-1, None),
        ("auto", None),
    ],
)
def test_number_of_devices_follows_lightning(devices, expected) -> None:
    assert number_of_devices(devices) == expected


def test_global_batch_is_batch_times_devices_times_nodes() -> None:
    cfg = OmegaConf.create({"optimizer": {"batch_size": 256}, "devices": [0, 1], "num_nodes": 2})
    assert global_batch_size(cfg) == 1024
    cfg.devices = "auto"
    assert global_batch_size(cfg) is None  # checked again at fit start with the world size


def test_empty_method_kwargs_get_every_default() -> None:
    cfg = OmegaConf.create({"optimizer": {"batch_size": 256}, "devices": [0]})
    add_and_validate_method_kwargs(cfg)
    assert dict(cfg.method_kwargs) == CUECO_DEFAULTS


def test_unknown_device_count_skips_the_static_queue_check() -> None:
    cfg = OmegaConf.create(
        {"optimizer": {"batch_size": 7}, "devices": "auto", "method_kwargs": {"queue_size": 64}}
    )
    add_and_validate_method_kwargs(cfg)  # no error: the Trainer's world size decides later


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
