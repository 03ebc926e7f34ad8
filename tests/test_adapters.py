"""Dataset adapters on the real label files (../shared/data/labels) with placeholder images, and on
small fixtures in the official formats where no real file exists (KADID-10k, CLIVE, LIVE's .mat)."""
from __future__ import annotations

import csv
import json
import math
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from annotate.datasets import ADAPTERS, DatasetError, get_adapter
from annotate.datasets.base import DUPLICATE, INVALID_MOS, MALFORMED, MISSING_IMAGE, NO_LABEL, NOT_UTF8, REFERENCE, TRAINING
from annotate.datasets.csiq import FILE_TOKEN, parse_image_name
from annotate.datasets.live import BLOCKS, live_image_names
from annotate.datasets.splits import seeded_splits
from rsfiqa_core.contract import make_record, normalise_mos
from tests.fixtures_datasets import CLIVE_DEV, LABELS, categories, place, touch, touch_bytes_name, write

pytestmark = pytest.mark.shared  # reads ../shared

KONIQ_SETS = LABELS / "KonIQ-10k" / "koniq10k_distributions_sets.csv"
SPAQ_XLSX = LABELS / "SPAQ" / "MOS and Image attribute scores.xlsx"
SPAQ_CSV = LABELS / "SPAQ" / "MOS and Image attribute scores.csv"
SEED_TAGS = {f"seed{k}" for k in range(10)}


def assert_partitioned_by(samples, group_of) -> None:
    """No group (reference id or image) has members in two parts of any split tag."""
    for tag in samples[0].splits:
        parts: dict[str, set[str]] = {}
        for s in samples:
            parts.setdefault(group_of(s), set()).add(s.splits[tag])
        assert all(len(p) == 1 for p in parts.values()), tag


def assert_records_valid(samples) -> None:
    """Samples become contract records the way the pipeline builds them (extra as record keys)."""
    for s in samples[:50]:
        record = make_record(dataset=s.dataset, image=s.image_name, mos=s.mos, mos_range=s.mos_range,
                             higher_better=s.higher_better, ref=s.ref, splits=s.splits, regions=[], annotator={},
                             **s.extra)
        assert 0 <= record["mos_norm"] <= 1
        json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")


# --------------------------------------------------------------------------- registry
def test_registry_has_the_eight_datasets_and_names_are_case_insensitive():
    assert set(ADAPTERS) == {"koniq", "kadid", "live", "csiq", "tid2013", "clive", "spaq", "csv"}
    for name in ("konIQ", "KADID", "Live", "CSIQ", "TID2013", "ClIvE", "SPAQ", "CSV"):
        adapter = get_adapter(name)
        assert adapter.name == name.lower()
        assert isinstance(adapter.layout, str) and adapter.layout


def test_unknown_dataset_and_unknown_option_are_clear_errors():
    with pytest.raises(KeyError) as err:
        get_adapter("imagenet")
    assert all(n in str(err.value) for n in ADAPTERS)
    with pytest.raises(TypeError, match="mos_scale"):
        get_adapter("koniq", mos_sclae="acr")
    with pytest.raises(ValueError, match="zscore"):
        get_adapter("koniq", mos_scale="percent")


# --------------------------------------------------------------------------- seeded splits
def test_seeded_splits_proportions_by_group():
    groups = [f"ref{i:03d}" for i in range(100) for _ in range(3)]
    splits = seeded_splits(groups)
    assert set(splits[0]) == SEED_TAGS
    for tag in SEED_TAGS:
        per_group = {g: s[tag] for g, s in zip(groups, splits)}
        assert Counter(per_group.values()) == {"train": 70, "val": 10, "test": 20}
        assert Counter(s[tag] for s in splits) == {"train": 210, "val": 30, "test": 60}
    assert len({tuple(sorted(g for g, s in zip(groups, splits) if s[t] == "test")) for t in SEED_TAGS}) == 10


