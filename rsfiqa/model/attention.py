"""Paper eq. (2): the attention block of MHF (eqs. 3-4), RSA (eq. 9) and the head (eq. 10)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def additive_mask(allowed: Tensor) -> Tensor:
    """Boolean "may attend" tensor -> float additive logits mask (0 where allowed, -inf elsewhere)."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


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
