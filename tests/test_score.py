"""``rsfiqa score`` and the ``Scorer`` API end to end: a tiny model trained for one epoch on
synthetic shards whose index records the real offline annotator (classical + measures), then
real CLIVE photos (downscaled, plus one at full size) and a truncated JPEG."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from annotate.describe import build_describer
from annotate.segment import build_segmenter
from rsfiqa import Scorer, cli
from rsfiqa_core import contract
from rsfiqa.data.datamodule import TEXT_PARTS
from rsfiqa.data.sample import SampleReader
from rsfiqa.inference.heatmap import quality_overlay
from rsfiqa_core.imageio import decode_rgb
from rsfiqa.model.text import FROM_CHECKPOINT, TextEncoder
from rsfiqa.inference.score_cli import scan_paths
from annotate.describe import DESCRIBERS
from annotate.registry import component_record, recorded_config
from rsfiqa.inference.scorer import ScoringSetupError
from shardgen import write_shards

pytestmark = pytest.mark.shared  # reads ../shared

CLIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clive-dev" / "images"
PHOTOS = ("10.webp", "1001.JPG", "1002.JPG", "1003.JPG")  # downscaled copies
FULL_SIZE = "1004.JPG"
MISSING_SAM = "/nonexistent/sam_vit_h_4b8939.pth"


def offline_annotator() -> dict:
    """The annotator block `make annotate` records with configs/annotate/offline.yaml."""
    return {"segmenter": component_record(build_segmenter({"name": "classical", "num_regions": 5})),
            "describer": component_record(build_describer({"name": "measures"})),
            "image": {"max_pixels": 120_000_000, "downscale_long_side": None}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """12 synthetic samples whose index.json records the real offline annotator."""
    shards = write_shards(tmp_path_factory.mktemp("shards"), 12, image_size=(64, 64), samples_per_shard=6)
    index = json.loads((shards / contract.INDEX_NAME).read_text())
    (shards / contract.INDEX_NAME).write_text(json.dumps({**index, "annotator": offline_annotator()}))
    return shards


@pytest.fixture(scope="module")
def checkpoint(shards, tmp_path_factory, tiny_model_args) -> Path:
    """last.ckpt of a 1-epoch `rsfiqa fit` of the tiny model on the synthetic shards."""
    workdir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["rsfiqa"])
        torch.set_num_threads(1)
        cli.main(["fit", "--data.train_shards", str(shards), "--data.image_size", "64", "--data.batch_size", "4",
                  *tiny_model_args, "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
                  "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    ckpt = workdir / "runs" / "rsfiqa" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """4 CLIVE photos downscaled to 128 px (one in a subfolder), 1 at full size, 1 truncated JPEG, 1 text file."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for i, name in enumerate(PHOTOS):
        img = Image.open(CLIVE / name).convert("RGB")
        img.thumbnail((128, 128))
        img.save(folder / ("sub" if i == 0 else "") / f"{Path(name).stem}.png")
    shutil.copy(CLIVE / FULL_SIZE, folder / FULL_SIZE)
    data = (CLIVE / "1006.JPG").read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def scorer(checkpoint) -> Scorer:
    return Scorer.from_checkpoint(checkpoint, device="cpu")