def test_seeded_splits_keep_groups_whole_and_are_deterministic_and_order_independent():
    groups = [f"i{i % 25:02d}" for i in range(500)]
    first = seeded_splits(groups)
    assert first == seeded_splits(groups)
    for tag in SEED_TAGS:
        assert all(len({s[tag] for g2, s in zip(groups, first) if g2 == g}) == 1 for g in set(groups))
    shuffled = groups[:]
    random.Random(1).shuffle(shuffled)
    by_group = {g: s for g, s in zip(groups, first)}
    assert all(by_group[g] == s for g, s in zip(shuffled, seeded_splits(shuffled)))
    # a tag names one partition whatever the base seed it was generated with
    later = seeded_splits(groups, n_splits=2, seed=3)
    assert [s["seed3"] for s in later] == [s["seed3"] for s in first]
    assert set(later[0]) == {"seed3", "seed4"}
    with pytest.raises(ValueError):
        seeded_splits(groups, test_frac=0.7, val_frac=0.4)


# --------------------------------------------------------------------------- KonIQ-10k
def test_koniq_real_sets_file_reads_official_split_and_both_scales(tmp_path):
    place(tmp_path, KONIQ_SETS.name, KONIQ_SETS)
    rows, skipped = get_adapter("koniq").read_labels(tmp_path)
    assert len(rows) == 10_073 and not skipped
    assert Counter(r.splits["official"] for r in rows) == {"train": 7058, "val": 1000, "test": 2015}
    zscore = np.array([r.mos for r in rows])
    assert zscore.min() == pytest.approx(3.91, abs=0.01) and zscore.max() == pytest.approx(88.39, abs=0.01)
    with open(KONIQ_SETS, newline="") as f:
        first = next(csv.DictReader(f))
    assert rows[0].extra["mos_acr"] == pytest.approx(sum(i * float(first[f"c{i}"]) for i in range(1, 6)))
    acr_rows, _ = get_adapter("koniq", mos_scale="acr").read_labels(tmp_path)
    acr = np.array([r.mos for r in acr_rows])
    assert 1 <= acr.min() and acr.max() <= 5
    assert np.corrcoef(acr, zscore)[0, 1] > 0.95


def test_koniq_real_sets_file_with_a_few_placeholder_images(tmp_path):
    place(tmp_path, KONIQ_SETS.name, KONIQ_SETS)
    with open(KONIQ_SETS, newline="") as f:
        names = [r["image_name"] for r in csv.DictReader(f)]
    touch(tmp_path, [f"1024x768/{n}" for n in names[:40]])
    samples, skipped = get_adapter("KonIQ").load(tmp_path)
    assert [s.image_name for s in samples] == names[:40]
    assert categories(skipped) == {MISSING_IMAGE: 10_073 - 40}
    s = samples[0]
    assert s.dataset == "koniq" and s.mos_range == (0.0, 100.0) and s.higher_better and s.ref is None
    assert set(s.splits) == SEED_TAGS | {"official"}
    assert s.image_path == tmp_path / "1024x768" / names[0]
    assert_records_valid(samples)
    samples_small, _ = get_adapter("koniq", resolution="512x384").load(tmp_path)
    assert samples_small == []


def test_koniq_official_scores_file_joined_with_sets_file(tmp_path):
    write(tmp_path, "koniq10k_scores_and_distributions.csv",
          "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore\n"
          "a.jpg,0,2,10,80,8,100,3.94,0.55,75.1\n"
          "b.jpg,5,20,50,20,5,100,3.00,0.90,48.2\n"
          "c.jpg,0,0,0,0,100,100,5.00,0.00,99.9\n")
    write(tmp_path, "koniq10k_distributions_sets.csv",
          "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n"
          "a.jpg,0,0.02,0.1,0.8,0.08,100,75.1,0.55,training\n"
          "b.jpg,0.05,0.2,0.5,0.2,0.05,100,48.2,0.9,test\n"
          "c.jpg,0,0,0,0,1,100,99.9,0,holdout\n")
    touch(tmp_path, ["1024x768/a.jpg", "1024x768/b.jpg", "1024x768/c.jpg"])
    samples, skipped = get_adapter("koniq", mos_scale="acr").load(tmp_path)
    assert [(s.image_name, s.mos, s.splits["official"]) for s in samples] == [("a.jpg", 3.94, "train"),
                                                                           ("b.jpg", 3.0, "test")]
    assert samples[0].extra["mos_zscore"] == 75.1 and samples[0].mos_range == (1.0, 5.0)
    assert [(s.item, s.reason.split(" (")[0]) for s in skipped] == [
        ("koniq10k_scores_and_distributions.csv:4", MALFORMED), ("1024x768/c.jpg", NO_LABEL)]


