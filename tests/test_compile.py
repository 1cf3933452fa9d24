"""``method_kwargs.compile_backbones``: torch.compile (inductor, real C++ code generation on this
CPU) of CueCo's online and momentum backbones, against the same model run eagerly. Real
solo-learn ResNet-18, real Lightning fits on real CIFAR-10 images."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import requires_solo
from lightning.pytorch import seed_everything
from test_method import make_cfg, make_trainer, read_metrics, step_rows
from torch.utils.data import DataLoader

from cueco_plugin import register

pytestmark = [requires_solo, pytest.mark.solo]

STEPS = 2
BATCH = 8
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def cueco_cls() -> Any:
    return register()


def real_batches(shared_datasets: Path) -> list[list[Any]]:
    """``STEPS`` solo-learn batches of real CIFAR-10 images, two fixed views each (the image
    and its mirror image), so that both runs see exactly the same inputs."""
    with np.load(shared_datasets / "cifar10" / "cifar10_test.npz") as data:
        images, labels = data["images"][: STEPS * BATCH], data["labels"][: STEPS * BATCH]
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    y = torch.from_numpy(labels.astype(np.int64))
    return [
        [torch.arange(s, s + BATCH), [x[s : s + BATCH], x[s : s + BATCH].flip(3)], y[s : s + BATCH]]
        for s in range(0, STEPS * BATCH, BATCH)
    ]


def cifar_cfg(tmp_path: Path, **method_kwargs: Any) -> Any:
    """The test config on ``cifar10``: solo-learn's CIFAR stem (no max-pool, whose ties on
    real images' flat regions let eager and compiled backward pick different subgradients)."""
    cfg = make_cfg(tmp_path, freeze_iters=1, recluster_interval=0, **method_kwargs)
    cfg.data.dataset = "cifar10"
    return cfg


def build(cueco_cls: Any, tmp_path: Path, **method_kwargs: Any) -> Any:
    seed_everything(3)  # the same initial weights for every model built here
    return cueco_cls(cifar_cfg(tmp_path, **method_kwargs))


def fit(cueco_cls: Any, tmp_path: Path, batches: list, **method_kwargs: Any) -> tuple:
    """A fresh CueCo fitted on ``batches``, one optimiser step per batch."""
    model = build(cueco_cls, tmp_path, **method_kwargs)
    trainer = make_trainer(tmp_path, max_steps=STEPS, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, DataLoader(batches, batch_size=None))
    return model, trainer, read_metrics(trainer)


def backbone_gradient(backbone: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """All the backbone's parameter gradients of ``<backbone(x), g>``, flattened, float64."""
    params = list(backbone.parameters())
    grads = torch.autograd.grad(backbone(x.to(g.dtype)), params, grad_outputs=g)
    return torch.cat([grad.double().flatten() for grad in grads])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.slow
def test_compiled_backbones_train_like_eager_ones_and_keep_the_checkpoint_format(
    shared_datasets: Path, tmp_path: Path, cueco_cls: Any
) -> None:
    import torch._dynamo

    batches = real_batches(shared_datasets)
    eager, _, eager_rows = fit(cueco_cls, tmp_path / "eager", batches)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    # the compiled backbone's gradient is as close to the exact (float64) one as eager float32's
    x, g = batches[0][1][0], torch.randn(BATCH, 512, generator=torch.Generator().manual_seed(1))
    reference = build(cueco_cls, tmp_path).backbone.train()
    exact = backbone_gradient(copy.deepcopy(reference).double(), x, g.double())
    eager_error = relative_error(backbone_gradient(reference, x, g), exact)
    probe = build(cueco_cls, tmp_path, compile_backbones=True).backbone.train()
    compiled_error = relative_error(backbone_gradient(probe, x, g), exact)
    assert compiled_error <= max(2 * eager_error, 1e-5), (compiled_error, eager_error)

    compiled, trainer, compiled_rows = fit(
        cueco_cls, tmp_path / "compiled", batches, compile_backbones=True
    )
    # inductor really compiled both backbones: the training forward (and its backward) and
    # the momentum forward under no_grad; no graph breaks
    assert compiled.backbone._compiled_call_impl is not None
    assert compiled.momentum_backbone._compiled_call_impl is not None
    assert eager.backbone._compiled_call_impl is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2
    assert not torch._dynamo.utils.counters["graph_break"]

    # the same losses at every step (float rounding only), the cluster losses on at the last
    for key in ("train_nce_loss", "train_centroid_loss", "train_variance_loss"):
        ours, theirs = step_rows(compiled_rows, key), step_rows(eager_rows, key)
        assert sorted(ours) == sorted(theirs) == list(range(STEPS)), key
        for step in theirs:
            assert ours[step] == pytest.approx(theirs[step], rel=1e-3, abs=1e-6), (key, step)
    assert step_rows(eager_rows, "train_centroid_loss")[STEPS - 1] > 0

    # the checkpoint has the eager model's keys and loads into an eager CueCo (strict)
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert list(state) == list(eager.state_dict())
    assert not any("_orig_mod" in key for key in state)
    fresh = build(cueco_cls, tmp_path)
    initial = {k: v.clone() for k, v in fresh.momentum_backbone.state_dict().items()}
    fresh.load_state_dict(state, strict=True)
    loaded = fresh.state_dict()
    for name, p in compiled.state_dict().items():
        assert torch.equal(loaded[name], p) if torch.is_tensor(p) else loaded[name] == p, name

    # solo-learn's momentum update moved the compiled model's momentum backbone as the eager
    # one: the same displacement from the common initial weights (float rounding only)
    def displacement(model: Any) -> torch.Tensor:
        state = model.momentum_backbone.state_dict()
        return torch.cat(
            [(state[k] - v).flatten() for k, v in initial.items() if v.is_floating_point()]
        )

    moved = displacement(compiled)
    assert moved.abs().max() > 0
    assert relative_error(moved, displacement(eager)) < 1e-2


def test_compile_options_default_to_eager_and_reject_bad_values_naming_them(
    tmp_path: Path, cueco_cls: Any
) -> None:
    cfg = cueco_cls.add_and_assert_specific_cfg(make_cfg(tmp_path))
    assert cfg.method_kwargs.compile_backbones is False
    assert cfg.method_kwargs.compile_mode == "default"
    for key, value, allowed in (
        ("compile_backbones", "yes", "true or false"),
        ("compile_backbones", 1, "true or false"),
        ("compile_mode", "fast", "one of ['default']"),
        # the CUDA-graph modes (never run) and the unmeasured no-cudagraphs autotuning
        ("compile_mode", "reduce-overhead", "one of ['default']"),
        ("compile_mode", "max-autotune", "one of ['default']"),
        ("compile_mode", "max-autotune-no-cudagraphs", "one of ['default']"),
    ):
        with pytest.raises(ValueError) as info:
            cueco_cls.add_and_assert_specific_cfg(make_cfg(tmp_path, **{key: value}))
        message = str(info.value)
        assert f"method_kwargs.{key}" in message and repr(value) in message, message
        assert allowed in message, message
