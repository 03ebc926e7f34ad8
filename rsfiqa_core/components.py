"""The segmenter and describer protocols, and the segmentation they exchange (paper eq. 5).

A component is built from ``{"name": <registry name>, **config()}`` and records that config as-is
in the shards; ``provenance()`` holds what describes the run but is no constructor option
(library versions, tokenizer ids, module constants). A component with ``uses_device = True``
takes a ``device`` option, which is never part of its config (where it ran is not a setting).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np
from PIL import Image


@dataclass
class Segmentation:
    """Paper eq. 5 output: L non-overlapping regions as one label map."""

    label_map: np.ndarray        # uint8 HxW, values 0..L-1; region L-1 is the background
    valid: list[bool]            # per region: non-empty
    area: list[float]            # per region: fraction of the image
    seg_score: list[float | None]  # per region: the mask's ranking score (None for background)
    info: dict[str, Any] = field(default_factory=dict)


def region_areas(label_map: np.ndarray, num_regions: int) -> list[float]:
    """Fraction of the image each region label covers."""
    counts = np.bincount(label_map.ravel(), minlength=num_regions)[:num_regions]
    return [float(c) / label_map.size for c in counts]


def resize_segmentation(seg: Segmentation, shape: tuple[int, int]) -> Segmentation:
    """The same segmentation at another resolution (nearest-neighbour label map).

    Used to bring a segmentation computed at a reduced resolution back to the image's own
    size; areas and validity flags are recomputed on the resized map.
    """
    if seg.label_map.shape == tuple(shape):
        return seg
    h, w = shape
    label_map = np.asarray(Image.fromarray(seg.label_map).resize((w, h), Image.NEAREST), dtype=np.uint8)
    area = region_areas(label_map, len(seg.valid))
    return Segmentation(label_map=label_map, valid=[a > 0 for a in area], area=area,
                        seg_score=list(seg.seg_score), info={**seg.info, "computed_at": list(seg.label_map.shape)})


class Segmenter(Protocol):
    """Splits an RGB uint8 HxWx3 image into ``num_regions`` regions (deterministic)."""

    num_regions: int

    uses_device: ClassVar[bool]

    def segment(self, image: np.ndarray) -> Segmentation: ...

    def config(self) -> dict[str, Any]: ...

    def provenance(self) -> dict[str, Any]: ...


class Describer(Protocol):
    """Describes every region of a batch of images: content + level/score per dimension.

    Returns, per image, L region dicts with keys ``content`` (str|None), ``levels``
    ({dim: level word}|None), ``scores`` ({dim: float 1..5}|None), optionally
    ``parsed_scores`` ({dim: float}), ``level_expectations`` ({dim: float}, MLLM), ``score_source``
    ({dim: "qalign" | "parsed" | None}, MLLM) and ``missing_reason`` (str) when a description is None.
    """

    uses_device: ClassVar[bool]

    def describe(self, images: Sequence[np.ndarray], segs: Sequence[Segmentation]) -> list[list[dict[str, Any]]]: ...

    def config(self) -> dict[str, Any]: ...

    def provenance(self) -> dict[str, Any]: ...
