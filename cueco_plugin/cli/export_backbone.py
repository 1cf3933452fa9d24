"""``cueco-export-backbone``: the ResNet backbone of a solo-learn checkpoint as a plain torchvision
``state_dict`` that ``load_state_dict(strict=True)`` accepts.

The architecture comes from solo-learn's ``args.json`` beside the checkpoint: ``backbone.name``
and, for ``data.dataset`` cifar10/cifar100, solo-learn's CIFAR stem (3x3 stride-1 ``conv1``,
padding 2, no max-pool). Needs torch and torchvision only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

#: encoder -> (prefix of its backbone weights, prefix of its linear classifier)
ENCODERS = {
    "online": ("backbone.", "classifier."),
    "momentum": ("momentum_backbone.", "momentum_classifier."),
}
EPILOG = """\
--fc classifier (default) writes solo-learn's online linear classifier as fc; --fc none writes no
fc (set model.fc = torch.nn.Identity() before loading).
CIFAR runs use solo-learn's stem, conv1 = Conv2d(3, 64, 3, stride 1, padding 2, bias=False) and
no max-pool: build the model with
    model = torchvision.models.resnet18(num_classes=C)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 2, bias=False)
    model.maxpool = torch.nn.Identity()
or cueco_plugin.cli.export_backbone.build_torchvision_resnet("resnet18", C, cifar_stem=True).
Other runs load into the stock torchvision model with strict=True.
A .ckpt is never written, the input never overwritten, an existing file only with --force.
"""


class ExportError(ValueError):
    """Why nothing was exported, in one line."""


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_backbone` wrote (also saved as ``<output>.json``)."""

    arch: str
    cifar_stem: bool
    num_classes: int | None
    encoder: str
    checkpoint: str
    output: str


def build_torchvision_resnet(
    arch: str, num_classes: int | None = 1000, cifar_stem: bool = False
) -> nn.Module:
    """The torchvision model an export loads into with ``strict=True``; ``num_classes=None``
    replaces ``fc`` by ``nn.Identity``."""
    if not arch.startswith("resnet") or not hasattr(torchvision.models, arch):
        raise ExportError(f"backbone {arch!r} is not a torchvision ResNet (resnet18, resnet50)")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes or 1000)
    if num_classes is None:
        model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()
    return model


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or for a run folder its newest complete ``.ckpt`` (nothing else)."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"checkpoint path {str(path)!r} does not exist")
    if not path.is_dir():
        return path
    found = [p for p in path.glob("*.ckpt") if zipfile.is_zipfile(p)]  # a cut file has no index
    if not found:
        raise ExportError(f"no complete .ckpt file in folder {str(path)!r}")
    return max(found, key=lambda p: p.stat().st_mtime)


def _architecture(args_path: Path) -> tuple[str, bool]:
    """(``backbone.name``, CIFAR stem) from solo-learn's ``args.json``."""
    try:
        args = json.loads(args_path.read_text())
        return args["backbone"]["name"], args["data"]["dataset"] in ("cifar10", "cifar100")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExportError(
            f"no backbone.name and data.dataset in {str(args_path)!r} ({type(err).__name__}: "
            f"{err}); solo-learn writes args.json into each run folder, or pass --args PATH"
        ) from None


