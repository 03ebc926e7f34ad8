"""Describers: answer parsing, Q-Align rule, prompts, and the measures describer on a real photo."""
from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from annotate.describe import build_describer
from annotate.describe.backends import MissingExtraError
from annotate.describe.measures import SCORE_BREAKPOINTS, score_from_measure
from annotate.describe.parsing import (digit_expectation, parse_content, parse_level, parse_score, qalign_expectation,
                                      score_to_level)
from annotate.describe.prompts import CONTENT_QUESTION, build_conversation, highlight_region, question, question_kinds, with_answer_prefix
from annotate.segment import build_segmenter
from annotate.segment.postprocess import postprocess
from rsfiqa_core.contract import DIMENSIONS, LEVELS, region_text

pytestmark = pytest.mark.shared  # reads ../shared

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO = SHARED / "data" / "clive-dev" / "images" / "16.webp"  # a sharp, clean CLIVE photo


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("answer, level", [
    ("From the blur dimension, the image quality level is poor.", "poor"),
    ("Excellent", "excellent"),
    ("the quality level is **Good**", "good"),
    ("It looks fair to me.", "fair"),
])
def test_parse_level_reads_the_level_word(answer, level):
    assert parse_level(answer).value == level


@pytest.mark.parametrize("answer, fragment", [
    ("From the noise dimension, the image quality level is average.", "off-vocabulary level 'average'"),
    ("", "no level word"),
    ("somewhere between good and bad", "ambiguous"),
    ("goodness knows", "no level word"),
])
def test_parse_level_gives_none_with_a_reason(answer, fragment):
    parsed = parse_level(answer)
    assert parsed.value is None and fragment in parsed.reason


@pytest.mark.parametrize("answer, score", [
    ("From the color dimension, the image quality score is 4.", 4.0),
    ("3.5/5", 3.5),
    ("score: 2.25 out of 5", 2.25),
    ("The score is five.", 5.0),
    ("Four.", 4.0),
    ("It is one of the sharper areas, I'd say 4", 4.0),
])
def test_parse_score_reads_numbers(answer, score):
    assert parse_score(answer).value == score


@pytest.mark.parametrize("answer, fragment", [
    ("the image quality score is 7", "outside 1..5"),
    ("8/10", "another scale"),
    ("either 2 or 3", "ambiguous"),
    ("not sure", "no score number"),
])
def test_parse_score_gives_none_with_a_reason(answer, fragment):
    parsed = parse_score(answer)
    assert parsed.value is None and fragment in parsed.reason


def test_parse_content_rejects_empty_answers():
    assert parse_content("  a red   car on a road.\n").value == "a red car on a road."
    assert parse_content(" ... ").value is None


def test_qalign_expectation_is_the_softmax_weighted_level_value():
    probs = [0.1, 0.2, 0.3, 0.25, 0.15]
    logprobs = {w: math.log(p) - 7.0 for w, p in zip(LEVELS, probs)}  # any common shift
    assert qalign_expectation(logprobs).value == pytest.approx(sum(p * (i + 1) for i, p in enumerate(probs)))
    assert qalign_expectation({**logprobs, "good": -math.inf}).value < qalign_expectation(logprobs).value


def test_digit_expectation_weights_each_digit_by_its_value():
    probs = [0.05, 0.1, 0.2, 0.4, 0.25]
    logprobs = {str(i + 1): math.log(p) + 3.0 for i, p in enumerate(probs)}
    assert digit_expectation(logprobs).value == pytest.approx(sum(p * (i + 1) for i, p in enumerate(probs)))
    assert digit_expectation({w: 0.0 for w in LEVELS}).value is None  # level words are not the score's labels
    assert "score digits ['4']" in digit_expectation({d: -1.0 for d in "1235"}).reason


def test_qalign_expectation_refuses_incomplete_logprobs():
    partial = {w: -1.0 for w in LEVELS if w != "fair"}
    parsed = qalign_expectation(partial)
    assert parsed.value is None and "['fair']" in parsed.reason
    assert qalign_expectation(None).value is None


def test_score_to_level_rounds_to_the_nearest_level():
    assert [score_to_level(s) for s in (1.0, 1.49, 1.5, 3.0, 4.49, 4.5, 5.0)] == \
        ["bad", "bad", "poor", "fair", "good", "excellent", "excellent"]


