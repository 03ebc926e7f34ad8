"""The PIL heatmap renderer (rsfiqa/inference/heatmap.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from rsfiqa.inference.heatmap import MARGIN, boundaries, quality_overlay, region_anchors, render_heatmap


def scene() -> tuple[np.ndarray, np.ndarray, list[dict]]:
    rgb = np.full((60, 90, 3), 100, dtype=np.uint8)
    labels = np.zeros((60, 90), dtype=np.uint8)
    labels[:, 50:] = 1
    labels[40:, :20] = 2                     # a small corner region
    regions = [{"index": 0, "scores": {"overall": 1.2}, "levels": {"overall": "bad"}},
               {"index": 1, "scores": {"overall": 4.8}, "levels": {"overall": "excellent"}},
               {"index": 2, "scores": None, "levels": None},
               {"index": 3, "scores": None, "levels": None}]   # empty region: no label
    return rgb, labels, regions


def test_boundaries_mark_both_sides_of_each_border_only():
    _, labels, _ = scene()
    edge = boundaries(labels)
    assert edge[10, 49] and edge[10, 50] and not edge[10, 48] and not edge[10, 51]
    assert edge[39, 5] and edge[40, 5] and not edge[0, 0]


def test_region_anchors_lie_deep_inside_each_non_empty_region():
    _, labels, _ = scene()
    anchors = region_anchors(labels, [0, 1, 2, 3])
    assert set(anchors) == {0, 1, 2}
    for index, (row, col) in anchors.items():
        assert labels[row, col] == index
    row, col = anchors[1]   # the 60x40 block: on its vertical centre line, 20 px from both sides
    assert abs(col - 69.5) <= 1 and 19 <= row <= 40


def test_heatmap_png_shows_the_overlay_and_a_second_panel_for_attention(tmp_path):
    rgb, labels, regions = scene()
    one = render_heatmap(tmp_path / "one.png", rgb, labels, regions, "caption")
    two = render_heatmap(tmp_path / "two.png", rgb, labels, regions, "caption\nsecond line",
                         np.random.default_rng(0).random((4, 6)), (1, 2))
    with Image.open(one) as a, Image.open(two) as b:
        assert a.format == b.format == "PNG" and b.width > 1.8 * a.width
        single = np.asarray(a.convert("RGB"))
    expected = (quality_overlay(rgb, labels, regions) * 255 + 0.5).astype(np.uint8)
    # find the image panel: the overlay pixels appear unchanged where no label box is drawn
    top = next(y for y in range(single.shape[0]) if (single[y, MARGIN + 5] == expected[5, 5]).all())
    assert (single[top + 5, MARGIN + 30] == expected[5, 30]).all()     # region 0, red-ish
    assert (single[top + 55, MARGIN + 80] == expected[55, 80]).all()   # region 1, green-ish
    assert expected[5, 30, 0] > expected[5, 30, 1] and expected[55, 80, 1] > expected[55, 80, 0]
