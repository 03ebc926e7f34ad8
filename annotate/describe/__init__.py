"""Describers of the annotation stage: per region content + level/score per distortion dimension."""
from __future__ import annotations

from typing import Any, Mapping

from annotate.types import Describer

DESCRIBERS = ("measures", "vllm", "hf")
_MLLM_OPTIONS = ("max_retries", "dims", "hints", "image_long_side", "max_tokens", "seed",
                 "use_level_logprobs", "progress")


def missing_record(reason: str) -> dict[str, Any]:
    """The record of a region without a description (e.g. ``"empty region"``)."""
    return {"content": None, "levels": None, "scores": None, "parsed_scores": None, "missing_reason": reason}


def build_describer(config: Mapping[str, Any]) -> Describer:
    """A describer from ``{"name": "measures" | "vllm" | "hf", ...options}``.

    * ``measures``: :class:`~annotate.describe.measures.MeasuresDescriber` (offline stand-in);
    * ``vllm`` / ``hf``: :class:`~annotate.describe.mllm.MLLMDescriber` over
      :class:`~annotate.describe.backends.VLLMBackend` / :class:`~annotate.describe.backends.HFBackend`;
      the describer's own options (``max_retries``, ``dims``, ``hints``, ``image_long_side``,
      ``max_tokens``, ``seed``, ``use_level_logprobs``, ``progress``) are taken out and every
      other key goes to the backend (e.g. ``model``, ``tensor_parallel_size``).
    """
    options = dict(config)
    name = str(options.pop("name", "")).lower()
    if name == "measures":
        from annotate.describe.measures import MeasuresDescriber

        return MeasuresDescriber(**options)
    if name in ("vllm", "hf"):
        from annotate.describe.backends import HFBackend, VLLMBackend
        from annotate.describe.mllm import MLLMDescriber

        describer_options = {k: options.pop(k) for k in _MLLM_OPTIONS if k in options}
        backend = VLLMBackend(**options) if name == "vllm" else HFBackend(**options)
        return MLLMDescriber(backend, **describer_options)
    raise ValueError(f"unknown describer {config.get('name')!r}; choose one of {DESCRIBERS}")


__all__ = ["DESCRIBERS", "build_describer", "missing_record"]
