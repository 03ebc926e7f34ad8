"""webdataset stream stages of the data module: shard errors, rank split, seeded shuffle per pass,
per-worker batch quotas."""
from __future__ import annotations

import random
from typing import Any, Iterable, Iterator, Sequence

import webdataset as wds
from torch.utils.data import get_worker_info
from webdataset.utils import PipelineStage

from rsfiqa_core.contract import ShardError


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
