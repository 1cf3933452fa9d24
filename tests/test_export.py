"""cueco-export-backbone: solo-learn checkpoints -> plain torchvision ResNet state_dicts that
load with strict=True (CIFAR and ImageNet stems, with or without fc), and clear errors for a
wrong path, a file that is no checkpoint, and a backbone that is no ResNet. The end-to-end
export of a real CueCo run is in test_main_pretrain.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cueco_plugin.export import build_torchvision_resnet, export_backbone, main


def solo_checkpoint(
    path: Path, backbone: nn.Module, num_classes: int = 10, features: int = 512
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint laid out as Lightning saves a solo-learn method: state_dict with
    backbone.*, momentum_backbone.*, classifier.* (backbone.fc is nn.Identity there)."""
    torch.manual_seed(0)
    backbone.fc = nn.Identity()
    momentum = build_torchvision_resnet("resnet18", None)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if isinstance(backbone, torchvision.models.ResNet) and features == 512:
        state.update({f"momentum_backbone.{k}": v + 1 for k, v in momentum.state_dict().items()})
    classifier = nn.Linear(features, num_classes)
    state.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    state["queue"] = torch.randn(2, 8, 16)
    torch.save({"epoch": 0, "global_step": 1, "state_dict": state}, path)
    return path, state


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_resnet18_export_loads_strict_with_the_online_classifier_as_fc(
    tmp_path: Path, cifar_stem: bool
) -> None:
    ckpt, state = solo_checkpoint(
        tmp_path / "run-ep=0.ckpt", build_torchvision_resnet("resnet18", None, cifar_stem)
    )
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
    ckpt, _ = solo_checkpoint(
        tmp_path / "r50.ckpt", build_torchvision_resnet("resnet50", None), 100, 2048
    )
    assert main([str(ckpt), str(tmp_path / "r50.pth"), "--fc", "none"]) == 0
    weights = torch.load(tmp_path / "r50.pth", weights_only=True)
    assert not any(k.startswith("fc.") for k in weights)
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(weights, strict=True)


def test_momentum_encoder_export_takes_momentum_backbone_weights(tmp_path: Path) -> None:
    ckpt, state = solo_checkpoint(tmp_path / "m.ckpt", build_torchvision_resnet("resnet18", None))
    export_backbone(ckpt, tmp_path / "m.pth", encoder="momentum", fc="none")
    weights = torch.load(tmp_path / "m.pth", weights_only=True)
    assert torch.equal(weights["conv1.weight"], state["momentum_backbone.conv1.weight"])
    with pytest.raises(ValueError, match="momentum_classifier.weight"):
        export_backbone(ckpt, tmp_path / "m2.pth", encoder="momentum", fc="classifier")


def test_missing_path_is_a_clear_command_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope.ckpt"), str(tmp_path / "out.pth")])
    assert exit_info.value.code == 2
    assert f"checkpoint path '{tmp_path / 'nope.ckpt'}' does not exist" in capsys.readouterr().err
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no .ckpt/.pth/.pt file in folder"):
        export_backbone(tmp_path / "empty_run", tmp_path / "out.pth")


def test_non_checkpoint_file_and_non_resnet_backbone_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a torch checkpoint"):
        export_backbone(tmp_path / "notes.ckpt", tmp_path / "out.pth")

    vit = torchvision.models.mobilenet_v3_small()
    state = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "mobilenet.ckpt")
    with pytest.raises(ValueError, match="backbone is not a torchvision ResNet"):
        export_backbone(tmp_path / "mobilenet.ckpt", tmp_path / "out.pth")

    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"no 'backbone\.\*' weights in the checkpoint"):
        export_backbone(tmp_path / "other.ckpt", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_help_explains_the_cifar_stem_and_the_fc_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Conv2d(3, 64, 3, stride 1, padding 2" in text
    assert "model.maxpool = torch.nn.Identity()" in text
    assert "--fc" in text and "strict=True" in text
