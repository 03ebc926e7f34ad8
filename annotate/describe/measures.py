"""Measures describer: the offline stand-in for the MLLM (docs/DESIGN.md, "Describer, measures").

Per region, classical signal measures on the region's pixels, each mapped to a continuous 1..5
score by the monotone piecewise-linear table :data:`SCORE_BREAKPOINTS` and to the nearest of the
five level words (:func:`annotate.describe.parsing.score_to_level`):

* **color**: Hasler & Süsstrunk (2003) colourfulness ``sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 +
  m_yb^2)`` with ``rg = R - G``, ``yb = (R + G) / 2 - B``; more colourful scores higher.
* **noise**: a robust Immerkær (1996) noise sigma, ``median|Y * N| / (0.6745 * 6)`` with ``N``
  the 3x3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] (its response to white noise of sigma s has
  standard deviation 6 s), over the flattest 10% of the region's pixels — ranked by the gradient
  of the Gaussian-smoothed (sigma 1.5) luminance, which noise itself barely raises — so texture
  is not mistaken for noise.
* **artifact**: JPEG blockiness — ``(a + 1) / (w + 1)`` with ``a`` the mean absolute luminance
  step across the 8x8 block grid and ``w`` the mean step between the other neighbouring pixels
  (about 1 without blocking; the 1 grey level keeps flat, dark regions from giving wild ratios).
* **blur**: Crété-Roffet et al.'s (2007) blur effect (as ``skimage.measure.blur_effect``, here
  restricted to the region): the share of the neighbour-pixel variation that survives a further
  1x11 box blur along each axis, the larger of the two axes — 0 for a sharp region, towards 1 for
  a blurred one, whatever the contrast.
* **overall**: ``(mean + min) / 2`` of the four dimension scores — the average, pulled towards
  the worst distortion — mapped through its own breakpoints like the raw measures.

Filter responses are taken on the region's pixels at least 1 px inside its border (so region
boundaries do not count as texture/edges), or on all its pixels when the eroded region has fewer
than :data:`MIN_INTERIOR` pixels. Content is a short factual phrase: size, dominant colour name,
texture and position, e.g. ``"large dark green textured region in the lower left"``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hsv

from annotate.describe.parsing import score_to_level
from rsfiqa_core.components import Segmentation
from rsfiqa_core.contract import DIMENSIONS, missing_record

# --------------------------------------------------------------------------- thresholds
# Raw measure value at which the score is 1, 2, 3, 4, 5 (linear in between, clamped outside).
# Calibrated on the 300 regions of 60 CLIVE photos (every 15th of /work/shared/data/clive-dev,
# classical segmenter, 5 regions). Percentiles (5/25/50/75/95) found there:
#   colourfulness 6.6 / 12.8 / 22.3 / 36.0 / 75.2;   noise sigma 0.00 / 0.24 / 0.43 / 0.74 / 2.33;
#   blockiness    0.96 / 1.00 / 1.08 / 1.24 / 1.43;  blur effect 0.17 / 0.22 / 0.28 / 0.38 / 0.49.
# color, noise and blur put score 1 and 5 at the 5th and 95th percentiles (worse end -> 1) and
# 2, 3, 4 at the quartiles, rounded, so authentic-distortion photos spread over all five levels.
# Blockiness is skewed (most photos show no block grid), so its best anchor is physical: 1.0
# (grid steps no larger than the others) -> 5; its 95th percentile, 1.45 -> 1.
# overall's raw value, (mean + min) / 2 of the four scores, had percentiles 1.79 / 2.10 / 2.35 /
# 2.77 / 3.38 there and is spread the same way.
# tests/test_describe.py checks the monotonicity (blur, noise, JPEG) these constants must keep.
SCORE_BREAKPOINTS: dict[str, tuple[float, float, float, float, float]] = {
    "color": (6.5, 13.0, 22.0, 36.0, 75.0),      # colourfulness, increasing
    "noise": (2.3, 0.75, 0.45, 0.25, 0.0),       # noise sigma (grey levels), decreasing
    "artifact": (1.45, 1.3, 1.15, 1.05, 1.0),    # blockiness ratio, decreasing
    "blur": (0.5, 0.38, 0.28, 0.22, 0.17),       # blur effect, decreasing
    "overall": (1.8, 2.1, 2.35, 2.75, 3.4),      # (mean + min) / 2 of the four scores, increasing
}
MEASURED = tuple(d for d in DIMENSIONS if d != "overall")  # overall combines these
assert set(SCORE_BREAKPOINTS) == set(DIMENSIONS), "one breakpoint row per contract dimension"
SIZE_WORDS = ((0.25, "large"), (0.05, "medium"), (0.0, "small"))  # area fraction >= threshold
TEXTURE_THRESHOLD = 4.0  # mean |grad Y| (grey levels / px) above which a region is "textured"
MIN_INTERIOR = 64        # fewest eroded pixels used for filter responses (else the whole region)
FLAT_SHARE = 0.10        # share of a region's pixels (the flattest) the noise sigma is taken on
FLAT_SMOOTHING = 1.5     # Gaussian sigma (px) before the gradient that ranks flatness
BLOCK = 8                # JPEG block size
BLOCK_OFFSET = 1.0       # grey levels added to both blockiness means
REBLUR = 11              # box length of the blur effect's re-blur (skimage's default h_size)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_HUE_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
              (255, "blue"), (290, "purple"), (345, "pink"), (360, "red"))


def score_from_measure(dim: str, value: float) -> float:
    """Continuous 1..5 score of a raw measure by the :data:`SCORE_BREAKPOINTS` table."""
    xs = np.asarray(SCORE_BREAKPOINTS[dim], dtype=np.float64)
    ys = np.arange(1.0, 6.0)
    if xs[0] > xs[-1]:  # decreasing measure (more = worse): np.interp needs increasing x
        xs, ys = xs[::-1], ys[::-1]
    return float(np.interp(value, xs, ys))


def overall_score(scores: Sequence[float]) -> float:
    """Overall 1..5 score from the dimension scores: ``(mean + min) / 2`` through its breakpoints."""
    return score_from_measure("overall", 0.5 * (float(np.mean(scores)) + float(np.min(scores))))


# --------------------------------------------------------------------------- per-image maps
class ImageMaps:
    """Whole-image filter responses computed once and shared by every region of the image."""

    def __init__(self, image: np.ndarray) -> None:
        rgb = image.astype(np.float32)
        self.rgb = rgb
        self.luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        self.gradient = gradient_magnitude(self.luma)
        self.smooth_gradient = gradient_magnitude(ndimage.gaussian_filter(self.luma, FLAT_SMOOTHING))
        self.immerkaer = np.abs(ndimage.correlate(self.luma, _IMMERKAER))
        # per axis (1 = x, 0 = y): step between neighbours, and the same after a box re-blur
        self.step = {a: np.abs(np.diff(self.luma, axis=a)) for a in (0, 1)}
        self.reblurred_step = {a: np.abs(np.diff(ndimage.uniform_filter1d(self.luma, REBLUR, axis=a), axis=a))
                               for a in (0, 1)}


def gradient_magnitude(luma: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude in grey levels per pixel."""
    return np.hypot(ndimage.sobel(luma, axis=1), ndimage.sobel(luma, axis=0)) / 8.0


