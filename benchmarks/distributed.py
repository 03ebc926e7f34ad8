"""Distributed engines against the best local path, measured in one run on the same photos.

Annotation section: ``annotate.pipeline.annotate`` (offline config: classical segmenter + measures
describer) on the first ``--images`` photos of ``../shared/data/clive-dev``, through

1. the local engine with ``--workers`` processes (the best local path on a multi-core machine);
2. ``--engine ray`` with ``--workers`` actors per stage on a local Ray cluster of ``--cpus`` CPUs,
   started once before the timings (its start-up is printed apart: a real cluster is up already);
3. with ``--kill``, ``--engine ray`` again while one annotation actor's process is killed (SIGKILL)
   after a quarter of the local run's time: Ray restarts it and retries its batch.

Photos/s is the wall time of the ``annotate`` call (actor / process start-up included), the ratio is
Ray's over local's, and the shards of every Ray run are compared with the local run's member by
member (image bytes, label map, JSON record) and checked for exactly ``--images`` keys, none twice.
On a machine of few cores Ray pays its overhead (actor start-up, its own processes); its gain is
more machines.

Scoring section: ``rsfiqa score`` of the same photos (the first ``--images`` files of the root's
``images/`` folder, sorted) with the shipped model, local ``--workers N`` against ``--engine ray``
with N scorer actors (:func:`distributed_scoring.measure_scoring`: each a whole command, model
loading and actor start-up included).

    python benchmarks/distributed.py                       # 200 photos, 2 workers, with the kill run
    python benchmarks/distributed.py --images 24 --no-kill # a smoke run
    python benchmarks/distributed.py --sections scoring    # one section
"""
from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import benchutil

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "clive-dev"
CLIVE_OVERRIDES = ("dataset.mos_range=[0,100]",)  # CLIVE's MOS scale (its labels.csv has no range)
SECTIONS = ("annotation", "scoring")
ANNOTATE_ACTOR = b"MapBatches(AnnotateActor)"  # in the process title of the offline config's Ray actors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="a csv-layout dataset of real photos (labels.csv)")
    p.add_argument("--images", type=int, default=200, help="photos annotated (first ones in key order)")
    p.add_argument("--workers", type=int, default=2, help="local processes, and Ray actors per stage")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True,
                   help="also a Ray run with an annotation actor killed mid-run")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what is measured")
    return p


# --------------------------------------------------------------------------- shards
def shard_members(out: Path) -> dict[str, dict[str, bytes]]:
    """Key -> {member extension: bytes} over the completed shards; a key stored twice raises."""
    from annotate.writer import completed_shards
    from rsfiqa_core.tars import tar_members

    members: dict[str, dict[str, bytes]] = {}
    owner: dict[str, str] = {}
    for path in completed_shards(out):
        for key, ext, read in tar_members(str(path)):
            if owner.setdefault(key, path.name) != path.name:
                raise AssertionError(f"{key} stored twice ({owner[key]}, {path.name})")
            members.setdefault(key, {})[ext] = read()
    return members


def compare(reference: dict[str, dict[str, bytes]], got: dict[str, dict[str, bytes]]) -> str:
    """How ``got``'s samples compare with ``reference``'s, member by member."""
    differing = sorted(k for k in reference.keys() & got.keys() if reference[k] != got[k])
    missing, extra = reference.keys() - got.keys(), got.keys() - reference.keys()
    verdict = "equal" if not (differing or missing or extra) else "DIFFERENT"
    return (f"{len(got)} samples, {verdict} to local key by key (differing {len(differing)}, missing {len(missing)}, "
            f"extra {len(extra)})")


# --------------------------------------------------------------------------- runs
def timed_annotation(root: str, out: Path, images: int, engine: Any) -> float:
    """Seconds of one ``annotate`` call into ``out``."""
    from annotate.config import load_config
    from annotate.pipeline import annotate

    t0 = time.perf_counter()
    summary = annotate("csv", root, out, load_config(None, CLIVE_OVERRIDES), limit=images, progress=False,
                       engine=engine)
    seconds = time.perf_counter() - t0
    if summary.skipped:
        print(f"annotation skipped {len(summary.skipped)} item(s): {summary.skipped_by_reason()}")
    return seconds


def annotation_actor_pids() -> list[int]:
    """Processes whose title names a Ray Data annotation actor (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and ANNOTATE_ACTOR in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def kill_an_actor(after: float, killed: list[int]) -> threading.Thread:
    """A thread that SIGKILLs one annotation actor process ``after`` seconds from now (its pid into ``killed``)."""
    def kill() -> None:
        time.sleep(after)
        pids = annotation_actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def annotation_section(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Photos/s of local --workers N vs --engine ray with N actors per stage (+ the kill run)."""
    import ray

    from annotate.pipeline import LocalEngine
    from annotate.ray_engine import RayEngine

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    cluster_start = time.perf_counter() - t0
    settings = {"photos": args.images, "workers": args.workers, "ray cluster CPUs": args.cpus,
                "config": "offline (classical + measures)", "root": args.root}
    benchutil.print_header("Annotation: --engine ray vs local --workers", torch.device("cpu"), settings)
    print(f"ray {ray.__version__}: local cluster started in {cluster_start:.1f} s (not in the timings)")
    try:
        local_s = timed_annotation(args.root, work / "local", args.images, LocalEngine(args.workers))
        ray_s = timed_annotation(args.root, work / "ray", args.images, RayEngine(workers=args.workers))
        reference = shard_members(work / "local")
        rows = [("local", args.workers, local_s, args.images / local_s, "-"),
                ("ray", args.workers, ray_s, args.images / ray_s, compare(reference, shard_members(work / "ray")))]
        killed: list[int] = []
        if args.kill:
            thread = kill_an_actor(local_s / 4, killed)
            kill_s = timed_annotation(args.root, work / "ray-kill", args.images, RayEngine(workers=args.workers))
            thread.join()
            rows.append((f"ray, an actor killed (pid {killed[0] if killed else 'none found'})", args.workers,
                         kill_s, args.images / kill_s, compare(reference, shard_members(work / "ray-kill"))))
    finally:
        ray.shutdown()
    print(benchutil.markdown_table(("engine", "workers", "seconds", "photos/s", "shards"), rows))
    print(f"load average after: {benchutil.load_average()}")
    ratio = local_s / ray_s
    print(f"ratio ray / local photos/s: {ratio:.2f}x (target >= 0.85x: {'met' if ratio >= 0.85 else 'NOT met'})")
    return {"local_s": local_s, "ray_s": ray_s, "ratio": ratio}


def scoring_section(args: argparse.Namespace) -> dict[str, float]:
    """Photos/s of ``rsfiqa score`` local --workers N vs --engine ray with N actors, on the same photos."""
    import ray

    from distributed_scoring import throughput_part

    photos = sorted(p for p in (Path(args.root) / "images").iterdir() if p.is_file())[:args.images]
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    try:
        rates = throughput_part(photos, args.workers)
    finally:
        ray.shutdown()
    print(f"load average after: {benchutil.load_average()}")
    return rates


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    args = build_parser().parse_args(argv)
    results = {}
    if "annotation" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            results["annotation"] = annotation_section(args, Path(tmp))
    if "scoring" in args.sections:
        results["scoring"] = scoring_section(args)
    return results


if __name__ == "__main__":
    main()