def run_score(args: list[str], capsys) -> tuple[int, str]:
    """``rsfiqa score ...`` through the ``rsfiqa`` entry point: (exit status, stderr)."""
    status = cli.main(["score", *args, "--no-progress"])
    return status, capsys.readouterr().err


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {Path(row["image"]).name: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def cli_run(checkpoint, photos, tmp_path_factory):
    """One CSV + heatmap (+ attention panel) run over the photo folder: (status, stderr, csv rows, heatmap dir)."""
    out = tmp_path_factory.mktemp("out")
    err = io.StringIO()  # capsys is function-scoped: capture stderr by hand
    with redirect_stderr(err):
        status = cli.main(["score", str(photos), "--ckpt", str(checkpoint), "--out", str(out / "scores.csv"),
                           "--heatmap", str(out / "heatmaps"), "--attn-token", "0,1", "--batch-size", "2",
                           "--device", "cpu", "--no-progress"])
    return status, err.getvalue(), read_csv(out / "scores.csv"), out / "heatmaps"


# --------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_scores_good_images_reports_corrupt_one_and_exits_2(cli_run):
    status, err, rows, _ = cli_run
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("rsfiqa score: error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "truncated" in errors[0]
    assert sorted(rows) == sorted([f"{Path(p).stem}.png" for p in PHOTOS] + [FULL_SIZE])
    for row in rows.values():
        score, norm = float(row["score"]), float(row["score_norm"])
        assert math.isfinite(score) and row["scale_dataset"] == "synth"
        assert score == pytest.approx(contract.denormalise_mos(norm, (1.0, 5.0), True))
        regions = json.loads(row["regions"])
        assert [r["index"] for r in regions] == list(range(5))
        for r in regions:
            assert {"area", "valid", "content", "levels", "scores", "text"} <= set(r)
        valid = [r for r in regions if r["valid"]]
        assert valid and sum(r["area"] for r in regions) == pytest.approx(1.0)
        assert all(set(r["scores"]) == set(contract.DIMENSIONS) for r in valid if r["scores"])


@pytest.mark.slow
def test_cli_writes_one_two_panel_heatmap_per_good_image(cli_run, photos):
    _, _, rows, heatmaps = cli_run
    pngs = sorted(str(p.relative_to(heatmaps)) for p in heatmaps.rglob("*.png"))  # sub/10.png -> sub/10.png.heatmap.png
    assert pngs == sorted(f"{Path(row['image']).relative_to(photos)}.heatmap.png" for row in rows.values())
    for row in rows.values():
        with Image.open(row["heatmap"]) as img:
            assert img.format == "PNG" and img.width > 1.5 * img.height  # image panel + attention panel


@pytest.mark.slow
def test_api_returns_the_cli_scores_for_paths_arrays_and_pil_images(cli_run, scorer, checkpoint, photos):
    _, _, rows, _ = cli_run
    png = photos / "1001.png"
    inputs = [png, photos / "broken.jpg", np.asarray(Image.open(png).convert("RGB")), Image.open(png),
              photos / FULL_SIZE, np.zeros((4, 4), dtype=np.float32)]
    records = scorer.score(inputs, batch_size=3)
    assert [r["error"] is None for r in records] == [True, False, True, True, True, False]
    assert "broken.jpg" in records[1]["error"] and records[1]["score"] is None
    assert "uint8" in records[5]["error"]
    for i in (0, 2, 3):
        assert records[i]["score"] == pytest.approx(float(rows["1001.png"]["score"]), abs=1e-5)
    assert records[4]["score"] == pytest.approx(float(rows[FULL_SIZE]["score"]), abs=1e-5)
    assert records[2]["regions"] == records[0]["regions"]
    json.dumps(records)  # plain data
    fresh = Scorer.from_checkpoint(checkpoint, device="cpu").score(inputs, batch_size=3)
    assert [r["score"] for r in fresh] == [r["score"] for r in records]  # deterministic for a fixed batch size
    rebatched = scorer.score(inputs, batch_size=2)  # other batch neighbours: float rounding only
    assert [r["score"] for r in rebatched] == pytest.approx([r["score"] for r in records], abs=1e-5, nan_ok=True)
    assert scorer.score(png)[0]["score"] == pytest.approx(records[0]["score"], abs=1e-5)  # one bare input


@pytest.mark.slow
def test_model_input_is_the_evaluation_readers(scorer, shards):
    """Scoring feeds the network exactly what `rsfiqa test` does for an annotated image."""
    reader = SampleReader("seed0", None, 5, (64, 64), "bicubic", TEXT_PARTS, contract.DIMENSIONS)
    raw = next(iter(wds.WebDataset(str(shards / "synth-000001.tar"), shardshuffle=False, empty_check=False)))
    sample = contract.decode_sample(raw)
    expected = reader.item(sample, where="test", flip=False)
    rgb = decode_rgb(sample["image_bytes"])[0]
    image, labels, valid, texts = scorer.model_input(rgb, sample["label_map"], sample["record"]["regions"])
    assert torch.equal(image, expected["image"]) and torch.equal(labels, expected["label_map"])
    assert torch.equal(valid, expected["region_valid"]) and texts == expected["texts"]


class FailOnSmallImages:
    """A describer wrapper that breaks on images under 100 px, as a buggy annotator might."""

    def __init__(self, describer):
        self.describer = describer

    def describe(self, images, segs):
        if any(min(im.shape[:2]) < 100 for im in images):
            raise ValueError("cannot describe such a small image")
        return self.describer.describe(images, segs)


@pytest.mark.slow
def test_an_image_breaking_the_annotator_is_reported_and_the_batch_goes_on(scorer, photos, monkeypatch):
    expected = scorer.score([photos / FULL_SIZE])[0]["score"]
    monkeypatch.setattr(scorer.annotator, "describer", FailOnSmallImages(scorer.annotator.describer))
    tiny = np.full((40, 60, 3), 90, dtype=np.uint8)
    records = scorer.score([tiny, photos / FULL_SIZE], batch_size=2)
    assert records[0]["score"] is None
    assert records[0]["error"] == "<ndarray #0>: annotation failed (ValueError: cannot describe such a small image)"
    assert records[1]["error"] is None and records[1]["score"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_cli_json_output_nests_the_same_records(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "scores.json"
    status, err = run_score([str(photos / "sub"), str(photos / "*.png"), "--ckpt", str(checkpoint),
                             "--out", str(out)], capsys)
    assert status == 0, err
    records = json.loads(out.read_text())
    assert sorted(Path(r["image"]).name for r in records) == sorted(f"{Path(p).stem}.png" for p in PHOTOS)
    assert all(r["error"] is None and len(r["regions"]) == 5 and isinstance(r["regions"][0]["scores"], dict)
               for r in records)


# --------------------------------------------------------------------------- unavailable annotators
def with_annotator(checkpoint: Path, tmp_path: Path, **components) -> Path:
    """A copy of the checkpoint whose training annotator has the given segmenter/describer settings."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["rsfiqa_data"]["datasets"]["synth"]["annotator"].update(components)
    path = tmp_path / "changed.ckpt"
    torch.save(ckpt, path)
    return path


SAM_SETTINGS = {"name": "sam", "num_regions": 5, "checkpoint": MISSING_SAM, "model_type": "vit_h",
                "long_side": 1024, "points_per_side": 32, "versions": {"segment-anything": "1.0"}}


@pytest.mark.slow
def test_missing_sam_checkpoint_names_file_and_override(checkpoint, photos, tmp_path, capsys):
    changed = with_annotator(checkpoint, tmp_path, segmenter=SAM_SETTINGS)
    status, err = run_score([str(photos / "1001.png"), "--ckpt", str(changed)], capsys)
    assert status == 1
    assert MISSING_SAM in err and "--segmenter-override KEY=VALUE" in err and "name=classical" in err
    with pytest.raises(ScoringSetupError, match="segmenter-override"):
        Scorer.from_checkpoint(changed)


@pytest.mark.slow
def test_segmenter_override_scores_with_a_warning(checkpoint, photos, tmp_path, capsys):
    changed = with_annotator(checkpoint, tmp_path, segmenter=SAM_SETTINGS)
    status, err = run_score([str(photos / "1001.png"), "--ckpt", str(changed), "--segmenter-override",
                             "name=classical", "--segmenter-override", "method=felzenszwalb"], capsys)
    assert status == 0, err
    assert "warning" in err and "differ from training conditions" in err


@pytest.mark.slow
def test_missing_vllm_names_the_extra_and_the_describer_override(checkpoint, photos, tmp_path, capsys):
    mllm = {"name": "mllm", "max_retries": 2, "dims": list(contract.DIMENSIONS), "prompts": {"content": "..."},
            "backend": {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct", "seed": 0,
                        "logprob_mode": "token_ids", "level_token_ids": {"bad": 1}, "versions": {"vllm": "0.9"}}}
    assert recorded_config(DESCRIBERS, mllm) == {"name": "vllm", "max_retries": 2, "dims": list(contract.DIMENSIONS),
                                      "model": "Qwen/Qwen2.5-VL-7B-Instruct", "seed": 0}
    changed = with_annotator(checkpoint, tmp_path, describer=mllm)
    status, err = run_score([str(photos / "1001.png"), "--ckpt", str(changed)], capsys)
    assert status == 1 and "vllm" in err.lower() and "--describer-override" in err and "name=measures" in err


@pytest.mark.slow
def test_checkpoints_with_the_earlier_flat_hyperparameters_still_score(checkpoint, photos, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    ckpt["hyper_parameters"] = {**hp.pop("net"), **hp}  # the layout before NetConfig
    torch.save(ckpt, tmp_path / "flat.ckpt")
    image = photos / "1001.png"
    assert Scorer.from_checkpoint(tmp_path / "flat.ckpt").score([image]) == Scorer.from_checkpoint(checkpoint).score([image])


@pytest.mark.slow
def test_setup_errors_exit_1(checkpoint, photos, tmp_path, capsys):
    assert run_score([str(tmp_path / "none.jpg"), "--ckpt", str(checkpoint)], capsys)[0] == 1  # nothing to score
    status, err = run_score([str(photos / "1001.png"), "--ckpt", str(tmp_path / "no.ckpt")], capsys)
    assert status == 1 and "checkpoint not found" in err
    status, err = run_score([str(photos / "1001.png"), "--ckpt", str(checkpoint), "--out", "x.txt"], capsys)
    assert status == 1 and ".csv, .json, .jsonl or .parquet" in err
    status, err = run_score([str(photos / "1001.png"), "--ckpt", str(checkpoint), "--heatmap", str(tmp_path),
                             "--attn-token", "9,9"], capsys)
    assert status == 1 and "token grid" in err


# --------------------------------------------------------------------------- pieces
def test_scan_paths_recurses_folders_filters_globs_and_reports_missing(photos):
    scan = scan_paths([str(photos), str(photos / "sub" / "*"), str(photos / "nothing*.jpg"),
                       str(photos / "gone.png"), str(photos / "notes.txt")])
    files, errors = scan.files, scan.errors
    names = [f.name for f in files]
    assert "notes.txt" in names and names.count("10.png") == 1  # named explicitly: kept; found twice: once
    assert "broken.jpg" in names and FULL_SIZE in names and len(names) == 7
    assert scan.other_files == [], "notes.txt is scored (named), so no note passes it over"
    assert errors == [f"{photos / 'nothing*.jpg'}: no image file matches this pattern",
                      f"{photos / 'gone.png'}: no such file or directory"]


def test_quality_overlay_colours_regions_by_overall_score():
    rgb = np.full((20, 20, 3), 128, dtype=np.uint8)
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[:, 10:] = 1
    regions = [{"index": 0, "scores": {"overall": 1.0}}, {"index": 1, "scores": {"overall": 5.0}}]
    out = quality_overlay(rgb, labels, regions)
    bad, good = out[10, 3], out[10, 16]
    assert bad[0] > bad[1] and good[1] > good[0]  # red-ish for 1 (bad), green-ish for 5 (excellent)
    unscored = quality_overlay(rgb, labels, [{"index": 0, "scores": None}, {"index": 1, "scores": None}])
    assert np.allclose(unscored[10, 3], 128 / 255)


def test_clip_text_encoder_for_checkpoint_weights_is_built_silently(caplog):
    with caplog.at_level(logging.WARNING):
        encoder = TextEncoder("clip", "ViT-B-32", pretrained=FROM_CHECKPOINT)
    assert encoder.dim == 512
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


@pytest.mark.slow
def test_rsfiqa_exports_scorer_and_annotate_never_loads_rsfiqa():
    code = ("import sys, annotate.pipeline, annotate.cli; loaded = 'rsfiqa' in sys.modules; "
            "from rsfiqa import Scorer; print(loaded, Scorer.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "rsfiqa.inference.scorer"]
