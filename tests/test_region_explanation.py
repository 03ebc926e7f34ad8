"""benchmarks/region_explanation.py (issue 23, item 4): its region statistics and a one-photo run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its sibling benchutil

import region_explanation  # noqa: E402
from rsfiqa.inference.scorer import Scorer  # noqa: E402


@pytest.fixture(scope="module")
def shipped_net():
    return Scorer.from_pretrained().net


@torch.inference_mode()
def test_one_region_covering_the_image_scores_as_the_image(shipped_net) -> None:
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    background = shipped_net.num_regions - 1
    scores = region_explanation.region_scores(shipped_net, images, torch.full((2, 64, 80), background))
    assert torch.allclose(scores[:, background], shipped_net(images), atol=1e-5)
    assert scores[:, :background].isnan().all()  # absent regions are not scored


@torch.inference_mode()
def test_region_scores_read_only_the_region(shipped_net) -> None:
    """Region 0 = the left third; flattening the right third (in region 4) moves region 4's score, not
    region 0's (statistics of the whole image would move both alike)."""
    images = torch.rand(1, 3, 96, 288, generator=torch.Generator().manual_seed(1))
    labels = torch.full((1, 96, 288), shipped_net.num_regions - 1)
    labels[:, :, :96] = 0
    changed = images.clone()
    changed[:, :, :, 192:] = 0.5
    before = region_explanation.region_scores(shipped_net, images, labels)
    after = region_explanation.region_scores(shipped_net, changed, labels)
    assert abs(float(after[0, 4] - before[0, 4])) > 5 * abs(float(after[0, 0] - before[0, 0]))


@pytest.mark.shared
def test_one_photo_run_reports_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    trials = region_explanation.main(["--photos", "1"])
    out = capsys.readouterr().out
    assert trials and all(set(region_explanation.METHODS) <= set(t) for t in trials)
    assert all(0.05 <= t["area"] for t in trials)
    for method in region_explanation.METHODS:
        assert f"{method}: blurred region worst in" in out
