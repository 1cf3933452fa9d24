"""Shared pieces of the benchmarks (not part of the ``cueco_plugin`` package): configs composed
with Hydra from ``configs/``, the CIFAR-10 ``.npz`` data, frozen-backbone scores, the machine
record."""
