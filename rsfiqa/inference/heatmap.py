"""Quality heatmaps of scored images (``rsfiqa score --heatmap DIR``).

Left panel: the image with its L regions (paper eq. 5) outlined (``skimage.segmentation.
mark_boundaries``) and filled semi-transparently in the colour of the region's describer
``overall`` score on the 1 (bad) .. 5 (excellent) scale, with a colour bar; each region carries
its index and overall level; regions without an overall score are outlined only. The caption
holds the predicted score. Optional right panel: where one token of the RSA block looks — the
eq. (9) attention weights of that grid cell (heads averaged) over the token grid, upsampled onto
the image, the query cell framed.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change), on
a copy whose long side is at most ``max_side`` pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from scipy import ndimage
from skimage.segmentation import mark_boundaries

from rsfiqa.data.transforms import resize_pair
from rsfiqa_core.contract import LEVELS
from rsfiqa_core.imageio import reduced_size

QUALITY_CMAP = "RdYlGn"      # red = bad (1) ... green = excellent (5)
ATTENTION_CMAP = "inferno"
FILL_ALPHA = 0.45
ATTENTION_ALPHA = 0.6
MAX_SIDE = 640
PANEL_INCHES = 5.0     # image width per panel
COLORBAR_INCHES = 1.5
CAPTION_INCHES = 0.9
DPI = 80


def quality_overlay(rgb: np.ndarray, label_map: np.ndarray, regions: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """float [H,W,3] in 0..1: regions filled by their overall score (1..5 colour map), outlined."""
    cmap, norm = colormaps[QUALITY_CMAP], Normalize(1.0, 5.0)
    out = rgb.astype(np.float64) / 255.0
    for region in regions:
        score = (region.get("scores") or {}).get("overall")
        mask = label_map == region["index"]
        if score is not None and mask.any():
            out[mask] = (1 - FILL_ALPHA) * out[mask] + FILL_ALPHA * np.asarray(cmap(norm(score))[:3])
    return mark_boundaries(out, label_map, color=(1.0, 1.0, 1.0), outline_color=(0.0, 0.0, 0.0))


def region_anchor(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the region pixel farthest from its border: a label inside the region."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.unravel_index(int(np.argmax(distance)), mask.shape)


def label_regions(ax: Any, label_map: np.ndarray, regions: Sequence[Mapping[str, Any]]) -> None:
    """Write ``index: overall level`` inside every non-empty region."""
    for region in regions:
        mask = label_map == region["index"]
        if not mask.any():
            continue
        level = (region.get("levels") or {}).get("overall") or "n/a"
        row, col = region_anchor(mask)
        ax.text(col, row, f"{region['index']}: {level}", ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.75, "linewidth": 0})


def attention_panel(fig: Figure, ax: Any, rgb: np.ndarray, attention: np.ndarray, token: tuple[int, int]) -> None:
    """The token grid's attention map upsampled over a dimmed image; the query cell framed."""
    h, w = rgb.shape[:2]
    hn, wn = attention.shape
    upsampled = np.asarray(Image.fromarray(attention.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    ax.imshow(rgb, alpha=0.6)
    shown = ax.imshow(upsampled, cmap=ATTENTION_CMAP, alpha=ATTENTION_ALPHA)
    row, col = token
    ax.add_patch(Rectangle((col * w / wn - 0.5, row * h / hn - 0.5), w / wn, h / hn, fill=False,
                           edgecolor="cyan", linewidth=2))
    ax.set_title(f"RSA attention (eq. 9) of grid cell ({row}, {col}),\n{hn}x{wn} token grid, heads averaged",
                 fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="attention weight")


def render_heatmap(path: str | Path, rgb: np.ndarray, label_map: np.ndarray, regions: Sequence[Mapping[str, Any]],
                   caption: str, attention: np.ndarray | None = None, attn_token: tuple[int, int] | None = None,
                   max_side: int = MAX_SIDE, dpi: int = DPI) -> Path:
    """Write the heatmap PNG of one scored image (module docstring); returns ``path``.

    ``rgb`` HxWx3 uint8 and ``label_map`` HxW (region indices) at the same size; ``regions`` the
    scorer's region records; ``attention`` [Hn, Wn] with ``attn_token`` its query cell; ``dpi``
    sets the PNG's resolution (a panel is ``PANEL_INCHES`` wide).
    """
    if label_map.shape != rgb.shape[:2]:
        raise ValueError(f"label map {label_map.shape} does not match the image {rgb.shape[:2]}")
    if attention is not None and attn_token is None:
        raise ValueError("an attention map needs attn_token, the grid cell it belongs to")
    rgb, label_map = resize_pair(rgb, label_map, reduced_size(rgb.shape[:2], max_side), "box")
    panels = 1 if attention is None else 2
    h, w = rgb.shape[:2]
    fig = Figure(figsize=((PANEL_INCHES + COLORBAR_INCHES) * panels, PANEL_INCHES * h / w + CAPTION_INCHES),
                 dpi=dpi, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(quality_overlay(rgb, label_map, regions))
    label_regions(axes[0], label_map, regions)
    axes[0].set_title(caption, fontsize=9)
    bar = fig.colorbar(ScalarMappable(Normalize(1.0, 5.0), colormaps[QUALITY_CMAP]), ax=axes[0],
                       fraction=0.046, pad=0.02, ticks=range(1, 6))
    bar.ax.set_yticklabels([f"{i + 1} {word}" for i, word in enumerate(LEVELS)], fontsize=8)
    bar.set_label("region overall quality (describer)", fontsize=8)
    if attention is not None:
        attention_panel(fig, axes[1], rgb, attention, attn_token)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
