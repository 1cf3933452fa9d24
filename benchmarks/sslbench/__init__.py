"""Helpers of ``benchmarks/compare.py`` and ``benchmarks/step_overhead.py``: real CIFAR-10 from
the ``.npz`` files, solo-learn configs built in code, timing callbacks, frozen-feature
evaluation and the report writers. Nothing here is part of the ``cueco_plugin`` package."""
