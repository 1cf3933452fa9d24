"""Old import path of :mod:`cueco_plugin.data.dali` (and the DALI CIFAR module)."""

from cueco_plugin.data.dali import CPUCapablePretrainDALIDataModule, pipeline_device_id
from cueco_plugin.data.dali_cifar import CifarDALIDataModule, pretrain_dali_datamodule

__all__ = [
    "CPUCapablePretrainDALIDataModule",
    "CifarDALIDataModule",
    "pipeline_device_id",
    "pretrain_dali_datamodule",
]
