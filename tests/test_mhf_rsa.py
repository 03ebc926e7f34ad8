"""MHF (eqs. 1-4), the plain fusion, eq. (2) attention, and RSA (eqs. 6-9)."""
from __future__ import annotations

import pytest
import torch

from rsfiqa.model.attention import Attention
from rsfiqa.model.mhf import MHF, PlainFusion
from rsfiqa.model.rsa import RegionSemanticAttention, cross_region_mask, hard_membership, region_masks, rsa_bias

torch.set_num_threads(1)  # the CI machine's cores are shared: one thread avoids oversubscription stalls

DIM, HEADS, TEXT_DIM, L = 32, 4, 24, 4


def pyramid(batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, c, s, s) for c, s in [(8, 16), (16, 8), (24, 4)]]


def block_label_map(batch: int = 2, size: int = 32) -> torch.Tensor:
    """Quadrant regions 0..3 aligned with a 4x4 grid: every grid cell lies inside one region."""
    lm = torch.zeros(batch, size, size, dtype=torch.long)
    half = size // 2
    lm[:, :half, half:] = 1
    lm[:, half:, :half] = 2
    lm[:, half:, half:] = 3
    return lm


def rsa_inputs(batch: int = 2, hard_mask: bool = False, norm: str = "none"):
    torch.manual_seed(0)
    rsa = RegionSemanticAttention(DIM, TEXT_DIM, HEADS, hard_mask=hard_mask, norm=norm)
    x = torch.randn(batch, 16, DIM)
    masks = region_masks(block_label_map(batch), L, (4, 4))
    valid = torch.ones(batch, L, dtype=torch.bool)
    text = torch.randn(batch, L, TEXT_DIM)
    return rsa, x, masks, valid, text


def test_mhf_fuses_every_level_onto_the_last_grid() -> None:
    torch.manual_seed(0)
    mhf = MHF([8, 16, 24], DIM, HEADS).eval()
    levels = pyramid()
    with torch.no_grad():
        out = mhf(levels)
        for i in range(3):  # eq. (4) chains every level into D''_n
            changed = [f + (j == i) * torch.randn_like(f) for j, f in enumerate(levels)]
            assert not torch.allclose(mhf(changed), out)
    assert out.shape == (2, 16, DIM)


def test_plain_fusion_shape_and_no_attention() -> None:
    fusion = PlainFusion([8, 16, 24], DIM)
    assert fusion(pyramid()).shape == (2, 16, DIM)
    assert not any(isinstance(m, Attention) for m in fusion.modules())


def test_attention_explicit_weights_match_sdpa() -> None:
    torch.manual_seed(0)
    attn = Attention(DIM, HEADS, kv_dim=DIM)
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    bias = torch.randn(2, 1, 5, 7)
    fast = attn(x, ctx, bias=bias)
    slow, weights = attn(x, ctx, bias=bias, return_weights=True)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    expected = (attn.logits(x, ctx) + bias).softmax(-1)  # the softmax of the biased logits, not just any rows summing to 1
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


def test_region_masks_are_area_fractions() -> None:
    lm = torch.tensor([[[0, 1], [1, 1]]])  # one 2x2 image pooled to a single cell
    masks = region_masks(lm, 3, (1, 1))
    torch.testing.assert_close(masks[0, :, 0], torch.tensor([0.25, 0.75, 0.0]))
    full = region_masks(block_label_map(), L, (4, 4))
    torch.testing.assert_close(full.sum(1), torch.ones(2, 16))
    with pytest.raises(ValueError, match="0..2"):
        region_masks(lm + 2, 3, (1, 1))


def test_rsa_bias_equals_naive_loop_over_regions() -> None:
    rsa, x, masks, valid, text = rsa_inputs()
    G = rsa.region_features(x, masks, valid, text)
    lam = torch.tensor(0.7)
    naive = torch.zeros(2, 16, 16)
    for i, G_i in enumerate(G.chunk(L, dim=-1)):
        for b in range(2):
            for p in range(16):
                for q in range(16):
                    naive[b, p, q] += lam * torch.dot(G_i[b, p], G_i[b, q])
    torch.testing.assert_close(rsa_bias(G, lam), naive, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["none", "region"])
def test_factorised_bias_equals_the_literal_eq8_form(norm: str) -> None:
    """region_bias (factorised, no G built) equals lambda * G G^T of region_features (over sqrt(C)
    for the region norm), also with an invalid region, and its gradients agree too."""
    rsa, x, masks, valid, text = rsa_inputs(norm=norm)
    valid[1, 0] = False
    x.requires_grad_(True)
    fast = rsa.region_bias(x, masks, valid, text)
    literal = rsa_bias(rsa.region_features(x, masks, valid, text), rsa.bias_coefficient(DIM))
    torch.testing.assert_close(fast, literal, rtol=1e-5, atol=1e-6)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), x)
    (grad_literal,) = torch.autograd.grad(literal.square().sum(), x)
    torch.testing.assert_close(grad_fast, grad_literal, rtol=1e-4, atol=1e-6)


def test_region_features_vanish_outside_their_region_and_bias_across_regions() -> None:
    rsa, x, masks, valid, text = rsa_inputs()
    G = rsa.region_features(x, masks, valid, text).view(2, 16, L, DIM)
    member = hard_membership(masks)
    outside = member[:, :, None] != torch.arange(L)[None, None, :]  # [B,N,L]
    assert G[outside].abs().max() == 0
    assert G[~outside].abs().max() > 0
    bias = rsa.region_bias(x, masks, valid, text)
    different = member[:, :, None] != member[:, None, :]
    assert bias[different].abs().max() == 0
    assert bias[~different].abs().max() > 0


