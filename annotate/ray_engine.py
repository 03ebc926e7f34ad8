"""Annotation on a Ray cluster: ``python -m annotate ... --engine ray [--ray-address auto|HOST:PORT]``.

Selection, resuming, the settings fingerprint, ``index.json`` and the summary stay the pipeline's
(:mod:`annotate.pipeline`); :class:`RayEngine` only replaces where the samples still to do are
annotated. They flow through Ray Data::

    from_items (one block per batch_size samples)
      -> segment actors: read + decode the image file (pipeline.load_images), segment (api.segment_stage)
      -> describe actors: describe (api.describe_stage), encode the contract sample (pipeline.build_sample)
      -> this process: the part's PartShardWriter writes the encoded samples, in key order

Each actor builds its own component from the config (SAM on its own GPU, one vLLM engine per
describe actor) and refuses to start when the component's record differs from the one this process
built for the shards (another package version on a node would otherwise go unrecorded). An actor
of a device component gets one GPU where the cluster has GPUs, else one core. When both components
are CPU-local (``process_parallel``: the offline classical segmenter + measures describer), one
pool of one-core actors runs both stages, like the local ``--workers`` pool: a second pool on the
same cores would only add processes (each imports torch) and transfers.

Exactly once: Ray Data restarts a dead actor and retries its batch (its actor pools default to
``max_restarts=-1`` and ``max_task_retries=-1``: ``ActorPoolMapOperator._apply_default_remote_args``
in ray/data/_internal/execution/operators/actor_pool_map_operator.py), the output keeps the input
order (``preserve_order``: shards byte-identical to the local engine's), and this process checks
that every key arrives exactly once. Rows carry one pickled :class:`Item` each, so Arrow never rewrites the
Python values (it turns tuples into lists and gives dicts each other's keys).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from math import ceil
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from annotate.api import Annotation, Annotator, Failure, Monitor, config_differences, describe_stage, segment_stage
from annotate.config import AnnotateError
from annotate.describe.backends import MissingExtraError
from annotate.parallel import parallel_safe
from annotate.pipeline import (
    FailureGuard,
    LoadedImage,
    StageClock,
    Summary,
    build_sample,
    load_images,
    make_describer,
    make_segmenter,
    write_sample,
)
from annotate.registry import component_record
from annotate.types import Sample
from annotate.writer import PartShardWriter
from rsfiqa_core.components import Segmentation
from rsfiqa_core.raycluster import INSTALL_HINT, connection_error, host_port
from rsfiqa_core.timing import StageSeconds

COLUMN = "item"
RAY_EXTRA = f"--engine ray needs Ray Data, an optional extra: {INSTALL_HINT}"


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`MissingExtraError` naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401 -- ray[data]; a bare `ray` lacks it
    except ImportError as err:
        raise MissingExtraError(f"{RAY_EXTRA} ({err})") from err
    return ray


# --------------------------------------------------------------------------- rows
@dataclass
class Item:
    """One sample on its way through the actors (pickled into the row's one column)."""

    key: str
    sample: Sample
    image: LoadedImage | None = None        # after reading; dropped once encoded
    small: np.ndarray | None = None         # the image at the annotation resolution (segment -> describe)
    seg: Segmentation | None = None
    encoded: dict[str, bytes] | None = None  # the contract sample (pipeline.build_sample)
    regions: list[dict[str, Any]] | None = None
    skip: dict[str, str] | None = None      # {"item", "stage", "reason"}, as the summary lists skips
    error: tuple[str, str] | None = None    # a failed stage's exception: (type name, message)
    notes: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, tuple[int, float]] = field(default_factory=dict)  # a batch's stage clocks, on its first item

    def fail(self, failure: Failure) -> None:
        """Skip this sample for ``failure`` (a segment or describe stage that raised on it alone)."""
        self.skip = {"item": self.sample.image_name, "stage": failure.stage, "reason": failure.reason}
        self.error = (type(failure.error).__name__, str(failure.error))


def unpack(batch: Mapping[str, Any]) -> list[Item]:
    return [pickle.loads(blob) for blob in batch[COLUMN]]


def pack(items: Sequence[Item]) -> dict[str, list[bytes]]:
    return {COLUMN: [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]}


class BatchClock(Monitor):
    """An actor's monitor: stage seconds of one batch (failures are read from the results)."""

    def __init__(self) -> None:
        self.clock = StageSeconds(defaultdict(float), defaultdict(int))

    def stage(self, name: str, images: int) -> Any:
        return self.clock.stage(name, images)

    def attach(self, items: Sequence[Item]) -> None:
        """Hand the batch's clocks to its first item (the driver adds them to the summary)."""
        if items:
            items[0].seconds.update({name: (self.clock.images[name], s) for name, s in self.clock.seconds.items()})


