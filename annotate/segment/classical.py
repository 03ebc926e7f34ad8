"""Classical segmenter: the offline stand-in for SAM (docs/DESIGN.md, "Segmenter, classical").

1. The image is reduced so that its long side is at most ``long_side``.
2. scikit-image over-segments it into superpixels (SLIC on CIELAB, or Felzenszwalb's graph
   segmentation).
3. Adjacent superpixels are merged greedily by Ward's criterion on their mean CIELAB colour
   (merge cost ``n_i n_j / (n_i + n_j) * |mu_i - mu_j|^2``, only between touching regions, so
   candidates stay connected) until ``num_candidates`` candidate regions remain.
4. Each candidate gets a score in [0, 1] standing in for SAM's predicted IoU
   (:func:`candidate_scores`), and the very same eq. (5) post-process as SAM's masks makes the
   L regions, whose label map is brought back to the image's resolution (nearest neighbour).

Everything is deterministic (no random state is used).
"""
from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import skimage
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb, slic

from annotate.segment.postprocess import postprocess
from rsfiqa_core.components import Segmentation, resize_segmentation
from rsfiqa_core.imageio import check_rgb, downscale

METHODS = ("slic", "felzenszwalb")


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique (a, b) label pairs with a < b that touch horizontally or vertically."""
    pairs = [np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
             np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], 1)]
    p = np.concatenate(pairs)
    p = np.sort(p[p[:, 0] != p[:, 1]], axis=1)
    n = int(labels.max()) + 1
    codes = np.unique(p[:, 0] * n + p[:, 1])
    return np.stack([codes // n, codes % n], 1)


def ward_merge(labels: np.ndarray, features: np.ndarray, target: int) -> np.ndarray:
    """Merge touching regions of ``labels`` (0..n-1) by Ward's criterion until ``target`` remain.

    ``features`` is HxWxC (here CIELAB). Returns a label map with values 0..k-1 (k = ``target``
    unless there were fewer regions), numbered by the lowest superpixel label each one holds.
    """
    flat = labels.ravel()
    n = int(flat.max()) + 1
    count = np.bincount(flat, minlength=n).astype(np.float64)
    total = np.stack([np.bincount(flat, weights=features[..., c].ravel(), minlength=n)
                      for c in range(features.shape[-1])], 1)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in adjacent_pairs(labels).tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    version = [0] * n
    parent = list(range(n))

    def cost(i: int, j: int) -> float:
        d = total[i] / count[i] - total[j] / count[j]
        return count[i] * count[j] / (count[i] + count[j]) * float(d @ d)

    heap = [(cost(a, b), a, b, 0, 0) for a in range(n) for b in neighbours[a] if a < b]
    heapq.heapify(heap)
    alive = n
    while alive > target and heap:
        _, i, j, vi, vj = heapq.heappop(heap)
        if parent[i] != i or parent[j] != j or version[i] != vi or version[j] != vj:
            continue  # stale entry: one side was merged or changed since it was pushed
        count[i] += count[j]
        total[i] += total[j]
        parent[j] = i
        version[i] += 1
        alive -= 1
        for k in neighbours[j] - {i}:
            neighbours[k].discard(j)
            neighbours[k].add(i)
        neighbours[i] = (neighbours[i] | neighbours[j]) - {i, j}
        neighbours[j] = set()
        for k in neighbours[i]:
            heapq.heappush(heap, (cost(i, k), min(i, k), max(i, k), version[min(i, k)], version[max(i, k)]))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    compact = np.unique([root(i) for i in range(n)], return_inverse=True)[1]
    return compact.reshape(-1)[labels]


def candidate_scores(labels: np.ndarray, lab: np.ndarray, min_area: float = 0.02,
                     colour_scale: float = 20.0) -> np.ndarray:
    """Score in [0, 1] of every candidate region (the stand-in for SAM's predicted IoU).

    ``score = (h * c * s) ** (1/3)``, the geometric mean of

    * colour homogeneity ``h = exp(-sigma / colour_scale)``, ``sigma`` the RMS distance (CIELAB
      units) of the region's pixels to its mean colour — uniform objects score high;
    * compactness ``c = min(1, 16 A / P^2)``, ``A`` the pixel count and ``P`` the number of
      4-neighbour pixel edges the region shares with other regions (the image frame does not
      count) — 1 for an axis-aligned square, pi/4 for a disc, low for ragged or thin shapes;
    * size ``s = min(1, area_fraction / min_area)`` — fragments under ``min_area`` of the image
      are penalised in proportion.
    """
    flat = labels.ravel()
    k = int(flat.max()) + 1
    count = np.bincount(flat, minlength=k).astype(np.float64)
    pix = lab.reshape(-1, lab.shape[-1]).astype(np.float64)
    mean = np.stack([np.bincount(flat, weights=pix[:, c], minlength=k) for c in range(pix.shape[1])], 1) / count[:, None]
    sq = np.bincount(flat, weights=(pix ** 2).sum(1), minlength=k) / count
    sigma = np.sqrt(np.maximum(sq - (mean ** 2).sum(1), 0.0))
    perimeter = np.zeros(k)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        perimeter += np.bincount(a[differ], minlength=k) + np.bincount(b[differ], minlength=k)
    with np.errstate(divide="ignore"):
        compact = np.where(perimeter > 0, np.minimum(1.0, 16.0 * count / perimeter ** 2), 1.0)
    homogeneity = np.exp(-sigma / colour_scale)
    size = np.minimum(1.0, count / flat.size / min_area)
    return np.cbrt(homogeneity * compact * size)


class ClassicalSegmenter:
    """Superpixels + Ward merging + documented ranking score, then paper eq. (5) (see module doc)."""

    name = "classical"
    uses_device = False
    process_parallel = True  # CPU-only, image by image: may run in annotate.parallel's worker processes

    def __init__(
        self,
        num_regions: int = 5,
        method: str = "slic",
        long_side: int = 512,
        num_candidates: int = 12,
        n_segments: int = 200,
        compactness: float = 10.0,
        fz_scale: float = 100.0,
        fz_sigma: float = 0.8,
        fz_min_size: float = 0.001,
        min_area: float = 0.02,
        colour_scale: float = 20.0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown classical segmentation method {method!r}; choose one of {METHODS}")
        if num_candidates < num_regions - 1:
            raise ValueError(f"num_candidates ({num_candidates}) must be at least num_regions - 1 ({num_regions - 1})")
        self.num_regions = num_regions
        self.method = method
        self.long_side = long_side
        self.num_candidates = num_candidates
        self.n_segments = n_segments
        self.compactness = compactness
        self.fz_scale = fz_scale
        self.fz_sigma = fz_sigma
        self.fz_min_size = fz_min_size
        self.min_area = min_area
        self.colour_scale = colour_scale

    def superpixels(self, rgb: np.ndarray, lab: np.ndarray) -> np.ndarray:
        """Over-segmentation (labels 0..n-1) of the reduced image."""
        if self.method == "slic":
            # slic converts RGB to CIELAB itself; handing it our float Lab array instead
            # (convert2lab=False) gave a plain grid in scikit-image 0.26.
            sp = slic(rgb, n_segments=self.n_segments, compactness=self.compactness,
                      start_label=0, channel_axis=-1)
        else:
            min_size = max(1, round(self.fz_min_size * rgb.shape[0] * rgb.shape[1]))
            sp = felzenszwalb(rgb, scale=self.fz_scale, sigma=self.fz_sigma, min_size=min_size)
        present = np.bincount(sp.ravel()) > 0
        return (np.cumsum(present) - 1)[sp]  # labels made consecutive, order kept

    def segment(self, image: np.ndarray) -> Segmentation:
        """L regions of an RGB uint8 HxWx3 image; region 0 has the highest candidate score."""
        check_rgb(image)
        small = downscale(image, self.long_side)
        lab = rgb2lab(small)
        candidates = ward_merge(self.superpixels(small, lab), lab, self.num_candidates)
        scores = candidate_scores(candidates, lab, self.min_area, self.colour_scale)
        masks = [candidates == k for k in range(len(scores))]
        seg = postprocess(masks, scores.tolist(), self.num_regions, shape=candidates.shape)
        seg.info.update(segmenter="classical", method=self.method)
        return resize_segmentation(seg, image.shape[:2])

    def config(self) -> dict[str, Any]:
        """The constructor options (recorded in every shard's annotator block)."""
        return {"num_regions": self.num_regions, "method": self.method,
                "long_side": self.long_side, "num_candidates": self.num_candidates,
                "n_segments": self.n_segments, "compactness": self.compactness, "fz_scale": self.fz_scale,
                "fz_sigma": self.fz_sigma, "fz_min_size": self.fz_min_size, "min_area": self.min_area,
                "colour_scale": self.colour_scale}

    def provenance(self) -> dict[str, Any]:
        return {"versions": {"scikit-image": skimage.__version__}}
