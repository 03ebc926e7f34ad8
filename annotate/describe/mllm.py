"""MLLM describer (paper, "Fine-grained Distortion Perception" and "Prompt Format").

For every valid region of every image one conversation (:mod:`annotate.describe.prompts`) runs
through ``1 + 2 * len(dims)`` turns: content, then level and score per dimension. Each turn is
one batched backend call over all pending conversations of the batch (so vLLM batches across
images and regions, and its prefix cache serves the growing conversations).

Per region the record holds (the paper asks one question for the level and another for the score)

* ``content``: the content answer; ``levels``: the level word parsed from each level answer;
* ``scores``: the answer to the score question — where the backend gives log-probabilities
  (``use_logprobs``), the Q-Align expectation over the digits 1..5 at the score answer's slot (the
  model continuing "From the <dim> dimension, the image quality score is"), else the number parsed
  from the answer; ``score_source`` says which per dimension (``"qalign"`` / ``"parsed"``; ``None``
  where missing). The region text's score is this value.
* ``level_expectations``: the Q-Align expectation over the five level words (weights 1..5) at the
  level answer's slot; ``None`` without log-probabilities (records written before this key held
  that value under ``scores``);
* ``parsed_scores``: the number parsed from each score answer.

Whether log-probabilities are used is decided once per run and slot kind (``use_logprobs`` and
whether the backend's tokenizer reads every label as one token, ``Backend.slot_problem``), so the
sources never mix within a sample. Where log-probabilities are used and a label's value is not
returned (or the call fails), the value is ``None`` and ``missing_reason`` says why — the parsed
number is never put in its place.

A malformed answer is asked again up to ``max_retries`` times (sampled, seeded: a greedy retry
would repeat itself); if it stays malformed the item is ``None`` and ``missing_reason`` says why
— nothing is substituted. A backend call that raises (a timeout, a server error) or returns the
wrong number of answers is repeated as it was, up to ``max_retries`` times; if it keeps failing,
every item that call was for is ``None`` with the reason ``"backend error: <exception>"`` and the
conversations go on with the next question (an empty answer stands in the history).
``levels`` / ``scores`` / ``level_expectations`` / ``parsed_scores`` are ``None`` as a whole when
every dimension is missing.
Regions flagged invalid by the segmenter get ``missing_reason = "empty region"`` and no conversation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from annotate.describe import prompts
from annotate.describe.backends import Backend, Conversation, HFBackend, VLLMBackend
from annotate.describe.parsing import (Parsed, digit_expectation, parse_content, parse_level, parse_score,
                                       qalign_expectation)
from rsfiqa_core.components import Segmentation
from rsfiqa_core.contract import DIMENSIONS, missing_record
from rsfiqa_core.imageio import check_rgb, downscale

T = TypeVar("T")
PARSERS: dict[str, Callable[[str], Parsed]] = {"content": parse_content, "level": parse_level, "score": parse_score}
EXPECTATIONS: dict[str, Callable[[Any], Parsed]] = {"level": qalign_expectation, "score": digit_expectation}
DEFAULT_MAX_TOKENS = {"content": 64, "level": 32, "score": 32}


def covering_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` at size ``shape`` (H, W): a pixel is in when any pixel it covers is, so small
    regions stay visible in the reduced mask image."""
    if mask.shape == tuple(shape):
        return mask
    coverage = Image.fromarray(mask.astype(np.float32)).resize((shape[1], shape[0]), Image.BOX)
    return np.asarray(coverage) > 0


@dataclass
class RegionChat:
    """The state of one region's conversation."""

    image_index: int
    region_index: int
    original: Image.Image
    mask_image: Image.Image
    answers: list[str] = field(default_factory=list)
    parsed: dict[tuple[str, str | None], Parsed] = field(default_factory=dict)
    expected: dict[tuple[str, str], Parsed] = field(default_factory=dict)  # (kind, dim) -> Q-Align expectation


def _none_if_empty(values: dict[str, Any]) -> dict[str, Any] | None:
    return values if any(v is not None for v in values.values()) else None


DESCRIBER_OPTIONS = ("max_retries", "dims", "hints", "image_long_side", "max_tokens", "seed", "use_logprobs",
                     "progress")
OLD_OPTION_NAMES = {"use_level_logprobs": "use_logprobs"}  # records written before the score slot was read
SCORES_FROM = "score answer: Q-Align expectation over the digits 1..5 at its slot, else the parsed number"


class BackendFailure(Exception):
    """A backend call that kept failing; its message is the items' ``missing_reason`` text."""


