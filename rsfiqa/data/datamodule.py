"""LightningDataModule over annotated webdataset shards (DESIGN.md, "Shard contract" and "Training
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

import json
import math
import os
import random
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, get_worker_info
from webdataset.utils import PipelineStage

from rsfiqa import contract
from rsfiqa.data import transforms
from rsfiqa.imageio import decode_rgb

TRAIN, VAL, TEST = "train", "val", "test"
TEXT_PARTS = ("content", "level", "score")


class ShardError(contract.ContractError):
    """A shard that cannot be read: truncated, corrupt, or inconsistent with its ``index.json``."""


# --------------------------------------------------------------------------- scanning the shards
@dataclass(frozen=True)
class SampleInfo:
    """What setup needs to know about one sample without decoding its image."""

    key: str
    splits: dict[str, str]
    num_regions: int
    dataset: str
    mos_range: tuple[float, float]
    higher_better: bool


@lru_cache(maxsize=None)
def _scan_shard_cached(path: str, size: int, mtime_ns: int) -> tuple[SampleInfo, ...]:
    samples = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.offset_data + member.size > size:
                    raise ShardError(f"{path}: truncated shard ({member.name} ends past the end of the file)")
                key, _, ext = member.name.partition(".")
                if ext != contract.JSON_KEY:
                    continue
                try:
                    record = json.loads(tar.extractfile(member).read())
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise ShardError(f"{path}:{key}: unreadable JSON record ({err})") from err
                contract.validate_record(record, f"{path}:{key}")
                samples.append(SampleInfo(key, dict(record["splits"]), len(record["regions"]), record["dataset"],
                                          tuple(record["mos_range"]), bool(record["higher_better"])))
    except (tarfile.TarError, OSError) as err:
        raise ShardError(f"{path}: corrupt or truncated shard ({err})") from err
    return tuple(samples)


def scan_shard(path: str) -> tuple[SampleInfo, ...]:
    """Per-sample summaries of one shard, cached while the file is unchanged."""
    st = os.stat(path)
    return _scan_shard_cached(path, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ShardSet:
    """One annotated shard directory: its ``index.json`` and the scanned samples of each shard."""

    directory: str
    index: dict
    shards: tuple[tuple[str, tuple[SampleInfo, ...]], ...]  # (shard path, its samples)

    @property
    def urls(self) -> list[str]:
        return [path for path, _ in self.shards]

    def samples(self) -> Iterator[tuple[str, SampleInfo]]:
        for path, infos in self.shards:
            for info in infos:
                yield path, info

    def split_counts(self, split_tag: str, split: str | None) -> dict[str, int]:
        """Per shard path: samples whose ``splits[split_tag]`` is ``split`` (all for ``split=None``)."""
        return {path: sum(1 for info in infos if split is None or info.splits.get(split_tag) == split)
                for path, infos in self.shards}

    def split_count(self, split_tag: str, split: str | None, shards: Iterable[str] | None = None) -> int:
        """Total of :meth:`split_counts`, optionally over the shards ``shards`` only."""
        counts = self.split_counts(split_tag, split)
        return sum(counts[path] for path in (counts if shards is None else shards))

    def datasets(self) -> dict[str, dict[str, Any]]:
        """Per dataset name: MOS range and direction (checked to be the same for all its samples)."""
        out: dict[str, dict[str, Any]] = {}
        for path, info in self.samples():
            meta = {"mos_range": list(info.mos_range), "higher_better": info.higher_better}
            if out.setdefault(info.dataset, meta) != meta:
                raise ShardError(f"{path}:{info.key}: dataset {info.dataset!r} has MOS range/direction {meta}, "
                                 f"other samples have {out[info.dataset]}")
        return out


def load_shard_set(directory: str) -> ShardSet:
    """Read ``index.json`` and scan every shard it lists; the sample count must match the index."""
    index = contract.read_index(directory)
    shards = tuple((path, scan_shard(path)) for path in index["shard_paths"])
    found = sum(len(infos) for _, infos in shards)
    if found != index["count"]:
        raise ShardError(f"{directory}: index.json lists {index['count']} samples but the shards hold {found} "
                         f"(a truncated or incomplete shard?)")
    return ShardSet(str(directory), index, shards)


# --------------------------------------------------------------------------- pipeline stages
class ShardErrorHandler:
    """webdataset exception handler: re-raise as :class:`ShardError` naming the shard."""

    def __init__(self, urls: Sequence[str]):
        self.urls = list(urls)

    def __call__(self, exn: Exception) -> bool:
        if isinstance(exn, ShardError):  # ours, passing through an outer stage that appended to args
            exn.args = exn.args[:1]
            raise exn
        text = " ".join(str(a) for a in exn.args)  # webdataset appends the url/stream to args
        shard = next((u for u in self.urls if u in text), "<unknown shard>")
        reason = exn.args[0] if exn.args else exn
        raise ShardError(f"{shard}: corrupt or truncated shard ({type(exn).__name__}: {reason})") from exn


class RankShards:
    """Node splitter: shard ``i`` goes to rank ``i mod world_size`` (rank bound explicitly, so it
    also holds in DataLoader worker processes)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for i, item in enumerate(src):
            if i % self.world_size == self.rank:
                yield item


