"""The annotation stage: dataset -> segmenter (eq. 5) -> describer -> resumable webdataset shards.

``annotate(dataset, root, out, cfg, part=(i, N))`` processes one part of a dataset:

1. the adapter reads the labels; samples are ordered by their contract key (``sample_key``), so
   the order never depends on the file system;
2. ``--limit`` keeps the first samples of that order; part ``i`` of ``N`` takes every N-th of them
   (``ordered[i::N]``), so N processes, one GPU each, can fill ONE output directory;
3. every sample's image file is hashed (SHA-256 of its bytes, over the whole dataset so that all
   parts agree): a second sample with the same bytes as an earlier one (the same file listed
   under two names, or a copy) is skipped as ``duplicate image content``, so it can never sit in
   two splits. Each record keeps what it was made from: the label values, the image checksum
   (``checksums``, ``rsfiqa_core.contract``) and ``source`` = {root, file};
4. samples whose key is in a completed shard (any part) are skipped: a rerun only does what is
   missing (writer.py describes the resume rules). A finished sample whose label values
   (``mos``, ``mos_range``, ``higher_better``, ``ref``, the adapter's extras) or image bytes differ
   from what the dataset holds now is refused with an :class:`~annotate.config.AnnotateError`
   naming the samples and what changed (a corrected MOS, a replaced image, another ``--root``,
   a ``mos_range`` inferred anew from appended rows): the shards would otherwise keep the old data.
   With ``redo_changed`` (``--redo-changed``) those samples are removed from their shards
   (``writer.drop_samples``) and annotated again instead. Likewise a finished sample of this part
   whose label row or image file is gone (or no longer usable: it is skipped now) is refused, naming
   it; ``drop_removed`` (``--drop-removed``) takes it out of the shards instead;
5. images load through ``rsfiqa_core.imageio.load_rgb``; an unreadable image is recorded as skipped
   with its reason and the run goes on; how the file was read (Pillow mode, frame count) is kept
   in the record's ``image_info``, and an animated image (first frame used) also in the summary's
   ``notes``;
6. segment, describe (``batch_size`` images at a time, :class:`annotate.api.Annotator`), build the
   contract record with the region texts, and write the original bytes + label map + record to the
   part's shards. When the segmenter or describer raises on a batch, the batch is redone image by
   image: an image that fails alone is skipped (stage ``segment`` / ``describe``, the exception in
   the reason) and the others go on. :data:`MAX_FAILURES_IN_A_ROW` such failures in a row end the run with
   an :class:`~annotate.config.AnnotateError` (a broken set-up, not bad images); the unfinished
   shard is dropped and a rerun resumes;
7. rebuild ``index.json`` over all parts and save ``summary-<dataset>-p<i>of<N>.json``.

The summary (printed and saved) names the first :data:`REPORTED_SKIPS` skipped items with their
reasons (the saved file lists them all) and the samples redone, and counts the samples selected,
already done, written and skipped (each skip with its item, reason and stage, plus counts by
reason), notes on images used with a documented conversion (animated: first frame), regions left
without a description (by ``missing_reason``), and the seconds and images/s of each stage: ``load``
(read + decode), ``segment``, ``describe``, ``write`` (record + region texts + label-map PNG +
tar). One-time start-up costs (model loading, imports) are outside the stage clocks.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, NamedTuple, Protocol, Sequence, TypeVar

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from annotate.api import Annotation, Annotator, Failure, Monitor
from annotate.config import AnnotateError, ConfigError, section
from annotate.datasets import get_adapter
from annotate.parallel import AnnotatorPool, worker_count
from annotate.describe import build_describer
from annotate.segment import build_segmenter
from annotate.types import Sample, Skipped
from annotate.writer import (
    PartShardWriter,
    claim_settings,
    discard_outputs,
    drop_samples,
    part_lock,
    part_prefix,
    rebuild_index,
    scan_shards,
    stored_records,
    summary_path,
)
from rsfiqa_core.components import Describer, Segmenter
from rsfiqa_core.contract import (
    CHECKSUMS_KEY,
    CONTRACT_VERSION,
    clip_token_count,
    content_hash,
    encode_sample,
    image_ext,
    make_record,
    sample_key,
)
from rsfiqa_core.imageio import ImageError, load_rgb
from rsfiqa_core.timing import StageSeconds
from rsfiqa_core.usererrors import check_output_folder, naming_the_file

T = TypeVar("T")
STAGES = ("load", "segment", "describe", "write")
MAX_FAILURES_IN_A_ROW = 10  # images failing in segmenter/describer one after another: stop the run
REPORTED_SKIPS = 20  # skipped items named in the printed summary (the saved summary lists all)
DUPLICATE_CONTENT = "duplicate image content"
SOURCE_KEY = "source"
# Installed packages whose version can change the bytes of a shard (recorded, and part of the
# settings fingerprint); a package that is not installed is recorded as null.
VERSIONED_PACKAGES = ("numpy", "pillow", "scipy", "scikit-image", "torch", "segment-anything",
                      "transformers", "vllm", "open_clip_torch", "webdataset")


@dataclass
class Summary:
    """What one part's run did; ``to_dict`` is saved as ``summary-<dataset>-p<i>of<N>.json``."""

    dataset: str
    part: str
    out: str
    selected: int = 0
    already_done: int = 0
    written: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    missing_descriptions: dict[str, int] = field(default_factory=dict)
    score_sources: dict[str, int] = field(default_factory=dict)  # region scores by ``score_source`` (MLLM)
    mixed_score_samples: int = 0  # samples whose region scores come from more than one source
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    wall_seconds: float = 0.0
    workers: int = 1              # annotation processes (stage seconds are summed over them)
    engine: str = "local"         # "local" (this machine) or "ray" (workers = actors per stage)
    shards_written: list[str] = field(default_factory=list)
    discarded_temp_files: list[str] = field(default_factory=list)
    index_count: int = 0
    summary_file: str = ""
    redone: list[str] = field(default_factory=list)  # finished samples done again: "<image>: <what changed>"
    removed: list[str] = field(default_factory=list)  # finished samples taken out: their inputs are gone

    def skipped_by_reason(self) -> dict[str, int]:
        """Skips counted by their reason without the parenthesised detail."""
        return dict(Counter(s["reason"].split(" (")[0] for s in self.skipped).most_common())

    def images_per_second(self) -> dict[str, float | None]:
        """Throughput of each stage over the time spent in it."""
        return {s: (self.stage_images[s] / self.stage_seconds[s] if self.stage_seconds[s] > 0 else None)
                for s in STAGES}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skipped_by_reason": self.skipped_by_reason(),
                "images_per_second": self.images_per_second()}

    def report(self) -> str:
        """A short human-readable account of the run."""
        rates = self.images_per_second()
        stages = ", ".join(f"{s} {self.stage_seconds[s]:.1f}s ({rates[s]:.1f} img/s)" if rates[s] else f"{s} -"
                           for s in STAGES)
        lines = [f"annotate {self.dataset} part {self.part} -> {self.out}",
                 f"  selected {self.selected}, already done {self.already_done}, written {self.written}, "
                 f"skipped {len(self.skipped)}; index.json now counts {self.index_count} samples",
                 f"  wall {self.wall_seconds:.1f}s ({self.workers} annotation process(es)"
                 f"{' per stage on Ray' if self.engine == 'ray' else ''}, stage seconds summed over them); {stages}"]
        lines += [f"  redone (inputs changed): {item}" for item in self.redone[:REPORTED_SKIPS]]
        lines += [f"  removed (label row or image gone): {item}" for item in self.removed[:REPORTED_SKIPS]]
        lines += [f"  skipped x{n}: {reason}" for reason, n in self.skipped_by_reason().items()]
        if self.skipped:
            shown = self.skipped[:REPORTED_SKIPS]
            lines.append(f"  skipped items ({len(shown)} of {len(self.skipped)}; all under 'skipped' in "
                         f"{self.summary_file or 'the saved summary'}):")
            lines += [f"    {s['item']}: {s['reason']}" for s in shown]
        lines += [f"  note x{n}: {note}" for note, n in Counter(n["note"] for n in self.notes).most_common()]
        lines += [f"  missing region descriptions x{n}: {reason}" for reason, n in self.missing_descriptions.items()]
        if self.score_sources:
            lines.append("  region scores by source: " + ", ".join(f"{s} x{n}" for s, n in self.score_sources.items())
                         + f"; samples mixing sources: {self.mixed_score_samples}")
        return "\n".join(lines)


