"""cueco-export-backbone: solo-learn checkpoints -> plain torchvision ResNet state_dicts that load
with strict=True, the architecture read from solo-learn's args.json (CIFAR and ImageNet stems,
with or without fc); it never overwrites a .ckpt, its input or an existing file without --force,
folder exports consider complete .ckpt files only, and every refusal is one line. The export of
a real CueCo run is in test_main_pretrain.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cueco_plugin.cli.export_backbone import (
    ExportError,
    build_torchvision_resnet,
    export_backbone,
    main,
)


def solo_checkpoint(
    path: Path,
    arch: str = "resnet18",
    dataset: str = "custom",
    num_classes: int = 10,
    args_arch: str | None = None,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint laid out as Lightning saves a solo-learn method (state_dict with backbone.*,
    momentum_backbone.*, classifier.*; backbone.fc is nn.Identity there) and the args.json
    solo-learn writes beside it."""
    torch.manual_seed(0)
    cifar = dataset in ("cifar10", "cifar100")
    backbone = build_torchvision_resnet(arch, None, cifar)
    momentum = build_torchvision_resnet(arch, None, cifar)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"momentum_backbone.{k}": v + 1 for k, v in momentum.state_dict().items()})
    features = 512 if arch == "resnet18" else 2048
    state.update(
        {f"classifier.{k}": v for k, v in nn.Linear(features, num_classes).state_dict().items()}
    )
    state["queue"] = torch.randn(2, 8, 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": 1, "state_dict": state}, path)
    args = {"backbone": {"name": args_arch or arch}, "data": {"dataset": dataset}}
    (path.parent / "args.json").write_text(json.dumps(args))
    return path, state


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs the command line, which must refuse: exit status 2 and exactly one line on stderr."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cueco-export-backbone: error: "), err
    return err


@pytest.mark.parametrize("dataset, cifar_stem", [("custom", False), ("cifar10", True)])
def test_resnet18_export_takes_the_stem_from_args_json_and_loads_strict(
    tmp_path: Path, dataset: str, cifar_stem: bool
) -> None:
    ckpt, state = solo_checkpoint(tmp_path / "run" / "run-ep=0.ckpt", dataset=dataset)
    info = export_backbone(ckpt, tmp_path / "out" / "r18.pth")
    assert (info.arch, info.cifar_stem, info.num_classes) == ("resnet18", cifar_stem, 10)
    weights = torch.load(tmp_path / "out" / "r18.pth", weights_only=True)
    model = build_torchvision_resnet("resnet18", 10, cifar_stem)
    model.load_state_dict(weights, strict=True)
    assert torch.equal(model.fc.weight, state["classifier.weight"])
    assert torch.equal(model.conv1.weight, state["backbone.conv1.weight"])
    assert json.loads((tmp_path / "out" / "r18.pth.json").read_text())["arch"] == "resnet18"
    if not cifar_stem:  # the stock torchvision model, nothing to patch
        torchvision.models.resnet18(num_classes=10).load_state_dict(weights, strict=True)
    else:
        with pytest.raises(RuntimeError, match="conv1.weight"):
            torchvision.models.resnet18(num_classes=10).load_state_dict(weights, strict=True)


def test_resnet50_export_without_fc_loads_into_an_identity_head(tmp_path: Path) -> None:
    ckpt, _ = solo_checkpoint(tmp_path / "r50.ckpt", "resnet50", "imagenet100", 100)
    assert main([str(ckpt), str(tmp_path / "r50.pth"), "--fc", "none"]) == 0
    weights = torch.load(tmp_path / "r50.pth", weights_only=True)
    assert not any(k.startswith("fc.") for k in weights)
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(weights, strict=True)


def test_momentum_encoder_export_takes_momentum_backbone_weights(tmp_path: Path) -> None:
    ckpt, state = solo_checkpoint(tmp_path / "m.ckpt")
    export_backbone(ckpt, tmp_path / "m.pth", encoder="momentum", fc="none")
    weights = torch.load(tmp_path / "m.pth", weights_only=True)
    assert torch.equal(weights["conv1.weight"], state["momentum_backbone.conv1.weight"])
    with pytest.raises(ExportError, match="momentum_classifier.weight"):
        export_backbone(ckpt, tmp_path / "m2.pth", encoder="momentum", fc="classifier")