def neighbour_pairs(mask: np.ndarray, axis: int) -> np.ndarray:
    """Neighbour pairs (along ``axis``) with both pixels in ``mask``, shaped like ``np.diff``."""
    return mask[:, :-1] & mask[:, 1:] if axis == 1 else mask[:-1, :] & mask[1:, :]


# --------------------------------------------------------------------------- measures
def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk colourfulness of an (N, 3) array of RGB values."""
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def noise_sigma(immerkaer: np.ndarray, smooth_gradient: np.ndarray) -> float:
    """Robust Immerkær noise sigma over the flattest :data:`FLAT_SHARE` of the given pixels."""
    flat = smooth_gradient <= np.quantile(smooth_gradient, FLAT_SHARE)
    return float(np.median(immerkaer[flat]) / (0.6745 * 6.0))


def blockiness(maps: ImageMaps, pairs: dict[int, np.ndarray]) -> float:
    """``(mean step across the 8x8 grid + c) / (mean step elsewhere + c)`` over the region's pairs.

    ``c`` = :data:`BLOCK_OFFSET` grey level keeps flat, dark regions (tiny steps) from giving
    unstable ratios. NaN when the region holds no pair across the grid (narrower than a block).
    """
    across, within = [], []
    for axis, pair in pairs.items():
        step = maps.step[axis]
        pos = np.arange(step.shape[axis]) % BLOCK == BLOCK - 1  # step from x%8==7 to x%8==0
        on_grid = pos[None, :] if axis == 1 else pos[:, None]
        across.append(step[pair & on_grid])
        within.append(step[pair & ~on_grid])
    a, w = np.concatenate(across), np.concatenate(within)
    if a.size == 0 or w.size == 0:
        return float("nan")
    return float((a.mean() + BLOCK_OFFSET) / (w.mean() + BLOCK_OFFSET))


def blur_effect(maps: ImageMaps, pairs: dict[int, np.ndarray]) -> float:
    """Crété-Roffet blur effect over the region's neighbour pairs (0 sharp .. 1 blurred); NaN if flat."""
    values = []
    for axis, pair in pairs.items():
        sharp = maps.step[axis][pair]
        total = sharp.sum()
        if total > 0:
            lost = np.maximum(0.0, sharp - maps.reblurred_step[axis][pair]).sum()
            values.append(float((total - lost) / total))
    return max(values) if values else float("nan")


