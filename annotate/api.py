"""The public API of ``annotate`` for the layers above it: annotate images exactly as the shards
record them, with annotators rebuilt from a shard's ``annotator`` record.

``Annotator.annotate`` is the one place where a batch is annotated: segment the batch (image by
image when the batch raises), describe it (the same), at the annotation resolution
(``image.downscale_long_side``), then the label map is brought back to each image's size and the
contract's region entries are built. Its two halves, :func:`segment_stage` and
:func:`describe_stage`, are what an engine running the stages on different workers calls
(``annotate.ray_engine``).
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping, Sequence, TypeVar

import numpy as np
from omegaconf import OmegaConf

from annotate.describe import DESCRIBERS
from annotate.registry import build, component_record, recorded_config
from annotate.segment import SEGMENTERS
from rsfiqa_core.components import Describer, Segmentation, Segmenter, resize_segmentation
from rsfiqa_core.contract import empty_region, region_text
from rsfiqa_core.imageio import downscale

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
REGISTRIES: dict[str, Mapping[str, type]] = {"segmenter": SEGMENTERS, "describer": DESCRIBERS}


class AnnotatorSetupError(RuntimeError):
    """A recorded or requested ``kind`` of component that cannot be built here; the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Annotation:
    """One image annotated: its label map at the image's own size and the contract's region entries."""

    label_map: np.ndarray
    regions: list[dict[str, Any]]


@dataclass
class Failure:
    """An image that failed alone in a stage (``"segment"`` or ``"describe"``)."""

    stage: str
    error: Exception

    @property
    def reason(self) -> str:
        return f"{self.stage} failed ({type(self.error).__name__}: {self.error})"


class Monitor:
    """Hooks of :meth:`Annotator.annotate` (no-ops here): a clock around each stage, per-image failures."""

    def stage(self, name: str, images: int) -> ContextManager[Any]:
        return nullcontext()

    def spent(self, name: str, images: int, seconds: float) -> None:
        """``seconds`` spent in stage ``name`` on ``images`` images elsewhere (a worker process)."""

    def failed(self, index: int, failure: Failure) -> None:
        pass

    def passed(self) -> None:
        pass


