"""`make model` end to end on a handful of clive-dev photos: the file it writes loads and scores."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotate.datasets.csv_folder import write_subset
from rsfiqa.inference import pretrained
from rsfiqa.inference.scorer import Scorer

REPO = Path(__file__).resolve().parents[1]
CLIVE = REPO.parent / "shared" / "data" / "clive-dev"
PHOTOS = 16

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def small_clive(folder: Path) -> Path:
    """A clive-dev-shaped folder with the first PHOTOS rows of clive-dev (images linked)."""
    write_subset(CLIVE, folder, lambda i, row: i < PHOTOS)
    return folder


def test_make_model_writes_a_file_that_loads_scores_and_records_its_recipe(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    proc = subprocess.run([sys.executable, "scripts/make_model.py", "--clive", str(small_clive(tmp_path / "clive")),
                           "--work", str(tmp_path / "work"), "--name", "clive-offline", "--out", str(out),
                           "--max-epochs", "1"], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "demo photos (never trained on, n=48)" in proc.stdout
    assert out.stat().st_size < 5_000_000 and not list(tmp_path.glob("*.staged.pt"))
    scorer = Scorer.from_model_file(out)
    card = scorer.card
    assert card["training_data"]["photos"] == PHOTOS       # none of the first rows is a demo photo
    assert card["recipe"]["configs"] == list(pretrained.model_entry("clive-offline").configs)
    name, expected = next(iter(card["reference"].items()))
    record = scorer.score([REPO / "demo" / "data" / "images" / name])[0]
    assert record["score_norm"] == pytest.approx(expected, abs=2e-4)
