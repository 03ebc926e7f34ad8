"""Segmenters of the annotation stage: eq. (5) post-process, classical stand-in, SAM path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator

from annotate.registry import component_record
from annotate.segment import build_segmenter
from annotate.segment.postprocess import postprocess
from rsfiqa_core.components import resize_segmentation
from annotate.segment.sam import SamSegmenter, load_sam, tiny_sam
from rsfiqa_core.components import Segmentation

pytestmark = pytest.mark.shared  # reads ../shared

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO = SHARED / "data" / "clive-dev" / "images" / "1001.JPG"


def box(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def assert_valid_segmentation(seg: Segmentation, shape, num_regions):
    assert seg.label_map.shape == tuple(shape) and seg.label_map.dtype == np.uint8
    assert int(seg.label_map.max()) < num_regions  # every pixel belongs to exactly one region
    assert len(seg.valid) == len(seg.area) == len(seg.seg_score) == num_regions
    assert sum(seg.area) == pytest.approx(1.0)
    counts = np.bincount(seg.label_map.ravel(), minlength=num_regions)
    assert seg.valid == [bool(c > 0) for c in counts]
    assert seg.seg_score[-1] is None  # background
    kept = [s for s in seg.seg_score[:-1] if s is not None]
    assert kept == sorted(kept, reverse=True)  # region 0 = highest score


# --------------------------------------------------------------------------- postprocess (eq. 5)
def test_postprocess_ranks_by_score_overlap_goes_to_higher_score_rest_is_background():
    shape = (10, 10)
    a = box(shape, (0, 6), (0, 10))      # score 0.5
    b = box(shape, (3, 10), (0, 5))      # score 0.9, overlaps a on rows 3-5, cols 0-4
    c = box(shape, (9, 10), (9, 10))     # score 0.7, one pixel
    d = np.ones(shape, dtype=bool)       # score 0.1: not among the top L-1 = 3
    seg = postprocess([a, b, c, d], [0.5, 0.9, 0.7, 0.1], num_regions=4)

    expected = np.full(shape, 3, dtype=np.uint8)
    expected[a] = 2
    expected[c] = 1
    expected[b] = 0
    np.testing.assert_array_equal(seg.label_map, expected)
    assert seg.seg_score == [0.9, 0.7, 0.5, None]
    assert seg.valid == [True, True, True, True]
    assert seg.area == pytest.approx([35 / 100, 1 / 100, 45 / 100, 19 / 100])  # a loses 15 px to b
    assert_valid_segmentation(seg, shape, 4)


def test_postprocess_fewer_masks_than_regions_leaves_flagged_empty_regions():
    shape = (8, 8)
    seg = postprocess([box(shape, (0, 4), (0, 8)), box(shape, (4, 6), (0, 8))], [0.8, 0.6], num_regions=5)
    assert seg.valid == [True, True, False, False, True]
    assert seg.area[2] == seg.area[3] == 0.0
    assert seg.seg_score == [0.8, 0.6, None, None, None]
    assert_valid_segmentation(seg, shape, 5)


def test_postprocess_flags_swallowed_masks_and_empty_background():
    shape = (6, 6)
    whole, inner = np.ones(shape, dtype=bool), box(shape, (1, 3), (1, 3))
    seg = postprocess([inner, whole], [0.3, 0.9], num_regions=3)
    # `inner` lies entirely under the higher-scored `whole`; nothing is left for the background
    assert seg.valid == [True, False, False]
    assert seg.seg_score == [0.9, 0.3, None]
    assert (seg.label_map == 0).all()


def test_postprocess_ties_keep_the_given_order_and_no_masks_is_all_background():
    shape = (4, 4)
    first, second = box(shape, (0, 2), (0, 4)), box(shape, (1, 4), (0, 4))
    seg = postprocess([first, second], [0.5, 0.5], num_regions=3)
    assert (seg.label_map[0:2] == 0).all() and (seg.label_map[2:] == 1).all()
    empty = postprocess([], [], num_regions=3, shape=shape)
    assert empty.valid == [False, False, True] and (empty.label_map == 2).all()


def test_postprocess_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="scores"):
        postprocess([np.ones((2, 2), bool)], [0.1, 0.2], num_regions=3)
    with pytest.raises(ValueError, match="shape"):
        postprocess([np.ones((2, 2), bool), np.ones((3, 2), bool)], [0.1, 0.2], num_regions=3)
    with pytest.raises(ValueError, match="shape"):
        postprocess([], [], num_regions=3)


def test_resize_segmentation_recomputes_areas():
    seg = postprocess([box((4, 4), (0, 1), (0, 4))], [0.9], num_regions=2)
    big = resize_segmentation(seg, (8, 12))
    assert big.label_map.shape == (8, 12)
    assert big.area == pytest.approx([0.25, 0.75]) and big.seg_score == seg.seg_score


# --------------------------------------------------------------------------- classical
@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def test_classical_segmenter_is_valid_and_deterministic_on_a_real_photo(photo):
    segmenter = build_segmenter({"name": "classical", "num_regions": 5})
    first, second = segmenter.segment(photo), segmenter.segment(photo)
    assert_valid_segmentation(first, photo.shape[:2], 5)
    np.testing.assert_array_equal(first.label_map, second.label_map)
    assert first.seg_score == second.seg_score
    assert all(0.0 <= s <= 1.0 for s in first.seg_score[:-1] if s is not None)
    assert all(first.valid)  # a real photo has enough structure for 4 candidates + background
    record = component_record(segmenter)
    assert record["name"] == "classical" and "scikit-image" in record["versions"]
    assert record["config"] == {k: record[k] for k in record["config"]}  # flat keys as earlier shards have them


def test_classical_felzenszwalb_downscales_and_restores_resolution(photo):
    segmenter = build_segmenter({"name": "classical", "num_regions": 4, "method": "felzenszwalb", "long_side": 200})
    seg = segmenter.segment(photo)
    assert_valid_segmentation(seg, photo.shape[:2], 4)
    assert seg.info["computed_at"] == [200, 200]


def test_build_segmenter_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown segmenter"):
        build_segmenter({"name": "watershed"})
    with pytest.raises(ValueError, match="method"):
        build_segmenter({"name": "classical", "method": "quickshift"})


# --------------------------------------------------------------------------- SAM
# thresholds at 0 and NMS off so that the random model's masks survive
SAM_OPTIONS = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, device="cpu")


@pytest.fixture(scope="module")
def small_images(photo):
    return [np.asarray(Image.fromarray(photo).resize((128, 96))), np.asarray(Image.fromarray(photo).resize((80, 120)))]


def test_sam_segmenter_gives_valid_regions_ranked_by_predicted_iou(small_images):
    torch.set_num_threads(1)
    model = tiny_sam()
    segmenter = build_segmenter({"name": "sam", "model": model, "num_regions": 5, **SAM_OPTIONS})
    batch = segmenter.segment_batch(small_images)
    for seg, image in zip(batch, small_images):
        assert_valid_segmentation(seg, image.shape[:2], 5)
        assert seg.info["num_masks"] >= 4

    # the batched, preloaded-embedding path gives what SAM's own generator gives, image by image
    reference = SamAutomaticMaskGenerator(model, **{k: v for k, v in SAM_OPTIONS.items() if k != "device"})
    for seg, image in zip(batch, small_images):
        records = reference.generate(image)
        expected = postprocess([r["segmentation"] for r in records], [r["predicted_iou"] for r in records], 5)
        agreement = (seg.label_map == expected.label_map).mean()
        assert agreement > 0.999  # batched encoder: float rounding may flip a boundary pixel
        assert seg.seg_score == pytest.approx(expected.seg_score, abs=1e-4)
    single = segmenter.segment(small_images[0])
    np.testing.assert_array_equal(single.label_map, segmenter.segment(small_images[0]).label_map)  # deterministic
    assert segmenter.config()["model_type"] == "custom"


def test_sam_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_sam(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth.*unreadable"):
        SamSegmenter(checkpoint=garbage, device="cpu")
    with pytest.raises(ValueError, match="exactly one"):
        SamSegmenter(device="cpu")


def test_sam_checkpoint_of_another_model_type_is_refused(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), path)
    with pytest.raises(ValueError, match="tiny.pth.*does not fit model_type 'vit_b'"):
        load_sam(path, "vit_b")
