"""Listing annotated shard directories: ``index.json`` plus a scan of every shard's records."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator

from rsfiqa_core import contract
from rsfiqa_core.contract import ShardError
from rsfiqa_core.tars import tar_members


@dataclass(frozen=True)
class SampleInfo:
    """What setup needs to know about one sample without decoding its image."""

    key: str
    splits: dict[str, str]
    num_regions: int
    dataset: str
    mos_range: tuple[float, float]
    higher_better: bool
    mos: float


@lru_cache(maxsize=None)
def _scan_shard_cached(path: str, size: int, mtime_ns: int) -> tuple[SampleInfo, ...]:
    samples = []
    for key, ext, read in tar_members(path, size):
        if ext != contract.JSON_KEY:
            continue
        try:
            record = json.loads(read())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ShardError(f"{path}:{key}: unreadable JSON record ({err})") from err
        contract.validate_record(record, f"{path}:{key}")
        samples.append(SampleInfo(key, dict(record["splits"]), len(record["regions"]), record["dataset"],
                                  tuple(record["mos_range"]), bool(record["higher_better"]), float(record["mos"])))
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
