"""Paper eq. (5): ``M = Postprocess(SAM(I))`` — ranked, possibly overlapping masks to L regions.

Region order (the contract's region index):

* regions ``0 .. L-2`` are the kept masks sorted by their score (SAM's predicted IoU, or the
  classical segmenter's stand-in score) in descending order, so **region 0 has the highest
  score**; ties keep the order in which the masks were given (stable sort);
* region ``L-1`` is the background: every pixel no kept mask covers.

A pixel covered by several kept masks belongs to the highest-scored of them. Regions without a
mask (fewer than L-1 masks) or whose mask lost every pixel to higher-scored masks are empty and
flagged ``valid = False``; nothing is fabricated to fill them. An empty background (the kept
masks cover the whole image) is flagged invalid too.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rsfiqa_core.components import Segmentation, region_areas


def rank_masks(scores: Sequence[float], keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, descending; ties broken by the lower index."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:keep]


def postprocess(
    masks: Sequence[np.ndarray],
    scores: Sequence[float],
    num_regions: int,
    shape: tuple[int, int] | None = None,
) -> Segmentation:
    """Eq. (5): top ``num_regions - 1`` masks by score + background -> one uint8 label map.

    ``masks`` are boolean HxW arrays (any overlap allowed), ``scores`` their ranking scores.
    ``shape`` (H, W) is needed only when ``masks`` is empty. See the module docstring for the
    region order and the validity flags.
    """
    if not 2 <= num_regions <= 256:
        raise ValueError(f"num_regions must be in 2..256 (uint8 label map), got {num_regions}")
    if len(masks) != len(scores):
        raise ValueError(f"got {len(masks)} masks but {len(scores)} scores")
    if not all(np.isfinite(float(s)) for s in scores):
        raise ValueError(f"mask scores must be finite, got {list(scores)}")
    if shape is None:
        if not masks:
            raise ValueError("postprocess needs `shape` when there are no masks")
        shape = tuple(np.shape(masks[0]))[:2]
    for i, m in enumerate(masks):
        if np.shape(m) != tuple(shape):
            raise ValueError(f"mask {i} has shape {np.shape(m)}, expected {tuple(shape)}")

    background = num_regions - 1
    kept = rank_masks(scores, background)
    label_map = np.full(shape, background, dtype=np.uint8)
    # Paint the lowest-ranked kept mask first so that higher scores win on overlapping pixels.
    for rank in reversed(range(len(kept))):
        label_map[np.asarray(masks[kept[rank]], dtype=bool)] = rank

    area = region_areas(label_map, num_regions)
    seg_score: list[float | None] = [float(scores[i]) for i in kept]
    seg_score += [None] * (num_regions - len(seg_score))
    return Segmentation(
        label_map=label_map,
        valid=[a > 0 for a in area],
        area=area,
        seg_score=seg_score,
        info={"num_masks": len(masks), "kept_masks": len(kept)},
    )
