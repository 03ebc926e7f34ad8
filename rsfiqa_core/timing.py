"""Seconds and image counts per named stage: the one stage clock of annotation and scoring."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, MutableMapping


class StageSeconds:
    """Adds wall seconds and image counts per stage into the ``seconds`` and ``images`` mappings."""

    def __init__(self, seconds: MutableMapping[str, float], images: MutableMapping[str, int]) -> None:
        self.seconds = seconds
        self.images = images

    @contextmanager
    def stage(self, name: str, images: int) -> Iterator[None]:
        """Time the ``with`` body as ``images`` images of stage ``name``."""
        t0 = time.perf_counter()
        yield
        self.spent(name, images, time.perf_counter() - t0)

    def spent(self, name: str, images: int, seconds: float) -> None:
        """Count ``seconds`` measured elsewhere (e.g. in a worker process) for stage ``name``."""
        self.seconds[name] += seconds
        self.images[name] += images
