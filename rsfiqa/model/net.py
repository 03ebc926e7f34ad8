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

Registered as architecture ``rsfiqa`` (:mod:`.registry`); the offline configuration's statistics
model is another architecture (``stats``, :mod:`.stats`).

The paper's baseline row is ``use_mhf=use_text=use_rsa=head_self_attn=False``.
Region validity: with text, a region counts when ``region_valid`` is True and its description is
non-empty; without text, descriptions are irrelevant and only empty regions (no cell on the grid)
are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from .attention import Attention, additive_mask
from .backbone import Backbone
from .head import QualityHead
from .mhf import MHF, PlainFusion
from .rsa import RegionSemanticAttention, check_label_map, pool_region_masks
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


def check_images(images: Tensor) -> None:
    """A clear error unless ``images`` is [B,3,H,W]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")


@dataclass(frozen=True)
class NetConfig:
    """Every option of :class:`RSFIQANet` (README, "Options where the paper is silent"): the one
    place a model switch is declared; configs set it under ``model.net`` (``arch: rsfiqa``)."""

    arch: ClassVar[str] = "rsfiqa"
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

    def __post_init__(self) -> None:
        if self.out_indices is not None:  # a list from a config file: the same option
            object.__setattr__(self, "out_indices", tuple(self.out_indices))
        if self.rsa_hard_mask and not self.use_rsa:
            raise ValueError("rsa_hard_mask=True needs use_rsa=True")

    @property
    def backbone_names(self) -> tuple[str, ...]:
        return (self.backbone,)

    @property
    def consumes(self) -> frozenset[str]:
        """What the network reads beside the image: ``regions`` (the label map, RSA) and ``texts``."""
        return frozenset(name for name, used in (("regions", self.use_rsa), ("texts", self.use_text)) if used)

    @property
    def closed_form(self) -> bool:
        """No step solved before training: every trained weight comes from the loop."""
        return False

    def frozen_parts(self) -> list[str]:
        """Parts of the net that are frozen and present (a shipped file takes their weights from packages)."""
        flags = {"backbone": self.freeze_backbone, "text_encoder": self.freeze_text and self.use_text}
        return [part for part, frozen in flags.items() if frozen]


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

    @property
    def backbones(self) -> list[Backbone]:
        return [self.backbone]

    def check_inputs(self, images: Tensor, label_map: Tensor, region_valid: Tensor,
                     texts: Sequence[Sequence[str]]) -> None:
        """Clear errors for inputs that do not follow the forward contract."""
        b, L = images.shape[0], self.num_regions
        check_images(images)
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
        """{"score": [B], "grid": (Hn, Wn), "rsa_attn": [B,heads,N,N] when ``return_attn``}."""
        if return_attn and self.rsa is None:
            raise ValueError("return_attn needs use_rsa=True")
        self.check_inputs(images, label_map, region_valid, texts)
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
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        text = [p for p in self.text_encoder.parameters() if p.requires_grad] if self.text_encoder is not None else []
        taken = {id(p) for p in backbone + text}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        return {"backbone": backbone, "text": text, "head": head}
