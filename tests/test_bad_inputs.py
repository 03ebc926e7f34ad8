"""The bad-input corpus (tests/badinputs.py) through every entry point that reads images or labels:
``rsfiqa_core.imageio``, annotation (``annotate.pipeline.annotate`` and ``python -m annotate``'s
``main``), training data (``ShardDataModule`` over the shards annotated from the corpus) and
``rsfiqa score``. Each kind is either used (decoded upright to 8-bit RGB) or skipped with its
documented reason in the run's summary / error output — never a crash, never a silent drop.
docs/FAILURES.md is the table of these outcomes; a test keeps it in step with the corpus.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import badinputs
from annotate.cli import main as annotate_main
from annotate.config import load_config
from annotate.datasets.base import DUPLICATE
from rsfiqa_core.imageio import printable
from annotate.pipeline import annotate
from rsfiqa import cli
from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa_core.imageio import ImageError, decode_rgb, load_rgb
from test_annotate_pipeline import read_samples

REPO = Path(__file__).resolve().parents[1]
L = 5
KINDS = badinputs.all_kinds()
BY_KIND = {k.kind: k for k in KINDS}
# small shards, 30 % validation so a 1-epoch fit has a validation SRCC; annotation at full size
OVERRIDES = ["shards.maxcount=4", "batch_size=4", "dataset.mos_range=[0,100]", "dataset.val_frac=0.3"]


def reason_matches(expected: str, reason: str) -> bool:
    """Label skips start with their category; image errors name the problem somewhere in the text."""
    return reason.startswith(expected) or expected in reason


# --------------------------------------------------------------------------- the corpus and the docs
def test_the_failure_table_lists_every_corpus_kind():
    table = (REPO / "docs" / "FAILURES.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.MULTILINE))
    assert {k.kind for k in KINDS} <= documented, sorted({k.kind for k in KINDS} - documented)
    assert len(KINDS) >= 20


# --------------------------------------------------------------------------- rsfiqa_core.imageio
@pytest.mark.parametrize("kind", badinputs.image_kinds(), ids=lambda k: k.kind)
def test_imageio_decodes_each_kind_upright_to_rgb_or_names_file_and_problem(kind, tmp_path):
    path = badinputs.write_file(tmp_path, kind.name, kind.data)
    if kind.outcome == "skip":
        with pytest.raises(ImageError) as err:
            load_rgb(path)
        assert str(err.value).startswith(f"{path}: ") and kind.reason in str(err.value)
        return
    rgb, data, info = load_rgb(path)
    assert data == kind.data, "the original bytes are returned unchanged"
    assert rgb.dtype == np.uint8 and rgb.shape == (*kind.upright_hw, 3)
    assert kind.check is None or kind.check(rgb), kind.kind
    assert info["frames"] == (3 if kind.kind == "animated_gif" else 1)


def test_max_pixels_is_the_guard_not_pillows_warning_threshold(monkeypatch):
    data = badinputs.jpeg()  # 56 x 40 = 2240 pixels
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; the warning must not refuse
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert decode_rgb(data, "a.jpg")[0].shape == (40, 56, 3)
    with pytest.raises(ImageError, match=r"^a\.jpg: 56x40 = 0 MP exceeds the limit of 0 MP \(decompression-bomb "
                                         r"guard\); downscale it first or raise max_pixels$"):
        decode_rgb(data, "a.jpg", max_pixels=2000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's hard ceiling (2 x 1000) stays in force
    with pytest.raises(ImageError, match=r"^a\.jpg: refused by Pillow's decompression-bomb guard"):
        decode_rgb(data, "a.jpg")


# --------------------------------------------------------------------------- annotation
@pytest.fixture(scope="module")
def corpus_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    badinputs.write_csv_dataset(root)
    return root


@pytest.fixture(scope="module")
def annotated(corpus_dataset, tmp_path_factory):
    """The corpus dataset annotated once with the offline annotator: (shard dir, summary)."""
    out = tmp_path_factory.mktemp("corpus-shards")
    torch.set_num_threads(1)
    return out, annotate("csv", corpus_dataset, out, load_config(None, OVERRIDES), progress=False)


def stored_samples(out: Path) -> dict[str, dict]:
    """Decoded samples of the completed shards by image name."""
    return {s["record"]["image"]: s for s in read_samples(out)}


def test_annotation_uses_or_skips_every_kind_with_its_reason(annotated):
    out, summary = annotated
    expected_written = sorted(["good_0.jpg", "good_1.jpg"] + [k.name for k in KINDS if k.outcome == "ok"])
    samples = stored_samples(out)
    assert sorted(samples) == expected_written and summary.written == len(expected_written)

    skipped = {}
    for s in summary.skipped:
        skipped.setdefault(s["item"], []).append(s)
    for k in KINDS:
        if k.outcome == "skip":
            item = badinputs.reported_item(k)
            assert item in skipped, f"{k.kind} ({item}) dropped silently"
            assert any(reason_matches(k.reason, s["reason"]) for s in skipped[item]), (k.kind, skipped[item])
    # the duplicate row: first kept (its MOS), the second reported
    assert samples["twice.jpg"]["record"]["mos"] == 65.0
    assert [s["reason"].split(" (")[0] for s in skipped["twice.jpg"]] == [DUPLICATE]
    # nothing else was skipped, nothing was both written and skipped
    assert set(skipped) == {"twice.jpg"} | {badinputs.reported_item(k) for k in KINDS if k.outcome == "skip"}
    load_skips = [s for s in summary.skipped if s["stage"] == "load"]
    assert summary.selected == len(expected_written) + len(load_skips)
    assert {s["item"] for s in load_skips} == {k.name for k in badinputs.image_kinds() if k.outcome == "skip"}


def test_annotation_records_how_odd_images_were_read(annotated):
    out, summary = annotated
    samples = stored_samples(out)
    for k in KINDS:
        if k.outcome != "ok":
            continue
        sample = samples[k.name]
        assert sample["image_bytes"] == k.data, "original bytes stored unchanged"
        assert sample["label_map"].shape == k.upright_hw, f"{k.kind}: label map at the upright resolution"
        assert len(sample["record"]["regions"]) == L
    assert samples["rotated.jpg"]["label_map"].shape == (56, 40)  # stored 56 wide, EXIF orientation 6
    assert samples["anim.gif"]["record"]["image_info"] == {"mode": "P", "frames": 3}
    assert samples["deep.png"]["record"]["image_info"]["mode"] == "I;16"
    assert summary.notes == [{"item": "anim.gif", "note": "animated image: first frame used"}]
    assert "note x1: animated image: first frame used" in summary.report()
    dot = samples["dot.png"]["record"]["regions"]  # 1x1: one region holds the pixel, the rest are empty
    assert dot[0]["valid"] and dot[0]["area"] == 1.0 and dot[0]["content"]
    assert [r["valid"] for r in dot[1:]] == [False] * (L - 1)
    assert all(r["missing_reason"] == "empty region" and r["text"] == "" for r in dot[1:])
    saved = json.loads((out / "summary-csv-p0of1.json").read_text())
    assert sum(saved["skipped_by_reason"].values()) == len(summary.skipped) == len(saved["skipped"])
    assert saved["notes"] == summary.notes


def test_annotate_command_reports_every_skip_reason_and_exits_zero(annotated, corpus_dataset, capsys):
    out, summary = annotated
    code = annotate_main(["--dataset", "csv", "--root", str(corpus_dataset), "--out", str(out), "--no-progress",
                          *OVERRIDES])
    report = capsys.readouterr().out
    assert code == 0
    for k in KINDS:
        if k.outcome == "skip":
            assert k.reason in report, k.kind
    # a rerun writes nothing new, and reports the unusable inputs again (nothing is forgotten)
    assert f"already done {summary.written}, written 0" in report


# --------------------------------------------------------------------------- training data
def test_training_data_decodes_every_stored_original_to_rgb(annotated):
    out, summary = annotated
    for name, sample in stored_samples(out).items():
        rgb, _ = decode_rgb(sample["image_bytes"], name)
        assert rgb.shape == (*sample["label_map"].shape, 3)
        kind = next((k for k in KINDS if k.name == name), None)
        assert kind is None or kind.check is None or kind.check(rgb), name
    dm = ShardDataModule(train_shards=str(out), image_size=32, batch_size=4, hflip=False)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    names = [n for b in batches for n in b["image_name"]]
    assert sorted(names) == sorted(stored_samples(out))
    images = torch.cat([b["image"] for b in batches])
    assert images.shape == (summary.written, 3, 32, 32) and torch.isfinite(images).all()
    valid = torch.cat([b["region_valid"] for b in batches])
    dot = names.index("dot.png")
    assert valid[dot].tolist() == [True] + [False] * (L - 1)


# --------------------------------------------------------------------------- rsfiqa score
@pytest.fixture(scope="module")
def corpus_checkpoint(annotated, tmp_path_factory, tiny_model_args) -> Path:
    """last.ckpt of a 1-epoch fit of the tiny model on the annotated corpus (its index records the
    offline annotator, which scoring rebuilds)."""
    out, _ = annotated
    workdir = tmp_path_factory.mktemp("corpus-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["rsfiqa"])
        cli.main(["fit", "--data.train_shards", str(out), "--data.image_size", "32", "--data.batch_size", "4",
                  *tiny_model_args, "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
                  "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    return workdir / "runs" / "rsfiqa" / "version_0" / "checkpoints" / "last.ckpt"


def run_score(folder: Path, checkpoint: Path, out: Path, capsys) -> tuple[int, dict[str, dict], str]:
    """``rsfiqa score FOLDER --ckpt CKPT --out OUT``: (exit status, rows by file name, stderr)."""
    code = cli.main(["score", str(folder), "--ckpt", str(checkpoint), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as f:
        rows = {r["image"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    return code, rows, err


@pytest.mark.slow
def test_score_scores_the_usable_kinds_and_names_each_failure(corpus_checkpoint, tmp_path, capsys):
    kinds = badinputs.image_kinds()
    badinputs.write_images(tmp_path / "photos", kinds)
    code, rows, err = run_score(tmp_path / "photos", corpus_checkpoint, tmp_path / "scores.csv", capsys)
    assert code == 2, "exit status 2: some inputs could not be scored, the others were written"
    assert sorted(rows) == sorted(k.name for k in kinds if k.outcome == "ok")
    for k in kinds:
        if k.outcome == "skip":
            lines = [ln for ln in err.splitlines() if ln.startswith("rsfiqa score: error: ") and k.name in ln]
            assert len(lines) == 1 and k.reason in lines[0], (k.kind, err)
        else:
            assert np.isfinite(float(rows[k.name]["score"])), k.kind
            regions = json.loads(rows[k.name]["regions"])
            assert len(regions) == L and any(r["valid"] for r in regions), k.kind


@pytest.mark.slow
def test_score_survives_a_non_utf8_file_name(corpus_checkpoint, tmp_path, capsys):
    kind = BY_KIND["non_utf8_name"]
    badinputs.write_images(tmp_path / "photos", [kind, BY_KIND["grayscale"]])
    code, rows, _ = run_score(tmp_path / "photos", corpus_checkpoint, tmp_path / "scores.csv", capsys)
    assert code == 0 and sorted(rows) == sorted([printable(kind.name), "gray.png"])
