"""Quality heatmaps of scored images (``rsfiqa score --heatmap DIR``).

Left panel: the image with its L regions (paper eq. 5) outlined and filled semi-transparently in
the colour of the region's describer ``overall`` score on the 1 (bad) .. 5 (excellent) scale, with
a colour bar; each region carries its index and overall level; regions without an overall score
are outlined only. The caption above holds the predicted score. Optional right panel: where one
token of the RSA block looks — the eq. (9) attention weights of that grid cell (heads averaged)
over the token grid, upsampled onto the image, the query cell framed.

Drawn with numpy array operations and PIL (colour maps are matplotlib's look-up tables; no
figure is made), on a copy whose long side is at most ``max_side`` pixels.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from rsfiqa.data.transforms import resize_pair
from rsfiqa_core.contract import LEVELS
from rsfiqa_core.imageio import reduced_size

QUALITY_CMAP = "RdYlGn"      # red = bad (1) ... green = excellent (5)
ATTENTION_CMAP = "inferno"
FILL_ALPHA = 0.45
ATTENTION_ALPHA = 0.6
MAX_SIDE = 640
FONT_PX = 13
MARGIN = 8                   # pixels around panels and text
BAR_WIDTH = 16               # colour bar width; its tick labels follow
BAR_LABELS_WIDTH = 92
PNG_COMPRESS_LEVEL = 1       # zlib level: level 6 (PIL's default) triples the time for ~10 % smaller files


@lru_cache(maxsize=None)
def font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_PX)


@lru_cache(maxsize=None)
def colour_table(name: str) -> np.ndarray:
    """The matplotlib colour map ``name`` as a [256, 3] float table in 0..1."""
    return colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]


def score_colour(score: float) -> np.ndarray:
    """RGB 0..1 of an overall score on the 1..5 scale."""
    return colour_table(QUALITY_CMAP)[int(round(np.clip((score - 1.0) / 4.0, 0.0, 1.0) * 255))]


def boundaries(label_map: np.ndarray) -> np.ndarray:
    """bool [H,W]: pixels with a 4-neighbour of another region (both sides of every border)."""
    edge = np.zeros(label_map.shape, dtype=bool)
    horizontal = label_map[:, 1:] != label_map[:, :-1]
    vertical = label_map[1:, :] != label_map[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def quality_overlay(rgb: np.ndarray, label_map: np.ndarray, regions: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """float [H,W,3] in 0..1: regions filled by their overall score (1..5 colour map), borders white."""
    colour = np.zeros((256, 3))
    alpha = np.zeros(256)
    for region in regions:
        score = (region.get("scores") or {}).get("overall")
        if score is not None:
            colour[region["index"]], alpha[region["index"]] = score_colour(score), FILL_ALPHA
    a = alpha[label_map][..., None]
    out = (1.0 - a) * (rgb.astype(np.float64) / 255.0) + a * colour[label_map]
    out[boundaries(label_map)] = 1.0
    return out


def region_anchors(label_map: np.ndarray, indices: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(row, col) per non-empty region: its pixel farthest from any border or the frame (a label spot)."""
    inside = np.pad(~boundaries(label_map), 1)  # the frame counts as a border
    distance = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]
    anchors = {}
    for index in indices:
        masked = np.where(label_map == index, distance, -1.0)
        best = int(np.argmax(masked))
        if masked.flat[best] >= 0:
            anchors[index] = np.unravel_index(best, label_map.shape)
    return anchors


def label_regions(draw: ImageDraw.ImageDraw, origin: tuple[int, int], label_map: np.ndarray,
                  regions: Sequence[Mapping[str, Any]]) -> None:
    """Write ``index: overall level`` on a white box inside every non-empty region."""
    anchors = region_anchors(label_map, [r["index"] for r in regions])
    for region in regions:
        if region["index"] not in anchors:
            continue
        row, col = anchors[region["index"]]
        text = f"{region['index']}: {(region.get('levels') or {}).get('overall') or 'n/a'}"
        x, y = origin[0] + col, origin[1] + row
        box = draw.textbbox((x, y), text, font=font(), anchor="mm")
        draw.rounded_rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), radius=4, fill=(255, 255, 255))
        draw.text((x, y), text, font=font(), fill=(0, 0, 0), anchor="mm")


