"""Score regression, paper eq. (10): y = MLP(Pool(SelfAttn(R)))."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Attention

POOLS = ("mean", "mean_std")
SCORE_BIAS_INIT = 0.5  # middle of the normalised MOS range [0, 1]: training starts from a neutral guess


def pool_tokens(tokens: Tensor, pool: str) -> Tensor:
    """[B, N, C] -> [B, C] (mean) or [B, 2C] (mean and standard deviation over tokens)."""
    mean = tokens.mean(1)
    if pool == "mean":
        return mean
    return torch.cat([mean, tokens.std(1, unbiased=False)], dim=-1)


class QualityHead(nn.Module):
    """Eq. (10). ``self_attn=False`` drops the self-attention block (the backbone-only baseline).

    The MLP is LayerNorm -> Linear -> GELU -> Dropout -> Linear(1); its output bias starts at
    ``SCORE_BIAS_INIT``. No sigmoid: targets are MOS normalised to [0, 1] and the loss is MSE.
    """

    def __init__(self, dim: int, self_attn: bool = True, pool: str = "mean", dropout: float = 0.1,
                 num_heads: int = 4) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.self_attn = Attention(dim, num_heads) if self_attn else None
        width = dim * (2 if pool == "mean_std" else 1)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim, 1))
        nn.init.constant_(self.mlp[-1].bias, SCORE_BIAS_INIT)

    def forward(self, tokens: Tensor) -> Tensor:
        """[B, N, C] -> [B] predicted normalised quality."""
        if self.self_attn is not None:
            tokens = tokens + self.self_attn(tokens)
        return self.mlp(pool_tokens(tokens, self.pool)).squeeze(-1)
