"""Segmenters of the annotation stage (paper eq. 5): SAM and its classical offline stand-in."""
from __future__ import annotations

from typing import Any, Mapping

from annotate.segment.postprocess import postprocess
from annotate.types import Segmenter

SEGMENTERS = ("classical", "sam")


def build_segmenter(config: Mapping[str, Any]) -> Segmenter:
    """A segmenter from ``{"name": "classical" | "sam", "num_regions": 5, ...options}``.

    The remaining keys are the constructor options of :class:`~annotate.segment.classical.
    ClassicalSegmenter` or :class:`~annotate.segment.sam.SamSegmenter`.
    """
    options = dict(config)
    name = str(options.pop("name", "")).lower()
    if name == "classical":
        from annotate.segment.classical import ClassicalSegmenter

        return ClassicalSegmenter(**options)
    if name == "sam":
        from annotate.segment.sam import SamSegmenter

        return SamSegmenter(**options)
    raise ValueError(f"unknown segmenter {config.get('name')!r}; choose one of {SEGMENTERS}")


__all__ = ["SEGMENTERS", "build_segmenter", "postprocess"]
