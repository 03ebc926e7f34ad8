"""Feature cache of a frozen backbone (rsfiqa/model/feature_cache.py) and its module option."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from rsfiqa.model.backbone import Backbone
from rsfiqa.model.feature_cache import FeatureCache, TextCache, input_digest
from rsfiqa.model.text import TextEncoder
from rsfiqa.model.net import NetConfig
from rsfiqa.module import RSFIQAModule

torch.set_num_threads(1)

L, SIZE = 5, 64
TINY = dict(backbone="test_efficientnet", pretrained=None, num_regions=L, embed_dim=32, num_heads=2,
            use_text=False, dropout=0.0, freeze_backbone=True)


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def batch(n: int = 3) -> dict:
    label_map = torch.arange(L).repeat_interleave(SIZE // L + 1)[:SIZE].expand(n, SIZE, SIZE).contiguous()
    return {"image": images(n), "label_map": label_map, "region_valid": torch.ones(n, L, dtype=torch.bool),
            "texts": [[""] * L for _ in range(n)], "mos_norm": torch.linspace(0.2, 0.8, n)}


def frozen_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone("test_efficientnet", None, freeze=True)


def test_cached_levels_equal_the_backbone_levels_and_are_read_back(tmp_path):
    backbone = frozen_backbone()
    with torch.no_grad():
        expected = backbone(images())
    cache = FeatureCache(tmp_path, backbone, "float32").attach()
    first = backbone(images())  # all misses: computed and stored
    assert (cache.hits, cache.misses) == (0, 3)
    second = backbone(images())  # all hits: read from disk
    assert (cache.hits, cache.misses) == (3, 3)
    for e, a, b in zip(expected, first, second):
        assert torch.equal(e, a) and torch.equal(e, b)
    assert len(list(cache.root.glob("*/*.pt"))) == 3


def test_a_flipped_image_is_a_different_entry(tmp_path):
    backbone = frozen_backbone()
    cache = FeatureCache(tmp_path, backbone, "float32").attach()
    x = images(1)
    backbone(x)
    flipped = backbone(x.flip(-1))
    assert cache.misses == 2 and input_digest(x[0]) != input_digest(x[0].flip(-1))
    with torch.no_grad():
        assert torch.equal(flipped[-1], frozen_backbone()(x.flip(-1))[-1])


def test_float16_store_rounds_identically_whether_or_not_the_entry_existed(tmp_path):
    backbone = frozen_backbone()
    FeatureCache(tmp_path, backbone, "float16").attach()
    computed = backbone(images())
    read = backbone(images())
    with torch.no_grad():
        exact = frozen_backbone()(images())
    for c, r, e in zip(computed, read, exact):
        assert torch.equal(c, r) and c.dtype == torch.float32
        assert torch.allclose(c, e, rtol=1e-3, atol=1e-3)


def test_other_weights_use_another_namespace(tmp_path):
    a = FeatureCache(tmp_path, frozen_backbone(0))
    b = FeatureCache(tmp_path, frozen_backbone(1))
    assert a.root != b.root and a.root.parent == b.root.parent


def test_loading_weights_recomputes_the_namespace(tmp_path):
    backbone = frozen_backbone(0)
    cache = FeatureCache(tmp_path, backbone)
    before = cache.root
    backbone.load_state_dict(frozen_backbone(1).state_dict())
    assert cache.root != before and cache.root == FeatureCache(tmp_path, frozen_backbone(1)).root


def test_a_trainable_backbone_is_refused(tmp_path):
    with pytest.raises(ValueError, match="freeze_backbone=True"):
        RSFIQAModule(NetConfig(**{**TINY, "freeze_backbone": False}), feature_cache=str(tmp_path))
    with pytest.raises(ValueError, match="store_dtype"):
        FeatureCache(tmp_path, frozen_backbone(), "int8")


def test_cached_and_uncached_modules_give_the_same_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    plain = RSFIQAModule(NetConfig(**TINY))
    cached = RSFIQAModule(NetConfig(**TINY), feature_cache=str(tmp_path), feature_cache_dtype="float32")
    cached.load_state_dict(plain.state_dict())
    assert cached.state_dict().keys() == plain.state_dict().keys()
    data = batch()
    losses = []
    for module in (plain, cached, cached):  # the second cached pass reads from disk
        module.train()
        module.zero_grad()
        loss = F.mse_loss(module(data), data["mos_norm"])
        loss.backward()
        losses.append((loss.item(), module.net.head.mlp[1].weight.grad.clone()))
    assert cached.feature_cache.hits == 3 and cached.feature_cache.misses == 3
    for value, grad in losses[1:]:
        assert value == pytest.approx(losses[0][0], abs=1e-7)
        assert torch.allclose(grad, losses[0][1], atol=1e-7)


class CountingEncoder(TextEncoder):
    """MiniLM text encoder that counts the strings it really encodes."""

    def __init__(self, **kwargs) -> None:
        super().__init__("minilm", **kwargs)
        self.encoded: list[str] = []

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.encoded += texts
        return super().encode(texts)


def test_text_embeddings_are_cached_across_encoders(tmp_path):
    texts = ["a sharp green region; noise good 4.1", "", "a dark blurry region; blur bad 1.2"]
    first = CountingEncoder()
    TextCache(tmp_path, first).attach()
    expected = first(texts)
    second = CountingEncoder()  # a new run: its in-memory cache is empty
    cache = TextCache(tmp_path, second).attach()
    assert torch.equal(second(texts), expected) and expected[1].abs().sum() == 0
    assert first.encoded == sorted(t for t in texts if t) and second.encoded == []
    assert (cache.hits, cache.misses) == (2, 0)
    with pytest.raises(ValueError, match="freeze_text=True"):
        TextCache(tmp_path, CountingEncoder(freeze=False))
