"""Text encoder: CLIP text tower (random init here) and the offline MiniLM sentence encoder."""
from __future__ import annotations

import logging

import pytest
import torch

from rsfiqa.model.text import TextEncoder

torch.set_num_threads(1)  # the CI machine's cores are shared: one thread avoids oversubscription stalls

CAT = "a tabby cat; color good 3.9; blur poor 2.1"
DESCRIPTIONS = [CAT, "blue sky; noise fair 3.0", "", CAT]


@pytest.fixture(scope="module")
def clip_encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder("clip", "ViT-B-32", pretrained=None)


@pytest.fixture(scope="module")
def minilm_encoder() -> TextEncoder:
    return TextEncoder("minilm")


def test_random_init_clip_is_announced(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rsfiqa.model.text"):
        TextEncoder("clip", "ViT-B-32", pretrained=None)
    assert any("RANDOM-INIT TEXT ENCODER" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records if r.name == "rsfiqa.model.text")


def test_frozen_clip_caches_each_distinct_description_once(clip_encoder: TextEncoder, monkeypatch) -> None:
    encoded: list[str] = []
    original = clip_encoder.encode
    monkeypatch.setattr(clip_encoder, "encode", lambda texts: encoded.extend(texts) or original(texts))
    before = clip_encoder.cache_size
    first = clip_encoder(DESCRIPTIONS)
    second = clip_encoder(list(reversed(DESCRIPTIONS)))
    assert first.shape == (4, clip_encoder.dim) == (4, 512)
    assert sorted(encoded) == sorted(set(DESCRIPTIONS) - {""})  # once each, "" never
    assert clip_encoder.cache_size == before + 2
    assert torch.equal(first, second.flip(0))
    assert torch.equal(first[0], first[3]) and first[2].abs().max() == 0 and first[0].abs().max() > 0
    assert not first.requires_grad
    assert not any(t.requires_grad or t.grad_fn is not None for t in clip_encoder._cache.values())


def test_frozen_encoder_stays_in_eval_mode(clip_encoder: TextEncoder) -> None:
    clip_encoder.train()
    assert not clip_encoder.model.training
    assert not any(p.requires_grad for p in clip_encoder.parameters())


def test_minilm_embeddings_carry_meaning(minilm_encoder: TextEncoder) -> None:
    emb = minilm_encoder(["sharp clear photo", "crisp detailed image", "a plate of pasta"])
    assert emb.shape == (3, minilm_encoder.dim) == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert not torch.allclose(emb[0], emb[1])


def test_trainable_encoder_passes_gradients_without_cache() -> None:
    encoder = TextEncoder("minilm", freeze=False)
    encoder.train()
    out = encoder(["a dog", ""])
    out.sum().backward()
    assert encoder.model.training and encoder.cache_size == 0
    assert out[1].abs().max() == 0
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="clip"):
        TextEncoder("bert")


def test_the_openai_tag_gives_the_text_tower_with_the_checkpoints_weights(tmp_path, monkeypatch) -> None:
    """The paper configs' ``text_pretrained: openai``: open_clip fetches OpenAI's state dict (plain CLIP
    key layout) and, since 2.29, loads it through the same route as any tag, so ``force_custom_text``
    yields a model with ``.text``. open_clip 2.24-2.28 built a plain ``CLIP`` for "openai" (no ``.text``:
    ``build_model_from_openai_state_dict``), hence the floor ``open_clip_torch>=2.29`` in pyproject.toml.
    The download is replaced by a local file of random weights in that layout (no network)."""
    import open_clip

    torch.manual_seed(1)
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)  # OpenAI's layout
    path = tmp_path / "openai.bin"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *args, **kwargs: str(path))
    encoder = TextEncoder("clip", "ViT-B-32-quickgelu", pretrained="openai")
    text = encoder.model
    torch.testing.assert_close(text.token_embedding.weight, reference.token_embedding.weight)
    torch.testing.assert_close(text.text_projection, reference.text_projection)
    assert encoder.dim == 512
