"""benchmarks/rsa_bias_scale.py: the eq. (8) bias scale at init that chose the paper configs' rsa_norm."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import rsa_bias_scale  # noqa: E402

torch.set_num_threads(1)


def test_literal_bias_pins_small_regions_and_ignores_large_ones_the_region_norm_does_not():
    none = rsa_bias_scale.measure("none", seeds=2, batch=2)
    region = rsa_bias_scale.measure("region", seeds=2, batch=2)
    one_cell, background = 0, len(rsa_bias_scale.REGION_CELLS) - 1
    logit_std = none["logit_std"][0]
    assert none["self_weight"][one_cell] > 0.99                        # a one-cell region's token attends to itself
    assert none["std"][background] < 0.2 * logit_std                   # the 23-cell background gets ~no bias
    assert none["diag"][one_cell] > 50 * none["diag"][background]      # ~1/n_i^2 across region sizes
    assert max(region["diag"]) < 1.2 * min(region["diag"])             # the region norm: one scale for all sizes
    assert max(region["self_weight"]) < 1.1 * min(region["self_weight"])


def test_the_paper_configs_use_the_region_norm_and_the_report_names_both_norms():
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    assert paper["model"]["net"]["rsa_norm"] == "region"
    for overlay in ("swin.yaml", "resnet50.yaml"):
        assert "rsa_norm" not in (yaml.safe_load((REPO / "configs" / overlay).read_text())["model"]["net"])
    text = rsa_bias_scale.report(("none", "region"), seeds=1, batch=1)
    assert text.count("| none |") == text.count("| region |") == len(rsa_bias_scale.REGION_CELLS)
