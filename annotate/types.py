"""What dataset adapters hand to the annotation pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
