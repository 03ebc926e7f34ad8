"""Multi-scale Hierarchical Fusion (paper eqs. 1-4) and the plain multi-level fusion of the ablation.

Both take the backbone levels F_1..F_n (NCHW, coarsest last) and return tokens on the last
level's grid: ``[B, Hn*Wn, dim]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_BOTTLENECK = 16  # narrowest bottleneck of eq. (1)'s phi_i


def additive_mask(allowed: Tensor) -> Tensor:
    """Boolean "may attend" tensor -> float additive logits mask (0 where allowed, -inf elsewhere)."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


def tokens_of(fmap: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H*W, C] (row-major token order, shared by every module here)."""
    return fmap.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Eq. (2) multi-head scaled dot-product attention with pre-norm and an output projection.

    ``forward(x, context)`` attends from ``x`` [B,Nq,dim] to ``context`` [B,Nk,kv_dim] (needs
    ``kv_dim``; ``x`` itself when omitted: self-attention) and returns the update only; callers add the residual, as the
    equations do. ``bias`` is added to the logits (float, ``-inf`` forbids a pair) and broadcasts
    to [B, heads, Nq, Nk]. With ``return_weights`` the softmax is computed explicitly and the
    weights [B, heads, Nq, Nk] are returned too; otherwise ``scaled_dot_product_attention`` runs.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim) if kv_dim is not None else None
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, N, dim] -> [B, heads, N, dim/heads]."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def project(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised and projected Q, K, V, each [B, heads, N, dim/heads]."""
        xq = self.norm_q(x)
        if context is None:
            context = xq
        elif self.norm_kv is None:
            raise ValueError("this Attention was built for self-attention (kv_dim=None); pass kv_dim for a context")
        else:
            context = self.norm_kv(context)
        k, v = (self.split_heads(t) for t in self.kv(context).chunk(2, dim=-1))
        return self.split_heads(self.q(xq)), k, v

    @staticmethod
    def scaled_logits(q: Tensor, k: Tensor) -> Tensor:
        """Q K^T / sqrt(d_k) [B, heads, Nq, Nk]."""
        return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5

    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The attention logits Q K^T / sqrt(d_k) of ``forward(x, context)``, before any bias."""
        q, k, _ = self.project(x, context)
        return self.scaled_logits(q, k)

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        q, k, v = self.project(x, context)
        if bias is not None:
            bias = bias.to(q.dtype)  # SDPA wants a float mask in the query's dtype (bf16 autocast)
        if return_weights:
            logits = self.scaled_logits(q, k)
            weights = (logits if bias is None else logits + bias).float().softmax(-1).to(v.dtype)
            mixed = weights @ v
        else:
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        update = self.out(mixed.transpose(1, 2).flatten(2))
        return (update, weights) if return_weights else update


class GatedDownsample(nn.Module):
    """Eq. (1): D_i = Conv(Pool(sigmoid(phi_i(F_i)) * W_i F_i)) on the target grid with ``dim`` channels.

    W_i is a 1x1 conv and phi_i a bottleneck conv block (1x1 reduce, 3x3, 1x1 expand), both from
    C_i to the gating width ``min(C_i, dim)``; Pool is an adaptive average pool to the last level's
    grid and Conv a 1x1 conv from the gating width to ``dim``. The paper fixes only D_i's width C
    (= ``dim``), which Conv produces; gating at no more than the level's own width keeps the
    full-resolution work of the shallow, wide-map levels small (at 384 px with EfficientNet-Lite0,
    gating level 1 at 256 channels cost more than its backbone stages: benchmarks/train_step.py).
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