def colour_bar(draw: ImageDraw.ImageDraw, canvas: Image.Image, box: tuple[int, int, int, int], cmap: str,
               ticks: Sequence[tuple[float, str]]) -> None:
    """A vertical colour bar in ``box`` (left, top, right, bottom), low values at the bottom; ``ticks``
    are (position 0..1, label) drawn to its right."""
    left, top, right, bottom = box
    ramp = (colour_table(cmap)[::-1] * 255 + 0.5).astype(np.uint8)[:, None, :].repeat(right - left, 1)
    canvas.paste(Image.fromarray(ramp).resize((right - left, bottom - top), Image.BILINEAR), (left, top))
    draw.rectangle(box, outline=(0, 0, 0))
    for position, label in ticks:
        y = bottom - position * (bottom - top)
        draw.line((right, y, right + 4, y), fill=(0, 0, 0))
        draw.text((right + 6, y), label, font=font(), fill=(0, 0, 0), anchor="lm")


def attention_image(rgb: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3]: the attention map upsampled (bilinear), coloured, over a dimmed image."""
    h, w = rgb.shape[:2]
    up = np.asarray(Image.fromarray(attention.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    lo, hi = float(attention.min()), float(attention.max())
    level = np.clip((up - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = colour_table(ATTENTION_CMAP)[(level * 255 + 0.5).astype(np.uint8)]
    dimmed = 0.6 * rgb.astype(np.float64) / 255.0 + 0.4
    return (((1 - ATTENTION_ALPHA) * dimmed + ATTENTION_ALPHA * heat) * 255 + 0.5).astype(np.uint8)


def text_height(draw: ImageDraw.ImageDraw, text: str) -> int:
    box = draw.multiline_textbbox((0, 0), text, font=font())
    return box[3] - box[1]


def render_heatmap(path: str | Path, rgb: np.ndarray, label_map: np.ndarray, regions: Sequence[Mapping[str, Any]],
                   caption: str, attention: np.ndarray | None = None, attn_token: tuple[int, int] | None = None,
                   max_side: int = MAX_SIDE) -> Path:
    """Write the heatmap PNG of one scored image (module docstring); returns ``path``.

    ``rgb`` HxWx3 uint8 and ``label_map`` HxW (region indices) at the same size; ``regions`` the
    scorer's region records; ``attention`` [Hn, Wn] with ``attn_token`` its query cell.
    """
    if label_map.shape != rgb.shape[:2]:
        raise ValueError(f"label map {label_map.shape} does not match the image {rgb.shape[:2]}")
    if attention is not None and attn_token is None:
        raise ValueError("an attention map needs attn_token, the grid cell it belongs to")
    rgb, label_map = resize_pair(rgb, label_map, reduced_size(rgb.shape[:2], max_side), "box")
    h, w = rgb.shape[:2]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    attn_title = (None if attention is None else
                  f"RSA attention (eq. 9) of grid cell {tuple(attn_token)},\n"
                  f"{attention.shape[0]}x{attention.shape[1]} token grid, heads averaged")
    title_h = max(text_height(probe, caption), text_height(probe, attn_title or "")) + 2 * MARGIN
    panel_w = w + 2 * MARGIN + BAR_WIDTH + BAR_LABELS_WIDTH
    panels = 1 if attention is None else 2
    canvas = Image.new("RGB", (panels * panel_w + MARGIN, title_h + h + 3 * MARGIN + FONT_PX), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top = title_h
    overlay = (quality_overlay(rgb, label_map, regions) * 255 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(overlay), (MARGIN, top))
    label_regions(draw, (MARGIN, top), label_map, regions)
    draw.multiline_text((MARGIN, MARGIN), caption, font=font(), fill=(0, 0, 0))
    bar_left = MARGIN + w + MARGIN
    colour_bar(draw, canvas, (bar_left, top, bar_left + BAR_WIDTH, top + h), QUALITY_CMAP,
               [(i / 4, f"{i + 1} {word}") for i, word in enumerate(LEVELS)])
    draw.text((MARGIN, top + h + MARGIN), "fill: region overall quality (describer)", font=font(), fill=(0, 0, 0))
    if attention is not None:
        left = panel_w + MARGIN
        canvas.paste(Image.fromarray(attention_image(rgb, attention)), (left, top))
        row, col = attn_token
        hn, wn = attention.shape
        cell = (left + col * w / wn, top + row * h / hn, left + (col + 1) * w / wn, top + (row + 1) * h / hn)
        draw.rectangle(cell, outline=(0, 255, 255), width=2)
        draw.multiline_text((left, MARGIN), attn_title, font=font(), fill=(0, 0, 0))
        lo, hi = float(attention.min()), float(attention.max())
        colour_bar(draw, canvas, (left + w + MARGIN, top, left + w + MARGIN + BAR_WIDTH, top + h), ATTENTION_CMAP,
                   [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
        draw.text((left, top + h + MARGIN), "attention weight", font=font(), fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return path
