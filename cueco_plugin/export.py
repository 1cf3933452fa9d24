"""Exports the backbone of a solo-learn checkpoint as a plain torchvision ResNet ``state_dict``.

solo-learn's ResNet backbones are torchvision's ``resnet18`` / ``resnet50`` with ``fc`` replaced
by ``nn.Identity`` and, for CIFAR-10/100 runs, a 3x3 stride-1 ``conv1`` and no max-pool. This
module takes the ``backbone.*`` (or ``momentum_backbone.*``) weights out of a Lightning
checkpoint, strips the prefix, and writes a ``state_dict`` that ``load_state_dict(strict=True)``
accepts on the matching torchvision model (see :func:`build_torchvision_resnet`).

Command line (console script ``cueco-export-backbone`` or ``python -m cueco_plugin.export``)::

    cueco-export-backbone trained_models/cueco/<run>/ resnet18_cueco.pth

Needs only torch and torchvision, not solo-learn.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

# torchvision ResNets, by (block type, blocks per stage)
_RESNET_LAYOUTS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_FC_CHOICES = ("classifier", "none")
_PREFIXES = {"online": "backbone.", "momentum": "momentum_backbone."}

HELP_EPILOG = """\
What gets written
  A plain dict {parameter name: tensor} with torchvision's key names (conv1.weight,
  bn1.running_mean, layer1.0.conv1.weight, ..., fc.weight, fc.bias) and a sidecar
  <output>.json with the architecture, the stem, num_classes and the source checkpoint.

The fc layer (--fc)
  classifier (default): solo-learn's online linear classifier, trained on the frozen features
      during pretraining when labels were available, becomes fc (num_classes x features). Load
      into torchvision.models.resnet18(num_classes=<num_classes>).
  none: no fc keys; set model.fc = torch.nn.Identity() before loading (features only).

The CIFAR stem
  solo-learn trains CIFAR-10/100 ResNets with conv1 = Conv2d(3, 64, 3, stride 1, padding 2,
  bias=False) and no max-pool. Such a conv1 (3x3) is written as it is: build the model with
      model = torchvision.models.resnet18(num_classes=C)
      model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 2, bias=False)
      model.maxpool = torch.nn.Identity()
  or with cueco_plugin.export.build_torchvision_resnet("resnet18", C, cifar_stem=True).
  ImageNet-style runs (imagenet100, custom) keep torchvision's 7x7 stem and load into the
  stock model.

Example
  cueco-export-backbone trained_models/cueco/offline-ab12cd34 resnet18_cueco.pth
  python -c "import torch, torchvision; m = torchvision.models.resnet18(num_classes=10);
             m.load_state_dict(torch.load('resnet18_cueco.pth'), strict=True)"

Checkpoints are unpickled with torch.load(weights_only=True) first; with --trust-pickle a
checkpoint that needs full unpickling (e.g. with pickled hyper-parameters) is loaded with
weights_only=False. Only use that on checkpoints you trust.
"""


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_backbone` wrote (also saved as ``<output>.json``)."""

    arch: str
    cifar_stem: bool
    num_classes: int | None
    features_dim: int
    encoder: str
    checkpoint: str
    output: str


