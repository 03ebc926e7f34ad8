"""LightningDataModule over annotated webdataset shards (docs/DESIGN.md, "Shard contract" and "Training
and evaluation protocol").

Stages and what they read
    fit      ``train`` samples of ``split_tag`` (shuffled, flipped) and ``val`` samples (one
             validation loader over all training directories);
    validate ``val`` samples;
    test     the ``test`` samples of every ``train_shards`` directory, or — for cross-dataset
             testing — every sample of each ``test_shards`` directory (``test_full_sets``); one
             dataloader per directory, in the given order, never pooled;
    predict  every sample of each ``test_shards`` (else ``train_shards``) directory, in a fixed
             order, without augmentation.

Missing descriptions, one rule. A region is valid in ``region_valid`` exactly when the annotator
flagged it ``valid`` (non-empty) and its text (``contract.region_text`` with the chosen parts and
dimensions) is not ``""``. So a region whose description is missing (``content``, ``levels`` and
``scores`` all null, with a ``missing_reason``) or lacks every selected part stays in the label map
but is ignored by region-semantic attention (eqs. 6-9); a partly missing description keeps the
items it has (the text lists only those) and the region stays valid. Missing scores are NaN in
``region_scores``. Nothing is filled in.

Equal batches under DDP. At setup every shard is scanned once (tar headers and JSON records only;
cached per file) to count the samples of each split. For training on R ranks, shard ``i`` goes to
rank ``i mod R`` (an equal per-rank slice of the shard list), each rank streams its shards
repeatedly and every rank stops after exactly ``ceil(N_train / (R * batch_size))`` full batches
(webdataset issue #188, Lightning #20404: uneven shards otherwise hang DDP). On one device an
epoch is one exact pass over the training samples. Evaluation runs on every rank over the whole
set (nothing padded or duplicated into the metrics; see ``RSFIQAModule``).

Errors. A truncated or corrupt shard (at setup, or when it changes afterwards: at read time), a
sample whose JSON record or image cannot be read, a record without ``split_tag`` or with a region
count other than ``num_regions`` raise an error naming the shard (and sample); nothing is skipped
silently.

Resuming. The order of training pass ``p`` (one epoch on one device) depends only on ``seed`` and
``p``: shard order (webdataset ``detshuffle``, seeded ``seed + p``), shuffle buffer and flips
(:class:`PassShuffle`, :func:`coin_flip`). A loader built for a run resumed at epoch ``e`` starts
at pass ``e`` (the first epoch not yet trained, :meth:`ShardDataModule._first_pass`), so
``rsfiqa fit --ckpt_path`` with a checkpoint of the last finished epoch sees the same data order
as an uninterrupted run (on one device; under DDP the streams repeat without epoch boundaries).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import webdataset as wds
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from rsfiqa.data import transforms
from rsfiqa.data.sample import SampleReader, collate
from rsfiqa.data.shards import ShardSet, load_shard_set
from rsfiqa_core.usererrors import SettingError
from rsfiqa.data.streams import PassShuffle, RankShards, ShardErrorHandler, WorkerQuota
from rsfiqa_core import contract

TRAIN, VAL, TEST = "train", "val", "test"
TEXT_PARTS = ("content", "level", "score")


# --------------------------------------------------------------------------- the data module
def check_distinct(sets: Sequence[ShardSet], option: str) -> None:
    """Refuse shard directories listed twice (the same folder, by its real path) or sharing sample
    keys (a copy): every sample would be read twice, or sit in train and test at once."""
    seen: dict[str, str] = {}
    keys: dict[str, str] = {}
    for shard_set in sets:
        real = os.path.realpath(shard_set.directory)
        if real in seen:
            raise contract.ContractError(f"{option}: {shard_set.directory} is listed twice (also as {seen[real]}); "
                                         f"list each shard directory once")
        seen[real] = shard_set.directory
        for _, info in shard_set.samples():
            other = keys.setdefault(info.key, shard_set.directory)
            if other != shard_set.directory:
                raise contract.ContractError(f"{option}: {shard_set.directory} and {other} both hold sample "
                                             f"{info.key} (a copied shard directory?); list each sample's "
                                             f"directory once")


def _as_list(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


class ShardDataModule(LightningDataModule):
    """Batches of annotated shards for RSFIQA (paper eqs. 1-11 inputs).

    A batch is a dict: ``image`` float[B,3,H,W] (ImageNet-normalised), ``label_map`` int64[B,H,W]
    (region index per pixel), ``region_valid`` bool[B,L] (region valid and described), ``texts``
    (B lists of L strings), ``mos_norm``/``mos`` float[B], ``key``/``dataset``/``image_name``
    (lists of B str), ``region_scores`` float[B,L,5] (scores in ``contract.DIMENSIONS`` order, NaN
    when missing), ``mos_range`` float64[B,2] and ``higher_better`` bool[B].

    Args:
        train_shards: shard directories (with ``index.json``) to train on; several are concatenated.
        test_shards: shard directories to test/predict on, one dataloader each (cross-dataset).
        split_tag: which key of ``record["splits"]`` defines train/val/test.
        num_regions: L; every record must have exactly L regions.
        image_size: network input, int (square) or [height, width] (paper: 224).
        hflip: random horizontal flip of training images (and label maps).
        text_parts / text_dims: region text rebuilt with ``contract.region_text`` (Tables 4 and 5).
        resize_interpolation: image filter for resizing (label maps always use NEAREST).
        test_full_sets: with explicit ``test_shards``, test on all their samples (cross-dataset
            protocol); False = only their ``test`` split under ``split_tag``.
        batch_size: training batch size per device; ``eval_batch_size`` (default: the same) for
            val/test/predict.
        num_workers: DataLoader worker processes (lowered where there are fewer shards).
        seed: seed of shard order, shuffle buffer and flips.
        shuffle_buffer: samples in the training shuffle buffer (0 = shard order only).
    """

    def __init__(
        self,
        train_shards: list[str] | str | None = None,
        test_shards: list[str] | None = None,
        split_tag: str = "seed0",
        num_regions: int = 5,
        image_size: int | list[int] = 224,
        hflip: bool = True,
        text_parts: Sequence[str] = TEXT_PARTS,
        text_dims: Sequence[str] = contract.DIMENSIONS,
        resize_interpolation: str = "bicubic",
        test_full_sets: bool = True,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 256,
    ):
        super().__init__()
        bad_parts = set(text_parts) - set(TEXT_PARTS)
        bad_dims = set(text_dims) - set(contract.DIMENSIONS)
        if bad_parts or bad_dims:
            raise ValueError(f"unknown text_parts {sorted(bad_parts)} / text_dims {sorted(bad_dims)}; "
                             f"choose from {TEXT_PARTS} / {contract.DIMENSIONS}")
        if resize_interpolation not in transforms.INTERPOLATIONS:
            raise ValueError(f"unknown resize_interpolation {resize_interpolation!r}; "
                             f"choose from {sorted(transforms.INTERPOLATIONS)}")
        if batch_size < 1 or num_workers < 0:
            raise SettingError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {batch_size}, "
                               f"{num_workers}; fix the config or override")
        self.train_shards = _as_list(train_shards)
        self.test_shards = _as_list(test_shards)
        self.split_tag = split_tag
        self.num_regions = num_regions
        self.image_size = transforms.as_size(image_size)
        self.hflip = hflip
        self.text_parts = tuple(text_parts)
        self.text_dims = tuple(text_dims)
        self.resize_interpolation = resize_interpolation
        self.test_full_sets = test_full_sets
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer

    # ---------------------------------------------------------------- which sets, which split
    def _shard_sets(self, directories: list[str], role: str) -> list[ShardSet]:
        if not directories:
            raise contract.ContractError(f"no {role} shard directories given (set data.{role}_shards)")
        sets = [load_shard_set(d) for d in directories]
        check_distinct(sets, f"data.{role}_shards")
        return sets

    def eval_sources(self, stage: str) -> list[tuple[list[ShardSet], str | None]]:
        """(shard sets, split or None for all samples) per dataloader of ``stage``. Validation pools
        the ``val`` samples of all training sets (early stopping needs one number); test and predict
        get one dataloader per directory."""
        if stage in ("fit", "validate"):
            return [(self._shard_sets(self.train_shards, "train"), VAL)]
        if stage == "test":
            if self.test_shards:
                split = None if self.test_full_sets else TEST
                return [([s], split) for s in self._shard_sets(self.test_shards, "test")]
            return [([s], TEST) for s in self._shard_sets(self.train_shards, "train")]
        if stage == "predict":
            return [([s], None) for s in self._shard_sets(self.test_shards or self.train_shards, "test")]
        raise ValueError(f"unknown stage {stage!r}")

    def _check(self, shard_set: ShardSet, split: str | None) -> int:
        """Raise on records breaking the setup; returns the number of selected samples."""
        for path, info in shard_set.samples():
            if info.num_regions != self.num_regions:
                raise contract.ContractError(f"{path}:{info.key}: record has {info.num_regions} regions but "
                                             f"num_regions is {self.num_regions}")
            if split is not None and self.split_tag not in info.splits:
                raise contract.ContractError(f"{path}:{info.key}: record has no split tag {self.split_tag!r} "
                                             f"(it has {sorted(info.splits)}); choose data.split_tag accordingly")
        return shard_set.split_count(self.split_tag, split)

    def setup(self, stage: str) -> None:
        """Scan the shards of ``stage`` once (cached), check them, count the training samples."""
        if stage == "fit":
            train_sets = self._shard_sets(self.train_shards, "train")
            self.num_train = sum(self._check(s, TRAIN) for s in train_sets)
            if self.num_train == 0:
                raise contract.ContractError(f"{self.train_shards}: no train samples under split tag "
                                             f"{self.split_tag!r}")
            self._check_rankable(train_sets, TRAIN)
        for sets, split in self.eval_sources(stage):
            if sum(self._check(s, split) for s in sets) == 0:
                raise contract.ContractError(f"{[s.directory for s in sets]}: no {split or 'any'} samples under "
                                             f"split tag {self.split_tag!r}")
            if stage == "fit":
                self._check_rankable(sets, split)

    def _check_rankable(self, sets: list[ShardSet], split: str) -> None:
        """Training needs MOS that differ, validation at least 2 samples with differing MOS: otherwise the
        correlations (SRCC, PLCC) it is judged by are undefined. Refused before any work."""
        mos = [info.mos for s in sets for _, info in s.samples() if info.splits.get(self.split_tag) == split]
        where = f"{', '.join(s.directory for s in sets)} ({split} split of {self.split_tag!r})"
        if split != TRAIN and len(mos) < 2:
            raise contract.ContractError(f"{where}: {len(mos)} validation sample(s); SRCC and PLCC need at least 2: "
                                         f"raise dataset.val_frac when annotating, or annotate more images")
        if len(set(mos)) == 1:
            raise contract.ContractError(f"{where}: all {len(mos)} samples have the same MOS ({mos[0]:g}), so "
                                         f"quality cannot be ranked (SRCC undefined); check the labels")

    # ---------------------------------------------------------------- loaders
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _reader(self, split: str | None, train: bool) -> SampleReader:
        return SampleReader(self.split_tag, split, self.num_regions, self.image_size, self.resize_interpolation,
                            self.text_parts, self.text_dims, hflip=train and self.hflip, seed=self.seed)

    def _loader(self, pipeline: Any, workers: int) -> DataLoader:
        return DataLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)

    def _train_workers(self, sets: list[ShardSet], world: int) -> int:
        """Most workers (<= num_workers) such that every worker slot of every rank holds train samples;
        a rank without any raises."""
        counts = {path: n for s in sets for path, n in s.split_counts(self.split_tag, TRAIN).items()}
        urls = list(counts)
        for workers in range(max(1, self.num_workers), 0, -1):
            slots = [urls[r::world][w::workers] for r in range(world) for w in range(workers)]
            if all(sum(counts[u] for u in slot) > 0 for slot in slots):
                if workers < self.num_workers:
                    rank_zero_warn(f"using {workers} data workers instead of {self.num_workers}: "
                                   f"too few shards holding train samples for more")
                return workers if self.num_workers > 0 else 0
        raise contract.ContractError(
            f"training on {world} devices needs at least one shard with train samples per device; "
            f"{len(urls)} shards in {self.train_shards}: annotate with smaller shards or use fewer devices")

    def _first_pass(self) -> int:
        """The epoch the training loader starts with. A run resumed from a checkpoint saved at the end
        of an epoch (its validation end) builds the loader before Lightning counts that epoch as
        completed, so ``current_epoch`` still names the finished epoch; the number of epochs
        *processed* is the one to train next."""
        if self.trainer is None:
            return 0
        fit_loop = getattr(self.trainer, "fit_loop", None)
        if fit_loop is None:
            return self.trainer.current_epoch
        return max(self.trainer.current_epoch, fit_loop.epoch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented ``train`` samples; equal batch counts on every rank (module docstring)."""
        sets = self._shard_sets(self.train_shards, "train")
        urls = [u for s in sets for u in s.urls]
        world, rank = self._world()
        workers = self._train_workers(sets, world)
        first_pass = self._first_pass()
        # detshuffle seeds pass k of this loader with seed + k: offset by the first pass (resuming)
        stream = wds.WebDataset(urls, shardshuffle=len(urls), detshuffle=True, seed=self.seed + first_pass,
                                nodesplitter=RankShards(rank, world), workersplitter=wds.split_by_worker,
                                handler=ShardErrorHandler(urls), empty_check=False)
        stream = stream.compose(PassShuffle(self.shuffle_buffer, self.seed, rank, first_pass),
                                self._reader(TRAIN, train=True))
        if world == 1:
            return self._loader(stream.compose(wds.batched(self.batch_size, collation_fn=collate, partial=True)),
                                workers)
        n_batches = math.ceil(self.num_train / (world * self.batch_size))
        endless = wds.DataPipeline(stream.repeat(nepochs=-1),
                                   wds.batched(self.batch_size, collation_fn=collate, partial=False),
                                   WorkerQuota(n_batches))
        return self._loader(endless, workers)

    def plain_train_dataloader(self) -> DataLoader:
        """The ``train`` samples in shard order, without augmentation (closed-form fits)."""
        return self._eval_loader(self._shard_sets(self.train_shards, "train"), TRAIN)

    def _eval_loader(self, sets: list[ShardSet], split: str | None) -> DataLoader:
        """Every rank reads every shard (no node splitting): nothing is padded or duplicated."""
        urls = [u for s in sets for u in s.urls]
        stream = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker,
                                handler=ShardErrorHandler(urls), empty_check=False)
        stream = stream.compose(self._reader(split, train=False),
                                wds.batched(self.eval_batch_size, collation_fn=collate, partial=True))
        return self._loader(stream, min(self.num_workers, len(urls)))

    def _eval_loaders(self, stage: str) -> DataLoader | list[DataLoader]:
        loaders = [self._eval_loader(sets, split) for sets, split in self.eval_sources(stage)]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("validate")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("predict")

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """What scoring needs besides the weights: input settings and the training datasets' MOS
        scales and annotator settings (saved by Lightning and, via ``RSFIQAModule``, under
        ``checkpoint["rsfiqa_data"]``)."""
        datasets: dict[str, dict[str, Any]] = {}
        for shard_set in self._shard_sets(self.train_shards, "train") if self.train_shards else []:
            for name, meta in shard_set.datasets().items():
                datasets[name] = {**meta, "annotator": shard_set.index.get("annotator", {})}
        return {"contract_version": contract.CONTRACT_VERSION, "datasets": datasets,
                "train_datasets": list(datasets), "split_tag": self.split_tag, **self.input_settings()}

    def input_settings(self) -> dict[str, Any]:
        """The settings that turn an image and its annotation into the model's input."""
        return {"image_size": list(self.image_size), "resize_interpolation": self.resize_interpolation,
                "num_regions": self.num_regions, "text_parts": list(self.text_parts),
                "text_dims": list(self.text_dims)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when the checkpoint was trained with other input settings than this run's."""
        current = self.input_settings()
        differ = {k: (state_dict.get(k), v) for k, v in current.items() if state_dict.get(k) != v}
        if differ:
            rank_zero_warn(f"checkpoint input settings differ from this run's (checkpoint, now): {differ}")