# --------------------------------------------------------------------------- KADID-10k (fixture: no real file)
KADID_ROWS = """dist_img,ref_img,dmos,var
I01_01_01.png,I01.png,4.57,0.496
I01_01_02.png,I01.png,4.33,0.869
I02_01_01.png,I02.png,3.10,0.5
I02_01_02.png,I02.png,2.95,0.6
I03_01_01.png,I03.png,1.20,0.2
I03_01_02.png,I03.png,nan,0.2
I03_01_03.png,I03.png,-1.5,0.2
I03_01_04.png,I03.png,7.25,0.2
I01_01_01.png,I01.png,4.00,0.4
I04_01_01.png,I04.png,four,0.3
I04_01_02.png,I04.png
I04_01_03.png,I04.png,3.3,0.3
"""


def test_kadid_fixture_in_the_official_format_records_every_bad_row(tmp_path):
    write(tmp_path, "dmos.csv", KADID_ROWS)
    listed = {line.split(",")[0] for line in KADID_ROWS.splitlines()[1:]}
    touch(tmp_path, [f"images/{n}" for n in sorted(listed - {"I04_01_03.png"})])
    touch(tmp_path, ["images/I01.png", "images/I02.png", "images/I03.png", "images/I99_01_01.png"])
    samples, skipped = get_adapter("kadid").load(tmp_path)
    assert [s.image_name for s in samples] == ["I01_01_01.png", "I01_01_02.png", "I02_01_01.png",
                                               "I02_01_02.png", "I03_01_01.png"]
    assert samples[0].mos == 4.57 and samples[0].extra["var"] == 0.496 and samples[0].ref == "I01"
    assert samples[0].mos_range == (1.0, 5.0) and samples[0].higher_better
    reasons = {s.item: s.reason for s in skipped}
    assert reasons["I03_01_02.png"].startswith(INVALID_MOS) and "finite" in reasons["I03_01_02.png"]
    assert reasons["I03_01_03.png"].startswith(INVALID_MOS) and "negative" in reasons["I03_01_03.png"]
    assert reasons["I03_01_04.png"].startswith(INVALID_MOS) and "outside" in reasons["I03_01_04.png"]
    assert reasons["I04_01_03.png"].startswith(MISSING_IMAGE)
    assert reasons["images/I99_01_01.png"].startswith(NO_LABEL)  # references in images/ are not reported
    # the images of the two malformed rows are on disk without a usable label: reported as well
    assert {k for k, v in reasons.items() if v.startswith(NO_LABEL)} == {"images/I99_01_01.png", "images/I04_01_01.png",
                                                                          "images/I04_01_02.png"}
    assert categories(skipped) == {INVALID_MOS: 3, DUPLICATE: 1, MALFORMED: 2, MISSING_IMAGE: 1, NO_LABEL: 3}
    assert_records_valid(samples)
    assert_partitioned_by(samples, lambda s: s.ref)


# --------------------------------------------------------------------------- LIVE release 2
def write_info_files(root: Path, n_refs: int = 29) -> dict[str, str]:
    """Per-folder info.txt ('<refname> <imgname> <param>'), lines shuffled; returns name -> ref."""
    refs = {}
    for folder, n in BLOCKS:
        lines = []
        for j in range(1, n + 1):
            ref = f"ref{(j * 7 + len(folder)) % n_refs:02d}"
            refs[f"{folder}/img{j}.bmp"] = ref
            lines.append(f"{ref}.bmp img{j}.bmp {0.1 * j:.3f}")
        random.Random(folder).shuffle(lines)
        write(root, f"{folder}/info.txt", "\n".join(lines) + "\n")
    return refs


