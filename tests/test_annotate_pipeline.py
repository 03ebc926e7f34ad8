"""Annotation pipeline end to end on a tiny real-photo csv dataset (classical segmenter + measures).

The dataset is 14 CLIVE photos from ../shared/data/clive-dev, downscaled to 96 px so the whole
file runs in seconds.
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from annotate.cli import main as cli_main
from annotate.config import ConfigError, load_config
from annotate.pipeline import Summary, annotate, count_missing, order_samples, parse_part, select_part
from annotate.types import Sample
from annotate.writer import SettingsMismatch, completed_shards
from rsfiqa_core.contract import DIMENSIONS, decode_sample, read_index, sample_key

pytestmark = pytest.mark.shared  # reads ../shared

CLIVE_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clive-dev"
N_IMAGES = 14
L = 5
TEST_OVERRIDES = ["shards.maxcount=4", "batch_size=4", "dataset.mos_range=[0,100]"]


def make_tiny_dataset(root: Path, n: int, long_side: int = 96) -> dict[str, float]:
    """``n`` CLIVE JPEGs downscaled into ``root/images`` + ``root/labels.csv``; returns name -> MOS."""
    rows = [line.split(",") for line in (CLIVE_DEV / "labels.csv").read_text().splitlines()[1:]]
    chosen = sorted((r for r in rows if r[0].lower().endswith(".jpg")), key=lambda r: r[0])[:n]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, *_ in chosen:
        img = Image.open(CLIVE_DEV / "images" / name)
        img.thumbnail((long_side, long_side))
        img.save(root / "images" / name, quality=90)
    labels = {r[0]: float(r[2]) for r in chosen}
    write_labels(root, labels)
    return labels


def write_labels(root: Path, labels: dict[str, float]) -> None:
    (root / "labels.csv").write_text("image,mos\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))


def config(*extra: str):
    return load_config(None, [*TEST_OVERRIDES, *extra])


def read_samples(out: Path) -> list[dict]:
    """Every sample of the completed shards, decoded through webdataset + the contract."""
    urls = [str(p) for p in completed_shards(out)]
    return [decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in completed_shards(out)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    root = tmp_path_factory.mktemp("tiny-clive")
    return root, make_tiny_dataset(root, N_IMAGES)


@pytest.fixture(scope="module")
def annotated(dataset, tmp_path_factory):
    """One complete run (reused read-only by several tests)."""
    root, _ = dataset
    out = tmp_path_factory.mktemp("shards")
    return out, annotate("CSV", root, out, config(), progress=False)


def test_pipeline_writes_every_sample_with_l_regions(dataset, annotated):
    root, labels = dataset
    out, summary = annotated
    assert summary.written == N_IMAGES and summary.skipped == [] and summary.already_done == 0
    samples = read_samples(out)
    assert sorted(s["record"]["image"] for s in samples) == sorted(labels)
    for s in samples:
        rec = s["record"]
        assert s["key"] == sample_key("csv", rec["image"])
        assert s["image_bytes"] == (root / "images" / rec["image"]).read_bytes()  # original bytes unchanged
        h, w = np.asarray(Image.open(root / "images" / rec["image"])).shape[:2]
        assert s["label_map"].shape == (h, w) and s["label_map"].max() < L
        assert rec["mos"] == pytest.approx(labels[rec["image"]])
        assert rec["mos_norm"] == pytest.approx(labels[rec["image"]] / 100)
        assert len(rec["regions"]) == L
        for r in rec["regions"]:
            if r["valid"]:
                assert r["content"] and set(r["levels"]) == set(DIMENSIONS)
                assert all(d in r["text"] for d in DIMENSIONS) and r["content"].split()[0] in r["text"]
            else:
                assert r["text"] == "" and r["missing_reason"]
        assert rec["annotator"]["segmenter"]["name"] == "classical"
        assert rec["annotator"]["describer"]["name"] == "measures"
        assert rec["annotator"]["versions"]["contract"] == 1
    index = read_index(out)
    assert index["count"] == N_IMAGES and len(index["shards"]) == 4  # maxcount 4: 4+4+4+2
    assert not list(out.glob("*.tmp"))
    saved = json.loads((out / "summary-csv-p0of1.json").read_text())
    assert saved["written"] == N_IMAGES and set(saved["images_per_second"]) == {"load", "segment", "describe", "write"}
    assert all(v > 0 for v in saved["images_per_second"].values())


def test_rerun_writes_nothing(dataset, annotated):
    root, _ = dataset
    out, _ = annotated
    before = tar_bytes(out)
    summary = annotate("csv", root, out, config(), progress=False)
    assert (summary.written, summary.already_done, summary.shards_written) == (0, N_IMAGES, [])
    assert tar_bytes(out) == before and read_index(out)["count"] == N_IMAGES


def test_changed_settings_are_refused(dataset, annotated, tmp_path, capsys):
    root, _ = dataset
    out = tmp_path / "copy"
    shutil.copytree(annotated[0], out)
    with pytest.raises(SettingsMismatch, match=r"segmenter\.num_candidates: 12 -> 8.*--force-new"):
        annotate("csv", root, out, config("segmenter.num_candidates=8"), progress=False)
    # the CLI reports it in one line with a non-zero exit status, and leaves the shards alone
    code = cli_main(["--dataset", "csv", "--root", str(root), "--out", str(out), "--no-progress",
                     *TEST_OVERRIDES, "num_regions=4"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("annotate: error:") and "num_regions: 5 -> 4" in err
    assert read_index(out)["count"] == N_IMAGES
    summary = annotate("csv", root, out, config("num_regions=4"), force_new=True, progress=False)
    assert summary.written == N_IMAGES
    assert {len(s["record"]["regions"]) for s in read_samples(out)} == {4}


def test_two_parts_fill_one_directory(dataset, annotated, tmp_path):
    root, labels = dataset
    out = tmp_path / "parts"
    first = annotate("csv", root, out, config(), part=(0, 2), progress=False)
    index_after_first = read_index(out)
    second = annotate("csv", root, out, config(), part=(1, 2), progress=False)
    assert (first.written, second.written) == (7, 7)
    assert index_after_first["count"] == 7
    keys = [s["key"] for s in read_samples(out)]
    assert len(keys) == len(set(keys)) == N_IMAGES
    assert set(keys) == {sample_key("csv", name) for name in labels}
    index = read_index(out)
    assert index["count"] == N_IMAGES
    assert {n.split("-")[1] for n in index["shards"]} == {"p0of2", "p1of2"}
    assert sum(index["shard_counts"].values()) == N_IMAGES
    # a later run as a single part finds everything done
    assert annotate("csv", root, out, config(), progress=False).written == 0


def test_bad_images_are_skipped_with_reasons(dataset, tmp_path):
    root, labels = dataset
    bad_root = tmp_path / "bad"
    shutil.copytree(root, bad_root)
    good = sorted(labels)[:3]
    for name in sorted(labels)[3:]:
        (bad_root / "images" / name).unlink()
    images = bad_root / "images"
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes((images / good[0]).read_bytes()[:300])
    (images / "text.jpg").write_text("this is not an image\n")
    write_labels(bad_root, {**{g: labels[g] for g in good}, "empty.jpg": 50.0, "truncated.jpg": 40.0, "text.jpg": 30.0})
    out = tmp_path / "out"
    summary = annotate("csv", bad_root, out, config(), progress=False)
    assert summary.written == 3
    reasons = {s["item"]: s["reason"] for s in summary.skipped}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "text.jpg"}
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["truncated.jpg"].startswith("broken image data")
    assert reasons["text.jpg"].startswith("not a readable image")
    saved = json.loads((out / "summary-csv-p0of1.json").read_text())
    assert sum(saved["skipped_by_reason"].values()) == 3 and len(saved["skipped"]) == 3
    assert sorted(s["record"]["image"] for s in read_samples(out)) == good


def test_same_input_gives_byte_identical_shards(dataset, annotated, tmp_path):
    root, _ = dataset
    annotate("csv", root, tmp_path / "again", config(), progress=False)
    first, second = tar_bytes(annotated[0]), tar_bytes(tmp_path / "again")
    assert list(first) == list(second) and first == second
    with tarfile.open(completed_shards(tmp_path / "again")[0]) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar} == {(0, 0, 0, "rsfiqa")}


def test_downscaled_annotation_keeps_original_bytes_and_resolution(dataset, tmp_path):
    root, labels = dataset
    summary = annotate("csv", root, tmp_path, config("image.downscale_long_side=40"), limit=3, progress=False)
    assert summary.written == 3
    samples = read_samples(tmp_path)
    assert [s["record"]["image"] for s in samples] == sorted(labels, key=lambda n: sample_key("csv", n))[:3]
    for s in samples:
        original = root / "images" / s["record"]["image"]
        assert s["image_bytes"] == original.read_bytes()
        assert s["label_map"].shape == np.asarray(Image.open(original)).shape[:2]
        assert s["record"]["annotator"]["image"]["downscale_long_side"] == 40


def test_part_selection_and_order():
    samples = [Sample("csv", f"{c}.jpg", Path(f"{c}.jpg"), 1.0, (0, 5), True) for c in "dbcaeb"]
    ordered, dups = order_samples(samples)
    assert [k for k, _ in ordered] == sorted({sample_key("csv", f"{c}.jpg") for c in "abcde"})
    assert [d.item for d in dups] == ["b.jpg"]
    parts = [select_part(ordered, (i, 3)) for i in range(3)]
    assert sorted(k for p in parts for k, _ in p) == [k for k, _ in ordered]
    assert select_part(ordered, (1, 2), limit=3) == [ordered[1]]
    assert parse_part("2/4") == (2, 4)
    for bad in ("4/4", "x", "1"):
        with pytest.raises(ConfigError):
            parse_part(bad)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"segmenter\.checkpoint"):
        load_config("configs/annotate/paper.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["batchsize=3"])
    with pytest.raises(ConfigError, match="contradicts"):
        load_config(None, ["segmenter.num_regions=3"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    cfg = load_config("configs/annotate/paper.yaml", ["segmenter.checkpoint=/models/sam_vit_h_4b8939.pth"])
    assert (cfg.segmenter.name, cfg.segmenter.model_type, cfg.describer.name) == ("sam", "vit_h", "vllm")


def test_cli_reports_expected_errors_in_one_line(tmp_path, capsys):
    assert cli_main(["--dataset", "nosuch", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown dataset 'nosuch'" in err
    assert cli_main(["--dataset", "csv", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "label file not found" in err and "Traceback" not in err
    code = cli_main(["--dataset", "csv", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--config", "configs/annotate/paper.yaml"])
    assert code == 1 and "segmenter.checkpoint" in capsys.readouterr().err


def test_summary_counts_region_score_sources_and_samples_that_mix_them():
    summary = Summary(dataset="x", part="1of1", out="out")
    count_missing([{"score_source": {"blur": "qalign", "noise": None}}, {"missing_reason": "empty region"}], summary)
    count_missing([{"score_source": {"blur": "qalign"}}, {"score_source": {"blur": "parsed"}}], summary)
    assert summary.score_sources == {"qalign": 2, "None": 1, "parsed": 1} and summary.mixed_score_samples == 1
    assert "region scores by source: qalign x2, None x1, parsed x1; samples mixing sources: 1" in summary.report()