def region_measures(maps: ImageMaps, mask: np.ndarray) -> dict[str, float]:
    """Raw measure per dimension (``color``, ``noise``, ``artifact``, ``blur``) plus ``texture``."""
    interior = ndimage.binary_erosion(mask)
    inner = interior if interior.sum() >= MIN_INTERIOR else mask
    gradient = maps.gradient[inner]
    pairs = {axis: neighbour_pairs(mask, axis) for axis in (0, 1)}
    return {
        "color": colourfulness(maps.rgb[mask]),
        "noise": noise_sigma(maps.immerkaer[inner], maps.smooth_gradient[inner]),
        "artifact": blockiness(maps, pairs),
        "blur": blur_effect(maps, pairs),
        "texture": float(gradient.mean()),
    }


# --------------------------------------------------------------------------- content phrase
def colour_name(rgb: np.ndarray) -> str:
    """Most frequent colour name among (N, 3) uint8-range RGB pixels (HSV thresholds)."""
    hsv = rgb2hsv((rgb / 255.0).reshape(-1, 1, 3).clip(0, 1)).reshape(-1, 3)
    hue, sat, val = hsv[:, 0] * 360.0, hsv[:, 1], hsv[:, 2]
    names = np.empty(len(hsv), dtype=object)
    grey = (sat < 0.15) | (val < 0.12)
    names[grey] = np.select([val[grey] < 0.12, val[grey] < 0.4, val[grey] < 0.75, val[grey] < 0.9],
                            ["black", "dark grey", "grey", "light grey"], "white")
    bounds = np.array([b for b, _ in _HUE_NAMES])
    hue_names = np.array([n for _, n in _HUE_NAMES], dtype=object)[np.searchsorted(bounds, hue[~grey], side="right").clip(0, len(bounds) - 1)]
    brown = np.isin(hue_names, ["orange", "red"]) & (val[~grey] < 0.6) & (sat[~grey] > 0.3)
    shade = np.where(val[~grey] < 0.35, "dark ", np.where((val[~grey] > 0.85) & (sat[~grey] < 0.45), "light ", ""))
    names[~grey] = np.where(brown, "brown", shade.astype(object) + hue_names)
    values, counts = np.unique(names.astype(str), return_counts=True)
    return str(values[np.argmax(counts)])


