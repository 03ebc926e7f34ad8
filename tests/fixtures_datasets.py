"""Helpers for the adapter tests: real label files placed in a dataset layout, placeholder images.

The adapters only check that image files exist (the pipeline decodes them), so placeholders are
empty files named as the label files list them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LABELS = SHARED / "data" / "labels"
CLIVE_DEV = SHARED / "data" / "clive-dev"


def place(root: Path, rel: str, source: Path) -> Path:
    """Copy ``source`` (a real label file) to ``root/rel``."""
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


def touch(root: Path, rels: Iterable[str]) -> int:
    """Empty placeholder files ``root/rel`` for every ``rel``; returns how many."""
    n = 0
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        n += 1
    return n


def touch_bytes_name(folder: Path, name: bytes) -> None:
    """A placeholder whose file name is raw (possibly non-UTF-8) bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(os.fsencode(folder), name), "wb"):
        pass


def write(root: Path, rel: str, content: str | bytes) -> Path:
    """Write a small fixture label file."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def categories(skipped) -> dict[str, int]:
    """Skip counts by category (the reason text before " (")."""
    out: dict[str, int] = {}
    for s in skipped:
        key = s.reason.split(" (")[0]
        out[key] = out.get(key, 0) + 1
    return out
