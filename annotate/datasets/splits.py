"""Seeded train/val/test splits, grouped so no group (reference image or image) is in two parts.

DATASETS.md / docs/DESIGN.md ("Training and evaluation protocol"): datasets without an official split
get 10 random splits with a fixed seed, by reference image for the synthetic datasets (LIVE, CSIQ,
TID2013, KADID-10k) and by image for the authentic ones. Tag ``seed<k>`` is drawn from
``numpy.random.default_rng(k)`` over the *sorted* set of groups, so a tag means the same partition
whatever the row order, the base seed it was generated with, or how many tags were requested.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def part_sizes(n_groups: int, test_frac: float, val_frac: float) -> tuple[int, int, int]:
    """(train, val, test) group counts; fractions of the groups, rounded half up."""
    n_test = min(n_groups, math.floor(test_frac * n_groups + 0.5))
    n_val = min(n_groups - n_test, math.floor(val_frac * n_groups + 0.5))
    return n_groups - n_test - n_val, n_val, n_test


def seeded_splits(
    groups: Sequence[str],
    n_splits: int = 10,
    seed: int = 0,
    test_frac: float = 0.2,
    val_frac: float = 0.1,
) -> list[dict[str, str]]:
    """Per element of ``groups``: ``{"seed<k>": "train"|"val"|"test"}`` for k = seed .. seed+n_splits-1.

    ``test_frac`` of the groups go to test and ``val_frac`` (of the total) to val, the rest to
    train (defaults: 80% train+val / 20% test, val = 10% of the total). Elements sharing a group id
    always share a part.
    """
    if n_splits < 0:
        raise ValueError(f"n_splits must be >= 0, got {n_splits}")
    if not (0 <= test_frac < 1 and 0 <= val_frac < 1 and test_frac + val_frac < 1):
        raise ValueError(f"need 0 <= test_frac, val_frac and test_frac + val_frac < 1; got {test_frac}, {val_frac}")
    unique = sorted(set(groups))
    _, n_val, n_test = part_sizes(len(unique), test_frac, val_frac)
    parts = np.array(["test"] * n_test + ["val"] * n_val + ["train"] * (len(unique) - n_test - n_val))
    by_tag: dict[str, dict[str, str]] = {}
    for k in range(seed, seed + n_splits):
        order = np.random.default_rng(k).permutation(len(unique))
        by_tag[f"seed{k}"] = {unique[g]: str(parts[rank]) for rank, g in enumerate(order)}
    return [{tag: assignment[g] for tag, assignment in by_tag.items()} for g in groups]