def test_live_real_scores_file_with_info_txt_reference_names(tmp_path):
    place(tmp_path, "live_iqa_scores.mat", LABELS / "LIVE" / "live_iqa_scores.mat")
    touch(tmp_path, live_image_names())
    refs = write_info_files(tmp_path)
    samples, skipped = get_adapter("live").load(tmp_path)
    assert len(samples) == 779 and categories(skipped) == {REFERENCE: 203}
    assert Counter(s.extra["distortion"] for s in samples) == {"jp2k": 169, "jpeg": 175, "wn": 145, "gblur": 145,
                                                               "fastfading": 145}
    dmos = np.array([s.mos for s in samples])
    assert dmos.min() == pytest.approx(17.90, abs=0.01) and dmos.max() == pytest.approx(84.49, abs=0.01)
    assert all(s.ref == refs[s.image_name] for s in samples)
    assert_records_valid(samples)
    s = samples[0]
    assert not s.higher_better and s.mos_range == (0.0, 100.0) and s.extra["dmos_kind"] == "original"
    assert 0 <= normalise_mos(s.mos, s.mos_range, s.higher_better) <= 1
    assert_partitioned_by(samples, lambda s: s.ref)


def test_live_official_realigned_mat_with_refnames(tmp_path):
    names = live_image_names()
    rng = np.random.default_rng(0)
    orgs = (np.arange(len(names)) % 5 == 0).astype(np.uint8)[None]
    dmos_new = np.where(orgs == 1, 0.0, rng.uniform(10, 90, (1, len(names))))
    scipy.io.savemat(tmp_path / "dmos_realigned.mat", {"dmos_new": dmos_new, "dmos_std": np.full((1, len(names)), 5.0),
                                                       "orgs": orgs})
    refnames = np.empty((1, len(names)), dtype=object)
    refnames[0, :] = [f"scene{i % 29}.bmp" for i in range(len(names))]
    scipy.io.savemat(tmp_path / "refnames_all.mat", {"refnames_all": refnames})
    touch(tmp_path, names)
    samples, skipped = get_adapter("live").load(tmp_path)
    assert len(samples) == len(names) - int(orgs.sum()) and categories(skipped) == {REFERENCE: int(orgs.sum())}
    assert samples[0].image_name == "jp2k/img2.bmp" and samples[0].ref == "scene1"
    assert samples[0].mos == pytest.approx(dmos_new[0, 1])
    assert samples[0].extra["dmos_kind"] == "realigned" and samples[0].extra["dmos_std"] == 5.0
    assert_records_valid(samples)


def test_live_layout_errors_name_the_files(tmp_path):
    place(tmp_path, "live_iqa_scores.mat", LABELS / "LIVE" / "live_iqa_scores.mat")
    with pytest.raises(DatasetError, match=r"refnames_all\.mat.*info\.txt"):
        get_adapter("live").load(tmp_path)
    scipy.io.savemat(tmp_path / "dmos_realigned.mat", {"dmos_new": np.zeros((1, 982)), "orgs": np.zeros((1, 779))})
    with pytest.raises(DatasetError, match="779 entries, expected 982"):
        get_adapter("live").load(tmp_path)


# --------------------------------------------------------------------------- CSIQ
def csiq_placeholders(root: Path) -> list[str]:
    """Placeholder files for the 866 names of csiq_label.txt in the release's dst_imgs/<type>/ folders.

    The jpeg2000 files are written lower-case and the AWGN folder upper-case, to exercise the
    case-insensitive (ref, type, level) matching."""
    names = [line.split()[0] for line in (LABELS / "CSIQ" / "csiq_label.txt").read_text().splitlines() if line.strip()]
    rels = []
    for name in names:
        _, dist, _ = parse_image_name(name)
        folder = "AWGN" if dist == "awgn" else dist
        rels.append(f"dst_imgs/{folder}/{name.lower() if dist == 'jpeg2000' else name}")
    touch(root, rels)
    return names


@pytest.mark.parametrize("label_file, source", [("csiq.beta.xlsx", "csiq.beta.xlsx"),
                                                ("csiq_label.txt", "csiq_label.txt")])
