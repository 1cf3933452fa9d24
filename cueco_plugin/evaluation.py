"""Offline evaluation of a CueCo checkpoint on any device: load the run, read labelled images,
extract features, weighted k-NN (solo-learn's ``WeightedKNNClassifier``) and the bank's
unsupervised classification (:mod:`cueco_plugin.metrics`).

The model is rebuilt the way solo-learn's ``main_knn.py`` does it: the run folder's ``args.json``
is the config, the class comes from the method table (``register()``), the checkpoint's
``state_dict`` is loaded into it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from cueco_plugin.metrics import cluster_scores, contingency_table
from cueco_plugin.registration import register

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODEL_PARTS = ("backbone.", "projector.", "bank.")


class EvaluationError(ValueError):
    """Bad input to the evaluation (checkpoint, data, option); the message is one line."""


# ----------------------------------------------------------------------------- checkpoint
def find_checkpoint(path: str | Path) -> Path:
    """The ``.ckpt`` a checkpoint path or a run folder (its newest ``.ckpt``) names."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"checkpoint or run folder not found: {path}")
    if path.is_dir():
        found = sorted(path.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise EvaluationError(f"no .ckpt file in run folder {path}")
        return found[-1]
    return path


def load_cueco(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, Path]:
    """Rebuilds a CueCo model from a checkpoint (or run folder) and the ``args.json`` beside it.

    Returns:
        (model in eval mode on ``device``, its OmegaConf config, the ``.ckpt`` path).

    Raises:
        EvaluationError: missing/unreadable checkpoint or args.json, another method's
            checkpoint, a state_dict that does not match the config.
    """
    ckpt = find_checkpoint(path)
    args_path = ckpt.parent / "args.json"
    if not args_path.is_file():
        raise EvaluationError(
            f"{ckpt} has no args.json beside it: solo-learn's Checkpointer writes one into the run "
            "folder; evaluate a checkpoint inside its run folder"
        )
    try:
        cfg = OmegaConf.create(json.loads(args_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise EvaluationError(f"cannot read {args_path}: {err}") from err
    method = cfg.get("method")
    if method != "cueco":
        raise EvaluationError(
            f"{ckpt} is a {method!r} checkpoint (args.json method), not a CueCo checkpoint"
        )
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EvaluationError(f"cannot read checkpoint {ckpt}: {first_line}") from err
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "bank.centroids" not in state:
        raise EvaluationError(
            f"{ckpt} is not a CueCo checkpoint: it has no state_dict with bank.centroids"
        )
    cls = register()
    try:
        # fills defaults of options added after the run was trained, validates the rest
        cfg = cls.add_and_assert_specific_cfg(cfg)
        model = cls(cfg)
    except Exception as err:  # noqa: BLE001 - config errors of any kind, one line
        raise EvaluationError(f"{args_path} does not build a CueCo model: {err}") from err
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if key.startswith(MODEL_PARTS)]
    if missing:
        raise EvaluationError(
            f"{ckpt} does not match its args.json: {len(missing)} weights missing, "
            f"e.g. {missing[0]}"
        )
    return model.to(device).eval(), cfg, ckpt


def normalisation(cfg: Any) -> tuple[Sequence[float], Sequence[float]]:
    """The mean and std the run trained with (its first augmentation), else ImageNet's."""
    augs = cfg.get("augmentations") or [{}]
    first = augs[0] if len(augs) else {}
    mean, std = first.get("mean"), first.get("std")
    if mean is None or std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(mean), tuple(std)


# ----------------------------------------------------------------------------- images
class LabelledImages(Dataset):
    """Labelled RGB images from a class-per-subfolder image folder or a CIFAR-style ``.npz``
    (``images`` (N, H, W, 3) uint8, ``labels`` (N,), optional ``class_names``).

    ``dataset[i]`` is ``(image (3, H, W) float normalised, label)``; :meth:`raw` gives the
    (H, W, 3) uint8 picture for galleries.
    """

    def __init__(self, path: str | Path, transform: Any):
        self.path = Path(path)
        self.transform = transform
        self.array: np.ndarray | None = None
        self.files: list[str] = []
        if not self.path.exists():
            raise EvaluationError(f"data not found: {self.path}")
        if self.path.is_dir():
            try:
                folder = ImageFolder(str(self.path))
            except (FileNotFoundError, RuntimeError) as err:
                raise EvaluationError(
                    f"{self.path} is not an image folder with one subfolder of images per class: "
                    f"{err}"
                ) from err
            self.files = [file for file, _ in folder.samples]
            self.labels = torch.tensor(folder.targets, dtype=torch.long)
            self.class_names = list(folder.classes)
        elif self.path.suffix == ".npz":
            with np.load(self.path) as data:
                if "images" not in data or "labels" not in data:
                    raise EvaluationError(
                        f"{self.path} has arrays {sorted(data.files)}; expected 'images' "
                        "(N, H, W, 3) uint8 and 'labels' (N,)"
                    )
                self.array = data["images"]
                self.labels = torch.as_tensor(data["labels"], dtype=torch.long)
                names = data["class_names"] if "class_names" in data else None
            if self.array.ndim != 4 or self.array.shape[-1] != 3:
                raise EvaluationError(
                    f"{self.path}: 'images' has shape {self.array.shape}, expected (N, H, W, 3)"
                )
            num_classes = int(self.labels.max()) + 1
            self.class_names = [str(n) for n in names] if names is not None else None
            self.class_names = self.class_names or [str(c) for c in range(num_classes)]
        else:
            raise EvaluationError(f"data {self.path} is neither an image folder nor a .npz file")

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 image ``index``."""
        if self.array is not None:
            return self.array[index]
        with Image.open(self.files[index]) as image:
            return np.asarray(image.convert("RGB"))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.array is not None:
            image = Image.fromarray(self.array[index])
        else:
            with Image.open(self.files[index]) as file:
                image = file.convert("RGB")
        return self.transform(image), int(self.labels[index])

    def check_one_size(self) -> None:
        """Raises EvaluationError naming two images of different sizes (they cannot be batched
        without ``--image-size``)."""
        if self.array is not None:
            return
        first = None
        for file in self.files:
            with Image.open(file) as image:
                size = image.size
            if first is None:
                first = (file, size)
            elif size != first[1]:
                raise EvaluationError(
                    f"images of different sizes in {self.path}: {first[0]} is "
                    f"{first[1][0]}x{first[1][1]}, {file} is {size[0]}x{size[1]}; pass "
                    "--image-size N to resize and centre-crop them to N x N"
                )


def image_transform(
    mean: Sequence[float], std: Sequence[float], image_size: int | None
) -> transforms.Compose:
    """ToTensor + Normalize, after Resize + CenterCrop to ``image_size`` when one is given."""
    steps: list[Any] = []
    if image_size:
        steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


# ----------------------------------------------------------------------------- features, scores
@dataclass
class Features:
    """Backbone features ``feats`` (N, F), projections ``z`` (N, D), labels (N,), on the CPU."""

    feats: torch.Tensor
    z: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def extract_features(
    model: Any,
    dataset: Dataset,
    device: str | torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    desc: str = "features",
) -> Features:
    """One pass of ``model`` (eval mode) over ``dataset``, with a progress bar."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats, z, labels = [], [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch"):
        out = model(images.to(device, non_blocking=True))
        feats.append(out["feats"].float().cpu())
        z.append(out["z"].float().cpu())
        labels.append(targets)
    return Features(torch.cat(feats), torch.cat(z), torch.cat(labels))


def weighted_knn(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """solo-learn's weighted k-NN (cosine) accuracy in %: ``{"acc1", "acc5"}``.

    Args:
        train: (N, F) bank features. test: (M, F). *_labels: (N,) / (M,) int64.
    """
    from solo.utils.knn import WeightedKNNClassifier

    knn = WeightedKNNClassifier(k=k, T=temperature, distance_fx="cosine")
    knn(
        train_features=train,
        train_targets=train_labels,
        test_features=test,
        test_targets=test_labels,
    )
    acc1, acc5 = knn.compute()
    return {"acc1": float(acc1), "acc5": float(acc5)}


@torch.no_grad()
def bank_clusters(model: Any, z: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """(N,) int64 nearest centroid of each projection ``z`` (N, D) in the model's bank."""
    if not model.bank.seeded:
        raise EvaluationError("the checkpoint's centroid bank was never seeded (no training step)")
    return model.bank.assign(z.to(device)).cpu()


def cluster_evaluation(
    clusters: torch.Tensor, labels: torch.Tensor, num_clusters: int, num_classes: int
) -> dict[str, float]:
    """Hungarian ``acc``, many-to-one ``acc_m2o``, ``nmi`` and the number of clusters used."""
    table = contingency_table(clusters, labels, num_clusters, num_classes)
    scores = cluster_scores(table)
    scores["clusters_used"] = int((table.sum(dim=1) > 0).sum())
    return scores
