"""Each equation of the model against an independent reference written from the paper's formulas
with plain loops (no SDPA, no einsum, no adaptive pooling, no masks built by pooling): eq. (1) gated
downsampling, eqs. (3)-(4) self- then bottom-up cross-attention, eqs. (6)-(9) region-aware semantic
attention on a label map whose regions do not follow the grid, eq. (10) the quality head.

The references read only the modules' weights (linear maps, LayerNorm affine parameters, lambda);
how they are combined is written here from the equations, as docs/DESIGN.md reads them.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rsfiqa.model.attention import Attention
from rsfiqa.model.head import QualityHead
from rsfiqa.model.mhf import MHF, GatedDownsample
from rsfiqa.model.rsa import RegionSemanticAttention, region_masks

torch.set_num_threads(1)
TOL = dict(rtol=1e-7, atol=1e-9)
F32_TOL = dict(rtol=1e-5, atol=1e-6)  # where the model computes in float32 on purpose (softmax weights, RSA bias)


@pytest.fixture(autouse=True, scope="module")
def float64_default():
    """float64 for this module only: the references sum in another order, so compare at 1e-9."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# --------------------------------------------------------------------------- building blocks, by hand
def gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def layer_norm(v: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """LayerNorm of one vector: (v - mean) / sqrt(var + eps) * weight + bias (biased variance)."""
    mean = sum(v.tolist()) / len(v)
    var = sum((x - mean) ** 2 for x in v.tolist()) / len(v)
    return torch.tensor([(x - mean) / math.sqrt(var + norm.eps) for x in v.tolist()]) * norm.weight + norm.bias


def linear(v: Tensor, layer: torch.nn.Linear) -> Tensor:
    """y_o = sum_i W[o, i] v_i + b_o."""
    out = []
    for o in range(layer.out_features):
        acc = sum(float(layer.weight[o, i]) * float(v[i]) for i in range(layer.in_features))
        out.append(acc + (float(layer.bias[o]) if layer.bias is not None else 0.0))
    return torch.tensor(out)


def softmax(values: list[float]) -> list[float]:
    finite = [v for v in values if v != -math.inf]
    top = max(finite)
    e = [0.0 if v == -math.inf else math.exp(v - top) for v in values]
    return [x / sum(e) for x in e]


def conv2d(fmap: Tensor, conv: torch.nn.Conv2d) -> Tensor:
    """[C, H, W] -> [O, H, W]: stride 1, zero padding ``conv.padding``, explicit sums over taps."""
    c_in, h, w = fmap.shape
    k, pad = conv.kernel_size[0], conv.padding[0]
    out = torch.zeros(conv.out_channels, h, w)
    for o in range(conv.out_channels):
        for y in range(h):
            for x in range(w):
                acc = float(conv.bias[o].detach())
                for dy in range(k):
                    for dx in range(k):
                        yy, xx = y + dy - pad, x + dx - pad
                        if 0 <= yy < h and 0 <= xx < w:
                            acc += float((conv.weight[o, :, dy, dx] * fmap[:, yy, xx]).sum())
                out[o, y, x] = acc
    return out


def bins(size: int, cells: int) -> list[tuple[int, int]]:
    """Adaptive average pooling's bins: cell j covers [floor(j*size/cells), ceil((j+1)*size/cells))."""
    return [(j * size // cells, -(-(j + 1) * size // cells)) for j in range(cells)]


def average_pool(fmap: Tensor, grid: tuple[int, int]) -> Tensor:
    """[C, H, W] -> [C, gh, gw]: the mean of each cell's bin."""
    c, h, w = fmap.shape
    out = torch.zeros(c, *grid)
    for j, (y0, y1) in enumerate(bins(h, grid[0])):
        for i, (x0, x1) in enumerate(bins(w, grid[1])):
            out[:, j, i] = fmap[:, y0:y1, x0:x1].sum((1, 2)) / ((y1 - y0) * (x1 - x0))
    return out


def attention(attn: Attention, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """Eq. (2) for one sample: x [Nq, C], context [Nk, C_kv] (x when None), bias [Nq, Nk] added to
    every head's logits -> W_o concat_h softmax_k(q_h . k_h / sqrt(d) + bias) v_h  (the update, no residual)."""
    xq = torch.stack([layer_norm(t, attn.norm_q) for t in x])
    ctx = xq if context is None else torch.stack([layer_norm(t, attn.norm_kv) for t in context])
    heads, dim = attn.num_heads, x.shape[-1]
    d = dim // heads
    q = torch.stack([linear(t, attn.q) for t in xq])
    kv = torch.stack([linear(t, attn.kv) for t in ctx])
    k, v = kv[:, :dim], kv[:, dim:]
    mixed = torch.zeros(len(x), dim)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        for p in range(len(x)):
            logits = [float((q[p, cols] * k[j, cols]).sum()) / math.sqrt(d)
                      + (0.0 if bias is None else float(bias[p, j])) for j in range(len(ctx))]
            for j, a in enumerate(softmax(logits)):
                mixed[p, cols] += a * v[j, cols]
    return torch.stack([linear(t, attn.out) for t in mixed])


# --------------------------------------------------------------------------- eq. (1)
def gated_downsample(block: GatedDownsample, fmap: Tensor, grid: tuple[int, int]) -> Tensor:
    """Eq. (1) for one sample: D = Conv(Pool(sigmoid(phi(F)) * W F)), phi = 1x1, GELU, 3x3, GELU, 1x1."""
    reduce, _, spatial, _, expand = block.gate
    phi = conv2d(conv2d(conv2d(fmap, reduce).apply_(gelu), spatial).apply_(gelu), expand)
    gated = torch.sigmoid(phi) * conv2d(fmap, block.value)
    return conv2d(average_pool(gated, grid), block.conv)


def test_eq1_gated_downsample_equals_the_loop_reference_on_a_grid_that_does_not_divide():
    torch.manual_seed(0)
    block = GatedDownsample(6, 8, bottleneck=4)
    fmap = torch.randn(2, 6, 7, 9)  # 7x9 -> 3x4: overlapping, unequal bins
    out = block(fmap, (3, 4))
    for b in range(2):
        torch.testing.assert_close(out[b], gated_downsample(block, fmap[b], (3, 4)), **TOL)


# --------------------------------------------------------------------------- eqs. (3)-(4)
def test_eqs3_4_mhf_is_self_attention_per_level_then_bottom_up_cross_attention():
    torch.manual_seed(0)
    dim, heads = 8, 2
    mhf = MHF([4, 6, 5], dim, heads)
    levels = [torch.randn(1, 4, 6, 6), torch.randn(1, 6, 4, 4), torch.randn(1, 5, 3, 3)]
    grid = (3, 3)
    downsampled = [gated_downsample(down, f[0], grid).flatten(1).T for down, f in zip(mhf.down, levels)]
    refined = [d + attention(attn, d) for d, attn in zip(downsampled, mhf.self_attn)]          # eq. (3)
    fused = refined[0]                                                                           # D''_1 = D'_1
    for d_next, attn in zip(refined[1:], mhf.cross_attn):
        fused = d_next + attention(attn, d_next, fused)                                          # eq. (4)
    torch.testing.assert_close(mhf(levels)[0], fused, **TOL)


def test_attention_weights_equal_the_loop_softmax_with_the_bias():
    torch.manual_seed(0)
    attn = Attention(8, 2, kv_dim=6)
    x, ctx, bias = torch.randn(1, 3, 8), torch.randn(1, 5, 6), torch.randn(1, 1, 3, 5)
    bias[0, 0, 1, 2] = -math.inf  # a forbidden pair
    fast = attn(x, ctx, bias=bias)
    slow, weights = attn(x, ctx, bias=bias, return_weights=True)
    reference = attention(attn, x[0], ctx[0], bias[0, 0])
    torch.testing.assert_close(fast[0], reference, **TOL)
    torch.testing.assert_close(slow[0], reference, **F32_TOL)
    assert float(weights[0, :, 1, 2].abs().max()) == 0.0
    q, k, _ = attn.project(x, ctx)
    logits = [[float((q[0, 0, p] * k[0, 0, j]).sum()) / math.sqrt(4) + float(bias[0, 0, p, j]) for j in range(5)]
              for p in range(3)]
    torch.testing.assert_close(weights[0, 0], torch.tensor([softmax(row) for row in logits]), **F32_TOL)


# --------------------------------------------------------------------------- eqs. (6)-(9)
def area_fractions(label_map: Tensor, num_regions: int, grid: tuple[int, int]) -> Tensor:
    """M_i(p): the share of cell p's pixels (adaptive-pooling bins) that carry label i -> [L, N]."""
    h, w = label_map.shape
    masks = torch.zeros(num_regions, grid[0] * grid[1])
    for j, (y0, y1) in enumerate(bins(h, grid[0])):
        for i, (x0, x1) in enumerate(bins(w, grid[1])):
            for y in range(y0, y1):
                for x in range(x0, x1):
                    masks[int(label_map[y, x]), j * grid[1] + i] += 1.0 / ((y1 - y0) * (x1 - x0))
    return masks


def rsa_reference(rsa: RegionSemanticAttention, x: Tensor, masks: Tensor, valid: Tensor, text: Tensor,
                  norm: str) -> tuple[Tensor, Tensor]:
    """Eqs. (6)-(9) for one sample, x [N, C], masks [L, N] -> (B [N, N], R [N, C]).

    (6)-(7): per region i and head h, e_ih . W_k(M_i(p) x(p)) / sqrt(d) over the cells p region i
    touches, softmax -> a_ih(p); G_i(p) = a_i(p) W_v(M_i(p) x(p)) (x layer-normed first), zero elsewhere
    and for invalid or absent regions. "region" norm: a_i times the region's cell count, B over sqrt(C).
    (8): B(p, q) = lambda * sum_i sum_c G_i(p, c) G_i(q, c).  (9): R = x + W_o softmax(B + QK^T/sqrt(d)) V.
    """
    n, dim = x.shape
    heads = rsa.num_heads
    d = dim // heads
    xn = torch.stack([layer_norm(t, rsa.region_norm) for t in x])
    e = torch.stack([linear(layer_norm(t, rsa.text_proj[0]), rsa.text_proj[1]) for t in text])
    G = torch.zeros(len(masks), n, dim)
    for i in range(len(masks)):
        cells = [p for p in range(n) if masks[i, p] > 0]
        if not valid[i] or not cells:
            continue
        keys = {p: linear(masks[i, p] * xn[p], rsa.region_key) for p in cells}
        values = {p: linear(masks[i, p] * xn[p], rsa.region_value) for p in cells}
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            a = softmax([float((e[i, cols] * keys[p][cols]).sum()) / math.sqrt(d) for p in cells])
            for p, a_p in zip(cells, a):
                G[i, p, cols] = (a_p * len(cells) if norm == "region" else a_p) * values[p][cols]
    lam = float(rsa.log_lambda.exp()) / (math.sqrt(dim) if norm == "region" else 1.0)
    B = torch.zeros(n, n)
    for p in range(n):
        for q in range(n):
            B[p, q] = lam * sum(float((G[i, p] * G[i, q]).sum()) for i in range(len(masks)))
    return B, x + attention(rsa.attn, x, None, B)


def irregular_label_map() -> Tensor:
    """30x26 pixels on a 4x4 grid (bins of 7-8 x 6-7 px): regions cross cells, so most cells are
    shared; region 3 is a thin diagonal strip, region 4 is absent."""
    lm = torch.zeros(30, 26, dtype=torch.long)
    lm[:13, 9:] = 1
    lm[17:, :11] = 2
    for y in range(30):
        lm[y, max(0, y - 3):min(26, y - 1)] = 3
    return lm


@pytest.mark.parametrize("norm", ["none", "region"])
def test_eqs6_9_rsa_equals_the_loop_reference_on_a_label_map_off_the_grid(norm: str):
    torch.manual_seed(0)
    dim, heads, text_dim, num_regions, grid = 8, 2, 6, 5, (4, 4)
    rsa = RegionSemanticAttention(dim, text_dim, heads, norm=norm)
    with torch.no_grad():
        rsa.log_lambda.fill_(math.log(0.6))
    label_maps = torch.stack([irregular_label_map(), irregular_label_map().flip(1)])
    masks = region_masks(label_maps, num_regions, grid)
    valid = torch.tensor([[True, True, True, True, True], [True, False, True, True, True]])  # 1 invalid in b=1
    x, text = torch.randn(2, 16, dim), torch.randn(2, num_regions, text_dim)
    bias = rsa.region_bias(x, masks, valid, text)
    out, _ = rsa(x, masks, valid, text)
    for b in range(2):
        reference_masks = area_fractions(label_maps[b], num_regions, grid)
        torch.testing.assert_close(masks[b], reference_masks.float(), **F32_TOL)  # float32 masks
        assert ((reference_masks > 0) & (reference_masks < 1)).sum() >= 8  # partial boundary cells
        B, R = rsa_reference(rsa, x[b], reference_masks, valid[b], text[b], norm)
        torch.testing.assert_close(bias[b], B.float(), **F32_TOL)
        torch.testing.assert_close(out[b], R, **F32_TOL)
    assert float(bias.abs().max()) > 1e-3  # the bias is not trivially zero


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit"])
def test_eq8_bias_receives_a_gradient_and_both_attention_paths_agree(explicit: bool):
    """The loss reaches lambda, the region key/value maps and the text projection only through B."""
    torch.manual_seed(0)
    rsa = RegionSemanticAttention(8, 6, 2)
    masks = region_masks(irregular_label_map()[None].expand(2, -1, -1), 5, (4, 4))
    valid = torch.ones(2, 5, dtype=torch.bool)
    x, text = torch.randn(2, 16, 8), torch.randn(2, 5, 6)
    out, _ = rsa(x, masks, valid, text, return_attn=explicit)
    out.square().sum().backward()
    for name in ("log_lambda", "region_key.weight", "region_value.weight", "text_proj.1.weight"):
        grad = dict(rsa.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().max()) > 1e-6, name
    grads = {n: p.grad.clone() for n, p in rsa.named_parameters()}
    rsa.zero_grad()
    other, _ = rsa(x, masks, valid, text, return_attn=not explicit)
    other.square().sum().backward()
    for n, p in rsa.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], **F32_TOL)


# --------------------------------------------------------------------------- eq. (10)
@pytest.mark.parametrize("pool", ["mean", "mean_std"])
def test_eq10_head_is_mlp_of_pooled_self_attention(pool: str):
    torch.manual_seed(0)
    head = QualityHead(8, pool=pool, num_heads=2).eval()
    with torch.no_grad():
        for layer in (head.mlp[1], head.mlp[4]):
            layer.bias.normal_()
    tokens = torch.randn(2, 5, 8)
    predicted = head(tokens)
    for b in range(2):
        refined = tokens[b] + attention(head.self_attn, tokens[b])                # SelfAttn(R), residual
        mean = refined.sum(0) / len(refined)
        pooled = mean
        if pool == "mean_std":
            std = torch.sqrt(((refined - mean) ** 2).sum(0) / len(refined))
            pooled = torch.cat([mean, std])
        hidden = linear(layer_norm(pooled, head.mlp[0]), head.mlp[1]).apply_(gelu)  # dropout: eval
        expected = linear(hidden, head.mlp[4])[0]
        assert math.isclose(float(predicted[b]), float(expected), rel_tol=1e-7, abs_tol=1e-9)