def test_the_export_never_overwrites_its_input_or_writes_a_ckpt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported fault: `cueco-export-backbone x.ckpt x.ckpt` replaced the training
    checkpoint with a backbone and exited 0."""
    ckpt, _ = solo_checkpoint(tmp_path / "run" / "x.ckpt")
    before = _digest(ckpt)
    err = _refused([str(ckpt), str(ckpt), "--force"], capsys)
    assert ".ckpt names training checkpoints, use .pth" in err and _digest(ckpt) == before
    assert _refused([str(ckpt), str(tmp_path / "backbone.ckpt")], capsys) == err.replace(
        str(ckpt), str(tmp_path / "backbone.ckpt")
    )
    assert not (tmp_path / "backbone.ckpt").exists()
    other = ckpt.with_name("weights.pt")  # a checkpoint under another name
    other.write_bytes(ckpt.read_bytes())
    err = _refused([str(other), str(other), "--force"], capsys)
    assert "is the input checkpoint" in err and _digest(other) == before


def test_an_existing_output_needs_force_and_a_folder_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = solo_checkpoint(tmp_path / "run" / "x.ckpt")
    out = tmp_path / "r18.pth"
    out.write_text("someone's file")
    assert "exists: pass --force to replace it" in _refused([str(ckpt), str(out)], capsys)
    assert out.read_text() == "someone's file"
    assert main([str(ckpt), str(out), "--force"]) == 0
    build_torchvision_resnet("resnet18", 10).load_state_dict(torch.load(out, weights_only=True))
    # the reported fault: a folder as output gave a raw RuntimeError
    assert "is a folder" in _refused([str(ckpt), str(tmp_path)], capsys)


def test_a_folder_export_takes_the_newest_complete_ckpt_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported fault: an export into the run folder made later folder exports pick the
    .pth; a partial .ckpt (a kill during a write) must not be taken either."""
    run = tmp_path / "run"
    ckpt, state = solo_checkpoint(run / "run-ep=0.ckpt")
    assert main([str(run), str(run / "backbone.pth")]) == 0
    partial = run / "run-ep=1.ckpt"
    partial.write_bytes(ckpt.read_bytes()[:1000])
    later = os.stat(ckpt).st_mtime + 10
    for path in (run / "backbone.pth", partial):
        os.utime(path, (later, later))
    info = export_backbone(run, tmp_path / "again.pth")
    assert info.checkpoint == str(ckpt)
    assert torch.equal(
        torch.load(tmp_path / "again.pth", weights_only=True)["conv1.weight"],
        state["backbone.conv1.weight"],
    )
    (tmp_path / "empty_run").mkdir()
    assert "no complete .ckpt file in folder" in _refused(
        [str(tmp_path / "empty_run"), str(tmp_path / "o.pth")], capsys
    )


def test_missing_or_wrong_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out.pth")
    err = _refused([str(tmp_path / "nope.ckpt"), out], capsys)
    assert f"checkpoint path '{tmp_path / 'nope.ckpt'}' does not exist" in err

    (tmp_path / "notes" / "notes.ckpt").parent.mkdir()
    (tmp_path / "notes" / "notes.ckpt").write_text("not a checkpoint")
    (tmp_path / "notes" / "args.json").write_text(
        '{"backbone": {"name": "resnet18"}, "data": {"dataset": "custom"}}'
    )
    assert "is not a loadable torch checkpoint" in _refused(
        [str(tmp_path / "notes" / "notes.ckpt"), out], capsys
    )

    ckpt, _ = solo_checkpoint(tmp_path / "vit" / "v.ckpt", args_arch="vit_small")
    assert "'vit_small' is not a torchvision ResNet" in _refused([str(ckpt), out], capsys)
    ckpt, _ = solo_checkpoint(tmp_path / "r50" / "v.ckpt", args_arch="resnet50")
    assert "do not fit resnet50" in _refused([str(ckpt), out], capsys)
    (tmp_path / "r50" / "args.json").unlink()
    assert "solo-learn writes args.json" in _refused([str(ckpt), out], capsys)

    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "vit" / "o.ckpt")
    err = _refused([str(tmp_path / "vit" / "o.ckpt"), out], capsys)
    assert "no 'backbone.*' weights" in err
    assert not (tmp_path / "out.pth").exists()


def test_help_explains_the_cifar_stem_and_the_fc_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Conv2d(3, 64, 3, stride 1, padding 2" in text
    assert "model.maxpool = torch.nn.Identity()" in text
    assert "--fc" in text and "strict=True" in text and "--force" in text
