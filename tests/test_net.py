"""RSFIQANet: gradients, parameter groups, ablation switches, attention output, overfitting."""
from __future__ import annotations

import pytest
import torch

from rsfiqa.model import MHF, NetConfig, PlainFusion, RegionSemanticAttention, RSFIQANet, TextCrossFusion, TextEncoder

torch.set_num_threads(1)  # the CI machine's cores are shared: one thread avoids oversubscription stalls

L, SIZE = 5, 64
SMALL = dict(backbone="efficientnet_lite0", num_regions=L, embed_dim=32, num_heads=4, text_encoder="minilm")


def batch(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=g)
    label_map = torch.randint(0, L, (n, SIZE // 16, SIZE // 16), generator=g)
    label_map = label_map.repeat_interleave(16, 1).repeat_interleave(16, 2)  # blocky regions
    valid = torch.ones(n, L, dtype=torch.bool)
    texts = [[f"region {i} of image {b}; blur {'good' if (b + i) % 2 else 'poor'} {i + 1}.0" for i in range(L)]
             for b in range(n)]
    texts[0][2] = ""  # a missing description
    return images, label_map, valid, texts


def net(**switches) -> RSFIQANet:
    torch.manual_seed(0)
    return RSFIQANet(NetConfig(**{**SMALL, **switches})).eval()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_trainable_parameter_gets_a_finite_gradient() -> None:
    model = RSFIQANet(NetConfig(**SMALL)).train()  # text encoder frozen, backbone trainable
    model(*batch()).sum().backward()
    groups = model.param_groups()
    assert groups["text"] == [] and groups["backbone"] and groups["head"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert name.startswith("text_encoder."), name


def test_param_groups_partition_the_trainable_parameters() -> None:
    model = net(freeze_backbone=True, freeze_text=False)
    groups = model.param_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert groups["backbone"] == [] and groups["text"]
    assert {id(p) for p in groups["text"]} == {id(p) for p in model.text_encoder.parameters()}


def test_full_model_uses_texts_and_regions() -> None:
    model = net()
    images, label_map, valid, texts = batch()
    with torch.no_grad():
        score = model(images, label_map, valid, texts)
        other_texts = [["x"] * L, ["y"] * L]
        assert not torch.allclose(model(images, label_map, valid, other_texts), score)
        assert not torch.allclose(model(images, label_map.flip(-1), valid, texts), score)
    assert score.shape == (2,)


def test_without_text_no_encoder_and_texts_ignored() -> None:
    full, model = net(), net(use_text=False)
    assert model.text_encoder is None and not any(isinstance(m, TextEncoder) for m in model.modules())
    assert n_params(model) < n_params(full)
    images, label_map, valid, texts = batch()
    with torch.no_grad():
        score = model(images, label_map, valid, texts)
        torch.testing.assert_close(model(images, label_map, ~valid, [["z"] * L, [""] * L]), score)
        assert not torch.allclose(model(images, label_map.flip(-1), valid, texts), score)


def test_without_rsa_and_text_the_regions_are_ignored() -> None:
    model = net(use_text=False, use_rsa=False)
    assert not any(isinstance(m, (RegionSemanticAttention, TextCrossFusion, TextEncoder)) for m in model.modules())
    images, label_map, valid, texts = batch()
    with torch.no_grad():
        score = model(images, label_map, valid, texts)
        torch.testing.assert_close(model(images, label_map.flip(-1), ~valid, [["z"] * L] * 2), score)


def test_text_without_rsa_fuses_texts_by_cross_attention() -> None:
    model = net(use_rsa=False)
    assert model.rsa is None and isinstance(model.text_fusion, TextCrossFusion)
    images, label_map, valid, texts = batch()
    with torch.no_grad():
        score = model(images, label_map, valid, texts)
        assert not torch.allclose(model(images, label_map, valid, [["x"] * L, ["y"] * L]), score)
        torch.testing.assert_close(model(images, label_map.flip(-1), valid, texts), score)
        none_valid = model(images, label_map, torch.zeros_like(valid), texts)
        torch.testing.assert_close(none_valid, model.head(model.fusion(model.backbone(images))))  # untouched tokens


def test_mhf_switch_and_baseline_remove_their_modules() -> None:
    full = net()
    no_mhf = net(use_mhf=False)
    baseline = net(use_mhf=False, use_text=False, use_rsa=False, head_self_attn=False)
    assert isinstance(full.fusion, MHF) and isinstance(no_mhf.fusion, PlainFusion)
    assert not any(isinstance(m, MHF) for m in no_mhf.modules())
    assert baseline.head.self_attn is None
    assert n_params(baseline) < n_params(no_mhf) < n_params(full)
    with pytest.raises(ValueError, match="use_rsa"):
        net(use_rsa=False, rsa_hard_mask=True)


def test_returned_attention_matches_the_fast_path() -> None:
    model = net(rsa_hard_mask=True)
    images, label_map, valid, texts = batch()
    with torch.no_grad():
        out = model.forward_features(images, label_map, valid, texts, return_attn=True)
        fast = model(images, label_map, valid, texts)
    assert out["grid"] == (2, 2) and out["rsa_attn"].shape == (2, 4, 4, 4)
    torch.testing.assert_close(out["score"], fast, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="use_rsa"):
        net(use_rsa=False, use_text=False).forward_features(images, label_map, valid, texts, return_attn=True)


def test_bad_inputs_are_clear_errors() -> None:
    model = net(use_text=False)
    images, label_map, valid, texts = batch()
    with pytest.raises(ValueError, match="texts"):
        model(images, label_map, valid, texts[:1])
    with pytest.raises(ValueError, match="region_valid"):
        model(images, label_map, valid.float(), texts)
    with pytest.raises(ValueError, match="label_map values"):
        model(images, label_map + 1, valid, texts)


def test_bf16_autocast_forward_is_finite() -> None:
    model = net(rsa_hard_mask=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        score = model(*batch())
    assert torch.isfinite(score.float()).all()


def test_sixteen_samples_can_be_overfit() -> None:
    torch.manual_seed(0)
    model = RSFIQANet(NetConfig(**SMALL, dropout=0.0)).train()
    images, label_map, valid, texts = batch(16, seed=1)
    targets = torch.rand(16, generator=torch.Generator().manual_seed(2))
    optimiser = torch.optim.Adam([p for g in model.param_groups().values() for p in g], lr=1e-3)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(images, label_map, valid, texts), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if losses[-1] * 100 <= losses[0]:
            break
    assert losses[-1] * 100 <= losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps"
