"""A tiny, randomly initialised Qwen2.5-VL with a word-level tokenizer and a chat template (offline).

Shared by ``tests/test_mllm.py`` (transformers' model class in ``.venv``) and
``tests/vllm_engine`` (the same model saved as a folder and served by a real vLLM engine in
``.venv-vllm``, ``make test-vllm``). Imports only transformers, tokenizers, torch and the contract,
so it loads in both environments (``.venv-vllm`` has PyPI's torchvision without its C++ ops, see
``tests/vllm_engine/patch_torchvision.py``: enough for transformers' Qwen2-VL processors).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2_5_VLProcessor)

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
PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}  # 4..16 merged 28x28 patches per image


def tiny_tokenizer(split_digits: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer where " word" (leading space) is one token, as in Qwen's BPE; so is
    " 3", unless ``split_digits``: then, as in Qwen2's pre-tokenizer (``\\p{N}`` alone, a space before
    a digit its own token), " 3" is " " and "3"."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in WORDS:
        for token in (w, " " + w):
            vocab.setdefault(token, len(vocab))
    vocab.setdefault("\n", len(vocab))
    if split_digits:
        vocab.setdefault(" ", len(vocab))
    digits = "[0-9]" if split_digits else " ?[0-9]"
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(rf" ?[A-Za-z]+|{digits}| ?[^A-Za-z0-9\s]|\s"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>", additional_special_tokens=SPECIALS[:7])


def tiny_processor(split_digits: bool = False) -> Qwen2_5_VLProcessor:
    """An offline Qwen2.5-VL processor: :func:`tiny_tokenizer` plus the Qwen2-VL image processor with
    a small pixel budget (needs torchvision: transformers' Qwen2-VL video processor, which the
    processor class requires, has no torchvision-free form)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**PIXELS), tokenizer=tiny_tokenizer(split_digits),
                               video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


def _tokenizer(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def tiny_qwen(processor: Qwen2_5_VLProcessor | PreTrainedTokenizerFast, seed: int = 0, hidden_size: int = 32,
              num_attention_heads: int = 2) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised Qwen2.5-VL with 2 text and 2 vision layers of width ``hidden_size``.

    The defaults (head size 16) suit transformers; vLLM's CPU attention needs a head size of at
    least 32 (``hidden_size=64``)."""
    tokenizer = _tokenizer(processor)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden_size // num_attention_heads
    half = head_dim // 2  # multimodal RoPE sections (temporal, height, width) over head_dim / 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 16 -> [2, 3, 3]
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=2,
                         num_attention_heads=num_attention_heads, num_key_value_heads=1,
                         max_position_embeddings=4096, bos_token_id=ids("<|endoftext|>"),
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": mrope_section}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def bias_towards(model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor, word: str,
                 strength: float = 30.0) -> Qwen2_5_VLForConditionalGeneration:
    """Make the real model always emit ``" " + word``: a bias on that row of its lm_head (transformers only:
    vLLM's Qwen2 lm_head has no bias, see :func:`force_word`)."""
    bias = torch.zeros(model.lm_head.out_features)
    bias[processor.tokenizer.convert_tokens_to_ids(" " + word)] = strength
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


@torch.no_grad()
def force_word(model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor | PreTrainedTokenizerFast,
               word: str, strength: float = 30.0) -> Qwen2_5_VLForConditionalGeneration:
    """Make the model always emit ``" " + word`` through its weights only (no bias parameter, so the
    saved folder loads in any engine): every token embedding gets a large constant channel 0 that
    survives the two small random layers, and only the word's lm_head row reads that channel."""
    text = model.model.language_model
    text.embed_tokens.weight[:, 0] = 100.0
    model.lm_head.weight[:, 0] = 0.0
    model.lm_head.weight[_tokenizer(processor).convert_tokens_to_ids(" " + word), 0] = strength
    return model


def save_tiny_qwen(folder: str | Path, seed: int = 0, force: str | None = None, hidden_size: int = 64,
                   num_attention_heads: int = 2, split_digits: bool = False) -> Path:
    """Save a tiny Qwen2.5-VL (weights, config, tokenizer, processor, chat template) as a model folder
    that vLLM or ``from_pretrained`` loads offline; ``force`` makes it always emit that word
    (:func:`force_word`); ``split_digits``: Qwen2's digit tokenization (:func:`tiny_tokenizer`).
    Defaults: head size 32, the least vLLM's CPU attention supports."""
    folder = Path(folder)
    processor = tiny_processor(split_digits)
    model = tiny_qwen(processor, seed=seed, hidden_size=hidden_size, num_attention_heads=num_attention_heads)
    if force is not None:
        force_word(model, processor, force)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
