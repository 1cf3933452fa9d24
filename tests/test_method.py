"""CueCo as a solo-learn method, fitted by a real Lightning Trainer on real CIFAR-10 PNGs through
solo-learn's own data pipeline (pretrain crops, classification loader for validation)."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import requires_solo
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import Subset
from torchvision import transforms

from cueco_plugin import register
from cueco_plugin.bank import ENTROPY_FLOOR
from cueco_plugin.metrics import cluster_scores, contingency_table

try:
    from solo.data import classification_dataloader as cls_data
    from solo.data.pretrain_dataloader import (
        FullTransformPipeline,
        NCropAugmentation,
        build_transform_pipeline,
        prepare_dataloader,
        prepare_datasets,
    )
except ImportError:  # without solo-learn every test here is skipped by requires_solo
    pass

pytestmark = [requires_solo, pytest.mark.solo]

BATCH = 8
NUM_CLUSTERS = 10
DIM = 32


def make_cfg(dataset_root: Path, **method_kwargs: Any) -> Any:
    """A config as solo-learn's parse_cfg leaves it, for the custom CIFAR-10 image folder."""
    kwargs = {
        "proj_hidden_dim": 64,
        "proj_output_dim": DIM,
        "queue_size": 8 * BATCH,
        "num_clusters": NUM_CLUSTERS,
        "freeze_iters": 2,
        "recluster_interval": 6,
        "dead_cluster_steps": 4,
        "lloyd_iters": 3,
        "cld_dim": 16,
    }
    kwargs.update(method_kwargs)
    cfg = OmegaConf.create(
        {
            "name": "cueco-test",
            "method": "cueco",
            "seed": 5,
            "backbone": {"name": "resnet18"},
            "method_kwargs": kwargs,
            "momentum": {"base_tau": 0.99, "final_tau": 0.999},
            "data": {
                "dataset": "custom",
                "train_path": str(dataset_root / "train"),
                "val_path": str(dataset_root / "val"),
                "format": "image_folder",
                "num_workers": 0,
                "num_classes": 10,
                "num_large_crops": 2,
                "num_small_crops": 0,
            },
            "optimizer": {
                "name": "sgd",
                "batch_size": BATCH,
                "lr": 0.05,
                "classifier_lr": 0.05,
                "weight_decay": 1e-5,
                "kwargs": {"momentum": 0.9},
            },
            "scheduler": {"name": "warmup_cosine", "warmup_epochs": 0},
            "max_epochs": 1,
            "devices": 1,
            "num_nodes": 1,
            "accelerator": "cpu",
            "performance": {"disable_channel_last": True},
        }
    )
    OmegaConf.set_struct(cfg, False)
    return cfg


AUGMENTATION = {
    "crop_size": 32,
    "num_crops": 2,
    "rrc": {"enabled": True, "crop_min_scale": 0.2, "crop_max_scale": 1.0},
    "color_jitter": {
        "prob": 0.8,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
    },
    "grayscale": {"prob": 0.2},
    "gaussian_blur": {"prob": 0.0},
    "solarization": {"prob": 0.0},
    "equalization": {"prob": 0.0},
    "horizontal_flip": {"prob": 0.5},
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2470, 0.2435, 0.2616],
}


def make_loaders(cfg: Any, with_val: bool = True) -> tuple[Any, Any]:
    """solo-learn's pretraining loader (two 32 px crops) and its classification val loader
    (on a class-balanced tenth of the validation folder)."""
    aug = OmegaConf.create(AUGMENTATION)
    transform = FullTransformPipeline(
        [NCropAugmentation(build_transform_pipeline(cfg.data.dataset, aug), aug.num_crops)]
    )
    train_dataset = prepare_datasets(
        cfg.data.dataset,
        transform,
        train_data_path=cfg.data.train_path,
        data_format=cfg.data.format,
    )
    train_loader = prepare_dataloader(train_dataset, batch_size=BATCH, num_workers=0)
    if not with_val:
        return train_loader, None
    val_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(AUGMENTATION["mean"], AUGMENTATION["std"])]
    )
    train_ds, val_ds = cls_data.prepare_datasets(
        cfg.data.dataset,
        val_transform,
        val_transform,
        train_data_path=cfg.data.train_path,
        val_data_path=cfg.data.val_path,
        data_format=cfg.data.format,
    )
    # every 10th validation image: 50 images, 5 of each of the 10 classes
    val_subset = Subset(val_ds, range(0, len(val_ds), 10))
    _, val_loader = cls_data.prepare_dataloaders(train_ds, val_subset, batch_size=25, num_workers=0)
    return train_loader, val_loader