# --------------------------------------------------------------------------- actors
def check_record(kind: str, component: Any, expected: Mapping[str, Any]) -> None:
    """Refuse a component built on a worker whose record differs from the one the shards record."""
    here = json_normal(component_record(component))
    wanted = json_normal(expected[kind])
    if here != wanted:
        raise AnnotateError(f"the {kind} built on Ray node {socket.gethostname()} differs from the driver's (key: "
                            f"driver -> node): {'; '.join(config_differences(wanted, here)[:6])}; install the same "
                            f"packages and files on every node")


def json_normal(value: Any) -> Any:
    """``value`` as the shards' JSON stores it (tuples as lists)."""
    return json.loads(json.dumps(value))


class SegmentActor:
    """Reads, decodes and segments a batch of samples (a Ray Data actor)."""

    def __init__(self, cfg: dict[str, Any], record: Mapping[str, Any]) -> None:
        self.cfg: DictConfig = OmegaConf.create(cfg)
        self.segmenter = make_segmenter(self.cfg)
        check_record("segmenter", self.segmenter, record)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[bytes]]:
        items, clock = unpack(batch), BatchClock()
        scratch = Summary(dataset="", part="", out="")  # collects load_images' skips and notes
        with clock.stage("load", len(items)):
            loaded = {image.key: image for image in load_images([(i.key, i.sample) for i in items], self.cfg, scratch)}
        skips = {s["item"]: s for s in scratch.skipped}
        for item in items:
            item.image = loaded.get(item.key)
            item.skip = skips.get(item.sample.image_name)
            item.notes = [n for n in scratch.notes if n["item"] == item.sample.image_name]
        todo = [i for i in items if i.image is not None]
        small, segs = segment_stage(self.segmenter, self.cfg.image.downscale_long_side,
                                    [i.image.rgb for i in todo], clock)
        for item, im, seg in zip(todo, small, segs):
            if isinstance(seg, Failure):
                item.fail(seg)
                item.image = None
            else:
                item.small, item.seg = im, seg
        clock.attach(items)
        return pack(items)


class DescribeActor:
    """Describes a batch of segmented samples and encodes their contract samples (a Ray Data actor)."""

    def __init__(self, cfg: dict[str, Any], record: Mapping[str, Any]) -> None:
        self.describer = make_describer(OmegaConf.create(cfg))
        check_record("describer", self.describer, record)
        self.record = record

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[bytes]]:
        items, clock = unpack(batch), BatchClock()
        todo = [i for i in items if i.seg is not None]
        results = describe_stage(self.describer, [i.image.rgb.shape[:2] for i in todo], [i.small for i in todo],
                                 [i.seg for i in todo], clock)
        done = [(item, result) for item, result in zip(todo, results) if isinstance(result, Annotation)]
        with clock.stage("write", len(done)):
            for item, annotation in done:
                item.encoded, item.regions = build_sample(item.image, annotation, self.record), annotation.regions
        for item, result in zip(todo, results):
            if isinstance(result, Failure):
                item.fail(result)
            item.image = item.small = item.seg = None
        clock.attach(items)
        return pack(items)


class AnnotateActor:
    """Both stages in one actor, for CPU-local components (module docstring)."""

    def __init__(self, cfg: dict[str, Any], record: Mapping[str, Any]) -> None:
        self.segment, self.describe = SegmentActor(cfg, record), DescribeActor(cfg, record)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[bytes]]:
        return self.describe(self.segment(batch))


# --------------------------------------------------------------------------- resources
Stage = tuple[type, dict[str, float]]  # an actor class and the resources of one of its actors


def stages(annotator: Annotator, cluster: Mapping[str, float]) -> list[Stage]:
    """The actor pools of a run (module docstring): one for CPU-local components, else segment + describe."""
    if parallel_safe(annotator):
        return [(AnnotateActor, {"num_cpus": 1})]
    device = {"num_cpus": 1, "num_gpus": 1} if cluster.get("GPU", 0) >= 1 else {"num_cpus": 1}
    return [(SegmentActor, device), (DescribeActor, device)]


def pool_size(requested: int | None, stages: Sequence[Stage], cluster: Mapping[str, float]) -> int:
    """Actors per pool: ``requested``, or as many as the cluster holds for every pool at once; a
    request the cluster cannot hold is an :class:`AnnotateError` (Ray would wait for it forever)."""
    fits = []
    for resource, ray_name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        per_pair = sum(needs.get(resource, 0) for _, needs in stages)
        if per_pair:
            fits.append((int(cluster.get(ray_name, 0) / per_pair + 1e-9), per_pair, ray_name))
    most = min(n for n, _, _ in fits)
    if requested is None:
        if most < 1:
            raise AnnotateError(f"the Ray cluster ({dict(cluster)}) cannot hold one actor per stage "
                                f"({', '.join(f'{p:g} {name}' for _, p, name in fits)}); add nodes")
        return most
    if requested > most:
        raise AnnotateError(f"--workers {requested} on Ray needs {', '.join(f'{requested * p:g} {name}' for _, p, name in fits)}"
                            f" but the cluster has {dict(cluster)}; use --workers {max(most, 1)} or add nodes")
    return requested