def test_csiq_real_label_files(tmp_path, label_file, source):
    place(tmp_path, label_file, LABELS / "CSIQ" / source)
    names = csiq_placeholders(tmp_path)
    touch(tmp_path, ["dst_imgs/blur/notes.png"])
    samples, skipped = get_adapter("csiq").load(tmp_path)
    assert len(samples) == 866 and sorted(s.image_name for s in samples) == sorted(names)
    assert [(s.item, s.reason.split(" (")[0]) for s in skipped] == [("dst_imgs/blur/notes.png", NO_LABEL)]
    assert len({s.ref for s in samples}) == 30
    assert_records_valid(samples)
    assert Counter(s.extra["distortion"] for s in samples) == {"awgn": 150, "jpeg": 150, "jpeg2000": 150,
                                                               "fnoise": 150, "blur": 150, "contrast": 116}
    dmos = np.array([s.mos for s in samples])
    assert 0 <= dmos.min() and dmos.max() <= 1 and dmos.mean() == pytest.approx(0.351, abs=0.001)
    assert not samples[0].higher_better and samples[0].ref == samples[0].image_name.split(".")[0]
    assert_partitioned_by(samples, lambda s: s.ref)


def test_csiq_spreadsheet_and_text_agree(tmp_path):
    place(tmp_path, "csiq.beta.xlsx", LABELS / "CSIQ" / "csiq.beta.xlsx")
    place(tmp_path, "csiq_label.txt", LABELS / "CSIQ" / "csiq_label.txt")
    csiq_placeholders(tmp_path)
    from_xlsx = {s.image_name: s for s in get_adapter("csiq").load(tmp_path)[0]}
    from_txt = {s.image_name: s for s in get_adapter("csiq", label_file="csiq_label.txt").load(tmp_path)[0]}
    assert from_xlsx.keys() == from_txt.keys()
    assert max(abs(from_xlsx[k].mos - from_txt[k].mos) for k in from_txt) < 1e-6
    assert all(from_xlsx[k].splits == from_txt[k].splits for k in from_txt)
    assert "dmos_std" in next(iter(from_xlsx.values())).extra
    assert set(FILE_TOKEN) == {parse_image_name(k)[1] for k in from_txt}


# --------------------------------------------------------------------------- TID2013
def test_tid2013_real_file_matches_names_case_insensitively(tmp_path):
    for name in ("mos_with_names.txt", "mos_std.txt"):
        place(tmp_path, name, LABELS / "TID2013" / name)
    listed = [line.split()[1] for line in (LABELS / "TID2013" / "mos_with_names.txt").read_text().splitlines()]
    assert sum(n != n.lower() for n in listed) == 75
    touch(tmp_path, [f"distorted_images/{n.lower()}" for n in listed])
    samples, skipped = get_adapter("tid2013").load(tmp_path)
    assert len(samples) == 3000 and skipped == []
    assert samples[0].image_name == "I01_01_1.bmp" and samples[0].image_path.name == "i01_01_1.bmp"
    assert len({s.ref for s in samples}) == 25 and samples[0].ref == "i01"
    assert_records_valid(samples)
    mos = np.array([s.mos for s in samples])
    assert mos.min() == pytest.approx(0.24242) and mos.max() == pytest.approx(7.21429)
    assert max(s.extra["mos_std"] for s in samples) == pytest.approx(0.29978)
    assert samples[0].mos_range == (0.0, 9.0) and samples[0].higher_better
    assert_partitioned_by(samples, lambda s: s.ref)


def test_tid2013_duplicates_differ_only_in_case_and_bad_lines(tmp_path):
    lines = ["5.1 I01_01_1.bmp", "4.2 i01_01_1.BMP", "3.3", "2.0 x.bmp", "9.5 i02_01_1.bmp"]
    write(tmp_path, "mos_with_names.txt", "\r\n".join(lines) + "\r\n")
    touch(tmp_path, ["distorted_images/i01_01_1.bmp", "distorted_images/i02_01_1.bmp"])
    samples, skipped = get_adapter("tid2013").load(tmp_path)
    assert [s.image_name for s in samples] == ["I01_01_1.bmp"]
    assert categories(skipped) == {DUPLICATE: 1, MALFORMED: 2, INVALID_MOS: 1}