def make_trainer(tmp_path: Path, callbacks: list | None = None, **kwargs: Any) -> Any:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": CSVLogger(str(tmp_path), name="logs"),
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "deterministic": True,
        "callbacks": callbacks or [],
    }
    options.update(kwargs)
    return Trainer(**options)


def read_metrics(trainer: Any) -> list[dict[str, str]]:
    trainer.logger.save()
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def step_rows(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key) not in (None, "")}


class BankRecorder(Callback):
    """Records the bank before every training batch and at the end of training, i.e. after
    0, 1, ..., n batches (callbacks' on_train_batch_end runs before the module's)."""

    def __init__(self) -> None:
        self.centroids: list[torch.Tensor] = []
        self.num_updates: list[int] = []
        self.num_clusterings: list[int] = []
        self.pending: list[int] = []

    def _record(self, pl_module: Any) -> None:
        self.centroids.append(pl_module.bank.centroids.detach().clone())
        self.num_updates.append(pl_module.bank.num_updates)
        self.num_clusterings.append(pl_module.bank.num_clusterings)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._record(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pending = pl_module.bank._pending  # the keys the bank will apply at this optimiser step
        self.pending.append(0 if pending is None else int(pending[:, -1].sum()))

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(pl_module)


@pytest.fixture(scope="module")
def cifar_folder(shared_datasets: Path) -> Path:
    root = shared_datasets / "cifar10-folder-small"
    if not (root / "train").is_dir():
        pytest.skip(f"{root} not found")
    return root


@pytest.fixture(scope="module")
def cueco_cls() -> Any:
    return register()


def test_fit_logs_losses_cluster_health_and_validation_metrics_following_the_schedule(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    seed_everything(0)
    cfg = make_cfg(cifar_folder)
    model = cueco_cls(cfg)
    train_loader, val_loader = make_loaders(cfg)
    recorder = BankRecorder()
    trainer = make_trainer(tmp_path, [recorder], limit_train_batches=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_loader, val_loader)

    assert trainer.global_step == 8
    bank = model.bank
    # one bank update per optimiser step; seeded at step 0 and re-seeded at recluster_interval=6
    assert bank.num_updates == 8
    assert recorder.num_updates == list(range(9))
    assert recorder.num_clusterings == [0, 1, 1, 1, 1, 1, 1, 2, 2]
    assert bank.last_cluster_update == 6
    # centroids move by momentum on every step without a re-seed (after steps 1..6)
    for before, after in zip(recorder.centroids[1:6], recorder.centroids[2:7]):
        assert not torch.allclose(before, after)
    torch.testing.assert_close(bank.centroids.norm(dim=1), torch.ones(NUM_CLUSTERS))
    # the queue holds 8 steps x 8 keys per view = all 64 slots
    assert model.queue.num_filled == 64 and model.queue.ptr == 0

    rows = read_metrics(trainer)
    nce = step_rows(rows, "train_nce_loss")
    centroid = step_rows(rows, "train_centroid_loss")
    variance = step_rows(rows, "train_variance_loss")
    active = step_rows(rows, "train_cluster_weight")
    assert sorted(nce) == list(range(8))
    for values in (nce, centroid, variance):
        assert all(math.isfinite(v) for v in values.values())
    assert all(v > 0 for v in nce.values())
    # freeze_iters=2 after the seeding at step 0 and the re-seeding at step 6
    frozen, live = [0, 1, 6, 7], [2, 3, 4, 5]
    assert [active[s] for s in range(8)] == [0, 0, 1, 1, 1, 1, 0, 0]
    assert all(centroid[s] == 0.0 and variance[s] == 0.0 for s in frozen)
    assert all(centroid[s] > 0.0 and variance[s] > 0.0 for s in live)

    for key, lo, hi in [
        ("train_live_clusters", 1, NUM_CLUSTERS),
        ("train_usage_entropy", 0.0, 1.0 + 1e-6),
        ("train_mean_variance", 1e-12, 10.0),
        ("train_feature_std", 1e-6, 1.0),
    ]:
        values = step_rows(rows, key)
        assert sorted(values) == list(range(8)), key
        assert all(lo <= v <= hi for v in values.values()), (key, values)

    val = {k: v for r in rows for k, v in r.items() if k.startswith("val_cluster") and v}
    assert set(val) == {"val_cluster_acc", "val_cluster_acc_m2o", "val_cluster_nmi"}
    scores = {k: float(v) for k, v in val.items()}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    # K=10 clusters, 10 classes: many-to-one is at least one-to-one
    assert scores["val_cluster_acc_m2o"] >= scores["val_cluster_acc"] > 0.0
    # the logged metrics are those of every validation image's nearest centroid
    model.eval()
    with torch.no_grad():
        pairs = [(bank.assign(model(x)["z"]), y) for x, y in val_loader]
    table = contingency_table(
        torch.cat([p for p, _ in pairs]), torch.cat([y for _, y in pairs]), NUM_CLUSTERS, 10
    )
    expected = cluster_scores(table)
    assert sum(len(y) for _, y in pairs) == 50
    assert scores["val_cluster_acc"] == pytest.approx(expected["acc"], abs=1e-6)
    assert scores["val_cluster_acc_m2o"] == pytest.approx(expected["acc_m2o"], abs=1e-6)
    assert scores["val_cluster_nmi"] == pytest.approx(expected["nmi"], abs=1e-6)


class OneImage(Callback):
    """From the second batch on, every image of both views is the batch's first image: the keys
    all fall into one cluster (a collapse of the features, as the bank sees it)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx >= 1:
            for view in batch[1]:
                view.copy_(view[:1].expand_as(view))


def test_an_epoch_whose_keys_meet_one_cluster_warns_and_stop_on_collapse_stops_it(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    # K 10, 6 steps of 16 keys (96 >= 4 K, enough to judge): seeded on real images at step 0,
    # then every key is one image's and the epoch's usage entropy falls far below the floor
    kwargs = {"freeze_iters": 0, "recluster_interval": 0, "dead_cluster_steps": 0}
    kwargs["collapse_threshold"] = 0  # the features' spread guard would stop it first
    seed_everything(4)
    model = cueco_cls(make_cfg(cifar_folder, **kwargs))
    train_loader, _ = make_loaders(model.cfg, with_val=False)
    trainer = make_trainer(tmp_path, [OneImage()], limit_train_batches=6, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"cluster collapse in epoch 0: .* usage entropy is 0"):
        trainer.fit(model, train_loader)
    rows = read_metrics(trainer)
    entropy = [
        float(r["train_epoch_usage_entropy"]) for r in rows if r.get("train_epoch_usage_entropy")
    ]
    assert len(entropy) == 1 and entropy[0] < ENTROPY_FLOOR

    seed_everything(4)
    model = cueco_cls(make_cfg(cifar_folder, stop_on_collapse=True, **kwargs))
    trainer = make_trainer(
        tmp_path / "stop", [OneImage()], limit_train_batches=6, limit_val_batches=0
    )
    with pytest.raises(RuntimeError, match=r"cluster collapse in epoch 0: .*stop_on_collapse"):
        trainer.fit(model, train_loader)


def test_an_epoch_with_too_few_keys_to_judge_is_logged_but_not_judged(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    # K 40 and 3 steps of 16 keys: at most 48 keys counted, under 4 K; stop_on_collapse on
    kwargs = {"num_clusters": 40, "freeze_iters": 0, "recluster_interval": 0}
    seed_everything(4)
    model = cueco_cls(make_cfg(cifar_folder, stop_on_collapse=True, **kwargs))
    train_loader, _ = make_loaders(model.cfg, with_val=False)
    trainer = make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train_loader)
    assert not [w for w in caught if "cluster collapse" in str(w.message)]  # nor a warning
    rows = read_metrics(trainer)
    live = [
        float(r["train_epoch_live_clusters"]) for r in rows if r.get("train_epoch_live_clusters")
    ]
    assert model.bank.seeded and len(live) == 1 and 1 <= live[0] < 20


def test_gradient_accumulation_moves_the_bank_once_per_optimiser_step(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    seed_everything(1)
    cfg = make_cfg(cifar_folder, freeze_iters=0, recluster_interval=0, dead_cluster_steps=0)
    cfg.accumulate_grad_batches = 2
    model = cueco_cls(cfg)
    train_loader, _ = make_loaders(cfg, with_val=False)
    recorder = BankRecorder()
    trainer = make_trainer(
        tmp_path,
        [recorder],
        limit_train_batches=8,
        limit_val_batches=0,
        accumulate_grad_batches=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_loader)

    assert trainer.global_step == 4
    assert model.bank.num_updates == 4
    # the bank moved only on the micro-batches that stepped the optimiser
    assert recorder.num_updates == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    # and no key was lost: each optimiser step applies its 2 micro-batches x 2 views x 8 keys
    assert recorder.pending == [2 * BATCH, 4 * BATCH] * 4  # 2 views x 8 keys per micro-batch


def test_query_assignment_and_multiply_scaling_train_with_finite_cluster_losses(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    seed_everything(2)
    cfg = make_cfg(
        cifar_folder,
        assignment_source="query",
        variance_scaling="multiply",
        freeze_iters=0,
        recluster_interval=0,
    )
    model = cueco_cls(cfg)
    train_loader, _ = make_loaders(cfg, with_val=False)
    trainer = make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_loader)
    rows = read_metrics(trainer)
    for key in ("train_nce_loss", "train_centroid_loss", "train_variance_loss"):
        values = step_rows(rows, key)
        assert sorted(values) == [0, 1, 2]
        assert all(math.isfinite(v) and v > 0 for v in values.values()), (key, values)


def test_key_targets_pair_each_query_with_the_other_views_key() -> None:
    from cueco_plugin.method import swap_views

    k1_clusters, k2_clusters = torch.tensor([3, 1, 4]), torch.tensor([0, 5, 9])
    targets = swap_views(torch.cat([k1_clusters, k2_clusters]))
    # q1's targets are k2's clusters and q2's are k1's (L1's positive pairs)
    assert targets.tolist() == [0, 5, 9, 3, 1, 4]


class SeedEachEpoch(Callback):
    """Makes the global RNG (data order, augmentations) a function of the epoch only, as an
    uninterrupted run and a resumed one draw it at different points otherwise."""

    def __init__(self, first_epoch: int = 0) -> None:
        self.first_epoch = first_epoch

    def on_fit_start(self, trainer, pl_module) -> None:
        seed_everything(100 + self.first_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seed_everything(100 + trainer.current_epoch + 1)


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def test_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    n = 4
    # re-seed at step 5 (after the resume point) so the schedule must survive the checkpoint
    method_kwargs = {"freeze_iters": 1, "recluster_interval": 5, "dead_cluster_steps": 2}

    def run(callbacks: list, name: str, ckpt_path: str | None = None) -> tuple[Any, Any]:
        seed_everything(0)
        cfg = make_cfg(cifar_folder, **method_kwargs)
        cfg.max_epochs = 2
        model = cueco_cls(cfg)
        train_loader, _ = make_loaders(cfg, with_val=False)
        trainer = make_trainer(
            tmp_path / name,
            callbacks,
            max_epochs=2,
            limit_train_batches=n,
            limit_val_batches=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, train_loader, ckpt_path=ckpt_path)
        return model, trainer

    full, full_trainer = run([SeedEachEpoch()], "full")
    half, half_trainer = run([SeedEachEpoch(), StopAfterFirstEpoch()], "half")
    assert half_trainer.global_step == n and half.bank.num_updates == n
    ckpt = tmp_path / "half.ckpt"
    half_trainer.save_checkpoint(str(ckpt))
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert stored["bank._extra_state"]["num_updates"] == n
    assert stored["queue._extra_state"]["num_filled"] == n * BATCH

    resumed, resumed_trainer = run([SeedEachEpoch(first_epoch=1)], "resumed", str(ckpt))

    assert full_trainer.global_step == resumed_trainer.global_step == 2 * n
    assert full.bank.get_extra_state() == resumed.bank.get_extra_state()
    assert full.bank.num_updates == 2 * n and full.bank.num_clusterings == 2
    assert full.queue.get_extra_state() == resumed.queue.get_extra_state()
    exact = dict(rtol=1e-5, atol=1e-6)
    for name in ("centroids", "variances", "usage", "last_active"):
        torch.testing.assert_close(
            getattr(full.bank, name), getattr(resumed.bank, name), **exact, msg=name
        )
    torch.testing.assert_close(full.queue.keys, resumed.queue.keys, **exact)
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, **exact, msg=key)
    final = {}
    for trainer in (full_trainer, resumed_trainer):
        last = max(step_rows(read_metrics(trainer), "train_nce_loss").items())
        final[trainer] = last
    assert final[full_trainer][0] == final[resumed_trainer][0] == 2 * n - 1
    assert final[full_trainer][1] == pytest.approx(final[resumed_trainer][1], rel=1e-5)
    for key in ("train_centroid_loss", "train_variance_loss"):
        a = step_rows(read_metrics(full_trainer), key)[2 * n - 1]
        b = step_rows(read_metrics(resumed_trainer), key)[2 * n - 1]
        assert a == pytest.approx(b, rel=1e-5) and a > 0


BAD_METHOD_KWARGS = [
    ("proj_output_dim", 0, "an integer >= 1"),
    ("proj_hidden_dim", 2.5, "an integer >= 1"),
    ("temperature", 0.0, "a finite number > 0"),
    ("centroid_temperature", -0.1, "a finite number > 0"),
    ("queue_size", 0, "an integer >= 1"),
    ("num_clusters", 1, "an integer >= 2"),
    ("lambda_variance", -1.0, "a finite number >= 0"),
    ("centroid_momentum", 1.0, "a number in [0, 1)"),
    ("variance_momentum", -0.1, "a number in [0, 1)"),
    ("variance_scaling", "sqrt", "one of ['divide', 'multiply', 'none']"),
    ("variance_eps", 0, "a finite number > 0"),
    ("assignment_source", "momentum", "one of ['key', 'query']"),
    ("freeze_iters", -1, "an integer >= 0"),
    ("recluster_interval", 5, "freeze_iters must be smaller than method_kwargs.recluster_interval"),
    ("warmup_iters", -3, "an integer >= 0"),
    ("ramp_iters", 1.5, "an integer >= 0"),
    ("recluster_init", "random", "one of ['warm', 'kmeans++']"),
    ("sinkhorn_iters", 0, "an integer >= 1"),
    ("sinkhorn_epsilon", float("inf"), "a finite number > 0"),
    ("stop_on_collapse", "yes", "true or false"),
    ("collapse_threshold", -1, "a finite number >= 0"),
    ("dead_cluster_steps", True, "an integer >= 0"),
    ("lloyd_iters", "ten", "an integer >= 0"),
    ("num_clusterz", 10, "unknown key"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BAD_METHOD_KWARGS)
def test_bad_method_kwargs_raise_value_error_naming_key_value_and_allowed(
    tmp_path: Path, cueco_cls: Any, key: str, value: Any, allowed: str
) -> None:
    method_kwargs = {"freeze_iters": 5, "recluster_interval": 100, key: value}
    with pytest.raises(ValueError) as info:
        cueco_cls.add_and_assert_specific_cfg(make_cfg(tmp_path, **method_kwargs))
    message = str(info.value)
    assert key in message and allowed in message
    assert repr(value) in message or key == "num_clusterz"
    # and the model refuses to build, so nothing trains
    with pytest.raises(ValueError):
        cueco_cls(make_cfg(tmp_path, **method_kwargs))


def test_all_zero_lambdas_are_rejected(tmp_path: Path, cueco_cls: Any) -> None:
    cfg = make_cfg(tmp_path, lambda_nce=0.0, lambda_centroid=0, lambda_variance=0.0, lambda_cld=0.0)
    with pytest.raises(ValueError, match="must not all be 0"):
        cueco_cls.add_and_assert_specific_cfg(cfg)


def test_defaults_fill_every_cueco_key(tmp_path: Path, cueco_cls: Any) -> None:
    from cueco_plugin.config import CUECO_DEFAULTS

    cfg = make_cfg(tmp_path)
    del cfg.method_kwargs["dead_cluster_steps"]
    cfg.method_kwargs.lloyd_iters = None
    cfg = cueco_cls.add_and_assert_specific_cfg(cfg)
    assert cfg.method_kwargs.dead_cluster_steps == 100 and cfg.method_kwargs.lloyd_iters == 10
    assert set(cfg.method_kwargs) == set(CUECO_DEFAULTS)
    assert cfg.method_kwargs.temperature == 0.2
    assert cfg.method_kwargs.assignment_source == "key"
    # the CPU screen's winner (docs/results.md): L1 + CLD, the bank's losses weighted 0
    mk = cfg.method_kwargs
    assert (mk.lambda_nce, mk.lambda_centroid, mk.lambda_variance, mk.lambda_cld) == (1, 0, 0, 0.8)
    assert cfg.momentum.base_tau == 0.99


def test_cluster_health_written_to_loggers_is_computed_on_the_step_it_is_written(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    # health values are only computed on the steps Lightning writes to its loggers; with
    # log_every_n_steps=3 those are steps 2 and 5, and freeze_iters=2 turns the cluster
    # losses on exactly at step 2, so a stale (step-0) value would read 0 there
    seed_everything(2)
    cfg = make_cfg(cifar_folder, freeze_iters=2, recluster_interval=0, dead_cluster_steps=0)
    model = cueco_cls(cfg)
    train_loader, _ = make_loaders(cfg, with_val=False)
    trainer = make_trainer(
        tmp_path, limit_train_batches=6, limit_val_batches=0, log_every_n_steps=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_loader)

    rows = read_metrics(trainer)
    assert step_rows(rows, "train_cluster_weight") == {2: 1.0, 5: 1.0}
    assert sorted(step_rows(rows, "train_nce_loss")) == [2, 5]


def fit_steps(
    tmp_path: Path, cueco_cls: Any, steps: int, callbacks: list | None = None, **kwargs: Any
) -> tuple[Any, list[dict[str, str]]]:
    """Fits a fresh CueCo for ``steps`` optimiser steps (no validation); returns the model and
    the CSV rows Lightning logged on every step."""
    trainer_kwargs = kwargs.pop("trainer", {})
    seed_everything(3)
    cfg = make_cfg(tmp_path, **kwargs)
    model = cueco_cls(cfg)
    train_loader, _ = make_loaders(cfg, with_val=False)
    trainer = make_trainer(
        tmp_path, callbacks, limit_train_batches=steps, limit_val_batches=0, **trainer_kwargs
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_loader)
    return model, read_metrics(trainer)


def test_warmup_keeps_cluster_losses_at_zero_then_seeds_the_bank_from_the_queue(
    cifar_folder: Path, tmp_path: Path, cueco_cls: Any
) -> None:
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    for name in ("train", "val"):
        (cfg_dir / name).symlink_to(cifar_folder / name)
    model, rows = fit_steps(
        cfg_dir, cueco_cls, 6, warmup_iters=3, freeze_iters=0, recluster_interval=0
    )
    centroid = step_rows(rows, "train_centroid_loss")
    variance = step_rows(rows, "train_variance_loss")
    assert [centroid[s] for s in range(3)] == [0.0, 0.0, 0.0]
    assert [variance[s] for s in range(3)] == [0.0, 0.0, 0.0]
    assert all(centroid[s] > 0 and variance[s] > 0 for s in range(3, 6))
    # seeded once, at the end of the warm-up, with the queue's 3 steps of real keys
    assert model.bank.num_clusterings == 1 and model.bank.seed_update == 3


def test_warm_reclustering_keeps_the_losses_on_and_ramp_raises_their_weight_linearly(
    cifar_folder: Path, tmp_path: Path, cueco_cls: Any
) -> None:
    model, rows = fit_steps(
        cifar_folder,
        cueco_cls,
        6,
        warmup_iters=1,
        freeze_iters=0,
        ramp_iters=4,
        recluster_interval=2,
        recluster_init="warm",
    )
    weight = step_rows(rows, "train_cluster_weight")
    assert [weight[s] for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    centroid = step_rows(rows, "train_centroid_loss")
    assert all(centroid[s] > 0 for s in range(1, 6))
    # seeded at step 1, re-clustered at steps 3 and 5, the losses never frozen
    assert model.bank.num_clusterings == 3 and model.bank.last_cluster_update == 5


class SkipRecorder(Callback):
    """Records the centroids before each batch and whether the GradScaler skipped that step
    (callbacks' on_train_batch_end runs before the module's, which resets the flag)."""

    def __init__(self) -> None:
        self.skipped: list[bool] = []
        self.before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(pl_module.bank.centroids.clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.skipped.append(pl_module._skipped is not None and bool(pl_module._skipped))


def test_bank_does_not_move_on_an_optimiser_step_the_grad_scaler_skipped(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    from lightning.pytorch.plugins.precision import MixedPrecisionPlugin

    # a huge initial loss scale makes the first steps overflow: the scaler skips them
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=2.0**40, backoff_factor=2.0**-16, growth_interval=1000
    )
    plugin = MixedPrecisionPlugin("16-mixed", device="cpu", scaler=scaler)
    recorder = SkipRecorder()
    model, _ = fit_steps(
        cifar_folder,
        cueco_cls,
        4,
        [recorder],
        freeze_iters=0,
        recluster_interval=0,
        dead_cluster_steps=0,
        trainer={"plugins": [plugin]},
    )
    skipped = recorder.skipped
    after = recorder.before[1:] + [model.bank.centroids]
    assert any(skipped) and not all(skipped), skipped
    for step in range(1, len(skipped)):  # step 0 seeds the bank inside its training_step
        moved = not torch.equal(recorder.before[step], after[step])
        assert moved != skipped[step], (step, skipped)


def test_bf16_run_with_a_non_finite_key_keeps_the_bank_finite(
    tmp_path: Path, cifar_folder: Path, cueco_cls: Any
) -> None:
    class PoisonOneKey(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 2:  # a NaN image gives NaN keys for that sample
                batch[1][1][0].fill_(float("nan"))

    model, rows = fit_steps(
        cifar_folder,
        cueco_cls,
        5,
        [PoisonOneKey()],
        freeze_iters=0,
        recluster_interval=2,
        trainer={"precision": "bf16-mixed"},
    )
    assert model.bank.num_clusterings == 3  # re-seeded from a queue that held the NaN keys
    for name in ("centroids", "variances", "usage"):
        assert torch.isfinite(getattr(model.bank, name)).all(), name
    assert torch.isfinite(model.queue.keys).all()


def test_foreach_momentum_update_equals_solo_learns_loop_bit_for_bit() -> None:
    import torchvision
    from solo.utils.momentum import MomentumUpdater

    from cueco_plugin.method import ForeachMomentumUpdater

    torch.manual_seed(0)
    online = torchvision.models.resnet18()
    theirs, ours = torchvision.models.resnet18(), torchvision.models.resnet18()
    ours.load_state_dict(theirs.state_dict())
    solo_updater, foreach_updater = MomentumUpdater(0.99, 1.0), ForeachMomentumUpdater(0.99, 1.0)
    for step in range(3):
        for updater in (solo_updater, foreach_updater):
            updater.update_tau(step, 10)
        solo_updater.update(online, theirs)
        foreach_updater.update(online, ours)
    for (name, a), b in zip(theirs.named_parameters(), ours.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(next(theirs.parameters()), next(online.parameters()))