class StageClock(StageSeconds):
    """Accumulates time and image counts per stage into a :class:`Summary`."""

    def __init__(self, summary: Summary):
        super().__init__(summary.stage_seconds, summary.stage_images)
        self.summary = summary

    def rates(self) -> str:
        return " ".join(f"{s} {r:.1f}/s" for s, r in self.summary.images_per_second().items() if r)


# --------------------------------------------------------------------------- selection
def parse_part(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--part must look like i/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--part {text}: need 0 <= i < N")
    return i, n


def order_samples(samples: Sequence[Sample]) -> tuple[list[tuple[str, Sample]], list[Skipped]]:
    """Samples sorted by contract key; a second sample with an already used key is skipped."""
    by_key: dict[str, Sample] = {}
    skipped = []
    for s in samples:
        key = sample_key(s.dataset, s.image_name)
        if key in by_key:
            skipped.append(Skipped(s.image_name, f"duplicate entry (same key as {by_key[key].image_name})"))
        else:
            by_key[key] = s
    return sorted(by_key.items()), skipped


def select_part(ordered: Sequence[tuple[str, Sample]], part: tuple[int, int],
                limit: int | None = None) -> list[tuple[str, Sample]]:
    """The first ``limit`` samples of the key order, then every N-th from position i."""
    i, n = part
    return list(ordered[:limit][i::n])


def image_hashes(ordered: Sequence[tuple[str, Sample]]) -> dict[str, str | None]:
    """Key -> SHA-256 of the image file's bytes (None for an empty or unreadable file: loading
    reports those with their own reason)."""
    hashes: dict[str, str | None] = {}
    for key, sample in ordered:
        try:
            data = Path(sample.image_path).read_bytes()
        except OSError:
            data = b""
        hashes[key] = content_hash(data) if data else None
    return hashes


def drop_same_content(ordered: Sequence[tuple[str, Sample]], hashes: Mapping[str, str | None]
                      ) -> tuple[list[tuple[str, Sample]], list[Skipped]]:
    """The samples without a byte-identical earlier one (in key order); the others as skips."""
    first: dict[str, Sample] = {}
    kept, skipped = [], []
    for key, sample in ordered:
        digest = hashes.get(key)
        if digest is not None and digest in first:
            skipped.append(Skipped(sample.image_name, f"{DUPLICATE_CONTENT} (same bytes as "
                                                      f"{first[digest].image_name}, which is kept)"))
            continue
        if digest is not None:
            first[digest] = sample
        kept.append((key, sample))
    return kept, skipped


def record_source(ordered: Sequence[tuple[str, Sample]], root: Path) -> None:
    """Put ``source`` = {root, file} into each sample's record extras (what the sample was made from)."""
    base = root.resolve()
    for _, sample in ordered:
        sample.extra[SOURCE_KEY] = {"root": str(base), "file": os.path.relpath(Path(sample.image_path).resolve(), base)}


def sample_changes(sample: Sample, digest: str | None, stored: Mapping[str, Any]) -> list[str]:
    """What differs between a finished sample's stored record and the sample as the dataset has it now."""
    now = {"mos": float(sample.mos), "mos_range": [float(x) for x in sample.mos_range],
           "higher_better": bool(sample.higher_better), "ref": sample.ref,
           **{k: v for k, v in sample.extra.items() if k != SOURCE_KEY}}
    now = json.loads(json.dumps(now))  # as the JSON record stores it (lists, floats)
    changes = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in now.items() if not same_json(stored.get(k), v)]
    old_digest = (stored.get(CHECKSUMS_KEY) or {}).get(image_ext(sample.image_name))
    if old_digest is not None and old_digest != digest:
        old_root = (stored.get(SOURCE_KEY) or {}).get("root")
        changes.append("image bytes differ" + (f" (annotated from {old_root})" if old_root else ""))
    return changes


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values (so a NaN extra equals itself)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def changed_samples(out: Path, finished: Sequence[tuple[str, Sample]],
                    hashes: Mapping[str, str | None]) -> dict[str, str]:
    """Key -> ``"<image>: <what changed>"`` of the finished samples made from other inputs than now."""
    records = stored_records(out, {key for key, _ in finished})
    return {key: f"{sample.image_name}: {', '.join(changes)}" for key, sample in finished
            if key in records and (changes := sample_changes(sample, hashes.get(key), records[key]))}


