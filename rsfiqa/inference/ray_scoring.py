"""``rsfiqa score --engine ray``: the images scored by a pool of Ray actors, each holding one
:class:`~rsfiqa.inference.scorer.Scorer` built once from the same model and settings.

Ray Data (``ray.data.from_items`` -> ``Dataset.map_batches`` with a callable class, whose instances
are long-lived actors, a fixed pool of them (``ActorPoolStrategy(size=N)``); ``iter_rows`` streams the results back as they
finish: https://docs.ray.io/en/latest/data/api/doc/ray.data.Dataset.map_batches.html). Each actor
scores its batches with ``Scorer.iter_scored`` (annotation in the actor's process: the actors are the
parallelism) and sends each :class:`~rsfiqa.inference.scorer.Scored` back pickled, so the caller
writes rows, heatmaps and the report exactly as for local scoring. Results arrive in completion
order, not input order.

Inputs are read by the actors at the paths given: on a multi-node cluster they must be on a
filesystem every node mounts at the same place; each actor first changes to the caller's working
directory (when that exists on its node), so relative paths mean what they mean to the caller.
"""
from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from rsfiqa.inference.scorer import Scored, Scorer, ScoringSetupError
from rsfiqa_core.raycluster import INSTALL_HINT, connection_error, host_port
from rsfiqa_core.usererrors import one_line



@dataclass(frozen=True)
class ScorerSpec:
    """What every actor builds its scorer from: a shipped model name or a checkpoint, and the options."""

    model: str | None
    ckpt: str | None
    device: str
    segmenter_override: tuple[str, ...] = ()
    describer_override: tuple[str, ...] = ()
    regions: bool = False  # annotate even when the model does not read regions (the output shows them)

    def build(self, workers: int = 0) -> Scorer:
        """The scorer (annotation in this process unless ``workers``)."""
        if self.ckpt is not None:
            scorer = Scorer.from_checkpoint(self.ckpt, self.device, list(self.segmenter_override),
                                            list(self.describer_override), self.regions)
        else:
            scorer = Scorer.from_pretrained(self.model, self.device, list(self.segmenter_override),
                                            list(self.describer_override), regions=self.regions)
        scorer.workers = workers
        return scorer


def import_ray() -> Any:
    """``ray`` with Ray Data, or one line naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (used as ``ray.data``)
    except ImportError:
        raise ScoringSetupError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connected to the cluster at ``address`` (None: ``RAY_ADDRESS`` or a new local one) for the block,
    unless this process already is; an unreachable address is one line."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    problem = unreachable(address) if address else None
    try:
        if problem is None:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as err:
        problem = one_line(err)
    if problem is not None:
        where = f"--ray-address {address}" if address else "a new local Ray cluster"
        raise ScoringSetupError(f"{where}: cannot connect ({problem}); start the cluster with `ray start --head` "
                                f"and give the address of its head node")
    try:
        yield
    finally:
        ray.shutdown()


def unreachable(address: str) -> str | None:
    """Why ``HOST:PORT`` (or ``ray://HOST:PORT``) takes no TCP connection at once, or None (also for
    ``auto`` and ``local``, which Ray resolves itself): Ray would retry for minutes."""
    where = host_port(address)
    err = connection_error(*where) if where is not None else None
    return None if err is None else f"{where[0]}:{where[1]}: {one_line(err)}"


def cluster_cpus() -> int:
    """The cluster's CPUs (at least 1): the default number of actors."""
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class ScoringActor:
    """One Ray actor: a scorer built once, then batches of paths in, pickled :class:`Scored` out."""

    def __init__(self, spec: ScorerSpec, cwd: str, batch_size: int, attn_token: tuple[int, int] | None,
                 keep_arrays: bool):
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.scorer = spec.build(workers=0)
        self.batch_size, self.attn_token, self.keep_arrays = batch_size, attn_token, keep_arrays

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        paths = [str(p) for p in batch["path"]]
        scored = self.scorer.iter_scored(paths, self.batch_size, attn_token=self.attn_token,
                                         keep_arrays=self.keep_arrays)
        return {"scored": [pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) for s in scored]}


def iter_scored_on_ray(spec: ScorerSpec, files: Sequence[Path], batch_size: int, actors: int,
                       attn_token: tuple[int, int] | None = None, keep_arrays: bool = False,
                       num_gpus: float = 0) -> Iterator[Scored]:
    """:class:`Scored` per file, in completion order, from ``actors`` Ray actors (:func:`connect` first)."""
    ray = import_ray()
    if not files:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller shows one bar; Ray Data's own log lines are quieted too
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset = ray.data.from_items([{"path": str(f)} for f in files])
    scored = dataset.map_batches(
        ScoringActor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
        num_gpus=num_gpus,
        fn_constructor_kwargs={"spec": spec, "cwd": os.getcwd(), "batch_size": batch_size,
                               "attn_token": attn_token, "keep_arrays": keep_arrays})
    for row in scored.iter_rows():
        yield pickle.loads(row["scored"])
