"""Architecture ``stats`` (the offline configuration): whole-image statistics of frozen backbones ->
ridge + MLP ensemble.

Not in the paper. On CPU-sized data (651 training photos of CLIVE) the frozen ImageNet features'
per-level mean and standard deviation carry the evidence; MHF, RSA and the region texts add nothing
measurable on top (docs/results/clive.md, docs/results/clive_levers.md). The head averages two
differently biased predictors of the normalised MOS:

* a ridge regression on the centred statistics, solved in closed form once before training, its
  penalty chosen by validation SRCC (:meth:`EnsembleHead.fit_closed_form`);
* ``members`` small MLPs on the standardised statistics, trained by the usual loop with eq. (11)
  applied to each member (independent members, one optimiser).

The score is ``(ridge + mean of the members) / 2``. The network reads the image only: label maps
and region texts passed to it are ignored, so scoring needs no annotation (README, "Scoring").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .head import pool_tokens
from .net import check_images

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
        from torchmetrics.functional import spearman_corrcoef  # here: scoring never fits, so never imports it
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


@dataclass(frozen=True)
class StatsConfig:
    """Every option of :class:`StatsNet` (README, "Options where the paper is silent"); configs set
    them under ``model.net`` with ``arch: stats``. The backbones are always frozen."""

    arch: ClassVar[str] = "stats"
    backbone: str = "efficientnet_lite0"
    extra_backbones: tuple[str, ...] = ()
    pretrained: bool | str | None = None
    out_indices: tuple[int, ...] | None = None
    img_size: int | None = None
    num_regions: int = 5
    ensemble_members: int = 3
    embed_dim: int = 256
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("out_indices", "extra_backbones"):  # a list from a config file: the same options
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def backbone_names(self) -> tuple[str, ...]:
        """``backbone`` followed by ``extra_backbones``."""
        return (self.backbone, *self.extra_backbones)

    @property
    def consumes(self) -> frozenset[str]:
        """Nothing beside the image."""
        return frozenset()

    @property
    def closed_form(self) -> bool:
        """The ridge is solved in closed form before training (:meth:`StatsNet.fit_closed_form`)."""
        return True

    def frozen_parts(self) -> list[str]:
        """Parts of the net whose weights come from packages in a shipped file: every backbone."""
        return ["backbone", "extra_backbones"] if self.extra_backbones else ["backbone"]


class StatsNet(nn.Module):
    """Frozen statistics backbones and the ensemble head; ``forward`` has :class:`~.net.RSFIQANet`'s
    signature (label map, region validity and texts are accepted and ignored) and returns the
    predicted normalised quality [B]."""

    def __init__(self, config: StatsConfig) -> None:
        super().__init__()
        c = self.config = config
        self.num_regions = c.num_regions
        self.backbone = StatisticsBackbone(c.backbone, c.pretrained, c.out_indices, True, c.img_size)
        self.extra_backbones = nn.ModuleList(StatisticsBackbone(name, c.pretrained, c.out_indices, True, c.img_size)
                                             for name in c.extra_backbones)
        dim = sum(2 * sum(b.channels) for b in self.backbones)
        self.head = EnsembleHead(dim, c.ensemble_members, c.embed_dim, c.dropout)

    @property
    def backbones(self) -> list[Backbone]:
        """``backbone`` followed by ``extra_backbones``."""
        return [self.backbone, *self.extra_backbones]

    def image_statistics(self, images: Tensor) -> Tensor:
        """[B,3,H,W] -> [B, D]: every backbone's level statistics, concatenated (the closed-form step's input)."""
        return torch.cat([s for backbone in self.backbones for s in backbone(images)], dim=-1)

    def fit_closed_form(self, train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor) -> dict[str, float]:
        """:meth:`EnsembleHead.fit_closed_form` on statistics from :meth:`image_statistics`."""
        return self.head.fit_closed_form(train_x, train_y, val_x, val_y)

    def forward_features(self, images: Tensor, label_map: Tensor | None = None, region_valid: Tensor | None = None,
                         texts: Sequence[Sequence[str]] | None = None, return_attn: bool = False) -> dict:
        """{"score": [B], "members": [B, members]}."""
        if return_attn:
            raise ValueError("return_attn needs an architecture with RSA (arch rsfiqa, use_rsa=True)")
        check_images(images)
        return self.head(self.image_statistics(images))

    def forward(self, images: Tensor, label_map: Tensor | None = None, region_valid: Tensor | None = None,
                texts: Sequence[Sequence[str]] | None = None) -> Tensor:
        return self.forward_features(images)["score"]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The MLP members (the backbones are frozen, the ridge is solved in closed form)."""
        return {"backbone": [], "text": [], "head": [p for p in self.head.parameters() if p.requires_grad]}