def refuse_changed(out: Path, root: Path, changed: Sequence[str]) -> None:
    """The error of module docstring step 4, naming the first changed samples."""
    hint = (" (a mos_range inferred from the rows changes when rows are added: set dataset.mos_range)"
            if any("mos_range" in c for c in changed) else "")
    raise AnnotateError(f"{out}: {len(changed)} finished sample(s) were made from other inputs than {root} holds "
                        f"now, e.g. {'; '.join(changed[:5])}{'; ...' if len(changed) > 5 else ''}{hint}; the "
                        f"shards would keep the old labels or images: rerun with --redo-changed to annotate "
                        f"them again, --force-new to start over, or restore the inputs")


def removed_samples(out: Path, part_keys: set[str], ordered: Sequence[tuple[str, Sample]]) -> dict[str, str]:
    """Key -> image name of this part's finished samples that the dataset no longer has (row or file removed,
    or now skipped)."""
    gone = part_keys - {key for key, _ in ordered}
    return {key: str(record.get("image", key)) for key, record in stored_records(out, gone).items()}


def refuse_removed(out: Path, root: Path, removed: Sequence[str]) -> None:
    """The error of module docstring step 4 for samples whose inputs are gone, naming the first ones."""
    raise AnnotateError(f"{out}: {len(removed)} finished sample(s) have no usable label row or image in {root} any "
                        f"more, e.g. {', '.join(removed[:5])}{', ...' if len(removed) > 5 else ''}; they would stay "
                        f"in the shards and be trained on: rerun with --drop-removed to take them out, --force-new "
                        f"to start over, or restore the inputs")


