"""The offline configuration's path: whole-image statistics of frozen backbones -> ridge + MLP ensemble.

Not in the paper. On CPU-sized data (651 training photos of CLIVE) the frozen ImageNet features'
per-level mean and standard deviation carry the evidence; MHF, RSA and the region texts add nothing
measurable on top (docs/results/clive.md, docs/results/clive_levers.md). The head averages two
differently biased predictors of the normalised MOS:

* a ridge regression on the centred statistics, solved in closed form once before training, its
  penalty chosen by validation SRCC (:meth:`EnsembleHead.fit_closed_form`);
* ``members`` small MLPs on the standardised statistics, trained by the usual loop with eq. (11)
  applied to each member (independent members, one optimiser).

The score is ``(ridge + mean of the members) / 2``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.functional import spearman_corrcoef

from .backbone import Backbone
from .head import pool_tokens

# ridge penalties, relative to the mean eigenvalue of the centred training Gram matrix
RIDGE_ALPHAS = torch.logspace(-4, 4, 33, dtype=torch.float64)
STD_FLOOR = 1e-6  # a channel that never varies on the training set is standardised to 0, not inf


def map_statistics(level: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, 2C]: per channel the mean and the population std over the positions."""
    return pool_tokens(level.flatten(2).transpose(1, 2), "mean_std")


class StatisticsBackbone(Backbone):
    """A frozen :class:`Backbone` returning the statistics of each level ([B, 2C_i] per level) instead
    of the maps: what the feature cache stores for this path (kilobytes per image, not megabytes)."""

    def forward(self, images: Tensor) -> list[Tensor]:
        return [map_statistics(level) for level in super().forward(images)]

    @property
    def cache_identity(self) -> str:
        return f"{super().cache_identity}|mean_std"


class EnsembleHead(nn.Module):
    """Ridge + MLP ensemble on image statistics [B, D] (module docstring). The buffers (centring,
    standardisation, ridge weights, target scale) come from :meth:`fit_closed_form`; a head that was
    never fitted refuses to score."""

    def __init__(self, dim: int, members: int = 3, hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"the ensemble head needs at least one MLP member, got {members}")
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.register_buffer("ridge_weight", torch.zeros(dim))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.members = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout / 2), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                          nn.Linear(hidden, 1)) for _ in range(members))

    def ridge_score(self, x: Tensor) -> Tensor:
        """[B, D] -> [B]: the closed-form ridge prediction."""
        return (x - self.feature_mean) @ self.ridge_weight + self.target_mean

    def member_scores(self, x: Tensor) -> Tensor:
        """[B, D] -> [B, members]: each MLP's prediction on the MOS scale of the targets."""
        z = (x - self.feature_mean) / self.feature_std
        return self.target_mean + self.target_std * torch.cat([m(z) for m in self.members], dim=-1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """{"score": [B] (ridge and member mean averaged), "members": [B, members]}."""
        if not bool(self.fitted):
            raise RuntimeError("the ensemble head was never fitted: train the model (rsfiqa fit) before scoring")
        members = self.member_scores(x)
        return {"score": (self.ridge_score(x) + members.mean(-1)) / 2, "members": members}

    @torch.no_grad()
    def fit_closed_form(self, train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor) -> dict[str, float]:
        """Set the standardisation and target buffers from the training set and solve the ridge for
        every penalty of :data:`RIDGE_ALPHAS`, keeping the one with the best validation SRCC.
        Returns {"alpha": relative penalty, "val_srcc": its validation SRCC}."""
        if len(train_x) < 2 or len(val_x) < 2:
            raise ValueError(f"the ridge fit needs at least 2 training and 2 validation images, "
                             f"got {len(train_x)} and {len(val_x)}")
        x, y = train_x.double(), train_y.double()
        mean = x.mean(0)
        u, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
        uy = u.T @ (y - y.mean())
        projected_val = (val_x.double() - mean) @ vt.T
        scale = (s ** 2).mean()
        best = (-2.0, 0.0, None)
        for alpha in RIDGE_ALPHAS:
            coefficients = s / (s ** 2 + alpha * scale) * uy  # in the singular basis
            srcc = float(spearman_corrcoef(projected_val @ coefficients, val_y.double()))
            if srcc == srcc and srcc > best[0]:  # a constant prediction has no SRCC (nan)
                best = (srcc, float(alpha), vt.T @ coefficients)
        if best[2] is None:
            raise ValueError("no ridge penalty gives a defined validation SRCC (constant predictions or targets)")
        dtype = self.ridge_weight.dtype
        self.feature_mean.copy_(mean.to(dtype))
        self.feature_std.copy_(x.std(0, unbiased=False).clamp_min(STD_FLOOR).to(dtype))
        self.ridge_weight.copy_(best[2].to(dtype))
        self.target_mean.fill_(float(y.mean()))
        self.target_std.fill_(float(y.std(unbiased=False).clamp_min(STD_FLOOR)))
        self.fitted.fill_(True)
        return {"alpha": best[1], "val_srcc": best[0]}
