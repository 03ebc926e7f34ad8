"""Smoke runs of the speed benchmarks (benchmarks/*.py) with the tiniest settings.

They check that every script runs end to end and prints its ratio lines; no speed is asserted
(speed targets belong to the benchmarks' own output, never to timed unit tests).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import their sibling benchutil

import annotation  # noqa: E402
import latency  # noqa: E402
import train_step  # noqa: E402

pytestmark = pytest.mark.shared  # reads ../shared

TINY = ["--backbone", "test_efficientnet", "--image-size", "64", "--text", "minilm", "--device", "cpu",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_train_step_prints_side_by_side_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    results = train_step.main([*TINY, "--batch", "2", "--steps", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert set(results) == {"bare", "full, frozen text (warm cache)", "full, trainable text"}
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 and r["img_s"] > 0 for r in results.values())
    assert results["bare"]["ratio"] == 1.0
    assert "ratio full, frozen text (warm cache) / bare:" in out and "(target <= 1.25x)" in out
    assert "ratio full, trainable text / bare:" in out
    assert "device: " in out and "torch threads" in out


def test_latency_reports_every_L(capsys: pytest.CaptureFixture[str]) -> None:
    results = latency.main([*TINY, "--batch", "2", "--regions", "3", "5", "--steps", "1", "--batch-steps", "1",
                            "--warmup", "0"])
    out = capsys.readouterr().out
    assert set(results) == {3, 5}
    assert all(v > 0 for r in results.values() for v in r.values())
    assert "ratio L=5 full warm / bare, batch 1:" in out and "(target <= 1.5x)" in out
    assert "ratio L=3 full warm / bare, batch 1:" in out


def test_annotation_stages_loader_and_tiny_sam(capsys: pytest.CaptureFixture[str]) -> None:
    annotation.main([*TINY, "--root", str(SHARED / "data" / "clive-dev"), "--images", "12", "--shard-size", "4",
                     "--annotate-overrides", "segmenter.long_side=96", "--batch", "2", "--workers", "0",
                     "--loader-epochs", "2", "--train-steps", "1", "--step-img-s", "1000",
                     "--sam", "on", "--sam-models", "tiny", "--sam-batch", "2", "--sam-steps", "1",
                     "--sam-images", "1", "--sam-points", "2"])
    out = capsys.readouterr().out
    for stage in ("image decode", "classical segmenter", "measures describer", "shard writing"):
        assert f"| {stage}" in out
    assert "ratio loader (num_workers=0) / train step:" in out and "(must be > 1: " in out
    assert "ratio loader (num_workers=0) / given step rate 1000 img/s:" in out
    assert "SAM with RANDOM weights" in out and "honest for the image-encoder time only" in out
    assert "| tiny | fp32 | 256 |" in out


def test_paper_config_becomes_random_init_model_arguments() -> None:
    kwargs, batch, size = train_step.config_model("configs/swin.yaml")
    assert kwargs["backbone"] == "swin_tiny_patch4_window7_224"
    assert kwargs["img_size"] == size == 224  # ${data.image_size} resolved
    assert kwargs["text_pretrained"] is None and kwargs["num_regions"] == 5 and batch == 16
    assert "lr" not in kwargs  # only RSFIQANet's own arguments


def test_interpolations_resolve_recursively_and_unknown_keys_fail() -> None:
    tree = {"a": {"b": 3}, "c": "${a.b}", "d": ["${c}", "plain"]}
    assert train_step.resolve_interpolations(tree, tree) == {"a": {"b": 3}, "c": 3, "d": [3, "plain"]}
    with pytest.raises(KeyError):
        train_step.resolve_interpolations({"x": "${missing.key}"}, {})


@pytest.mark.slow  # three fresh scoring processes (the memory part)
def test_scoring_benchmark_prints_every_target(capsys: pytest.CaptureFixture[str]) -> None:
    import scoring

    scoring.main(["--root", str(SHARED / "data" / "clive-dev"), "--photos", "2", "--batch", "1", "--reps", "1",
                  "--annotate-photos", "2", "--big-side", "600", "--threads", "1"])
    out = capsys.readouterr().out
    assert "ratio scoring (regions, in-process annotation (workers=0)) / bare backbone:" in out
    assert "(target >= 0.5:" in out
    assert "ratio scoring (no region output (nothing annotated)) / bare backbone:" in out and "(target >= 0.9:" in out
    assert "heatmap drawing + PNG:" in out and "(target <= 0.1:" in out
    assert "shards byte-identical: True" in out and "(target <= 120:" in out
    assert "peak RSS, largest of the runs:" in out and "(target <= 2.0:" in out
    for stage in ("decode", "segment", "describe", "text", "network", "write"):
        assert f" {stage} |" in out


def test_verification_benchmark_prints_each_cost(capsys: pytest.CaptureFixture[str]) -> None:
    import verification

    results = verification.main(["--root", str(SHARED / "data" / "clive-dev"), "--photos", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "shipped-file digest:" in out and "json checksum" in out and "feature-cache entry digest:" in out
    assert "(target < 2%)" in out
    assert all(v > 0 for part in results.values() for v in part.values())


@pytest.mark.slow
def test_distributed_measures_annotation_and_scoring_on_the_same_photos(capsys: pytest.CaptureFixture[str]) -> None:
    import distributed

    results = distributed.main(["--root", str(SHARED / "data" / "clive-dev"), "--images", "3", "--no-kill"])
    out = capsys.readouterr().out
    assert set(results) == {"annotation", "scoring"}
    assert results["annotation"]["ratio"] > 0 and results["scoring"]["ratio"] > 0
    assert "3 samples, equal to local key by key (differing 0, missing 0, extra 0)" in out
    assert "ratio ray / local photos/s:" in out and "ratio ray / local:" in out
