"""Paired image / region-label-map transforms of the data module.

The image and its label map (paper eq. 5: one region index per pixel) always move together:
both are resized to the network input (the paper resizes to 224x224, "Training Details") — the
image with a smooth filter, the label map with NEAREST so it stays a single channel of region
indices — and, for training only, both are flipped horizontally (a mirror image has the same
perceived quality, so the MOS label is unchanged).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX}


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a [height, width] pair."""
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or [height, width], got {image_size!r}")
    return size


def resize_pair(rgb: np.ndarray, label_map: np.ndarray, size: tuple[int, int],
                interpolation: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """Resize an HxWx3 uint8 image with ``interpolation`` and its HxW label map with NEAREST to
    ``size`` = (height, width)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {sorted(INTERPOLATIONS)}")
    wh = (size[1], size[0])
    image = np.array(Image.fromarray(rgb).resize(wh, INTERPOLATIONS[interpolation]))
    labels = np.array(Image.fromarray(label_map).resize(wh, Image.Resampling.NEAREST))
    return image, labels


def hflip_pair(rgb: np.ndarray, label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image and label map left-right together."""
    return np.ascontiguousarray(rgb[:, ::-1]), np.ascontiguousarray(label_map[:, ::-1])


def to_model_input(rgb: np.ndarray, label_map: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [3,H,W] image normalised with timm's ImageNet mean/std, int64 [H,W] label map."""
    image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (image - mean) / std, torch.from_numpy(label_map.astype(np.int64))
