"""ShardDataModule: batch layout, paired transforms, text rebuilding, splits and shard errors."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from rsfiqa_core import contract
from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.data.sample import SampleReader
from rsfiqa.data.shards import load_shard_set
from rsfiqa_core.contract import ShardError
from shardgen import write_shards

L = 5


def make_dm(shards, **kw) -> ShardDataModule:
    kw = {"image_size": [48, 64], "batch_size": 4, **kw}
    return ShardDataModule(train_shards=str(shards), **kw)


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def test_batches_have_the_documented_layout(synth_shards):
    dm = make_dm(synth_shards)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    b = len(batch["key"])
    assert batch["image"].shape == (b, 3, 48, 64) and batch["image"].dtype == torch.float32
    assert batch["label_map"].shape == (b, 48, 64) and batch["label_map"].dtype == torch.int64
    assert 0 <= int(batch["label_map"].min()) and int(batch["label_map"].max()) < L
    assert batch["region_valid"].shape == (b, L) and batch["region_valid"].dtype == torch.bool
    assert len(batch["texts"]) == b and all(len(t) == L for t in batch["texts"])
    assert batch["mos_norm"].shape == (b,) and batch["mos_norm"].dtype == torch.float32
    assert torch.allclose(batch["mos_norm"], (batch["mos"] - 1.0) / 4.0, atol=1e-5)
    assert batch["region_scores"].shape == (b, L, len(contract.DIMENSIONS))
    assert batch["dataset"] == ["synth"] * b and len(batch["image_name"]) == b
    assert batch["mos_range"].tolist() == [[1.0, 5.0]] * b and batch["higher_better"].all()
    # ImageNet normalisation: roughly zero-centred, clearly not [0, 1]
    assert batch["image"].min() < 0 < batch["image"].max()


def test_missing_descriptions_are_kept_in_the_map_but_invalid(synth_shards):
    dm = make_dm(synth_shards, hflip=False)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    texts = [t for b in batches for t in b["texts"]]
    valid = torch.cat([b["region_valid"] for b in batches])
    scores = torch.cat([b["region_scores"] for b in batches])
    names = [n for b in batches for n in b["image_name"]]
    for i, name in enumerate(names):
        idx = int(name[4:8])
        if idx % 5 == 3:  # shardgen withholds region 1's description
            assert texts[i][1] == "" and not valid[i, 1] and torch.isnan(scores[i, 1]).all()
        if idx % 7 == 5:  # and leaves region L-2 empty
            assert not valid[i, L - 2]
    assert valid.sum() > 0.8 * valid.numel() and not torch.isnan(scores[valid]).any()


def test_flip_moves_image_and_label_map_together(synth_shards):
    shard = load_shard_set(str(synth_shards)).urls[0]
    raw = next(iter(wds.WebDataset([shard], shardshuffle=False, empty_check=False)))
    sample = contract.decode_sample(raw)
    reader = SampleReader("seed0", None, L, (40, 56), "bicubic", ("content",), contract.DIMENSIONS)
    plain = reader.item(sample, "x", flip=False)
    flipped = reader.item(sample, "x", flip=True)
    assert flipped["label_map"].ndim == 2, "the label map stays single-channel"
    assert torch.equal(flipped["label_map"], plain["label_map"].flip(-1))
    assert torch.allclose(flipped["image"], plain["image"].flip(-1))
    assert flipped["mos_norm"] == plain["mos_norm"] and flipped["texts"] == plain["texts"]
    # resizing with NEAREST creates no new region indices
    assert set(plain["label_map"].unique().tolist()) <= set(range(L))


def test_training_order_and_flips_are_seeded(synth_shards):
    def epoch(seed):
        dm = make_dm(synth_shards, seed=seed)
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        return [k for b in batches for k in b["key"]], torch.cat([b["image"] for b in batches])

    keys_a, images_a = epoch(0)
    keys_b, images_b = epoch(0)
    keys_c, _ = epoch(1)
    assert keys_a == keys_b and torch.equal(images_a, images_b)
    assert keys_a != keys_c and sorted(keys_a) == sorted(keys_c)


def test_one_device_epoch_visits_every_train_sample_once_and_reshuffles(synth_shards):
    dm = make_dm(synth_shards, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    first, second = keys_of(loader), keys_of(loader)
    shard_set = load_shard_set(str(synth_shards))
    train = sorted(info.key for _, info in shard_set.samples() if info.splits["seed0"] == "train")
    assert sorted(first) == train and sorted(second) == train
    assert first != second, "each epoch gets a new order"
    assert dm.num_train == len(train)


def test_text_is_rebuilt_from_parts_and_dims(synth_shards):
    dm = make_dm(synth_shards, text_parts=["level"], text_dims=["blur", "noise"])
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    shard_set = load_shard_set(str(synth_shards))
    records = {}
    for raw in wds.WebDataset(shard_set.urls, shardshuffle=False, empty_check=False):
        records[raw["__key__"]] = contract.decode_sample(raw)["record"]
    for key, texts in zip(batch["key"], batch["texts"]):
        regions = records[key]["regions"]
        assert texts == [contract.region_text(r, ["level"], ["blur", "noise"]) for r in regions]
        described = [t for t in texts if t]
        assert described and all(t.startswith("blur ") and "; noise " in t for t in described)
        assert not any(ch.isdigit() for t in described for ch in t), "no scores when parts=['level']"
        assert not any("rectangle" in t or "background" in t for t in described), "no content"


def test_bad_settings_and_records_raise_clear_errors(synth_shards, tmp_path):
    with pytest.raises(ValueError, match="text_dims"):
        make_dm(synth_shards, text_dims=["sharpness"])
    with pytest.raises(contract.ContractError, match="no split tag 'seed3'"):
        make_dm(synth_shards, split_tag="seed3").setup("fit")
    with pytest.raises(contract.ContractError, match=r"synth-000000\.tar:synth_img_0000.* 5 regions but num_"
                                                     r"regions is 6"):
        make_dm(synth_shards, num_regions=6).setup("fit")
    with pytest.raises(ValueError, match="no train shard directories"):
        ShardDataModule().setup("fit")


def test_truncated_shard_is_named_at_setup_and_at_read_time(synth_shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(synth_shards, broken)
    victim = broken / "synth-000001.tar"
    dm = make_dm(broken, hflip=False)
    dm.setup("predict")
    loader = dm.predict_dataloader()  # made while the shard is intact: the error must come from reading
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2 + 100])
    with pytest.raises(ShardError, match=str(victim)):
        keys_of(loader)
    with pytest.raises(ShardError, match=str(victim)):
        make_dm(broken).setup("fit")


def test_test_and_predict_sets(synth_shards, other_shards):
    dm = ShardDataModule(train_shards=str(synth_shards), image_size=48, batch_size=4)
    dm.setup("test")
    shard_set = load_shard_set(str(synth_shards))
    n_test = shard_set.split_count("seed0", "test")
    assert len(keys_of(dm.test_dataloader())) == n_test < 22

    cross = ShardDataModule(train_shards=str(synth_shards), test_shards=[str(other_shards), str(synth_shards)],
                            image_size=48, batch_size=4)
    cross.setup("test")
    loaders = cross.test_dataloader()
    assert [len(keys_of(dl)) for dl in loaders] == [10, 22], "full sets, one loader each, in the given order"
    assert {d for b in loaders[0] for d in b["dataset"]} == {"other"}

    cross.setup("predict")
    first = [keys_of(dl) for dl in cross.predict_dataloader()]
    second = [keys_of(dl) for dl in cross.predict_dataloader()]
    assert first == second and [len(k) for k in first] == [10, 22], "predict: all samples, fixed order"


def test_state_dict_holds_what_scoring_needs(synth_shards, other_shards):
    dm = ShardDataModule(train_shards=[str(synth_shards), str(other_shards)], image_size=[48, 64],
                         text_dims=["blur"], num_regions=L)
    state = dm.state_dict()
    assert state["train_datasets"] == ["synth", "other"]
    assert state["datasets"]["other"]["mos_range"] == [0.0, 100.0]
    assert state["datasets"]["other"]["higher_better"] is False
    assert state["datasets"]["synth"]["annotator"]["describer"] == {"name": "synthetic"}
    assert state["image_size"] == [48, 64] and state["text_dims"] == ["blur"] and state["num_regions"] == L
    dm.setup("fit")
    val = dm.val_dataloader()
    assert isinstance(val, DataLoader), "one pooled validation loader over both training sets"
    n_val = sum(load_shard_set(str(d)).split_count("seed0", "val") for d in (synth_shards, other_shards))
    assert len(keys_of(val)) == n_val
    with pytest.warns(UserWarning, match="image_size"):
        ShardDataModule(train_shards=str(synth_shards), image_size=224).load_state_dict(state)


def test_ddp_plan_gives_every_rank_the_same_batch_count(tmp_path):
    """Training loaders of two simulated ranks (no process group needed): equal batch counts although
    the ranks' shards hold different numbers of training samples."""
    shards = write_shards(tmp_path / "ddp", 17, image_size=(32, 32), samples_per_shard=5)  # 5, 5, 5, 2
    counts = []
    for rank in range(2):
        dm = ShardDataModule(train_shards=str(shards), image_size=32, batch_size=3, num_workers=2)
        dm.trainer = type("FakeTrainer", (), {"world_size": 2, "global_rank": rank, "current_epoch": 0})()
        dm.setup("fit")
        loader = dm.train_dataloader()
        counts.append([sum(1 for _ in loader) for _ in range(2)])
    shard_set = load_shard_set(str(shards))
    per_rank = [shard_set.split_count("seed0", "train", shard_set.urls[r::2]) for r in range(2)]
    assert per_rank[0] != per_rank[1], "the fixture must be uneven to test anything"
    expected = math.ceil(shard_set.split_count("seed0", "train") / (2 * 3))
    assert counts == [[expected, expected], [expected, expected]]


def test_plain_train_loader_reads_every_training_image_once_unflipped(synth_shards):
    """What the statistics head's closed-form fit reads: the train split, in shard order, no augmentation."""
    dm = make_dm(synth_shards, hflip=True)
    dm.setup("fit")
    plain = list(dm.plain_train_dataloader())
    keys = [k for batch in plain for k in batch["key"]]
    assert sorted(keys) == sorted(keys_of(dm.train_dataloader())) and len(keys) == len(set(keys)) == dm.num_train
    unflipped = make_dm(synth_shards, hflip=False)
    unflipped.setup("fit")
    images = {k: x for batch in plain for k, x in zip(batch["key"], batch["image"])}
    for batch in unflipped.train_dataloader():
        for key, image in zip(batch["key"], batch["image"]):
            assert torch.equal(images[key], image), key