def _state_dict(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = "" if trust_pickle else " (a checkpoint you trust that needs it: --trust-pickle)"
        raise ExportError(
            f"{str(path)!r} is not a loadable torch checkpoint: {first}{hint}"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ExportError(f"{str(path)!r} holds no 'state_dict': not a solo-learn checkpoint")
    return obj["state_dict"]


def _check_output(output: Path, checkpoint: Path, force: bool) -> None:
    if output.is_dir():
        raise ExportError(f"output {str(output)!r} is a folder: name a file, e.g. backbone.pth")
    if output.suffix == ".ckpt":
        raise ExportError(f"output {str(output)!r}: .ckpt names training checkpoints, use .pth")
    if output.resolve() == checkpoint.resolve():
        raise ExportError(f"output {str(output)!r} is the input checkpoint")
    for target in (output, Path(f"{output}.json")):
        if target.exists() and not force:
            raise ExportError(f"{str(target)!r} exists: pass --force to replace it")


def _write_atomically(target: Path, save) -> None:
    tmp = target.with_name(target.name + ".part")
    save(tmp)
    os.replace(tmp, target)


def export_backbone(
    checkpoint: str | Path,
    output: str | Path,
    encoder: str = "online",
    fc: str = "classifier",
    args_json: str | Path | None = None,
    force: bool = False,
    trust_pickle: bool = False,
) -> ExportInfo:
    """Writes the torchvision ``state_dict`` of the backbone of ``checkpoint`` (a ``.ckpt`` or a
    run folder) to ``output`` and its :class:`ExportInfo` to ``<output>.json``.

    Raises:
        ExportError: a missing or unloadable checkpoint or args.json, weights that do not fit
            the torchvision ResNet args.json names, or a refused output path.
    """
    if encoder not in ENCODERS or fc not in ("classifier", "none"):
        raise ExportError(
            f"encoder {encoder!r}, fc {fc!r}: allowed online/momentum, classifier/none"
        )
    ckpt, output = resolve_checkpoint(checkpoint), Path(output)
    _check_output(output, ckpt, force)
    args_path = Path(args_json) if args_json else ckpt.parent / "args.json"
    arch, cifar_stem = _architecture(args_path)
    state = _state_dict(ckpt, trust_pickle)
    prefix, head = ENCODERS[encoder]
    # solo-learn's backbone.fc is nn.Identity: nothing under it is written
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    if not weights:
        raise ExportError(f"no '{prefix}*' weights in {str(ckpt)!r}: not a pretraining checkpoint")
    num_classes = None
    if fc == "classifier":
        if f"{head}weight" not in state:
            raise ExportError(f"--fc classifier needs '{head}weight', not in {str(ckpt)!r}")
        weights["fc.weight"], weights["fc.bias"] = state[f"{head}weight"], state[f"{head}bias"]
        num_classes = int(weights["fc.weight"].shape[0])
    try:
        build_torchvision_resnet(arch, num_classes, cifar_stem).load_state_dict(weights)
    except RuntimeError as err:
        raise ExportError(
            f"the weights in {str(ckpt)!r} do not fit {arch} ({str(args_path)!r}): "
            + " ".join(str(err).split())[:240]
        ) from None
    info = ExportInfo(arch, cifar_stem, num_classes, encoder, str(ckpt), str(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        output, lambda tmp: torch.save({k: v.clone() for k, v in weights.items()}, tmp)
    )
    text = json.dumps(asdict(info), indent=2) + "\n"
    _write_atomically(Path(f"{output}.json"), lambda tmp: tmp.write_text(text))
    return info


def _usage(info: ExportInfo) -> str:
    build = (
        "cueco_plugin.cli.export_backbone.build_torchvision_resnet("
        f"{info.arch!r}, {info.num_classes}, "
    )
    return (
        f"wrote {info.output} and {info.output}.json ({info.arch}, {info.encoder} encoder, fc: "
        f"{info.num_classes or 'none'}, {'CIFAR' if info.cifar_stem else 'torchvision'} stem); "
        f"load it with:\n    model = {build}cifar_stem={info.cifar_stem})\n"
        f"    model.load_state_dict(torch.load({info.output!r}), strict=True)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cueco-export-backbone",
        description="Export the ResNet backbone of a solo-learn checkpoint as a torchvision "
        "state_dict that loads with strict=True.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="a .ckpt, or a run folder (its newest complete .ckpt)")
    parser.add_argument("output", help="the .pth file to write (e.g. resnet18_cueco.pth)")
    parser.add_argument("--fc", choices=("classifier", "none"), default="classifier")
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="online")
    parser.add_argument("--args", help="solo-learn's args.json (default: beside the checkpoint)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--trust-pickle", action="store_true", help="weights_only=False")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        info = export_backbone(
            a.checkpoint, a.output, a.encoder, a.fc, a.args, a.force, a.trust_pickle
        )
    except ExportError as err:
        print(f"cueco-export-backbone: error: {err}", file=sys.stderr)
        return 2
    print(_usage(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
