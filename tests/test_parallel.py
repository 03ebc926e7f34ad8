"""Annotation on worker processes (annotate/parallel.py): the same results, monitor events and shard
bytes as one process."""
from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from annotate.api import Annotation, Annotator, Failure, Monitor
from annotate.describe.measures import MeasuresDescriber
from annotate.parallel import AnnotatorPool, worker_count
from annotate.pipeline import annotate
from annotate.segment.classical import ClassicalSegmenter
from test_annotate_pipeline import config, make_tiny_dataset, tar_bytes


class FussySegmenter(ClassicalSegmenter):
    """The classical segmenter, raising on images whose top-left pixel is pure red."""

    def segment(self, image: np.ndarray):
        if tuple(image[0, 0]) == (255, 0, 0):
            raise RuntimeError("red corner")
        return super().segment(image)


class Log(Monitor):
    """Every monitor call, in order (stage seconds reduced to their image counts)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.images: dict[str, int] = {}

    @contextmanager
    def stage(self, name, images):
        yield
        self.images[name] = self.images.get(name, 0) + images

    def spent(self, name, images, seconds):
        assert seconds >= 0
        self.images[name] = self.images.get(name, 0) + images

    def failed(self, index, failure):
        self.calls.append(("failed", index, failure.stage, str(failure.error)))

    def passed(self):
        self.calls.append(("passed",))


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        im = np.full((48 + 8 * i, 64, 3), 40 * i % 255, np.uint8)
        im[10:30, 10:40] = rng.integers(0, 256, 3)
        im[20:, 30:] += rng.integers(0, 30, (im.shape[0] - 20, 34, 3), dtype=np.uint8)
        if i in (1, 2):
            im[0, 0] = (255, 0, 0)
        out.append(im)
    return out


def test_pool_gives_one_process_results_and_monitor_events():
    annotator = Annotator(FussySegmenter(num_regions=3, long_side=64, n_segments=30), MeasuresDescriber())
    batch = images(5)
    alone, pooled = Log(), Log()
    expected = [annotator.annotate([im], alone)[0] for im in batch]  # the pool's unit: one image per task
    with AnnotatorPool(annotator, 2) as pool:
        got = pool.annotate(batch, pooled)
    assert [type(r) for r in got] == [Annotation, Failure, Failure, Annotation, Annotation]
    for a, b in zip(expected, got):
        if isinstance(a, Failure):
            assert (a.stage, str(a.error)) == (b.stage, str(b.error))
        else:
            assert np.array_equal(a.label_map, b.label_map) and a.regions == b.regions
    assert pooled.images == {"segment": 5, "describe": 3}
    # the per-image events, each failure under its index in the batch
    assert pooled.calls == [("passed",), ("passed",), ("failed", 1, "segment", "red corner"),
                            ("failed", 2, "segment", "red corner"), ("passed",), ("passed",), ("passed",),
                            ("passed",)]
    # a whole batch in one process gives the same annotations
    whole = annotator.annotate(batch, Log())
    assert all(np.array_equal(a.label_map, b.label_map) and a.regions == b.regions
               for a, b in zip(whole, got) if isinstance(a, Annotation))


def test_worker_count_rules():
    classical = Annotator(ClassicalSegmenter(), MeasuresDescriber())
    assert worker_count(classical, 3) == 3
    assert worker_count(classical, None) >= 1
    with pytest.raises(ValueError, match="workers must be >= 1"):
        worker_count(classical, 0)
    batched = Annotator(ClassicalSegmenter(), MeasuresDescriber())
    batched.describer.process_parallel = False  # as SAM and the MLLM describers: they batch on their device
    assert worker_count(batched, 4) == 1


@pytest.mark.shared
def test_worker_processes_write_byte_identical_shards(tmp_path: Path):
    root = tmp_path / "data"
    labels = make_tiny_dataset(root, 9)
    (root / "images" / "broken.jpg").write_bytes(b"not an image")
    (root / "labels.csv").write_text((root / "labels.csv").read_text() + "broken.jpg,50\n")
    one = annotate("csv", root, tmp_path / "one", config(), progress=False, workers=1)
    two = annotate("csv", root, tmp_path / "two", config(), progress=False, workers=2)
    assert (one.workers, two.workers) == (1, 2)
    first, second = tar_bytes(tmp_path / "one"), tar_bytes(tmp_path / "two")
    assert len(first) == 3 and first == second  # 9 photos in shards of 4
    assert one.written == two.written == len(labels)
    assert one.skipped == two.skipped and len(one.skipped) == 1
    assert one.stage_images == two.stage_images
    assert one.missing_descriptions == two.missing_descriptions


CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from annotate.parallel import AnnotatorPool

class Sleeper:
    def annotate(self, images, monitor):
        time.sleep(60)

pool = AnnotatorPool(Sleeper(), 1)
pool.submit([None])
time.sleep(1.0)
print(*pool.pool._processes, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_workers_die_when_the_annotating_process_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(__file__).resolve().parents[1])],
                              stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 1 and pid_alive(workers[0])
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(workers[0]), "the worker outlived its killed parent"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False