def test_invalid_region_contributes_nothing() -> None:
    rsa, x, masks, valid, text = rsa_inputs()
    valid[0, 2] = False
    bias = rsa.region_bias(x, masks, valid, text)
    G = rsa.region_features(x, masks, valid, text).view(2, 16, L, DIM)
    assert G[0, :, 2].abs().max() == 0
    other_text = text.clone()
    other_text[0, 2] = torch.randn(TEXT_DIM)
    torch.testing.assert_close(rsa.region_bias(x, masks, valid, other_text), bias)
    in_region_2 = hard_membership(masks)[0] == 2
    assert bias[0][in_region_2][:, in_region_2].abs().max() == 0


def test_empty_region_is_finite_and_silent() -> None:
    rsa, x, _, valid, text = rsa_inputs()
    lm = block_label_map()
    lm[lm == 1] = 0  # region 1 absent, still flagged valid
    masks = region_masks(lm, L, (4, 4))
    out, _ = rsa(x, masks, valid, text)
    G = rsa.region_features(x, masks, valid, text).view(2, 16, L, DIM)
    assert torch.isfinite(out).all()
    assert G[:, :, 1].abs().max() == 0


def test_hard_mask_forbids_attention_across_regions() -> None:
    rsa, x, masks, valid, text = rsa_inputs(hard_mask=True)
    out, weights = rsa(x, masks, valid, text, return_attn=True)
    member = hard_membership(masks)
    different = (member[:, :, None] != member[:, None, :]).unsqueeze(1).expand_as(weights)
    assert weights[different].max() == 0
    assert weights[~different].min() > 0
    fast, none = rsa(x, masks, valid, text)
    assert none is None
    torch.testing.assert_close(fast, out, rtol=1e-5, atol=1e-5)


def test_cross_region_mask_always_allows_self() -> None:
    masks = torch.zeros(1, 2, 3)
    masks[0, 0] = 1.0  # every token in region 0 ...
    masks[0, 1, 2] = 2.0  # ... except token 2
    mask = cross_region_mask(masks)[0]
    assert torch.isfinite(mask.diagonal()).all()
    assert torch.isinf(mask[2, :2]).all() and torch.isinf(mask[:2, 2]).all()


def test_learned_queries_without_text() -> None:
    torch.manual_seed(0)
    rsa = RegionSemanticAttention(DIM, None, HEADS, num_regions=L)
    x = torch.randn(2, 16, DIM)
    masks = region_masks(block_label_map(), L, (4, 4))
    out, _ = rsa(x, masks, torch.ones(2, L, dtype=torch.bool))
    assert out.shape == x.shape and not hasattr(rsa, "text_proj")
    with pytest.raises(ValueError, match="num_regions"):
        RegionSemanticAttention(DIM, None, HEADS)


def test_bias_starts_on_the_scale_of_the_logits() -> None:
    """The LAMBDA_INIT rationale: on a 7x7 grid with 5 regions and C=256 the in-region entries of
    B and the logits QK^T/sqrt(d) have standard deviations within 10x of each other."""
    torch.manual_seed(0)
    rsa = RegionSemanticAttention(256, 384, 4)
    lm = torch.full((4, 224, 224), 4)
    lm[:, :100, :120], lm[:, :100, 120:], lm[:, 100:, :60], lm[:, 150:, 60:200] = 0, 1, 2, 3
    masks, x = region_masks(lm, 5, (7, 7)), torch.randn(4, 49, 256)
    text = torch.nn.functional.normalize(torch.randn(4, 5, 384), dim=-1)
    with torch.no_grad():
        bias = rsa.region_bias(x, masks, torch.ones(4, 5, dtype=torch.bool), text)
        logits = rsa.attn.logits(x)
    ratio = bias[bias != 0].std() / logits.std()
    assert 0.1 < ratio < 10


def test_region_norm_with_uniform_attention_gives_the_masked_features() -> None:
    """norm="region": a_i relative to uniform, so keys that ignore the tokens give G_i = M_i V."""
    rsa, x, masks, valid, text = rsa_inputs(norm="region")
    valid[0, 2] = False
    torch.nn.init.zeros_(rsa.region_key.weight)
    with torch.no_grad():
        coef, _ = rsa.region_coefficients(x, masks, valid, text)
    expected = (masks * valid[..., None])[:, :, None, :].expand_as(coef)
    torch.testing.assert_close(coef, expected)


def test_region_norm_keeps_the_bias_scale_on_finer_grids() -> None:
    """Eq. (8) as written shrinks like 1/cells^2 from a 7x7 to a 28x28 grid; the region norm does not."""
    lm = torch.full((2, 224, 224), 4)
    lm[:, :100, :120], lm[:, :100, 120:], lm[:, 100:, :60], lm[:, 150:, 60:200] = 0, 1, 2, 3
    text, valid = torch.randn(2, 5, TEXT_DIM), torch.ones(2, 5, dtype=torch.bool)

    def bias_std(norm: str, side: int) -> float:
        torch.manual_seed(0)
        rsa = RegionSemanticAttention(DIM, TEXT_DIM, HEADS, norm=norm)
        x = torch.randn(2, side * side, DIM)
        with torch.no_grad():
            bias = rsa.region_bias(x, region_masks(lm, 5, (side, side)), valid, text)
        return float(bias[bias != 0].std())

    assert bias_std("none", 28) < 0.05 * bias_std("none", 7)
    assert 0.5 < bias_std("region", 28) / bias_std("region", 7) < 2.0
    with pytest.raises(ValueError, match="norm"):
        RegionSemanticAttention(DIM, TEXT_DIM, HEADS, norm="grid")


def test_rsa_under_bf16_autocast_is_finite() -> None:
    rsa, x, masks, valid, text = rsa_inputs(hard_mask=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = rsa(x, masks, valid, text)
    assert torch.isfinite(out.float()).all()
