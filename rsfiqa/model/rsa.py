"""Region-aware Semantic Attention (paper eqs. 6-9), in the reading of docs/DESIGN.md.

Notation: tokens X = D''_n [B, N, C] on the Hn x Wn grid (N = Hn*Wn), L regions with masks
M [B, L, N] (area fraction of region i inside each grid cell, :func:`region_masks`).

* Eqs. (6)-(7): for region i the projected text embedding e_i (or, without text, a learned query
  per region slot) attends to the region's masked features M_i * X, restricted to the grid cells
  that region i touches. With a_i(p) that attention and V_i(p) = W_v(M_i(p) X(p)),
  G_i(p) = a_i(p) V_i(p) (per head, heads concatenated): a [N, C] map that is zero outside region i.
* Eq. (8): B = lambda * sum_i G_i G_i^T = lambda * G G^T with G = concat_i G_i along channels
  (:func:`rsa_bias`, the literal form). Invalid regions (empty, or description missing) have G_i = 0.
  The model computes the same B without building G (:func:`factorised_rsa_bias`): per head h,
  G_i(p) = c_i(p) V(p) with the scalar c_i(p) = a_i(p) M_i(p), so
  B(p, q) = lambda * sum_h [sum_i c_ih(p) c_ih(q)] * <V_h(p), V_h(q)> — N^2 (C + L * heads)
  multiply-adds instead of N^2 L C, and no [B, N, L*C] tensor (tests/test_mhf_rsa.py checks
  that both forms agree).
* Eq. (9): R = softmax(B + Q K^T / sqrt(d_k)) V with Q, K, V from X, the same B for every head,
  followed by the output projection and a residual connection.

lambda is learnable and positive, stored as log(lambda) so that the optimiser changes it by a
relative amount. Init: LAMBDA_INIT = 1, because G G^T already starts on the scale of the logits
(measured in docs/results/model_scales.md; tests/test_mhf_rsa.py keeps the ratio within 10x).

``norm`` picks the scale of B. ``"none"`` is eq. (8) as written, and with a softmax over the cells of
region i each a_i(p) is about 1/n_i (n_i = the region's cells), so B shrinks like 1/n_i^2 as the
grid grows until the bias is inert (docs/results/model_scales.md, docs/results/clive.md).
``"region"`` makes B independent of the grid: a_i is taken relative to uniform attention over the
region (n_i a_i, so uniform attention gives G_i = M_i V, the masked features themselves) and the
channel sum of G_i G_i^T is divided by sqrt(C), as eq. (9) divides QK^T by sqrt(d_k):
B = lambda / sqrt(C) * sum_i (n_i G_i)(n_i G_i)^T (trained scales in docs/results/model_scales.md).

``hard_mask=True`` also forbids attention between tokens of different regions (hard membership
= the region with the largest area in the cell); each token may always attend to itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention, additive_mask
from .text import text_projection

LAMBDA_INIT = 1.0
RSA_NORMS = ("none", "region")


def check_label_map(label_map: Tensor, num_regions: int) -> None:
    """``ValueError`` when a label is outside 0..L-1 (reads two numbers back from the device: call
    this early in a step, before device work is queued)."""
    if label_map.numel():
        lo, hi = torch.stack(torch.aminmax(label_map)).tolist()
        if lo < 0 or hi >= num_regions:
            raise ValueError(f"label_map values must lie in 0..{num_regions - 1}, got {lo}..{hi}")


def pool_region_masks(label_map: Tensor, num_regions: int, grid: tuple[int, int]) -> Tensor:
    """Label map [B,H,W] -> area fraction of every region per grid cell [B, L, Hn*Wn] (unchecked).

    The one-hot maps come from one comparison with 0..L-1 (``F.one_hot`` would build an int64
    [B,H,W,L] tensor and a permuted copy: 2.5x slower at 384 px).
    """
    regions = torch.arange(num_regions, device=label_map.device).view(1, -1, 1, 1)
    onehot = (label_map.unsqueeze(1) == regions).float()
    return F.adaptive_avg_pool2d(onehot, grid).flatten(2)


def region_masks(label_map: Tensor, num_regions: int, grid: tuple[int, int]) -> Tensor:
    """Label map [B,H,W] (values 0..L-1, checked) -> area fraction of every region per grid cell
    [B, L, Hn*Wn]."""
    check_label_map(label_map, num_regions)
    return pool_region_masks(label_map, num_regions, grid)


def hard_membership(masks: Tensor) -> Tensor:
    """[B, L, N] area fractions -> [B, N] index of the region covering most of each cell."""
    return masks.argmax(1)


def cross_region_mask(masks: Tensor) -> Tensor:
    """Additive mask [B, N, N]: 0 within a region (and on the diagonal), -inf across regions."""
    member = hard_membership(masks)
    same = member[:, :, None] == member[:, None, :]
    same |= torch.eye(member.shape[1], dtype=torch.bool, device=member.device)
    return additive_mask(same)


def rsa_bias(G: Tensor, lam: Tensor | float) -> Tensor:
    """Eq. (8): B = lambda * G G^T for G [B, N, L*C_g] -> [B, N, N] (= lambda * sum_i G_i G_i^T)."""
    return lam * (G @ G.transpose(-2, -1))


def factorised_rsa_bias(coef: Tensor, values: Tensor, lam: Tensor | float) -> Tensor:
    """Eq. (8) from G_i(p) = coef[:, i, h, p] * values[:, p, h]: coef [B, L, heads, N], values
    [B, N, heads, d] -> B [B, N, N], equal to ``rsa_bias`` of the concatenated G (module docstring)."""
    region_overlap = torch.einsum("blhp,blhq->bhpq", coef, coef)
    value_similarity = torch.einsum("bphd,bqhd->bhpq", values, values)
    return lam * (region_overlap * value_similarity).sum(1)


class RegionSemanticAttention(nn.Module):
    """RSA block: tokens [B,N,C] + region masks + region queries -> tokens [B,N,C] (eqs. 6-9).

    ``text_dim`` is the text encoder's width; ``text_dim=None`` uses a learned query per region
    slot instead (needs ``num_regions``; the "RSA without MLLM text" ablation).
    """

    def __init__(self, dim: int, text_dim: int | None, num_heads: int, hard_mask: bool = False,
                 num_regions: int | None = None, norm: str = "none") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if norm not in RSA_NORMS:
            raise ValueError(f"RSA norm must be one of {RSA_NORMS}, got {norm!r}")
        self.bias_norm = norm
        self.num_heads = num_heads
        self.hard_mask = hard_mask
        if text_dim is not None:
            self.text_proj = text_projection(text_dim, dim)
        elif num_regions is None:
            raise ValueError("RegionSemanticAttention without text needs num_regions for its learned queries")
        else:
            self.region_queries = nn.Parameter(torch.randn(num_regions, dim) * dim ** -0.5)
        self.region_norm = nn.LayerNorm(dim)
        self.region_key = nn.Linear(dim, dim, bias=False)  # no bias: W(M_i X) = M_i (W X)
        self.region_value = nn.Linear(dim, dim, bias=False)
        self.log_lambda = nn.Parameter(torch.tensor(math.log(LAMBDA_INIT)))
        self.attn = Attention(dim, num_heads)

    @property
    def lam(self) -> Tensor:
        return self.log_lambda.exp()

    def bias_coefficient(self, dim: int) -> Tensor:
        """The factor in front of sum_i G_i G_i^T: lambda, or lambda / sqrt(C) for ``norm="region"``."""
        return self.lam / math.sqrt(dim) if self.bias_norm == "region" else self.lam

    def region_queries_for(self, text: Tensor | None, batch: int) -> Tensor:
        """e_i: projected text embeddings [B, L, C_t] -> [B, L, C], or the learned queries."""
        if text is not None:
            return self.text_proj(text)
        return self.region_queries.unsqueeze(0).expand(batch, -1, -1)

    def region_coefficients(self, x: Tensor, masks: Tensor, valid: Tensor,
                            text: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eqs. (6)-(7) factorised: (coef [B, L, heads, N] float, values [B, N, heads, d]) with
        G_i(p) = coef_i(p) * values(p) per head, coef_i = a_i * M_i, zero for invalid regions.

        The logits of region i are e_i . W_k(M_i(p) X(p)) = M_i(p) (e_i . W_k X(p)): one product of
        the L queries with the N keys, scaled by the masks. ``valid`` [B, L] bool; a region
        without any cell on the grid counts as invalid. With ``norm="region"`` a_i is multiplied
        by the region's cell count (attention relative to uniform).
        """
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        xn = self.region_norm(x)
        keys = self.region_key(xn).view(b, n, h, d)
        values = self.region_value(xn).view(b, n, h, d)
        queries = self.region_queries_for(text, b).view(b, -1, h, d)  # [B,L,h,d]
        logits = torch.einsum("blhd,bnhd->blhn", queries, keys).float() * (masks[:, :, None, :] / math.sqrt(d))
        support = masks > 0  # [B,L,N]
        valid = valid & support.any(-1)
        allowed = support | ~valid[..., None]  # invalid rows: any finite softmax, zeroed below
        attn = logits.masked_fill(~allowed[:, :, None, :], float("-inf")).softmax(-1)  # a_i(p): [B,L,h,N]
        if self.bias_norm == "region":
            attn = attn * support.sum(-1, dtype=attn.dtype)[:, :, None, None]
        coef = attn * masks[:, :, None, :] * valid[:, :, None, None].to(attn.dtype)
        return coef, values

    def region_features(self, x: Tensor, masks: Tensor, valid: Tensor, text: Tensor | None = None) -> Tensor:
        """Eqs. (6)-(7): G = concat_i G_i [B, N, L*C]; G_i is zero outside region i and for invalid i."""
        coef, values = self.region_coefficients(x, masks, valid, text)
        g = torch.einsum("blhn,bnhd->bnlhd", coef.to(values.dtype), values)
        return g.flatten(2)

    def region_bias(self, x: Tensor, masks: Tensor, valid: Tensor, text: Tensor | None = None) -> Tensor:
        """Eq. (8) bias B [B, N, N] (cross-region -inf added when ``hard_mask``)."""
        coef, values = self.region_coefficients(x, masks, valid, text)
        bias = factorised_rsa_bias(coef, values.float(), self.bias_coefficient(x.shape[-1]))
        return bias + cross_region_mask(masks) if self.hard_mask else bias

    def forward(self, x: Tensor, masks: Tensor, valid: Tensor, text: Tensor | None = None,
                return_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        """Eq. (9): (x + W_o softmax(B + QK^T/sqrt(d_k)) V, attention weights [B,heads,N,N] or None)."""
        bias = self.region_bias(x, masks, valid, text).unsqueeze(1)
        if return_attn:
            update, weights = self.attn(x, bias=bias, return_weights=True)
            return x + update, weights
        return x + self.attn(x, bias=bias), None
