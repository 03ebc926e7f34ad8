"""MLLM describer through transformers' real Qwen2.5-VL class (tiny, random, offline) + vLLM glue."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from annotate.describe import build_describer
from annotate.describe.backends import VLLMBackend
from annotate.describe.mllm import covering_mask
from annotate.describe.parsing import qalign_expectation
from annotate.describe.prompts import build_conversation, question_kinds, with_answer_prefix
from annotate.segment.postprocess import postprocess
from rsfiqa_core.contract import DIMENSIONS, LEVELS

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>", "<unk>"]
WORDS = ["the", "image", "quality", "level", "score", "is", "a", "region", "From", "dimension", *LEVELS,
         *DIMENSIONS, *"12345", ".", ","]
# Qwen2-VL style template: images as vision placeholders, assistant turns closed with <|im_end|>
# (transformers cuts the rendered text after the final message for continue_final_message).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_processor() -> Qwen2_5_VLProcessor:
    """An offline Qwen2.5-VL processor: a word-level tokenizer where " word" (leading space) is one
    token, as in Qwen's BPE, plus the default Qwen2-VL image processor with a small pixel budget."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in WORDS:
        for token in (w, " " + w):
            vocab.setdefault(token, len(vocab))
    vocab.setdefault("\n", len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+| ?[0-9]| ?[^A-Za-z0-9\s]|\s"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<unk>", additional_special_tokens=SPECIALS[:7])
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                               tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                               chat_template=CHAT_TEMPLATE)


