"""RSFIQANet: backbone -> MHF -> RSA (guided by region texts) -> quality head (paper Fig. 2, eqs. 1-10).

Ablation switches (paper Table 3) build only what they keep:

=========  =========  ========  =====================================================================
use_mhf    use_text   use_rsa   path after the backbone
=========  =========  ========  =====================================================================
True       True       True      MHF -> RSA with text queries -> head (full model)
True       False      True      MHF -> RSA with a learned query per region slot -> head
True       True       False     MHF -> residual cross-attention of tokens onto the L texts -> head
any        False      False     fusion -> head (label map and texts unused)
False      ...        ...       :class:`PlainFusion` instead of MHF
=========  =========  ========  =====================================================================

``global_stats=True`` (the offline configuration, :mod:`.stats`) replaces everything after the
backbone: the per-level mean and std of every frozen backbone (``backbone`` and ``extra_backbones``)
go to a ridge + MLP ensemble; it needs ``use_mhf=use_text=use_rsa=False``.

The paper's baseline row is ``use_mhf=use_text=use_rsa=head_self_attn=False``.
Region validity: with text, a region counts when ``region_valid`` is True and its description is
non-empty; without text, descriptions are irrelevant and only empty regions (no cell on the grid)
are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .attention import Attention, additive_mask
from .backbone import Backbone
from .head import QualityHead
from .mhf import MHF, PlainFusion
from .rsa import RegionSemanticAttention, check_label_map, pool_region_masks
from .stats import EnsembleHead, StatisticsBackbone
from .text import TextEncoder, text_projection


class TextCrossFusion(nn.Module):
    """Table 3 "MLLM without RSA": tokens attend to the L projected region-text embeddings
    (residual cross-attention, invalid texts masked out); a sample with no valid text is unchanged."""

    def __init__(self, dim: int, text_dim: int, num_heads: int) -> None:
        super().__init__()
        self.text_proj = text_projection(text_dim, dim)
        self.attn = Attention(dim, num_heads, kv_dim=dim)

    def forward(self, tokens: Tensor, text: Tensor, valid: Tensor) -> Tensor:
        """tokens [B,N,C], text [B,L,C_t], valid [B,L] bool -> tokens [B,N,C]."""
        any_valid = valid.any(-1)
        allowed = valid | ~any_valid[:, None]  # all-invalid rows stay finite, their update is zeroed
        update = self.attn(tokens, self.text_proj(text), bias=additive_mask(allowed)[:, None, None, :])
        return tokens + update * any_valid[:, None, None].to(update.dtype)


@dataclass(frozen=True)
class NetConfig:
    """Every option of :class:`RSFIQANet` (README, "Options where the paper is silent"): the one
    place a model switch is declared; configs set it under ``model.net``."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool | str | None = None
    num_regions: int = 5
    embed_dim: int = 256
    num_heads: int = 4
    use_mhf: bool = True
    use_text: bool = True
    use_rsa: bool = True
    rsa_hard_mask: bool = False
    rsa_norm: str = "none"
    text_encoder: str = "clip"
    text_model: str = "ViT-B-32"
    text_pretrained: str | None = None
    freeze_text: bool = True
    freeze_backbone: bool = False
    out_indices: tuple[int, ...] | None = None
    head_self_attn: bool = True
    pool: str = "mean"
    dropout: float = 0.1
    img_size: int | None = None
    global_stats: bool = False
    extra_backbones: tuple[str, ...] = ()
    ensemble_members: int = 3

    def __post_init__(self) -> None:
        for name in ("out_indices", "extra_backbones"):  # a list from a config file: the same options
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.rsa_hard_mask and not self.use_rsa:
            raise ValueError("rsa_hard_mask=True needs use_rsa=True")
        if self.global_stats:
            region_parts = [name for name in ("use_mhf", "use_text", "use_rsa") if getattr(self, name)]
            if region_parts or not self.freeze_backbone:
                raise ValueError(f"global_stats=True needs freeze_backbone=True and use_mhf=use_text=use_rsa=False "
                                 f"(set: {region_parts + ([] if self.freeze_backbone else ['freeze_backbone=False'])})")
        elif self.extra_backbones:
            raise ValueError("extra_backbones need global_stats=True (only the statistics path combines backbones)")

    @property
    def backbone_names(self) -> tuple[str, ...]:
        """``backbone`` followed by ``extra_backbones``."""
        return (self.backbone, *self.extra_backbones)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], **changes: Any) -> "NetConfig":
        """The options in a checkpoint's ``hyper_parameters``: ``hparams["net"]``, or flat in
        checkpoints written before NetConfig; ``changes`` replace some of them."""
        options = hparams["net"] if "net" in hparams else {k: hparams[k] for k in cls.__dataclass_fields__
                                                             if k in hparams}
        return cls(**{**options, **changes})


