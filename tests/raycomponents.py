"""Components the Ray engine tests name in their configs, registered in every Ray worker by the
cluster's ``worker_process_setup_hook`` (:func:`register`) and in the test process by the tests:
the MLLM describer on a mock backend, and a classical segmenter whose process exits once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from annotate.describe import DESCRIBERS
from annotate.describe.mllm import MLLMDescriber
from annotate.describe.prompts import question_kinds
from annotate.segment import SEGMENTERS
from annotate.segment.classical import ClassicalSegmenter
from rsfiqa_core.contract import LEVELS


class MockBackend:
    """Deterministic answers: the content names the highlighted region's mean brightness (so a mix-up
    of images would show), levels and scores are fixed; the slot log-probabilities rank the labels."""

    def generate(self, conversations, max_tokens, sample_seed=None):
        return [self.answer(c) for c in conversations]

    @staticmethod
    def answer(conversation) -> str:
        kind, dim = question_kinds()[len(conversation) // 2]
        mask_image = conversation[0]["content"][1]["image_pil"]
        return {"content": f"a region of brightness {np.asarray(mask_image).mean():.1f}",
                "level": f"From the {dim} dimension, the image quality level is good.",
                "score": f"From the {dim} dimension, the image quality score is 4."}[kind]

    def slot_problem(self, kind):
        return None

    def slot_logprobs(self, conversations, kind):
        return [{w: -float(i) for i, w in enumerate((*LEVELS, *"12345"))} for _ in conversations]

    def config(self) -> dict[str, Any]:
        return {}

    def provenance(self) -> dict[str, Any]:
        return {"backend": "mock"}


class MockMLLMDescriber(MLLMDescriber):
    """The MLLM describer (multi-turn conversation, Q-Align slots) on :class:`MockBackend`."""

    name = "mock_mllm"

    def __init__(self, image_long_side: int = 56) -> None:
        super().__init__(MockBackend(), image_long_side=image_long_side)


class ExitOnceSegmenter(ClassicalSegmenter):
    """The classical segmenter, whose process exits (as if killed) the first time it segments
    while ``marker`` does not exist yet; it creates the marker first, so the retry goes through."""

    name = "exit_once"

    def __init__(self, marker: str, **options: Any) -> None:
        super().__init__(**options)
        self.marker = marker

    def segment(self, image: np.ndarray):
        if not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(1)
        return super().segment(image)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "marker": self.marker}


def register() -> None:
    """Add the components above to the registries (the Ray workers' setup hook)."""
    SEGMENTERS[ExitOnceSegmenter.name] = ExitOnceSegmenter
    DESCRIBERS[MockMLLMDescriber.name] = MockMLLMDescriber
