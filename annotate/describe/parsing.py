"""Reading the MLLM's answers (paper, "Prompt Format") and the Q-Align scoring rule.

Every parser returns a :class:`Parsed`: the value, or ``None`` with the reason it could not be
read — callers record the reason, they never substitute a value.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from rsfiqa_core.contract import LEVEL_SCORE, LEVELS

SCORE_RANGE = (1.0, 5.0)
NUMBER_WORDS = {"one": 1.0, "two": 2.0, "three": 3.0, "four": 4.0, "five": 5.0}
_LEVEL_WORD = re.compile(r"\b(" + "|".join(LEVELS) + r")\b", re.IGNORECASE)
_LEVEL_SLOT = re.compile(r"\blevel\s+(?:is|of|:)\s*[\"'*]*([a-z]+)", re.IGNORECASE)
_NUMBER_WORD = r"(?:" + "|".join(NUMBER_WORDS) + r")\b"
_OUT_OF = r"(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?"
_SCORE_SLOT = re.compile(r"\bscore\s+(?:is|of|:)\s*[\"'*]*(\d+(?:\.\d+)?|" + _NUMBER_WORD + ")" + _OUT_OF, re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.]\d)" + _OUT_OF)
_WORD_ONLY = re.compile(r"^\W*(" + _NUMBER_WORD + r")\W*$", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    """A parsed value, or ``None`` and the reason why not."""

    value: Any
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def _quote(answer: str, limit: int = 80) -> str:
    text = " ".join(answer.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_content(answer: str) -> Parsed:
    """The content phrase: the answer with whitespace collapsed; empty or letter-less -> None."""
    text = " ".join(answer.split())
    if not re.search(r"[A-Za-z]", text):
        return Parsed(None, f"no content description in answer {_quote(answer)}")
    return Parsed(text)


def parse_level(answer: str) -> Parsed:
    """The level word of an answer such as "From the blur dimension, the image quality level is poor.".

    The word after "level is" decides when present (an off-vocabulary word there -> None);
    otherwise the answer must contain exactly one distinct level word.
    """
    slot = _LEVEL_SLOT.search(answer)
    if slot:
        word = slot.group(1).lower()
        if word in LEVEL_SCORE:
            return Parsed(word)
        return Parsed(None, f"off-vocabulary level {word!r} in answer {_quote(answer)} (expected one of {LEVELS})")
    found = sorted({w.lower() for w in _LEVEL_WORD.findall(answer)}, key=LEVELS.index)
    if len(found) == 1:
        return Parsed(found[0])
    if not found:
        return Parsed(None, f"no level word {LEVELS} in answer {_quote(answer)}")
    return Parsed(None, f"ambiguous level: {found} in answer {_quote(answer)}")


def _number(token: str) -> float:
    return NUMBER_WORDS.get(token.lower()) or float(token)


def _score_from_match(m: re.Match, answer: str) -> Parsed:
    value = _number(m.group(1))
    denominator = m.group(2) if m.re.groups > 1 else None
    if denominator is not None and float(denominator) != SCORE_RANGE[1]:
        return Parsed(None, f"score on another scale ({m.group(0).strip()}) in answer {_quote(answer)}")
    lo, hi = SCORE_RANGE
    if not lo <= value <= hi:
        return Parsed(None, f"score {value:g} outside {lo:g}..{hi:g} in answer {_quote(answer)}")
    return Parsed(value)


def parse_score(answer: str) -> Parsed:
    """The 1..5 score of an answer: "... score is 3.5", "3.5/5", "Four."; other scales or ranges -> None.

    The number after "score is" decides when present; otherwise the answer must contain
    exactly one distinct number in digits (number words count only after "score is" or as the
    whole answer, so "one of the sharpest areas" is not read as 1).
    """
    slot = _SCORE_SLOT.search(answer) or _WORD_ONLY.search(answer)
    if slot:
        return _score_from_match(slot, answer)
    matches = list(_DIGITS.finditer(answer))
    if not matches:
        return Parsed(None, f"no score number in answer {_quote(answer)}")
    if len({(_number(m.group(1)), m.group(2)) for m in matches}) > 1:
        return Parsed(None, f"ambiguous score: several numbers in answer {_quote(answer)}")
    return _score_from_match(matches[0], answer)


SCORE_DIGITS: dict[str, float] = {str(i): float(i) for i in range(1, 6)}  # the score slot's labels


def qalign_expectation(logprobs: Mapping[str, float] | None, values: Mapping[str, float] = LEVEL_SCORE,
                       what: str = "level words") -> Parsed:
    """Q-Align rule: softmax over the labels' log-probabilities, dot with their values.

    ``logprobs`` maps labels (the five level words by default, or with ``values=SCORE_DIGITS`` the
    digits 1..5 of the score slot) to the log-probability of the label as the next token. Any label
    absent (e.g. outside a server's top-k) gives ``None`` with the reason — the expectation over a
    subset would be a different number, not an approximation of it.
    """
    if logprobs is None:
        return Parsed(None, f"no log-probabilities of the {what}")
    missing = [w for w in values if w not in logprobs]
    if missing:
        return Parsed(None, f"{what} {missing} absent from the returned log-probabilities")
    labels = list(values)
    logs = [float(logprobs[w]) for w in labels]
    if any(math.isnan(v) for v in logs) or max(logs) == -math.inf:
        return Parsed(None, f"unusable log-probabilities of the {what} {dict(zip(labels, logs))}")
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    return Parsed(sum(w * float(values[lb]) for w, lb in zip(weights, labels)) / sum(weights))


def digit_expectation(logprobs: Mapping[str, float] | None) -> Parsed:
    """The score slot's Q-Align expectation: over the digits 1..5, each weighted by its value."""
    return qalign_expectation(logprobs, SCORE_DIGITS, "score digits")


def score_to_level(score: float) -> str:
    """The level word whose 1..5 value is nearest to ``score`` (ties go to the better level)."""
    index = min(len(LEVELS) - 1, max(0, math.floor(score - SCORE_RANGE[0] + 0.5)))
    return LEVELS[index]