def built(what: str, build: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``build(*args, **kwargs)``; a bad name or option becomes a :class:`ConfigError` naming ``what``."""
    try:
        return build(*args, **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{what}: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from e


def make_segmenter(cfg: DictConfig) -> Segmenter:
    """The segmenter of ``cfg`` (``segmenter`` section + ``num_regions``)."""
    return built("segmenter", build_segmenter, {**section(cfg, "segmenter"), "num_regions": cfg.num_regions})


def make_describer(cfg: DictConfig) -> Describer:
    """The describer of ``cfg`` (``describer`` section)."""
    return built("describer", build_describer, section(cfg, "describer"))


# --------------------------------------------------------------------------- annotator record
def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`VERSIONED_PACKAGES` (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def annotator_info(annotator: Annotator, cfg: DictConfig) -> dict[str, Any]:
    """The record's ``annotator`` entry: component records, image handling, versions."""
    return {**annotator.record(), "image": section(cfg, "image"),
            "versions": {"contract": CONTRACT_VERSION, **package_versions()}}


def settings_fingerprint(dataset: str, cfg: DictConfig, annotator: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that changes what a sample's record contains (not shard sizes, batch size or parts)."""
    return {"dataset": dataset, "dataset_options": section(cfg, "dataset"), "num_regions": cfg.num_regions,
            "annotator": dict(annotator)}


# --------------------------------------------------------------------------- stages
class LoadedImage(NamedTuple):
    key: str
    sample: Sample
    data: bytes                   # the file's original bytes (stored unchanged)
    rgb: np.ndarray               # the upright image (its size is the label map's in the shard)
    info: dict[str, Any]          # how the file was read: Pillow mode, frame count (rsfiqa_core.imageio)


def load_images(batch: Sequence[tuple[str, Sample]], cfg: DictConfig, summary: Summary) -> list[LoadedImage]:
    """The batch's loadable images; the others are recorded in ``summary.skipped`` with the reason."""
    loaded = []
    for key, sample in batch:
        try:
            rgb, data, info = load_rgb(sample.image_path, max_pixels=cfg.image.max_pixels)
        except ImageError as e:
            reason = str(e).removeprefix(f"{sample.image_path}: ")
            summary.skipped.append({"item": sample.image_name, "reason": reason, "stage": "load"})
            continue
        if info["frames"] > 1:
            summary.notes.append({"item": sample.image_name, "note": "animated image: first frame used"})
        loaded.append(LoadedImage(key, sample, data, rgb, {"mode": info["mode"], "frames": info["frames"]}))
    return loaded


class FailureGuard:
    """Counts images that fail in the segmenter or describer one after another; at ``limit`` the run
    stops (many in a row mean a broken set-up — no GPU memory, a dead model server — not bad images)."""

    def __init__(self, limit: int = MAX_FAILURES_IN_A_ROW):
        self.limit, self.in_a_row = limit, 0

    def passed(self) -> None:
        self.in_a_row = 0

    def failed(self, stage: str, item: str, error: Exception) -> None:
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise AnnotateError(f"{self.in_a_row} images in a row failed in the {stage} stage, the last one "
                                f"{item}: {type(error).__name__}: {error}; fix the set-up and rerun (finished "
                                f"shards are kept)") from error


def build_sample(image: LoadedImage, annotation: Annotation, annotator: Mapping[str, Any]) -> dict[str, bytes]:
    """The encoded webdataset sample."""
    sample = image.sample
    record = make_record(dataset=sample.dataset, image=sample.image_name, mos=sample.mos,
                         mos_range=sample.mos_range, higher_better=sample.higher_better, ref=sample.ref,
                         splits=sample.splits, regions=annotation.regions, annotator=annotator,
                         image_info=image.info, **sample.extra)
    return encode_sample(image.key, image.data, sample.image_name, annotation.label_map, record)


def count_missing(descriptions: Sequence[Mapping[str, Any]], summary: Summary) -> None:
    """Tally regions whose description is missing, wholly or in part, by their ``missing_reason``, and
    one sample's region scores by their ``score_source`` (``"None"``: missing)."""
    for d in descriptions:
        if d.get("missing_reason"):
            reason = str(d.get("missing_reason") or "no reason given")
            summary.missing_descriptions[reason] = summary.missing_descriptions.get(reason, 0) + 1
    sources = [s for d in descriptions for s in (d.get("score_source") or {}).values()]
    for source in sources:
        summary.score_sources[str(source)] = summary.score_sources.get(str(source), 0) + 1
    summary.mixed_score_samples += len({s for s in sources if s is not None}) > 1


class PipelineMonitor(Monitor):
    """The annotation run's hooks: stage clocks, skips recorded in the summary, the failure guard."""

    def __init__(self, images: Sequence[LoadedImage], clock: StageClock, guard: FailureGuard) -> None:
        self.images, self.clock, self.guard = images, clock, guard

    def stage(self, name: str, images: int) -> ContextManager[None]:
        return self.clock.stage(name, images)

    def spent(self, name: str, images: int, seconds: float) -> None:
        self.clock.spent(name, images, seconds)

    def failed(self, index: int, failure: Failure) -> None:
        item = self.images[index].sample.image_name
        self.clock.summary.skipped.append({"item": item, "stage": failure.stage, "reason": failure.reason})
        self.guard.failed(failure.stage, item, failure.error)

    def passed(self) -> None:
        self.guard.passed()


def write_sample(sample: Mapping[str, bytes], regions: Sequence[Mapping[str, Any]], writer: PartShardWriter,
                 summary: Summary) -> None:
    """Write one encoded sample (:func:`build_sample`) and count it and its regions in ``summary``."""
    count_missing(regions, summary)
    writer.write(sample)
    summary.written += 1


def annotate_batch(batch: Sequence[tuple[str, Sample]], annotator: Annotator | AnnotatorPool, writer: PartShardWriter,
                   record: Mapping[str, Any], cfg: DictConfig, clock: StageClock, guard: FailureGuard) -> None:
    """Load, segment, describe and write one batch of samples."""
    summary = clock.summary
    with clock.stage("load", len(batch)):
        loaded = load_images(batch, cfg, summary)
    results = annotator.annotate([image.rgb for image in loaded], PipelineMonitor(loaded, clock, guard))
    done = [(image, result) for image, result in zip(loaded, results) if isinstance(result, Annotation)]
    with clock.stage("write", len(done)):
        for image, annotation in done:
            write_sample(build_sample(image, annotation, record), annotation.regions, writer, summary)


class Engine(Protocol):
    """Where segmentation and description run: :class:`LocalEngine`, or ``annotate.ray_engine.RayEngine``."""

    name: str

    def processes(self, annotator: Annotator) -> int:
        """Annotation processes (Ray: actors per stage) the run uses."""

    def run(self, todo: Sequence[tuple[str, Sample]], annotator: Annotator, writer: PartShardWriter,
            record: Mapping[str, Any], cfg: DictConfig, clock: StageClock, guard: FailureGuard) -> Iterator[int]:
        """Annotate and write every sample of ``todo`` (skips go to ``clock.summary``); yields the
        number of samples finished since the last yield."""


class LocalEngine:
    """This machine: one process, or ``workers`` processes (``None``: one per core; :mod:`annotate.parallel`)."""

    name = "local"

    def __init__(self, workers: int | None = 1) -> None:
        self.workers = workers

    def processes(self, annotator: Annotator) -> int:
        return worker_count(annotator, self.workers)

    def run(self, todo: Sequence[tuple[str, Sample]], annotator: Annotator, writer: PartShardWriter,
            record: Mapping[str, Any], cfg: DictConfig, clock: StageClock, guard: FailureGuard) -> Iterator[int]:
        workers = clock.summary.workers
        runner = AnnotatorPool(annotator, workers) if workers > 1 else nullcontext(annotator)
        clock.summary.workers = getattr(runner, "workers", 1)  # the pool caps it at the cores
        with runner as annotating:
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start:start + cfg.batch_size]
                annotate_batch(batch, annotating, writer, record, cfg, clock, guard)
                yield len(batch)


# --------------------------------------------------------------------------- the run
def annotate(dataset: str, root: str | Path, out: str | Path, cfg: DictConfig, part: tuple[int, int] = (0, 1),
             limit: int | None = None, force_new: bool = False, progress: bool = True,
             redo_changed: bool = False, workers: int | None = 1, drop_removed: bool = False,
             engine: Engine | None = None) -> Summary:
    """Annotate part ``part`` = (i, N) of ``dataset`` at ``root`` into the shard directory ``out``;
    ``redo_changed``: annotate finished samples whose inputs changed again instead of refusing;
    ``drop_removed``: take finished samples whose inputs are gone out of the shards instead of refusing;
    segment and describe on ``engine``, by default :class:`LocalEngine` with ``workers`` processes
    (``None``: one per core; :mod:`annotate.parallel`)."""
    t_start = time.perf_counter()
    out = check_output_folder("--out", out)  # before any work
    adapter = built(f"dataset {dataset!r}", get_adapter, dataset, **section(cfg, "dataset"))
    name = adapter.dataset_name
    samples, adapter_skips = adapter.load(Path(root))
    ordered, duplicate_skips = order_samples(samples)
    hashes = image_hashes(ordered)
    ordered, content_skips = drop_same_content(ordered, hashes)
    record_source(ordered, Path(root))
    selected = select_part(ordered, part, limit)

    annotator = Annotator(make_segmenter(cfg), make_describer(cfg), cfg.image.downscale_long_side)
    record = annotator_info(annotator, cfg)
    clip_token_count("")  # loads region_text's tokenizer (imports open_clip) before the stage clocks run

    if force_new:
        discard_outputs(out)
    claim_settings(out, settings_fingerprint(name, cfg, record))

    prefix = part_prefix(name, *part)
    engine = engine or LocalEngine(workers)
    summary = Summary(dataset=name, part=f"{part[0]}/{part[1]}", out=str(out), selected=len(selected),
                      workers=engine.processes(annotator), engine=engine.name)
    summary.skipped += [{"item": s.item, "reason": s.reason, "stage": "labels"}
                        for s in [*adapter_skips, *duplicate_skips, *content_skips]]
    with part_lock(out, prefix):
        writer = PartShardWriter(out, prefix, cfg.shards.maxcount, cfg.shards.maxsize)
        summary.discarded_temp_files = [p.name for p in writer.discard_temp_files()]
        finished = scan_shards(out)
        done = {k for keys in finished.values() for k in keys}
        changed = changed_samples(out, [(k, s) for k, s in selected if k in done], hashes)
        if changed and not redo_changed:
            refuse_changed(out, Path(root), list(changed.values()))
        removed = removed_samples(out, {k for shard, keys in finished.items() if shard.startswith(prefix + "-")
                                        for k in keys}, ordered)
        if removed and not drop_removed:
            refuse_removed(out, Path(root), sorted(removed.values()))
        drop_samples(out, set(changed) | set(removed))
        summary.redone = sorted(changed.values())
        summary.removed = sorted(removed.values())
        done -= set(changed) | set(removed)
        todo = [(k, s) for k, s in selected if k not in done]
        summary.already_done = len(selected) - len(todo)
        clock, guard = StageClock(summary), FailureGuard()
        with writer, closing(engine.run(todo, annotator, writer, record, cfg, clock, guard)) as batches, \
                tqdm(total=len(todo), unit="img", desc=prefix, disable=not progress) as bar:
            for count in batches:
                bar.update(count)
                bar.set_postfix_str(clock.rates(), refresh=False)
        summary.shards_written = [p.name for p in writer.completed]
        shards = rebuild_index(out, name, record)
    summary.index_count = sum(len(keys) for keys in shards.values())
    summary.wall_seconds = time.perf_counter() - t_start
    path = summary_path(out, name, *part)
    summary.summary_file = str(path)
    with naming_the_file(path):
        path.write_text(json.dumps(summary.to_dict(), indent=1, sort_keys=True))
    return summary