# --------------------------------------------------------------------------- prompts
def test_highlight_region_darkens_outside_and_outlines_the_region():
    image = np.full((40, 40, 3), 200, dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    out = highlight_region(image, mask, width=1)
    assert (out[~mask] == 70).all()                   # 200 * 0.35
    assert (out[15:25, 15:25] == 200).all()           # region interior unchanged
    assert (out[10, 10:30] == [255, 0, 0]).all()      # border drawn in red
    assert (out[11, 11] == 200).all()


def test_conversation_follows_the_papers_turns():
    kinds = question_kinds(DIMENSIONS)
    assert len(kinds) == 1 + 2 * len(DIMENSIONS)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    first = build_conversation(image, image)
    assert len(first) == 1 and first[0]["role"] == "user"
    assert [p["type"] for p in first[0]["content"]] == ["image_pil", "image_pil", "text"]
    assert CONTENT_QUESTION in first[0]["content"][2]["text"]

    answers = ["a dog", "From the color dimension, the image quality level is good."]
    chat = build_conversation(image, image, answers)
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in chat[1::2]] == answers                       # the model's own answers
    assert chat[-1]["content"][0]["text"] == question("score", "color")       # third question
    assert '"From the color dimension, the image quality score is <score>."' in chat[-1]["content"][0]["text"]
    assert with_answer_prefix(chat, "x")[-1] == {"role": "assistant", "content": "x"}
    with pytest.raises(ValueError, match="questions"):
        build_conversation(image, image, ["a"] * len(kinds))


# --------------------------------------------------------------------------- measures describer
@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


@pytest.fixture(scope="module")
def photo_seg(photo):
    return build_segmenter({"name": "classical", "num_regions": 5}).segment(photo)


def mean_score(describer, image, seg, dim):
    """Area-weighted mean score of ``dim`` over the regions (segmentation fixed)."""
    records = describer.describe([image], [seg])[0]
    pairs = [(r["scores"][dim], a) for r, a in zip(records, seg.area) if r["scores"] and r["scores"][dim] is not None]
    return sum(s * a for s, a in pairs) / sum(a for _, a in pairs)


def gaussian_blur(image, sigma):
    return np.clip(ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0)), 0, 255).round().astype(np.uint8)


def gaussian_noise(image, sigma):
    noisy = image + np.random.default_rng(0).normal(0.0, sigma, image.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def jpeg(image, quality):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_measures_blur_score_falls_with_stronger_blur(photo, photo_seg):
    describer = build_describer({"name": "measures"})
    scores = [mean_score(describer, gaussian_blur(photo, s), photo_seg, "blur") for s in (0.5, 1.0, 2.0)]
    assert scores[0] > scores[1] > scores[2]


def test_measures_noise_score_falls_with_stronger_noise(photo, photo_seg):
    describer = build_describer({"name": "measures"})
    scores = [mean_score(describer, gaussian_noise(photo, s), photo_seg, "noise") for s in (1.0, 2.0, 4.0)]
    assert scores[0] > scores[1] > scores[2]


def test_measures_artifact_score_falls_with_strong_jpeg_compression(photo, photo_seg):
    describer = build_describer({"name": "measures"})
    mild, strong = (mean_score(describer, jpeg(photo, q), photo_seg, "artifact") for q in (90, 10))
    assert strong < mild - 1.0


def test_measures_records_follow_the_contract(photo, photo_seg):
    describer = build_describer({"name": "measures"})
    records = describer.describe([photo], [photo_seg])[0]
    assert records == describer.describe([photo], [photo_seg])[0]  # deterministic
    assert len(records) == 5
    for r in records:
        assert set(r["levels"]) == set(r["scores"]) == set(DIMENSIONS)
        assert all(r["levels"][d] == score_to_level(r["scores"][d]) for d in DIMENSIONS)
        assert all(1.0 <= r["scores"][d] <= 5.0 for d in DIMENSIONS)
        assert r["parsed_scores"] is None and "missing_reason" not in r
        assert r["content"].split()[0] in ("large", "medium", "small") and " in the " in r["content"]
        assert region_text(r, count_tokens=lambda t: len(t.split())).count(";") == len(DIMENSIONS) - 1
    assert "background area" in records[-1]["content"]
    assert describer.provenance()["score_breakpoints"]["blur"] == list(SCORE_BREAKPOINTS["blur"])


def test_measures_empty_regions_are_missing_with_a_reason():
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    top = np.zeros((64, 64), dtype=bool)
    top[:32] = True
    seg = postprocess([top], [0.9], num_regions=4)
    records = build_describer({"name": "measures"}).describe([image], [seg])[0]
    assert [r["missing_reason"] for r in records[1:3]] == ["empty region", "empty region"]
    assert records[1]["content"] is None and records[1]["levels"] is None
    assert records[0]["levels"] is not None and records[3]["levels"] is not None


def test_score_breakpoints_are_monotone_and_map_onto_1_to_5():
    for dim, xs in SCORE_BREAKPOINTS.items():
        diffs = np.diff(xs)
        assert (diffs > 0).all() or (diffs < 0).all(), dim
        assert [score_from_measure(dim, x) for x in xs] == pytest.approx([1, 2, 3, 4, 5])


# --------------------------------------------------------------------------- registry
def test_vllm_describer_without_vllm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail as when not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'rsfiqa\[vllm\]'"):
        build_describer({"name": "vllm"})


def test_build_describer_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown describer"):
        build_describer({"name": "gpt"})
