"""Segmenters of the annotation stage (paper eq. 5): SAM and its classical offline stand-in."""
from __future__ import annotations

from typing import Any, Mapping

from annotate import registry
from annotate.segment.classical import ClassicalSegmenter
from annotate.segment.sam import SamSegmenter
from rsfiqa_core.components import Segmenter

SEGMENTERS: dict[str, type] = {
    ClassicalSegmenter.name: ClassicalSegmenter,
    SamSegmenter.name: SamSegmenter,
}


def build_segmenter(config: Mapping[str, Any], device: Any = None) -> Segmenter:
    """A segmenter from ``{"name": <a SEGMENTERS key>, "num_regions": 5, ...constructor options}``."""
    return registry.build("segmenter", SEGMENTERS, config, device)


__all__ = ["SEGMENTERS", "build_segmenter"]
