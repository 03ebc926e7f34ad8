"""RSFIQA: region-level semantics-guided no-reference image quality assessment.

``from rsfiqa import Scorer`` gives the scoring API (:mod:`rsfiqa.inference.scorer`).
"""
from rsfiqa.inference.scorer import Scorer

__all__ = ["Scorer"]