class MLLMDescriber:
    """Multi-turn region description through a :class:`~annotate.describe.backends.Backend`."""

    name = "mllm"  # the registered subclasses below name their backend
    uses_device = False

    def __init__(
        self,
        backend: Backend,
        max_retries: int = 2,
        dims: Sequence[str] = DIMENSIONS,
        hints: bool = True,
        image_long_side: int = 448,
        max_tokens: dict[str, int] | None = None,
        seed: int = 0,
        use_logprobs: bool = True,
        progress: bool = False,
    ) -> None:
        unknown = set(dims) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"unknown dimensions {sorted(unknown)}; the contract's are {DIMENSIONS}")
        self.backend = backend
        self.max_retries = max_retries
        self.dims = tuple(dims)
        self.hints = hints
        self.image_long_side = image_long_side
        self.max_tokens = {**DEFAULT_MAX_TOKENS, **(max_tokens or {})}
        self.seed = seed
        self.use_logprobs = use_logprobs
        self.progress = progress

    # ------------------------------------------------------------------ public API
    def describe(self, images: Sequence[np.ndarray], segs: Sequence[Segmentation]) -> list[list[dict[str, Any]]]:
        """Per image, per region: the record described in the module docstring."""
        if len(images) != len(segs):
            raise ValueError(f"{len(images)} images but {len(segs)} segmentations")
        results: list[list[dict[str, Any] | None]] = []
        chats: list[RegionChat] = []
        for i, (image, seg) in enumerate(zip(images, segs)):
            check_rgb(image)
            if seg.label_map.shape != image.shape[:2]:
                raise ValueError(f"image {i}: label map {seg.label_map.shape} does not match image {image.shape[:2]}")
            small = downscale(image, self.image_long_side)
            original = Image.fromarray(small)
            row: list[dict[str, Any] | None] = []
            for r, valid in enumerate(seg.valid):
                if not valid:
                    row.append(missing_record("empty region"))
                    continue
                mask = covering_mask(seg.label_map == r, small.shape[:2])
                chats.append(RegionChat(i, r, original, Image.fromarray(prompts.highlight_region(small, mask))))
                row.append(None)
            results.append(row)
        self.converse(chats)
        for chat in chats:
            results[chat.image_index][chat.region_index] = self.record(chat)
        return results  # type: ignore[return-value]

    def config(self) -> dict[str, Any]:
        """The describer's and its backend's constructor options."""
        return {"max_retries": self.max_retries, "dims": list(self.dims), "hints": self.hints,
                "image_long_side": self.image_long_side, "max_tokens": dict(self.max_tokens), "seed": self.seed,
                "use_logprobs": self.use_logprobs, **self.backend.config()}

    def provenance(self) -> dict[str, Any]:
        """The prompt texts and the backend's block (its options, tokenizer ids and versions)."""
        return {"prompts": {"intro": prompts.IMAGES_INTRO, "content": prompts.question("content", None, self.hints),
                            "level": prompts.question("level", "<type>", self.hints),
                            "score": prompts.question("score", "<type>", self.hints),
                            "level_answer_prefix": prompts.LEVEL_ANSWER_PREFIX,
                            "score_answer_prefix": prompts.SCORE_ANSWER_PREFIX},
                "scores_from": SCORES_FROM if self.reads_slot("score") else "score answer: the parsed number",
                "backend": {**self.backend.config(), **self.backend.provenance()}}

    # ------------------------------------------------------------------ turns
    def reads_slot(self, kind: str) -> bool:
        """Whether ``kind``'s values come from log-probabilities in this run (decided once, never per item)."""
        return kind in EXPECTATIONS and self.use_logprobs and self.backend.slot_problem(kind) is None

    def converse(self, chats: list[RegionChat]) -> None:
        """Run every question of :func:`prompts.question_kinds` over all ``chats``, one batch per turn."""
        if not chats:
            return
        for kind, dim in tqdm(prompts.question_kinds(self.dims), desc="MLLM turns", disable=not self.progress):
            conversations = [prompts.build_conversation(c.original, c.mask_image, c.answers, self.dims, self.hints)
                             for c in chats]
            if self.reads_slot(kind):
                for chat, expected in zip(chats, self.expectations(conversations, kind, dim)):
                    chat.expected[(kind, dim)] = expected
            answers, parsed = self.ask(conversations, PARSERS[kind], self.max_tokens[kind])
            for chat, answer, p in zip(chats, answers, parsed):
                chat.answers.append(answer.strip())
                chat.parsed[(kind, dim)] = p

    def expectations(self, conversations: list[Conversation], kind: str, dim: str) -> list[Parsed]:
        """The Q-Align expectation at ``kind``'s answer slot of every conversation (``None`` + reason
        where the backend failed or left a label out)."""
        prefix = prompts.answer_prefix(kind, dim)
        try:
            logprobs = self.call_backend(self.backend.slot_logprobs,
                                         [prompts.with_answer_prefix(m, prefix) for m in conversations], kind)
        except BackendFailure as failure:
            return [Parsed(None, str(failure))] * len(conversations)
        return [EXPECTATIONS[kind](lp) for lp in logprobs]

    def call_backend(self, method: Callable[..., list[T]], conversations: list[Conversation], *args: Any,
                     **kwargs: Any) -> list[T]:
        """``method(conversations, ...)``, repeated up to ``max_retries`` times while it raises or returns
        a wrong number of results; then :class:`BackendFailure` with the last problem."""
        problem = ""
        for _ in range(1 + self.max_retries):
            try:
                results = list(method(conversations, *args, **kwargs))
            except Exception as err:  # noqa: BLE001 -- any backend failure is retried, then reported per item
                problem = f"{type(err).__name__}: {err}"
                continue
            if len(results) == len(conversations):
                return results
            problem = f"{len(results)} results for {len(conversations)} conversations"
        raise BackendFailure(f"backend error: {problem} (after {1 + self.max_retries} attempts)")

    def ask(self, conversations: list[Conversation], parser: Callable[[str], Parsed],
            max_tokens: int) -> tuple[list[str], list[Parsed]]:
        """Answers (greedy, then seeded re-samples of the malformed ones) and what parses from them."""
        try:
            answers = self.call_backend(self.backend.generate, conversations, max_tokens)
        except BackendFailure as failure:
            return [""] * len(conversations), [Parsed(None, str(failure))] * len(conversations)
        parsed = [parser(a) for a in answers]
        attempts = 1
        for attempt in range(1, self.max_retries + 1):
            todo = [k for k, p in enumerate(parsed) if not p.ok]
            if not todo:
                break
            try:
                retried = self.call_backend(self.backend.generate, [conversations[k] for k in todo], max_tokens,
                                            sample_seed=self.seed + attempt)
            except BackendFailure:
                break  # the malformed answers stand, with their reasons
            attempts += 1
            for k, answer in zip(todo, retried):
                answers[k], parsed[k] = answer, parser(answer)
        return answers, [p if p.ok else Parsed(None, f"{p.reason} (after {attempts} attempts)") for p in parsed]

    # ------------------------------------------------------------------ records
    def record(self, chat: RegionChat) -> dict[str, Any]:
        """The region's description record (module docstring) from its finished conversation."""
        levels = {d: chat.parsed[("level", d)].value for d in self.dims}
        parsed_scores = {d: chat.parsed[("score", d)].value for d in self.dims}
        if self.reads_slot("score"):
            expected = {d: chat.expected[("score", d)].value for d in self.dims}
            scores = {d: self._rounded(v) for d, v in expected.items()}
            source = {d: None if v is None else "qalign" for d, v in scores.items()}
        else:
            scores = dict(parsed_scores)
            source = {d: None if v is None else "parsed" for d, v in scores.items()}
        level_expectations = ({d: self._rounded(chat.expected[("level", d)].value) for d in self.dims}
                              if self.reads_slot("level") else {})
        record: dict[str, Any] = {
            "content": chat.parsed[("content", None)].value,
            "levels": _none_if_empty(levels), "scores": _none_if_empty(scores),
            "level_expectations": _none_if_empty(level_expectations),
            "parsed_scores": _none_if_empty(parsed_scores), "score_source": source,
        }
        reasons = [f"{kind}{'/' + dim if dim else ''}: {p.reason}" for (kind, dim), p in chat.parsed.items() if not p.ok]
        reasons += [f"{kind} log-probabilities/{dim}: {p.reason}" for (kind, dim), p in chat.expected.items()
                    if not p.ok]
        if reasons:
            record["missing_reason"] = "; ".join(reasons)
        return record

    @staticmethod
    def _rounded(value: float | None) -> float | None:
        return None if value is None else round(float(value), 4)


class BackendDescriber(MLLMDescriber):
    """:class:`MLLMDescriber` over a backend built from the same options: the describer's own
    (:data:`DESCRIBER_OPTIONS`) are taken out, every other key goes to ``backend_class``."""

    backend_class: Any

    def __init__(self, **options: Any) -> None:
        for old, new in OLD_OPTION_NAMES.items():
            if old in options:
                options[new] = options.pop(old)
        own = {k: options.pop(k) for k in DESCRIBER_OPTIONS if k in options}
        super().__init__(self.backend_class(**options), **own)


class VLLMDescriber(BackendDescriber):
    """Qwen2.5-VL through vLLM (the paper's describer)."""

    name = "vllm"
    uses_device = False
    backend_class = VLLMBackend


class HFDescriber(BackendDescriber):
    """Qwen2.5-VL through transformers (CPU or GPU)."""

    name = "hf"
    uses_device = True
    backend_class = HFBackend