# --------------------------------------------------------------------------- CLIVE (fixture: .mat files)
def test_clive_fixture_mat_files_exclude_training_images(tmp_path):
    with open(CLIVE_DEV / "labels.csv", newline="") as f:
        dev = list(csv.DictReader(f))[:20]
    names = [f"t{i}.bmp" for i in range(1, 8)] + [r["original_name"] for r in dev]
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    mos = [50.0] * 7 + [float(r["mos"]) for r in dev]
    std = [10.0] * 7 + [float(r["mos_std"]) for r in dev]
    (tmp_path / "Data").mkdir()
    scipy.io.savemat(tmp_path / "Data/AllImages_release.mat", {"AllImages_release": cell})
    scipy.io.savemat(tmp_path / "Data/AllMOS_release.mat", {"AllMOS_release": np.array([mos])})
    scipy.io.savemat(tmp_path / "Data/AllStdDev_release.mat", {"AllStdDev_release": np.array([std])})
    touch(tmp_path, [f"Images/{n}" for n in names[7:]] + [f"Images/trainingImages/{n}" for n in names[:7]])
    samples, skipped = get_adapter("clive").load(tmp_path)
    assert [s.image_name for s in samples] == names[7:]
    assert categories(skipped) == {TRAINING: 7} and [s.item for s in skipped] == names[:7]
    assert [s.mos for s in samples] == mos[7:] and samples[3].extra["mos_std"] == std[10]
    assert_records_valid(samples)
    assert samples[0].mos_range == (0.0, 100.0) and set(samples[0].splits) == SEED_TAGS


# --------------------------------------------------------------------------- SPAQ
@pytest.mark.parametrize("source", [SPAQ_XLSX, SPAQ_CSV])
def test_spaq_real_annotation_file_with_a_few_placeholder_images(tmp_path, source):
    place(tmp_path, f"Annotations/{source.name}", source)
    touch(tmp_path, [f"TestImage/{i:05d}.jpg" for i in range(1, 21)])
    samples, skipped = get_adapter("spaq").load(tmp_path)
    assert [s.image_name for s in samples] == [f"{i:05d}.jpg" for i in range(1, 21)]
    assert categories(skipped) == {MISSING_IMAGE: 11_125 - 20}
    first = samples[0]
    assert first.mos == 48.86 and first.extra == {"brightness": 47.43, "colorfulness": 55.57, "contrast": 55.71,
                                                  "noisiness": 37.86, "sharpness": 42.57}
    assert first.mos_range == (0.0, 100.0) and first.higher_better
    assert_records_valid(samples)


# --------------------------------------------------------------------------- generic CSV folder
def test_csv_adapter_on_real_clive_dev():
    samples, skipped = get_adapter("csv").load(CLIVE_DEV)
    assert len(samples) == 930 and skipped == []
    mos = [s.mos for s in samples]
    assert samples[0].mos_range == (min(mos), max(mos)) and samples[0].extra["mos_range_source"] == "observed min/max"
    assert all(s.image_path.is_file() and s.image_path.parent.name == "images" for s in samples)
    assert isinstance(samples[0].extra["mos_std"], float) and "original_name" in samples[0].extra
    assert_records_valid(samples)
    norm = [normalise_mos(s.mos, s.mos_range, s.higher_better) for s in samples]
    assert min(norm) == 0.0 and max(norm) == 1.0
    assert_partitioned_by(samples, lambda s: s.image_name)
    from_bytes_root, _ = get_adapter("csv").load(os.fsencode(CLIVE_DEV))
    assert [s.image_name for s in from_bytes_root] == [s.image_name for s in samples]


