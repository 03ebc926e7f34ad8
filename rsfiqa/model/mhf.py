"""Multi-scale Hierarchical Fusion (paper eqs. 1-4) and the plain multi-level fusion of the ablation.

Both take the backbone levels F_1..F_n (NCHW, coarsest last) and return tokens on the last
level's grid: ``[B, Hn*Wn, dim]``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention

MIN_BOTTLENECK = 16  # narrowest bottleneck of eq. (1)'s phi_i


def tokens_of(fmap: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H*W, C] (row-major token order, shared by every module here)."""
    return fmap.flatten(2).transpose(1, 2)


class GatedDownsample(nn.Module):
    """Eq. (1): D_i = Conv(Pool(sigmoid(phi_i(F_i)) * W_i F_i)) on the target grid with ``dim`` channels.

    W_i is a 1x1 conv and phi_i a bottleneck conv block (1x1 reduce, 3x3, 1x1 expand), both from
    C_i to the gating width ``min(C_i, dim)``; Pool is an adaptive average pool to the last level's
    grid and Conv a 1x1 conv from the gating width to ``dim``. The paper fixes only D_i's width C
    (= ``dim``), which Conv produces; gating at no more than the level's own width keeps the
    full-resolution work of the shallow, wide-map levels small (docs/results/model_scales.md).
    The bottleneck reduces 4x (at least ``MIN_BOTTLENECK`` channels) unless ``bottleneck`` is given.
    """

    def __init__(self, in_channels: int, dim: int, bottleneck: int | None = None) -> None:
        super().__init__()
        width = min(in_channels, dim)
        mid = bottleneck or max(width // 4, MIN_BOTTLENECK)
        self.gate = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1), nn.GELU(),
            nn.Conv2d(mid, mid, 3, padding=1), nn.GELU(),
            nn.Conv2d(mid, width, 1),
        )
        self.value = nn.Conv2d(in_channels, width, 1)
        self.conv = nn.Conv2d(width, dim, 1)

    def forward(self, fmap: Tensor, grid: tuple[int, int]) -> Tensor:
        gated = self.gate(fmap).sigmoid() * self.value(fmap)
        return self.conv(F.adaptive_avg_pool2d(gated, grid))


class MHF(nn.Module):
    """Multi-scale Hierarchical Fusion, eqs. (1)-(4); output D''_n as tokens [B, Hn*Wn, dim].

    Eq. (3) refines every level by self-attention, D'_i = Attn(D_i, D_i, D_i) + D_i; eq. (4) passes
    information upwards, D''_1 = D'_1 and D''_{i+1} = Attn(D'_{i+1}, D''_i, D''_i) + D'_{i+1}.
    No positional embedding is added (the paper names none; the gated convolutions see position).
    """

    def __init__(self, in_channels: list[int], dim: int, num_heads: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(GatedDownsample(c, dim) for c in in_channels)
        self.self_attn = nn.ModuleList(Attention(dim, num_heads) for _ in in_channels)
        self.cross_attn = nn.ModuleList(Attention(dim, num_heads, kv_dim=dim) for _ in in_channels[1:])

    def forward(self, levels: list[Tensor]) -> Tensor:
        grid = tuple(levels[-1].shape[-2:])
        refined = []
        for fmap, down, attn in zip(levels, self.down, self.self_attn):
            d = tokens_of(down(fmap, grid))
            refined.append(d + attn(d))  # eq. (3)
        fused = refined[0]
        for d_next, attn in zip(refined[1:], self.cross_attn):
            fused = d_next + attn(d_next, fused)  # eq. (4)
        return fused


class PlainFusion(nn.Module):
    """Ablation without MHF (paper Table 3 baseline): every level average-pooled to the last grid,
    projected by a 1x1 conv to ``dim`` and summed — no gating, no attention."""

    def __init__(self, in_channels: list[int], dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)

    def forward(self, levels: list[Tensor]) -> Tensor:
        grid = tuple(levels[-1].shape[-2:])
        return tokens_of(sum(proj(F.adaptive_avg_pool2d(f, grid)) for proj, f in zip(self.proj, levels)))
