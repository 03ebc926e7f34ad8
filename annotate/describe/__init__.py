"""Describers of the annotation stage: per region content + level/score per distortion dimension."""
from __future__ import annotations

from typing import Any, Mapping

from annotate import registry
from annotate.describe.measures import MeasuresDescriber
from annotate.describe.mllm import HFDescriber, VLLMDescriber
from rsfiqa_core.components import Describer

DESCRIBERS: dict[str, type] = {
    MeasuresDescriber.name: MeasuresDescriber,
    VLLMDescriber.name: VLLMDescriber,
    HFDescriber.name: HFDescriber,
}


def build_describer(config: Mapping[str, Any], device: Any = None) -> Describer:
    """A describer from ``{"name": <a DESCRIBERS key>, ...constructor options}``; the MLLM describers
    take their own options (``mllm.DESCRIBER_OPTIONS``) and pass every other key to their backend."""
    return registry.build("describer", DESCRIBERS, config, device)


__all__ = ["DESCRIBERS", "build_describer"]
