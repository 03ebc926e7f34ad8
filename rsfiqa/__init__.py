"""RSFIQA: region-level semantics-guided no-reference image quality assessment.

``from rsfiqa import Scorer`` gives the scoring API (:mod:`rsfiqa.scorer`); it is imported on
first use, so ``import rsfiqa`` stays light (no torch, no annotators).
"""
from __future__ import annotations

from typing import Any

__all__ = ["Scorer"]


def __getattr__(name: str) -> Any:
    """Lazy exports (PEP 562)."""
    if name == "Scorer":
        from rsfiqa.scorer import Scorer

        return Scorer
    raise AttributeError(f"module 'rsfiqa' has no attribute {name!r}")