class RSFIQANet(nn.Module):
    """The RSFIQA network; ``forward`` returns the predicted normalised quality [B] (higher = better).

    Inputs: ``images`` [B,3,H,W] ImageNet-normalised; ``label_map`` [B,H',W'] int region index
    0..L-1 (L-1 = background; any resolution with the image's aspect); ``region_valid`` [B,L] bool;
    ``texts``: B lists of L descriptions ("" = missing).
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        c = self.config = config
        self.num_regions = c.num_regions
        if c.global_stats:
            self.build_statistics_path(c)
            return
        self.extra_backbones = nn.ModuleList()
        self.backbone = Backbone(c.backbone, c.pretrained, c.out_indices, c.freeze_backbone, c.img_size)
        channels = self.backbone.channels
        self.fusion = MHF(channels, c.embed_dim, c.num_heads) if c.use_mhf else PlainFusion(channels, c.embed_dim)
        self.text_encoder = (TextEncoder(c.text_encoder, c.text_model, c.text_pretrained, c.freeze_text)
                             if c.use_text else None)
        text_dim = self.text_encoder.dim if self.text_encoder is not None else None
        self.rsa = (RegionSemanticAttention(c.embed_dim, text_dim, c.num_heads, c.rsa_hard_mask, c.num_regions,
                                            c.rsa_norm) if c.use_rsa else None)
        self.text_fusion = (TextCrossFusion(c.embed_dim, text_dim, c.num_heads) if c.use_text and not c.use_rsa
                            else None)
        self.head = QualityHead(c.embed_dim, c.head_self_attn, c.pool, c.dropout, c.num_heads)

    def build_statistics_path(self, c: NetConfig) -> None:
        """``global_stats=True``: frozen statistics backbones and the ensemble head, nothing else."""
        self.backbone = StatisticsBackbone(c.backbone, c.pretrained, c.out_indices, True, c.img_size)
        self.extra_backbones = nn.ModuleList(StatisticsBackbone(name, c.pretrained, c.out_indices, True, c.img_size)
                                             for name in c.extra_backbones)
        dim = sum(2 * sum(b.channels) for b in self.backbones)
        self.fusion = self.text_encoder = self.rsa = self.text_fusion = None
        self.head = EnsembleHead(dim, c.ensemble_members, c.embed_dim, c.dropout)

    @property
    def backbones(self) -> list[Backbone]:
        """``backbone`` followed by ``extra_backbones`` (the statistics path may have several)."""
        return [self.backbone, *self.extra_backbones]

    def image_statistics(self, images: Tensor) -> Tensor:
        """[B,3,H,W] -> [B, D]: every statistics backbone's level statistics, concatenated."""
        return torch.cat([s for backbone in self.backbones for s in backbone(images)], dim=-1)

    def check_inputs(self, images: Tensor, label_map: Tensor, region_valid: Tensor,
                     texts: Sequence[Sequence[str]]) -> None:
        """Clear errors for inputs that do not follow the forward contract."""
        b, L = images.shape[0], self.num_regions
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
        if label_map.ndim != 3 or label_map.shape[0] != b:
            raise ValueError(f"label_map must be [B,H,W] with B={b}, got {tuple(label_map.shape)}")
        if region_valid.shape != (b, L) or region_valid.dtype != torch.bool:
            raise ValueError(f"region_valid must be a bool tensor [B={b}, L={L}], "
                             f"got {region_valid.dtype} {tuple(region_valid.shape)}")
        if len(texts) != b or any(len(t) != L for t in texts):
            raise ValueError(f"texts must be {b} lists of {L} strings, got lengths {[len(t) for t in texts]}")

    def encode_region_texts(self, texts: Sequence[Sequence[str]], region_valid: Tensor) -> tuple[Tensor, Tensor]:
        """(text embeddings [B,L,C_t], validity [B,L]: region_valid and a non-empty description)."""
        flat = [t for sample in texts for t in sample]
        present = torch.tensor([bool(t) for t in flat]).view(region_valid.shape)
        embeddings = self.text_encoder(flat).view(*region_valid.shape, -1)
        return embeddings.to(region_valid.device), region_valid & present.to(region_valid.device, non_blocking=True)

    def forward_features(self, images: Tensor, label_map: Tensor, region_valid: Tensor,
                         texts: Sequence[Sequence[str]], return_attn: bool = False) -> dict:
        """{"score": [B], "grid": (Hn, Wn), "rsa_attn": [B,heads,N,N] when ``return_attn``}; with
        ``global_stats`` {"score": [B], "members": [B, members]} instead."""
        if return_attn and self.rsa is None:
            raise ValueError("return_attn needs use_rsa=True")
        self.check_inputs(images, label_map, region_valid, texts)
        if self.config.global_stats:
            return self.head(self.image_statistics(images))
        # host-side work first (label check, text cache), so it never waits for queued device work
        if self.rsa is not None:
            check_label_map(label_map, self.num_regions)
        if self.text_encoder is not None:
            text, valid = self.encode_region_texts(texts, region_valid)
        else:
            text, valid = None, torch.ones_like(region_valid)
        levels = self.backbone(images)
        grid = tuple(levels[-1].shape[-2:])
        tokens = self.fusion(levels)
        out: dict = {"grid": grid}
        if self.rsa is not None:
            masks = pool_region_masks(label_map, self.num_regions, grid)
            tokens, attn = self.rsa(tokens, masks, valid, text, return_attn)
            if return_attn:
                out["rsa_attn"] = attn
        elif self.text_fusion is not None:
            tokens = self.text_fusion(tokens, text, valid)
        out["score"] = self.head(tokens)
        return out

    def forward(self, images: Tensor, label_map: Tensor, region_valid: Tensor,
                texts: Sequence[Sequence[str]]) -> Tensor:
        return self.forward_features(images, label_map, region_valid, texts)["score"]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for per-part learning rates: backbone, text encoder, the rest."""
        backbone = [p for b in self.backbones for p in b.parameters() if p.requires_grad]
        text = [p for p in self.text_encoder.parameters() if p.requires_grad] if self.text_encoder is not None else []
        taken = {id(p) for p in backbone + text}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        return {"backbone": backbone, "text": text, "head": head}
