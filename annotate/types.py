"""Plain data passed between the annotation stages: adapter -> segmenter -> describer -> writer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass
class Sample:
    """One labelled image as an adapter reads it from a dataset's official layout."""

    dataset: str                 # lower-case registry name, e.g. "koniq"
    image_name: str              # name as the label file lists it (relative to the dataset root)
    image_path: Path             # resolved file on disk
    mos: float                   # raw score on the dataset's own scale
    mos_range: tuple[float, float]
    higher_better: bool
    ref: str | None = None       # reference-image id (synthetic datasets), else None
    splits: dict[str, str] = field(default_factory=dict)  # tag -> "train" | "val" | "test"
    extra: dict[str, Any] = field(default_factory=dict)   # e.g. {"mos_std": 0.4}


@dataclass
class Skipped:
    """A label row or file an adapter or stage could not use, and why (reported, never dropped)."""

    item: str
    reason: str


@dataclass
class Segmentation:
    """Paper eq. 5 output: L non-overlapping regions as one label map."""

    label_map: np.ndarray        # uint8 HxW, values 0..L-1; region L-1 is the background
    valid: list[bool]            # per region: non-empty
    area: list[float]            # per region: fraction of the image
    seg_score: list[float | None]  # per region: the mask's ranking score (None for background)
    info: dict[str, Any] = field(default_factory=dict)


class Segmenter(Protocol):
    """Splits an RGB uint8 HxWx3 image into ``num_regions`` regions (deterministic)."""

    num_regions: int

    def segment(self, image: np.ndarray) -> Segmentation: ...

    def settings(self) -> dict[str, Any]: ...


class Describer(Protocol):
    """Describes every region of a batch of images: content + level/score per dimension.

    Returns, per image, L region dicts with keys ``content`` (str|None), ``levels``
    ({dim: level word}|None), ``scores`` ({dim: float 1..5}|None), optionally
    ``parsed_scores`` ({dim: float}) and ``missing_reason`` (str) when a description is None.
    """

    def describe(self, images: Sequence[np.ndarray], segs: Sequence[Segmentation]) -> list[list[dict[str, Any]]]: ...

    def settings(self) -> dict[str, Any]: ...
