"""Annotation on worker processes: :class:`AnnotatorPool` runs :meth:`annotate.api.Annotator.annotate`
one image per task in ``workers`` processes, so a CPU-bound segmenter and describer (the classical
segmenter and the measures describer hold the GIL most of the time) use every core.

Results are exactly a single process's: each worker runs the same :class:`~annotate.api.Annotator`
on one image, and the classical components compute an image's annotation from that image alone
(batching changes nothing), so the caller receives the same objects in the same order and writes
the same bytes. What the worker's :class:`~annotate.api.Monitor` saw (stage seconds, failures,
passes) is replayed into the caller's monitor image by image, in input order.

:meth:`AnnotatorPool.submit` returns at once, so the caller can overlap its own work (decoding the
next batch, the network when scoring) with the annotation of a batch. Only components that declare
``process_parallel = True`` (CPU-local and image by image: the classical segmenter, the measures
describer) go to workers; SAM and the MLLM describers batch on their device or server instead:
:func:`worker_count` gives them 1 process.

Workers are forked where the platform allows it (no re-import of the caller's modules, the
annotator inherited rather than pickled), else spawned. On Linux a worker dies with the process
that started it (:func:`die_with_parent`), so a killed run leaves no orphan behind. Use a pool from
the thread that created it (Linux ties a worker's life to that thread).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from annotate.api import Annotation, Annotator, Failure, Monitor

_WORKER_ANNOTATOR: Annotator | None = None  # the annotator of this worker process
log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_safe(annotator: Annotator) -> bool:
    """Whether both components may run in worker processes (both set ``process_parallel = True``)."""
    return all(getattr(c, "process_parallel", False) for c in (annotator.segmenter, annotator.describer))


def worker_count(annotator: Annotator, requested: int | None) -> int:
    """Processes to use: ``requested``, or (``None``) one per CPU core this process may use;
    always 1 unless :func:`parallel_safe` (a device or server component batches there instead)."""
    if not parallel_safe(annotator):
        return 1
    if requested is None:
        return available_cores()
    if requested < 1:
        raise ValueError(f"workers must be >= 1 (or None for one per core), got {requested}")
    return requested


def capped_workers(requested: int) -> int:
    """``requested`` processes, at most one per CPU core this process may use (a note says so when capped):
    more only compete for the same cores, and thousands exhaust the process table."""
    cores = available_cores()
    if requested > cores:
        log.warning(f"--workers {requested}: capped at {cores}, the CPU cores this process may use")
    return min(requested, cores)


class _Recorder(Monitor):
    """A worker-side monitor: stage seconds, then failures (``Failure``) and passes (``None``) in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, tuple[int, float]] = {}
        self.events: list[Failure | None] = []

    @contextmanager
    def stage(self, name: str, images: int) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[name] = (images, time.perf_counter() - t0)

    def failed(self, index: int, failure: Failure) -> None:
        self.events.append(failure)

    def passed(self) -> None:
        self.events.append(None)


_Outcome = tuple[Annotation | Failure, dict[str, tuple[int, float]], list[Failure | None]]


def die_with_parent(parent: int) -> None:
    """Linux: have this worker killed when the process that started it dies, even by SIGKILL; a
    forked orphan would otherwise live on holding the parent's inherited file locks (the part lock
    of ``annotate``, so a resumed run would be refused)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _init_worker(annotator: Annotator, parent: int) -> None:
    global _WORKER_ANNOTATOR
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no worker traceback
    _WORKER_ANNOTATOR = annotator


def _annotate_one(image: np.ndarray) -> _Outcome:
    recorder = _Recorder()
    result = _WORKER_ANNOTATOR.annotate([image], recorder)[0]
    return result, recorder.seconds, recorder.events


def replay(outcome: _Outcome, index: int, monitor: Monitor) -> Annotation | Failure:
    """Hand what a worker's monitor saw for image ``index`` to ``monitor``; the image's result."""
    result, seconds, events = outcome
    for name, (images, elapsed) in seconds.items():
        monitor.spent(name, images, elapsed)
    for event in events:
        if event is None:
            monitor.passed()
        else:
            monitor.failed(index, event)
    return result


@contextmanager
def workers_failing_as_oserror() -> Iterator[None]:
    """A worker that cannot start (out of processes or memory) or dies becomes one ``OSError`` saying so."""
    try:
        yield
    except (OSError, BrokenProcessPool) as err:
        raise OSError(getattr(err, "errno", None) or errno.EAGAIN,
                      f"annotation worker processes could not start or died ({err}); use fewer --workers") from err


class PendingAnnotation:
    """A submitted batch; :meth:`result` waits for it."""

    def __init__(self, futures: list[Future]) -> None:
        self.futures = futures

    def result(self, monitor: Monitor | None = None) -> list[Annotation | Failure]:
        """One :class:`Annotation` or :class:`Failure` per image, in order, as ``Annotator.annotate``."""
        monitor = monitor or Monitor()
        with workers_failing_as_oserror():
            return [replay(future.result(), i, monitor) for i, future in enumerate(self.futures)]


class AnnotatorPool:
    """``annotator`` on ``workers`` processes (module docstring); a context manager that shuts them down."""

    def __init__(self, annotator: Annotator, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.annotator = annotator
        self.workers = capped_workers(workers)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context(method),
                                        initializer=_init_worker, initargs=(annotator, os.getpid()))

    def submit(self, images: Sequence[np.ndarray]) -> PendingAnnotation:
        """Start annotating ``images`` (one task per image); returns without waiting. Workers that cannot
        start (out of processes or memory) are an ``OSError`` saying so."""
        with workers_failing_as_oserror():
            return PendingAnnotation([self.pool.submit(_annotate_one, image) for image in images])

    def annotate(self, images: Sequence[np.ndarray], monitor: Monitor | None = None) -> list[Annotation | Failure]:
        """``Annotator.annotate`` with the work done in the worker processes."""
        return self.submit(images).result(monitor)

    def record(self) -> dict[str, Any]:
        return self.annotator.record()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "AnnotatorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