def check_reachable(address: str) -> None:
    """A quick TCP connect to ``HOST:PORT`` (or ``ray://HOST:PORT``), so an unreachable address fails
    in seconds with one line instead of Ray's long retries."""
    where = host_port(address)
    if where is None:
        raise AnnotateError(f"--ray-address {address}: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    err = connection_error(*where)
    if err is not None:
        raise AnnotateError(f"--ray-address {address}: cannot reach a Ray cluster there ({err}); start one with "
                            f"`ray start --head` (docs/SCALING.md) or check the address") from err


def root_cause(err: BaseException) -> BaseException:
    """The innermost cause of a Ray error (the worker's own exception where Ray kept it)."""
    while True:
        inner = getattr(err, "cause", None) or err.__cause__
        if inner is None or inner is err:
            return err
        err = inner


# --------------------------------------------------------------------------- the engine
class RayEngine:
    """Segment and describe on Ray Data actor pools; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.address, self.workers = address, workers
        self.ray = import_ray()

    def connect(self) -> None:
        """Join the cluster at ``address`` (``None``: ``RAY_ADDRESS``, else a local cluster started
        for this run); nothing when this process has joined one already."""
        if self.ray.is_initialized():
            return
        if self.address not in (None, "auto"):
            check_reachable(self.address)
        starts_local = self.address is None and "RAY_ADDRESS" not in os.environ
        try:
            self.ray.init(address=self.address, logging_level=logging.WARNING,
                          **({"include_dashboard": False} if starts_local else {}))
        except ConnectionError as err:
            raise AnnotateError(f"--ray-address {self.address}: {str(err).splitlines()[0]} (start one with "
                                f"`ray start --head`, docs/SCALING.md)") from err

    def processes(self, annotator: Annotator) -> int:
        self.connect()
        cluster = self.ray.cluster_resources()
        return pool_size(self.workers, stages(annotator, cluster), cluster)

    def run(self, todo: Sequence[tuple[str, Sample]], annotator: Annotator, writer: PartShardWriter,
            record: Mapping[str, Any], cfg: DictConfig, clock: StageClock, guard: FailureGuard) -> Iterator[int]:
        if not todo:
            return
        expected, seen = {key for key, _ in todo}, set()
        rows = iter(self.dataset(todo, annotator, record, cfg, clock.summary.workers).iter_rows())
        try:
            for row in rows:
                item = pickle.loads(row[COLUMN])
                if item.key in seen or item.key not in expected:
                    raise AnnotateError(f"the Ray engine returned {item.key} twice or unasked; finished shards are "
                                        f"kept: rerun to resume")
                seen.add(item.key)
                finish(item, writer, clock, guard)
                yield 1
        except self.ray.exceptions.RayError as err:
            cause = root_cause(err)
            raise AnnotateError(f"the Ray engine failed: {type(cause).__name__}: {str(cause).strip().splitlines()[-1]}"
                                f"; finished shards are kept: rerun to resume") from err
        finally:
            rows.close()  # stops the Ray Data execution and its actors now, not when collected
        missing = sorted(expected - seen)
        if missing:
            raise AnnotateError(f"the Ray engine returned no result for {len(missing)} sample(s), e.g. {missing[0]}; "
                                f"finished shards are kept: rerun to annotate them")

    def dataset(self, todo: Sequence[tuple[str, Sample]], annotator: Annotator, record: Mapping[str, Any],
                cfg: DictConfig, workers: int) -> Any:
        """The Ray Data pipeline of the module docstring, ``workers`` actors per stage."""
        data = self.ray.data
        config = OmegaConf.to_container(cfg, resolve=True)
        rows = [{COLUMN: blob} for blob in pack([Item(key, sample) for key, sample in todo])[COLUMN]]
        blocks = ceil(len(todo) / cfg.batch_size)
        workers = min(workers, blocks)  # an actor without a batch would only start up
        ds = data.from_items(rows, override_num_blocks=blocks)
        ds.context.execution_options.preserve_order = True
        ds.context.print_on_execution_start = False  # the run has its own progress bar and summary
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        for actor, needs in stages(annotator, self.ray.cluster_resources()):
            ds = ds.map_batches(actor, fn_constructor_args=(config, record), batch_size=cfg.batch_size,
                                compute=data.ActorPoolStrategy(size=workers), **needs)
        return ds


def finish(item: Item, writer: PartShardWriter, clock: StageClock, guard: FailureGuard) -> None:
    """Account for one returned sample in the summary and the failure guard; write it when annotated."""
    summary = clock.summary
    for name, (images, seconds) in item.seconds.items():
        clock.spent(name, images, seconds)
    summary.notes += item.notes
    if item.skip is not None:
        summary.skipped.append(item.skip)
        if item.error is not None:
            guard.failed(item.skip["stage"], item.skip["item"], type(item.error[0], (Exception,), {})(item.error[1]))
        return
    guard.passed()
    with clock.stage("write", 0):  # its images were counted where it was encoded
        write_sample(item.encoded, item.regions, writer, summary)
