"""Scoring with bounded memory and overlapped annotation: decode-time downscaling
(rsfiqa_core/imageio.py), the scorer's long-side bound and its annotation worker processes."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from rsfiqa.inference.scorer import Scorer
from rsfiqa_core.imageio import ImageError, decode_rgb


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    """A smooth colour image of ``size`` = (width, height) encoded as ``fmt``."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    rgb = np.stack([x, y, 255 - x], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def test_large_jpeg_is_decoded_at_the_smallest_dct_scale_covering_the_bound():
    rgb, info = decode_rgb(encoded((1600, 1200), "JPEG"), downscale_to=300)
    assert info["decoded_size"] == (400, 300)    # 1/4 scale; 1/8 (200 x 150) would be under 300 x 225
    assert rgb.shape == (225, 300, 3) and info["downscaled_to"] == (300, 225)
    png, info = decode_rgb(encoded((1600, 1200), "PNG"), downscale_to=300)
    assert info["decoded_size"] == (1600, 1200) and png.shape == (225, 300, 3)  # PNG: full decode, then resized


def test_images_within_the_bound_decode_exactly_as_without_it():
    for fmt in ("JPEG", "PNG"):
        data = encoded((320, 200), fmt)
        assert np.array_equal(decode_rgb(data, downscale_to=320)[0], decode_rgb(data)[0])


def test_pixel_guard_still_applies_when_downscaling():
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_rgb(encoded((1200, 1000), "JPEG"), max_pixels=1_000_000, downscale_to=100)


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.from_pretrained(regions=True)  # annotating: the tests below follow images into the annotator


def test_annotator_and_network_receive_images_bounded_by_max_side(scorer, monkeypatch):
    seen = []
    original = scorer.annotator.annotate

    def spy(images, monitor=None):
        seen.extend(im.shape for im in images)
        return original(images, monitor)

    monkeypatch.setattr(scorer.annotator, "annotate", spy)
    monkeypatch.setattr(scorer, "workers", 0)
    monkeypatch.setattr(scorer, "max_side", 96)
    big = np.asarray(Image.open(io.BytesIO(encoded((400, 300), "PNG"))))
    records = scorer.score([big, Image.fromarray(big)])
    assert seen == [(72, 96, 3), (72, 96, 3)]
    assert all(r["error"] is None for r in records)


def test_worker_processes_give_the_in_process_scores_and_stage_times(scorer, monkeypatch):
    rng = np.random.default_rng(1)
    images = [np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((96, 72)))
              for _ in range(5)]
    images.insert(2, np.zeros((4, 4), dtype=np.float32))   # an input error in the middle keeps its place
    monkeypatch.setattr(scorer, "workers", 0)
    alone = scorer.score(images, batch_size=2)
    before = dict(scorer.times.images)
    monkeypatch.setattr(scorer, "workers", 1)
    pooled = scorer.score(images, batch_size=2)
    assert [r["score"] for r in pooled] == [r["score"] for r in alone]
    assert [r["error"] is None for r in pooled] == [True, True, False, True, True, True]
    counted = {k: scorer.times.images[k] - before[k] for k in before}
    encoded_texts = 5 if "texts" in scorer.net.config.consumes else 0  # the shipped model reads no region text
    assert counted == {"decode": 6, "segment": 5, "describe": 5, "prepare": 5, "text": encoded_texts, "network": 5}


def test_network_threads_leave_the_annotation_workers_their_cores(scorer, monkeypatch):
    import torch

    outside = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        monkeypatch.setattr("rsfiqa.inference.scorer.available_cores", lambda: 4)
        with scorer.network_threads(None):
            assert torch.get_num_threads() == 3             # no workers: torch keeps its threads
        with scorer.network_threads(SimpleNamespace(workers=2)):
            assert torch.get_num_threads() == 2             # the cores the workers leave
        with scorer.network_threads(SimpleNamespace(workers=6)):
            assert torch.get_num_threads() == 1             # never below one
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(outside)