def tiny_qwen(processor: Qwen2_5_VLProcessor, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised Qwen2.5-VL with 2 text and 2 vision layers of width 32."""
    ids = processor.tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(processor.tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, bos_token_id=ids("<|endoftext|>"),
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def bias_towards(model, processor, word: str, strength: float = 30.0):
    """Make the real model always emit ``" " + word``: a bias on that row of its lm_head."""
    bias = torch.zeros(model.lm_head.out_features)
    bias[processor.tokenizer.convert_tokens_to_ids(" " + word)] = strength
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


class Spy:
    """Wraps a backend and records every call (the real backend does the work)."""

    def __init__(self, backend):
        self.backend, self.generate_calls, self.logprob_calls = backend, [], []

    def generate(self, conversations, max_tokens, sample_seed=None):
        self.generate_calls.append((list(conversations), sample_seed))
        return self.backend.generate(conversations, max_tokens, sample_seed)

    def level_logprobs(self, conversations):
        self.logprob_calls.append(list(conversations))
        return self.backend.level_logprobs(conversations)

    def config(self):
        return self.backend.config()

    def provenance(self):
        return self.backend.provenance()


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def images_and_segs():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.integers(0, 255, (56, 72, 3), dtype=np.uint8)]
    segs = []
    for image in images:
        h, w = image.shape[:2]
        left = np.zeros((h, w), dtype=bool)
        left[:, : w // 2] = True
        segs.append(postprocess([left], [0.9], num_regions=3))  # regions: left, (empty), background
    return images, segs


def hf_describer(model, processor, **options):
    describer = build_describer({"name": "hf", "model": model, "processor": processor, "device": "cpu",
                                 "image_long_side": 56, "max_tokens": {"content": 6, "level": 6, "score": 6},
                                 **options})
    describer.backend = Spy(describer.backend)
    return describer


@pytest.mark.slow
def test_hf_describer_runs_the_papers_turns_through_the_real_qwen_class(processor, images_and_segs):
    torch.set_num_threads(1)
    images, segs = images_and_segs
    describer = hf_describer(tiny_qwen(processor), processor, max_retries=1)
    records = describer.describe(images, segs)
    spy = describer.backend

    first_attempts = [convs for convs, seed in spy.generate_calls if seed is None]
    assert len(first_attempts) == 1 + 2 * len(DIMENSIONS)           # one batched call per turn
    assert all(len(convs) == 4 for convs in first_attempts)          # 2 images x 2 valid regions
    assert [len(convs[0]) for convs in first_attempts] == [1 + 2 * k for k in range(len(first_attempts))]
    assert len(spy.logprob_calls) == len(DIMENSIONS)                 # one per level turn
    assert all(c[-1]["role"] == "assistant" and c[-1]["content"].endswith("quality level is")
               for convs in spy.logprob_calls for c in convs)

    for row in records:
        assert row[1] == {"content": None, "levels": None, "scores": None, "parsed_scores": None,
                          "missing_reason": "empty region"}
        for r in (row[0], row[2]):
            # the level words are single tokens, so every score is a Q-Align expectation
            assert r["score_source"] == {d: "qalign" for d in DIMENSIONS}
            assert all(1.0 <= r["scores"][d] <= 5.0 for d in DIMENSIONS)
            for d in DIMENSIONS:  # a level either parsed or missing with its reason
                assert r["levels"] is None or r["levels"][d] in LEVELS or f"level/{d}:" in r["missing_reason"]
    assert describer.describe(images, segs) == records               # greedy + seeded retries: deterministic

    # left padding: a batch of unequal prompts gives each prompt's own log-probs and answers
    prefixed, questions = spy.logprob_calls[-1][::3], first_attempts[-1][::3]  # image 0 and image 1
    batched, answers = spy.backend.level_logprobs(prefixed), spy.backend.generate(questions, 6)
    for k in range(2):
        alone = spy.backend.level_logprobs(prefixed[k:k + 1])[0]
        assert all(abs(alone[w] - batched[k][w]) < 1e-4 for w in LEVELS)
        assert spy.backend.generate(questions[k:k + 1], 6) == [answers[k]]
    settings = describer.provenance()
    assert settings["backend"]["backend"] == "hf" and settings["backend"]["level_token_ids"] is not None


@pytest.mark.slow
def test_malformed_answers_are_retried_then_missing_with_a_reason(processor, images_and_segs):
    images, segs = images_and_segs
    model = bias_towards(tiny_qwen(processor), processor, "the")   # answers "the the the ..."
    describer = hf_describer(model, processor, max_retries=2)
    record = describer.describe(images[:1], segs[:1])[0][0]

    retries = [seed for _, seed in describer.backend.generate_calls if seed is not None]
    assert retries == [1, 2] * (2 * len(DIMENSIONS))                # every level and score turn retried twice
    assert record["content"] == "the the the the the the"           # well-formed content is kept
    assert record["levels"] is None and record["parsed_scores"] is None
    for d in DIMENSIONS:
        assert f"level/{d}: no level word" in record["missing_reason"]
        assert f"score/{d}: no score number" in record["missing_reason"]
    assert "after 3 attempts" in record["missing_reason"]
    assert record["score_source"] == {d: "qalign" for d in DIMENSIONS}  # the log-probs still give scores


@pytest.mark.slow
def test_level_logprobs_give_the_q_align_score_of_the_favoured_word(processor, images_and_segs):
    images, segs = images_and_segs
    model = bias_towards(tiny_qwen(processor), processor, "poor")
    describer = hf_describer(model, processor, max_retries=0)
    record = describer.describe(images[:1], segs[:1])[0][0]
    assert record["levels"] == {d: "poor" for d in DIMENSIONS}
    assert record["scores"] == {d: pytest.approx(2.0, abs=1e-3) for d in DIMENSIONS}

    backend = describer.backend.backend
    prefix = "From the blur dimension, the image quality level is"
    short = with_answer_prefix(build_conversation(*images[:1] * 2), prefix)
    long = with_answer_prefix(build_conversation(*images[1:] * 2, ["a region"] * 3), prefix)
    for logprobs in backend.level_logprobs([short, long]):
        assert set(logprobs) == set(LEVELS) and max(logprobs, key=logprobs.get) == "poor"
        assert qalign_expectation(logprobs).value == pytest.approx(2.0, abs=1e-3)


# --------------------------------------------------------------------------- vLLM glue (engine stubbed)
def stub_vllm(monkeypatch, with_token_ids: bool):
    """A stand-in ``vllm`` module: records what VLLMBackend asks of ``LLM.chat`` (no engine runs)."""
    calls = []

    class SamplingParams:
        def __init__(self, max_tokens=16, temperature=1.0, seed=None, logprobs=None, **extra):
            if extra and not (with_token_ids and set(extra) == {"logprob_token_ids"}):
                raise TypeError(f"unexpected {extra}")
            self.__dict__.update(max_tokens=max_tokens, temperature=temperature, seed=seed, logprobs=logprobs, **extra)

    class Tokenizer:
        def encode(self, text, add_special_tokens=False):
            return [100 + LEVELS.index(text.strip())] if text.strip() in LEVELS else [1, 2]

    class LLM:
        def __init__(self, **options):
            self.options = options

        def get_tokenizer(self):
            return Tokenizer()

        def chat(self, conversations, params, use_tqdm=True, **kwargs):
            calls.append((conversations, params, kwargs))
            step = {100 + i: SimpleNamespace(logprob=-float(i)) for i in range(len(LEVELS)) if i != 4 or with_token_ids}
            return [SimpleNamespace(outputs=[SimpleNamespace(text="fair", logprobs=[step])]) for _ in conversations]

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return calls


@pytest.mark.parametrize("with_token_ids", [True, False])
def test_vllm_backend_asks_llm_chat_for_answers_and_level_logprobs(monkeypatch, with_token_ids):
    calls = stub_vllm(monkeypatch, with_token_ids)
    backend = VLLMBackend(model="/models/qwen")
    assert backend.llm.options["limit_mm_per_prompt"] == {"image": 2} and backend.llm.options["enable_prefix_caching"]
    conv = build_conversation(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    assert backend.generate([conv], 12) == ["fair"]
    _, greedy, _ = calls[-1]
    assert greedy.temperature == 0.0 and greedy.max_tokens == 12
    backend.generate([conv], 12, sample_seed=3)
    assert calls[-1][1].seed == 3 and calls[-1][1].temperature > 0

    logprobs = backend.level_logprobs([with_answer_prefix(conv, "From the noise dimension, the image quality level is")])
    _, params, kwargs = calls[-1]
    assert kwargs == {"add_generation_prompt": False, "continue_final_message": True}
    if with_token_ids:
        assert backend.logprob_mode == "token_ids" and params.logprob_token_ids == [100, 101, 102, 103, 104]
        assert logprobs == [{w: -float(i) for i, w in enumerate(LEVELS)}]
    else:  # top-20 fallback: "excellent" was not among the returned words -> reported absent
        assert backend.logprob_mode == "top20" and params.logprobs == 20
        assert qalign_expectation(logprobs[0]).value is None


def test_reduced_mask_image_keeps_tiny_regions_visible():
    mask = np.zeros((900, 1200), dtype=bool)
    mask[450, 600] = True  # one pixel, 1/2500 of a 56x42 pixel's area
    small = covering_mask(mask, (42, 56))
    assert small.sum() == 1 and small[21, 28]


def test_question_kinds_cover_every_dimension_once_each():
    kinds = question_kinds()
    assert kinds[0] == ("content", None)
    assert sorted(kinds[1:]) == sorted((k, d) for d in DIMENSIONS for k in ("level", "score"))