def region_records(seg: Segmentation, descriptions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Contract region entries: geometry from the segmentation, description + text from the describer."""
    return [{**empty_region(r, area, score, valid), **desc, "text": region_text(desc)}
            for r, (valid, area, score, desc)
            in enumerate(zip(seg.valid, seg.area, seg.seg_score, descriptions, strict=True))]


def segment_images(segmenter: Segmenter, images: Sequence[np.ndarray]) -> list[Segmentation]:
    """Segment a batch, through ``segment_batch`` where the segmenter has one."""
    batch_fn = getattr(segmenter, "segment_batch", None)
    return list(batch_fn(images)) if batch_fn else [segmenter.segment(im) for im in images]


def batch_or_each(stage: str, fn: Callable[[list[T]], list[R]], items: list[T], indices: list[int],
                  monitor: Monitor) -> dict[int, R | Failure]:
    """``fn`` over the batch, one result per item; when it raises, item by item: an item that fails
    alone becomes a :class:`Failure` (reported to ``monitor``)."""
    try:
        results: dict[int, R | Failure] = dict(zip(indices, fn(items), strict=True))
    except Exception:  # noqa: BLE001 -- redone item by item below, where each failure is kept
        results = {}
        for index, item in zip(indices, items):
            try:
                results[index] = fn([item])[0]
            except Exception as err:  # noqa: BLE001 -- this item's failure; the others go on
                results[index] = failure = Failure(stage, err)
                monitor.failed(index, failure)
    if any(not isinstance(r, Failure) for r in results.values()):
        monitor.passed()
    return results


class Annotator:
    """A segmenter and a describer run at the annotation resolution ``long_side``."""

    def __init__(self, segmenter: Segmenter, describer: Describer, long_side: int | None = None) -> None:
        self.segmenter, self.describer, self.long_side = segmenter, describer, long_side

    @classmethod
    def from_record(cls, record: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    defaults: Mapping[str, Mapping[str, Any]] | None = None, device: Any = None) -> "Annotator":
        """The annotator a shard's ``annotator`` record describes, with ``overrides`` per kind merged
        into the recorded configs (one naming another component starts from ``defaults``); every
        difference between the recorded and the rebuilt config is logged as a warning."""
        built = {}
        for kind, registry in REGISTRIES.items():
            recorded = recorded_config(registry, record.get(kind) or {})
            override = dict((overrides or {}).get(kind) or {})
            base = recorded
            if "name" in override and override["name"] != recorded.get("name"):
                log.warning("%s %r replaces the recorded %r: scores differ from training conditions",
                            kind, override["name"], recorded.get("name"))
                base = {}
            config = {**dict((defaults or {}).get(kind) or {}),
                      **OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(override)))}
            try:
                component = build(kind, registry, config, device)
            except (ImportError, OSError, ValueError, TypeError, RuntimeError) as err:
                others = " | ".join(f"name={n}" for n in registry)
                raise AnnotatorSetupError(kind, f"the {kind} cannot be built on this machine: {type(err).__name__}: "
                                                f"{err}\n  {kind} config: {config}\n  change its options, or use "
                                                f"another {kind} ({others}; scores then differ from training "
                                                f"conditions)") from err
            now = {"name": component.name, **component.config()}
            differences = config_differences(recorded, now) if now["name"] == recorded.get("name") else []
            if differences:
                log.warning("%s settings differ from the recorded annotation (key: recorded -> now): %s; scores may "
                            "differ from training conditions", kind, "; ".join(differences))
            built[kind] = component
        return cls(built["segmenter"], built["describer"], (record.get("image") or {}).get("downscale_long_side"))

    def record(self) -> dict[str, Any]:
        """The shard record of both components (the ``segmenter`` and ``describer`` entries)."""
        return {"segmenter": component_record(self.segmenter), "describer": component_record(self.describer)}

    def annotate(self, images: Sequence[np.ndarray], monitor: Monitor | None = None) -> list[Annotation | Failure]:
        """One :class:`Annotation` or :class:`Failure` per RGB uint8 image, in order (module docstring)."""
        monitor = monitor or Monitor()
        small, segs = segment_stage(self.segmenter, self.long_side, images, monitor)
        return describe_stage(self.describer, [rgb.shape[:2] for rgb in images], small, segs, monitor)


def segment_stage(segmenter: Segmenter, long_side: int | None, images: Sequence[np.ndarray],
                  monitor: Monitor) -> tuple[list[np.ndarray], list[Segmentation | Failure]]:
    """The first half of :meth:`Annotator.annotate`: the images at the annotation resolution and, per
    image, its segmentation or :class:`Failure` (an engine may run the halves on different workers)."""
    indices = list(range(len(images)))
    with monitor.stage("segment", len(images)):
        small = [downscale(rgb, long_side) for rgb in images]
        segs = batch_or_each("segment", lambda ims: segment_images(segmenter, ims), small, indices, monitor)
    return small, [segs[i] for i in indices]


def describe_stage(describer: Describer, shapes: Sequence[tuple[int, int]], small: Sequence[np.ndarray],
                   segs: Sequence[Segmentation | Failure], monitor: Monitor) -> list[Annotation | Failure]:
    """The second half of :meth:`Annotator.annotate`: describe the segmented images of
    :func:`segment_stage` and bring each label map back to its image's size ``shapes[i]``."""
    ok = [i for i, seg in enumerate(segs) if not isinstance(seg, Failure)]
    with monitor.stage("describe", len(ok)):
        descs = batch_or_each("describe", lambda pairs: describer.describe([p[0] for p in pairs], [p[1] for p in pairs]),
                              [(small[i], segs[i]) for i in ok], ok, monitor)
    out: list[Annotation | Failure] = []
    for i, shape in enumerate(shapes):
        result = descs.get(i, segs[i])
        if not isinstance(result, Failure):
            seg = resize_segmentation(segs[i], shape)
            result = Annotation(seg.label_map, region_records(seg, result))
        out.append(result)
    return out


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every (nested) config value that differs."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += config_differences(old, new, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return out