def position_phrase(mask: np.ndarray) -> str:
    """Where the region's centroid lies in a 3x3 grid: "upper left", "center", "lower part"..."""
    ys, xs = np.nonzero(mask)
    row = ("upper", "middle", "lower")[min(2, int(3 * ys.mean() / mask.shape[0]))]
    col = ("left", "center", "right")[min(2, int(3 * xs.mean() / mask.shape[1]))]
    if row == "middle":
        return "center" if col == "center" else f"{col} side"
    return f"{row} part" if col == "center" else f"{row} {col}"


def content_phrase(area: float, colour: str, texture: float, position: str, background: bool) -> str:
    size = next(word for bound, word in SIZE_WORDS if area >= bound)
    surface = "textured" if texture > TEXTURE_THRESHOLD else "smooth"
    noun = "background area" if background else "region"
    return f"{size} {colour} {surface} {noun} in the {position}"


# --------------------------------------------------------------------------- describer
class MeasuresDescriber:
    """Classical measures -> the MLLM's record format (see the module docstring)."""

    name = "measures"
    uses_device = False
    process_parallel = True  # CPU-only, image by image: may run in annotate.parallel's worker processes

    def __init__(self, max_colour_samples: int = 4096) -> None:
        self.max_colour_samples = max_colour_samples

    def describe(self, images: Sequence[np.ndarray], segs: Sequence[Segmentation]) -> list[list[dict[str, Any]]]:
        """Per image, per region: content, levels, scores (``parsed_scores`` is None: no MLLM)."""
        if len(images) != len(segs):
            raise ValueError(f"{len(images)} images but {len(segs)} segmentations")
        return [self.describe_image(im, seg) for im, seg in zip(images, segs)]

    def describe_image(self, image: np.ndarray, seg: Segmentation) -> list[dict[str, Any]]:
        if seg.label_map.shape != image.shape[:2]:
            raise ValueError(f"label map {seg.label_map.shape} does not match image {image.shape[:2]}")
        maps = ImageMaps(image)
        last = len(seg.valid) - 1
        return [self.describe_region(maps, seg.label_map == r, seg.area[r], r == last) if seg.valid[r]
                else missing_record("empty region") for r in range(len(seg.valid))]

    def describe_region(self, maps: ImageMaps, mask: np.ndarray, area: float, background: bool) -> dict[str, Any]:
        raw = region_measures(maps, mask)
        scores: dict[str, float | None] = {}
        reasons = []
        for dim in MEASURED:
            if math.isfinite(raw[dim]):
                scores[dim] = round(score_from_measure(dim, raw[dim]), 3)
            else:
                scores[dim] = None
                reasons.append(f"{dim}: region too small or flat to measure")
        known = [s for s in scores.values() if s is not None]
        scores["overall"] = round(overall_score(known), 3) if known else None
        levels = {d: None if scores[d] is None else score_to_level(scores[d]) for d in DIMENSIONS}
        pixels = maps.rgb[mask]
        stride = max(1, len(pixels) // self.max_colour_samples)
        content = content_phrase(area, colour_name(pixels[::stride]), raw["texture"], position_phrase(mask), background)
        record = {"content": content, "levels": levels, "scores": {d: scores[d] for d in DIMENSIONS},
                  "parsed_scores": None, "measures": {k: round(v, 4) for k, v in raw.items() if math.isfinite(v)}}
        if reasons:
            record["missing_reason"] = "; ".join(reasons)
        return record

    def config(self) -> dict[str, Any]:
        return {"max_colour_samples": self.max_colour_samples}

    def provenance(self) -> dict[str, Any]:
        """The module's thresholds (recorded in every shard's annotator block)."""
        return {"score_breakpoints": {k: list(v) for k, v in SCORE_BREAKPOINTS.items()},
                "texture_threshold": TEXTURE_THRESHOLD, "size_words": [list(s) for s in SIZE_WORDS],
                "min_interior": MIN_INTERIOR}
