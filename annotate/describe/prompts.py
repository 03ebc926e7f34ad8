"""The paper's prompts ("Prompt Format") as multi-turn chats, one conversation per region.

Turn order per region: the content question, then for every dimension in ``dims`` a level
question and a score question — ``1 + 2 * len(dims)`` questions, each answered by the model
before the next is asked, so every prompt extends the previous one (vLLM's prefix cache serves
the shared part).

Images: the first user turn carries two images — the original image (context) and the paper's
"mask image" (:func:`highlight_region`). Follow-up turns are text only and refer back to them
(the paper writes ``<img>`` in every user turn; repeating the two images in all eleven turns
would multiply the image tokens without adding information).

Messages use the OpenAI / vLLM chat format: ``{"role": ..., "content": [parts]}`` with parts
``{"type": "text", "text": ...}`` and ``{"type": "image_pil", "image_pil": PIL.Image}``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from rsfiqa_core.contract import DIMENSIONS, LEVELS

Message = dict[str, Any]

IMAGES_INTRO = ("The first image is the original image. The second image is the mask image: the highlighted "
                "area keeps its colours inside a red outline, everything else is darkened.")
CONTENT_QUESTION = ("Please describe the content of the highlighted area in the mask image based on the "
                    "original image context.")
LEVEL_QUESTION = "From the {dim} dimension, please provide the quality level for highlighted area in the mask image."
SCORE_QUESTION = "From the {dim} dimension, please provide the quality score for highlighted area in the mask image."
LEVEL_ANSWER_PREFIX = "From the {dim} dimension, the image quality level is"
SCORE_ANSWER_PREFIX = "From the {dim} dimension, the image quality score is"
# Answer-format hints (our addition: an instruction-tuned model that was not fine-tuned on the
# paper's format otherwise answers in free prose). Switch off with ``hints=False``.
HINTS = {
    "content": "Answer in one short phrase.",
    "level": f"Answer in the form \"{LEVEL_ANSWER_PREFIX} <level>.\" with <level> one of: {', '.join(LEVELS)}.",
    "score": f"Answer in the form \"{SCORE_ANSWER_PREFIX} <score>.\" with <score> a number from 1 (worst) to 5 (best).",
}

DARKEN = 0.35      # brightness kept outside the region in the mask image
OUTLINE = (255, 0, 0)


def highlight_region(image: np.ndarray, mask: np.ndarray, darken: float = DARKEN,
                     outline: tuple[int, int, int] = OUTLINE, width: int | None = None) -> np.ndarray:
    """The paper's "mask image": pixels outside ``mask`` darkened to ``darken`` of their value
    and the region's border drawn in ``outline`` (``width`` px, default ~0.5% of the long side)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    width = width or max(1, round(max(mask.shape) / 200))
    out = image.astype(np.float32)
    out[~mask] *= darken
    out = out.round().astype(np.uint8)
    border = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=1)
    out[border] = outline
    return out


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(image: np.ndarray | Image.Image) -> dict[str, Any]:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return {"type": "image_pil", "image_pil": pil}


def question_kinds(dims: Sequence[str] = DIMENSIONS) -> list[tuple[str, str | None]]:
    """``(kind, dim)`` of every question in order: ("content", None), ("level", d), ("score", d)..."""
    return [("content", None)] + [(kind, d) for d in dims for kind in ("level", "score")]


def question(kind: str, dim: str | None = None, hints: bool = True) -> str:
    """The paper's question of ``kind`` (content / level / score) for dimension ``dim``."""
    templates = {"content": CONTENT_QUESTION, "level": LEVEL_QUESTION, "score": SCORE_QUESTION}
    if kind not in templates:
        raise ValueError(f"unknown question kind {kind!r}")
    text = templates[kind].format(dim=dim)
    return f"{text} {HINTS[kind].format(dim=dim)}" if hints else text


def answer_prefix(kind: str, dim: str) -> str:
    """The paper's answer wording up to the level / score slot."""
    return {"level": LEVEL_ANSWER_PREFIX, "score": SCORE_ANSWER_PREFIX}[kind].format(dim=dim)


def build_conversation(original: np.ndarray | Image.Image, mask_image: np.ndarray | Image.Image,
                       answers: Sequence[str] = (), dims: Sequence[str] = DIMENSIONS,
                       hints: bool = True) -> list[Message]:
    """The chat of one region up to its next question.

    With ``k`` previous ``answers`` (the model's own, filled in as assistant turns) the result
    ends with the user's ``k+1``-th question of :func:`question_kinds`.
    """
    kinds = question_kinds(dims)
    if len(answers) >= len(kinds):
        raise ValueError(f"{len(answers)} answers given but there are only {len(kinds)} questions")
    messages: list[Message] = [{"role": "user", "content": [
        image_part(original), image_part(mask_image), text_part(f"{IMAGES_INTRO} {question(*kinds[0], hints)}")]}]
    for answer, (kind, dim) in zip(answers, kinds[1:]):
        messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": [text_part(question(kind, dim, hints))]})
    return messages


def with_answer_prefix(messages: list[Message], prefix: str) -> list[Message]:
    """``messages`` plus an unfinished assistant turn ``prefix`` for the model to continue."""
    return [*messages, {"role": "assistant", "content": prefix}]