def coin_flip(seed: int, pass_: int, key: str) -> bool:
    """A fair coin fixed by (seed, pass, sample key): flips do not depend on worker layout."""
    return random.Random(f"{seed}/{pass_}/{key}").random() < 0.5


def _worker_id() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class PassShuffle(PipelineStage):
    """Shuffle buffer whose seed depends on (seed, pass, rank, worker); each pass over the data
    (one epoch on one device) gets a new order, reproducibly. Tags samples with ``__pass__``."""

    def __init__(self, bufsize: int, seed: int, rank: int, first_pass: int = 0):
        self.bufsize, self.seed, self.rank, self.passes = bufsize, seed, rank, first_pass - 1

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        self.passes += 1
        tagged = ({**sample, "__pass__": self.passes} for sample in src)
        if self.bufsize < 2:
            return tagged
        rng = random.Random(f"{self.seed}/{self.passes}/{self.rank}/{_worker_id()[0]}")
        return wds.filters.shuffle(self.bufsize, initial=self.bufsize, rng=rng)(tagged)


class WorkerQuota(PipelineStage):
    """Let DataLoader worker ``w`` of ``W`` yield its share of ``n_batches`` (they add up to it)."""

    def __init__(self, n_batches: int):
        self.n_batches = n_batches

    def run(self, src: Iterable[Any]) -> Iterator[Any]:
        worker, workers = _worker_id()
        quota = self.n_batches // workers + (worker < self.n_batches % workers)
        for _, batch in zip(range(quota), src):
            yield batch


@dataclass(frozen=True)
class SampleReader:
    """Raw webdataset sample -> model input; keeps only ``split`` of ``split_tag`` (all for None)."""

    split_tag: str
    split: str | None
    num_regions: int
    image_size: tuple[int, int]
    interpolation: str
    text_parts: tuple[str, ...]
    text_dims: tuple[str, ...]
    hflip: bool = False
    seed: int = 0

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for raw in src:
            sample = contract.decode_sample(raw)
            record = sample["record"]
            if self.split is None or record["splits"].get(self.split_tag) == self.split:
                flip = self.hflip and coin_flip(self.seed, raw.get("__pass__", 0), sample["key"])
                yield self.item(sample, where=f"{raw.get('__url__', '?')}:{sample['key']}", flip=flip)

    def item(self, sample: dict, where: str, flip: bool) -> dict:
        """One decoded sample (``contract.decode_sample``) as model input; ``where`` names it in errors."""
        record = sample["record"]
        regions = record["regions"]
        if len(regions) != self.num_regions:
            raise contract.ContractError(f"{where}: record has {len(regions)} regions, num_regions is "
                                         f"{self.num_regions}")
        rgb, _ = decode_rgb(sample["image_bytes"], name=where)
        label_map = sample["label_map"]
        if label_map.shape != rgb.shape[:2]:
            raise contract.ContractError(f"{where}: label map {label_map.shape} does not match the upright image "
                                         f"{rgb.shape[:2]}")
        rgb, label_map = transforms.resize_pair(rgb, label_map, self.image_size, self.interpolation)
        if flip:
            rgb, label_map = transforms.hflip_pair(rgb, label_map)
        image, labels = transforms.to_model_input(rgb, label_map)
        texts = [contract.region_text(r, self.text_parts, self.text_dims) for r in regions]
        return {"image": image, "label_map": labels,
                "region_valid": torch.tensor([bool(r.get("valid")) and t != "" for r, t in zip(regions, texts)]),
                "texts": texts, "mos_norm": float(record["mos_norm"]), "mos": float(record["mos"]),
                "key": sample["key"], "dataset": record["dataset"], "image_name": record["image"],
                "region_scores": torch.tensor([[_score(r, d) for d in contract.DIMENSIONS] for r in regions],
                                              dtype=torch.float32),
                "mos_range": torch.tensor(record["mos_range"], dtype=torch.float64),
                "higher_better": bool(record["higher_better"])}


def _score(region: dict, dim: str) -> float:
    value = (region.get("scores") or {}).get(dim)
    return float("nan") if value is None else float(value)


def collate(items: list[dict]) -> dict[str, Any]:
    """Batch dict of the data module (see :class:`ShardDataModule`)."""
    batch: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], float):
            batch[name] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(values[0], bool):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch


# --------------------------------------------------------------------------- the data module
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
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
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
            raise ValueError(f"no {role} shard directories given (set data.{role}_shards)")
        return [load_shard_set(d) for d in directories]

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
            self.num_train = sum(self._check(s, TRAIN) for s in self._shard_sets(self.train_shards, "train"))
            if self.num_train == 0:
                raise contract.ContractError(f"{self.train_shards}: no train samples under split tag "
                                             f"{self.split_tag!r}")
        for sets, split in self.eval_sources(stage):
            if sum(self._check(s, split) for s in sets) == 0:
                raise contract.ContractError(f"{[s.directory for s in sets]}: no {split or 'any'} samples under "
                                             f"split tag {self.split_tag!r}")

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