def test_csv_adapter_records_every_kind_of_bad_input(tmp_path):
    label = ("image,mos,ref\n"
             "a.jpg,10,r1\nb.jpg,20,r1\nc.jpg,30,r2\nd.jpg,40,r2\n"
             "missing.jpg,50,r3\n"          # image not on disk
             "nan.jpg,nan,r3\n"             # NaN
             "neg.jpg,-5,r3\n"              # negative
             "high.jpg,150,r3\n"            # outside mos_range
             "a.jpg,60,r1\n"                # duplicate
             "bad.jpg,ten,r3\n"             # unparsable score
             "short.jpg\n"                  # missing fields
             "x.jpg,1,r3,surplus\n").encode()  # more fields than the header
    label += b"caf\xe9.jpg,70,r4\n"        # latin-1 byte: not UTF-8
    write(tmp_path, "labels.csv", label)
    touch(tmp_path, [f"images/{n}" for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "nan.jpg", "neg.jpg",
                                             "high.jpg", "unlisted.png", "notes.txt")])
    touch_bytes_name(tmp_path / "images", b"caf\xe9.jpg")        # labelled by the non-UTF-8 row
    touch_bytes_name(tmp_path / "images", b"stray\xff.jpg")      # unlabelled, non-UTF-8 name
    samples, skipped = get_adapter("csv", mos_range=(0, 100), ref_col="ref", authentic=False).load(tmp_path)
    assert [s.image_name for s in samples] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert [s.ref for s in samples] == ["r1", "r1", "r2", "r2"] and samples[0].mos_range == (0.0, 100.0)
    assert categories(skipped) == {MISSING_IMAGE: 1, INVALID_MOS: 3, DUPLICATE: 1, MALFORMED: 3, NOT_UTF8: 2,
                                   NO_LABEL: 1}
    assert {s.item for s in skipped if s.reason.startswith(NOT_UTF8)} == {"caf\\udce9.jpg", "images/stray\\udcff.jpg"}
    assert all(s.item.encode("utf-8") for s in skipped)  # reports are always writable as UTF-8
    assert_partitioned_by(samples, lambda s: s.ref)


def test_csv_observed_range_ignores_negative_and_nan_scores(tmp_path):
    write(tmp_path, "scores.csv", "file,score,dataset\na.png,2,x\nb.png,8,x\nc.png,-40,x\nd.png,nan,x\n")
    touch(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    samples, skipped = get_adapter("csv", csv="scores.csv", image_col="file", score_col="score",
                                   higher_better=False, dataset_name="MyPhotos").load(tmp_path)
    assert [(s.image_name, s.mos_range, s.dataset, s.higher_better) for s in samples] == [
        ("a.png", (2.0, 8.0), "myphotos", False), ("b.png", (2.0, 8.0), "myphotos", False)]
    assert categories(skipped) == {INVALID_MOS: 2}
    assert samples[0].extra == {"csv_dataset": "x", "mos_range_source": "observed min/max"}  # no clash with the record
    assert_records_valid(samples)


# --------------------------------------------------------------------------- label-file errors
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_missing_label_file_is_a_clear_error_naming_file_and_layout(tmp_path, name):
    adapter = get_adapter(name)
    with pytest.raises(DatasetError) as err:
        adapter.load(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "label file not found" in message and adapter.layout in message


def test_unreadable_label_files_are_clear_errors(tmp_path):
    write(tmp_path, "Annotations/MOS and Image attribute scores.xlsx", b"not a zip")
    with pytest.raises(DatasetError, match="unreadable spreadsheet"):
        get_adapter("spaq").load(tmp_path)
    write(tmp_path, "Data/AllImages_release.mat", b"garbage" * 20)
    with pytest.raises(DatasetError, match="AllImages_release.mat: unreadable MAT file"):
        get_adapter("clive").load(tmp_path)
    write(tmp_path, "dmos.csv", "name,score\na.png,3\n")
    with pytest.raises(DatasetError, match=r"dmos\.csv: missing column\(s\) \['dist_img', 'ref_img', 'dmos', 'var'\]"):
        get_adapter("kadid").load(tmp_path)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        get_adapter("kadid").load(tmp_path / "nowhere")


def test_every_sample_normalises_into_the_unit_interval(tmp_path):
    place(tmp_path, "mos_with_names.txt", LABELS / "TID2013" / "mos_with_names.txt")
    touch(tmp_path, [f"distorted_images/{line.split()[1]}" for line in
                     (LABELS / "TID2013" / "mos_with_names.txt").read_text().splitlines()[:50]])
    samples, _ = get_adapter("tid2013").load(tmp_path)
    assert len(samples) == 50
    assert all(0 <= normalise_mos(s.mos, s.mos_range, s.higher_better) <= 1 and math.isfinite(s.mos) for s in samples)