def resolve_checkpoint(path: str | Path) -> Path:
    """The ``.ckpt``/``.pth``/``.pt`` file at ``path``; for a folder (solo-learn's
    ``trained_models/<method>/<run>/``), its newest such file.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the folder holds no checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix in (".ckpt", ".pth", ".pt") and p.is_file()]
        if not found:
            raise FileNotFoundError(
                f"no .ckpt/.pth/.pt file in folder {str(path)!r}: pass a solo-learn checkpoint "
                "or the run folder that holds one (trained_models/<method>/<run>/)"
            )
        return max(found, key=lambda p: p.stat().st_mtime)
    return path


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model ``state_dict`` of a Lightning checkpoint (its ``"state_dict"`` entry), or the
    file itself when it already is a flat ``{name: tensor}`` dict.

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        ValueError: the file is not a torch checkpoint or holds no state_dict.
    """
    ckpt_path = resolve_checkpoint(path)
    with ckpt_path.open("rb") as handle:
        head = handle.read(1)
    # torch.save writes a zip archive (or, legacy, a pickle starting with the PROTO opcode)
    if not zipfile.is_zipfile(ckpt_path) and head != b"\x80":
        raise ValueError(
            f"{str(ckpt_path)!r} is not a torch checkpoint (neither a torch.save zip archive "
            "nor a pickle)"
        )
    try:
        obj = torch.load(ckpt_path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if trust_pickle:
            raise ValueError(f"{str(ckpt_path)!r} is not a torch checkpoint: {err}") from err
        raise ValueError(
            f"{str(ckpt_path)!r} needs full unpickling (torch.load(weights_only=True) refused "
            "it); if you trust the file, rerun with --trust-pickle"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{str(ckpt_path)!r} is not a torch checkpoint: {err}") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return dict(obj["state_dict"])
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise ValueError(
        f"{str(ckpt_path)!r} holds no 'state_dict': expected a Lightning/solo-learn checkpoint"
    )


def _stage_blocks(keys: Sequence[str]) -> tuple[int, ...]:
    blocks = []
    for stage in range(1, 5):
        idx = {int(k.split(".")[1]) for k in keys if k.startswith(f"layer{stage}.")}
        blocks.append(max(idx) + 1 if idx else 0)
    return tuple(blocks)


def block_is_bottleneck(backbone: Mapping[str, torch.Tensor]) -> bool:
    """Whether the ResNet weights use Bottleneck blocks (resnet50 and larger)."""
    return any(".conv3." in k for k in backbone)


def detect_resnet(backbone: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """Names the torchvision ResNet that ``backbone`` (prefix-free keys) is, and whether it has
    solo-learn's CIFAR stem (3x3 ``conv1``).

    Raises:
        ValueError: the weights are not a torchvision ResNet (e.g. a ViT, Swin, ConvNeXt or
            WideResNet backbone).
    """
    keys = list(backbone)
    is_resnet = (
        "conv1.weight" in backbone
        and "bn1.weight" in backbone
        and any(k.startswith("layer4.") for k in keys)
    )
    block = "bottleneck" if block_is_bottleneck(backbone) else "basic"
    arch = _RESNET_LAYOUTS.get((block, _stage_blocks(keys))) if is_resnet else None
    if arch is None:
        sample = ", ".join(sorted(keys)[:4])
        raise ValueError(
            "backbone is not a torchvision ResNet (allowed: "
            f"{', '.join(sorted(set(_RESNET_LAYOUTS.values())))}); its weights start with: "
            f"{sample}"
        )
    kernel = tuple(backbone["conv1.weight"].shape[-2:])
    if kernel not in ((7, 7), (3, 3)):
        raise ValueError(f"conv1 kernel {kernel} is neither torchvision's 7x7 nor CIFAR's 3x3")
    return arch, kernel == (3, 3)


def build_torchvision_resnet(
    arch: str, num_classes: int | None = 1000, cifar_stem: bool = False
) -> nn.Module:
    """The torchvision model an exported ``state_dict`` loads into with ``strict=True``.

    Args:
        arch: ``"resnet18"``, ``"resnet50"``, ... (torchvision constructor name).
        num_classes: rows of ``fc``; ``None`` replaces ``fc`` with ``nn.Identity`` (``--fc none``).
        cifar_stem: solo-learn's CIFAR stem (3x3 stride-1 ``conv1``, padding 2, no max-pool).
    """
    if arch not in set(_RESNET_LAYOUTS.values()):
        raise ValueError(f"arch={arch!r} is not one of {sorted(set(_RESNET_LAYOUTS.values()))}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes or 1000)
    if num_classes is None:
        model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()
    return model


def extract_backbone(
    state_dict: Mapping[str, torch.Tensor], encoder: str = "online", fc: str = "classifier"
) -> tuple[dict[str, torch.Tensor], ExportInfo]:
    """Turns a solo-learn model ``state_dict`` into a torchvision ResNet ``state_dict``.

    Args:
        state_dict: the LightningModule's weights (``backbone.*``, ``classifier.*``, ...).
        encoder: ``"online"`` (``backbone.*``) or ``"momentum"`` (``momentum_backbone.*``).
        fc: ``"classifier"`` writes the online linear classifier as ``fc`` (momentum encoder:
            ``momentum_classifier`` when trained); ``"none"`` writes no ``fc``.

    Returns:
        The torchvision ``state_dict`` and an :class:`ExportInfo` with ``checkpoint``/``output``
        left empty.

    Raises:
        ValueError: unknown ``encoder``/``fc``, no backbone weights, a non-ResNet backbone, or
            ``fc="classifier"`` without a classifier in the checkpoint.
    """
    if encoder not in _PREFIXES:
        raise ValueError(f"encoder={encoder!r} is not allowed: use one of {sorted(_PREFIXES)}")
    if fc not in _FC_CHOICES:
        raise ValueError(f"fc={fc!r} is not allowed: use one of {list(_FC_CHOICES)}")
    prefix = _PREFIXES[encoder]
    backbone = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not backbone:
        raise ValueError(
            f"no '{prefix}*' weights in the checkpoint: is it a solo-learn pretraining checkpoint? "
            f"(its keys start with: {', '.join(sorted(state_dict)[:4])})"
        )
    arch, cifar_stem = detect_resnet(backbone)
    # solo-learn sets fc = Identity; drop anything left under fc. so we write our own
    out = {k: v.detach().clone() for k, v in backbone.items() if not k.startswith("fc.")}
    last_bn = "layer4.0.bn3.weight" if block_is_bottleneck(out) else "layer4.0.bn2.weight"
    features_dim = int(out[last_bn].shape[0])
    num_classes = None
    if fc == "classifier":
        head = "classifier." if encoder == "online" else "momentum_classifier."
        if f"{head}weight" not in state_dict:
            raise ValueError(
                f"fc='classifier' needs '{head}weight' in the checkpoint, which has none "
                "(momentum classifier off?): use fc='none' (--fc none)"
            )
        weight, bias = state_dict[f"{head}weight"], state_dict[f"{head}bias"]
        if weight.shape[1] != features_dim:
            raise ValueError(
                f"classifier input dim {weight.shape[1]} != backbone feature dim {features_dim}"
            )
        out["fc.weight"], out["fc.bias"] = weight.detach().clone(), bias.detach().clone()
        num_classes = int(weight.shape[0])
    info = ExportInfo(arch, cifar_stem, num_classes, features_dim, encoder, "", "")
    return out, info


def export_backbone(
    checkpoint: str | Path,
    output: str | Path,
    encoder: str = "online",
    fc: str = "classifier",
    trust_pickle: bool = False,
) -> ExportInfo:
    """Writes the torchvision ``state_dict`` of ``checkpoint``'s backbone to ``output`` and its
    description to ``<output>.json``; returns that description. Errors: see
    :func:`load_state_dict` and :func:`extract_backbone`."""
    ckpt_path = resolve_checkpoint(checkpoint)
    state_dict = load_state_dict(ckpt_path, trust_pickle=trust_pickle)
    weights, info = extract_backbone(state_dict, encoder=encoder, fc=fc)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    info = ExportInfo(**{**asdict(info), "checkpoint": str(ckpt_path), "output": str(output)})
    # check the promise before writing: the matching torchvision model takes it with strict=True
    build_torchvision_resnet(info.arch, info.num_classes, info.cifar_stem).load_state_dict(
        weights, strict=True
    )
    torch.save(weights, output)
    Path(f"{output}.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def _usage(info: ExportInfo) -> str:
    nc = "None" if info.num_classes is None else str(info.num_classes)
    lines = [
        f"wrote {info.output} ({info.arch}, {info.encoder} encoder, "
        f"fc: {'none' if info.num_classes is None else f'{info.num_classes} classes'}, "
        f"{'CIFAR 3x3' if info.cifar_stem else 'torchvision 7x7'} stem) and {info.output}.json",
        "load it with:",
        "    import torch, torchvision",
        f"    model = torchvision.models.{info.arch}(num_classes={info.num_classes or 1000})",
    ]
    if info.num_classes is None:
        lines.append("    model.fc = torch.nn.Identity()")
    if info.cifar_stem:
        lines += [
            "    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 2, bias=False)",
            "    model.maxpool = torch.nn.Identity()",
        ]
    lines.append(f"    model.load_state_dict(torch.load({info.output!r}), strict=True)")
    lines.append(
        f"  (or cueco_plugin.export.build_torchvision_resnet({info.arch!r}, {nc}, "
        f"cifar_stem={info.cifar_stem}))"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cueco-export-backbone",
        description=(
            "Export the ResNet backbone of a solo-learn (CueCo or any other method) checkpoint "
            "as a plain torchvision state_dict that loads with strict=True."
        ),
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        help="solo-learn/Lightning .ckpt file, or a run folder (trained_models/<method>/<run>/) "
        "whose newest .ckpt is used",
    )
    parser.add_argument("output", help="where to write the state_dict (e.g. resnet18_cueco.pth)")
    parser.add_argument(
        "--fc",
        choices=_FC_CHOICES,
        default="classifier",
        help="classifier: the online linear classifier becomes fc (default); none: no fc",
    )
    parser.add_argument(
        "--encoder",
        choices=sorted(_PREFIXES),
        default="online",
        help="online backbone (default) or the momentum (key) backbone",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow torch.load(weights_only=False) for checkpoints you trust",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        info = export_backbone(
            args.checkpoint,
            args.output,
            encoder=args.encoder,
            fc=args.fc,
            trust_pickle=args.trust_pickle,
        )
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(_usage(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
