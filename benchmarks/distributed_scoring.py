"""Bulk scoring beyond one process (issue 22, scoring half), measured on real photos
(``../shared/data/clive-dev``) with the machine and its load.

1. ``throughput``: :func:`measure_scoring` of the same photos through ``rsfiqa score --engine ray``
   with 2 scorer actors on a local Ray cluster against the best local path (``--workers 2``), one
   run each. Each run is a whole ``rsfiqa score`` call (model loading, and for Ray the actors'
   start-up and model loading, included); the local Ray cluster itself is started beforehand, as a
   cluster is running before its users score. Printed: photos/s and the ratio Ray / local.
2. ``report``: ``rsfiqa score --report`` in a fresh process on N photos (symbolic links to clive-dev
   photos, cycled) for each N of ``--report-photos``: peak RSS of the process and of its largest child
   (the annotation worker), to show that it does not grow with the number of photos (the report's
   thumbnails are written beside the page, not kept; target: 5,000 photos within 1.5 GB).

    python benchmarks/distributed_scoring.py --photos 48                     # throughput
    python benchmarks/distributed_scoring.py --parts report --report-photos 300 600
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

import benchutil
from scoring import MEMORY_CHILD

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "clive-dev" / "images"
PARTS = ("throughput", "report")
REPORT_TARGET_GB = 1.5


def measure_scoring(photos: Sequence[Path], engine: str, workers: int) -> float:
    """Photos/s of one ``rsfiqa score PHOTOS --engine ENGINE --workers WORKERS`` in this process
    (CSV into a temporary file). ``ray``: joins the running cluster, or starts a local one of this
    machine's cores first (not timed)."""
    from rsfiqa.inference import score_cli

    if engine == "ray":
        import ray
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory(prefix="rsfiqa-bench-distributed-") as tmp:
        start = time.perf_counter()
        status = score_cli.main([*map(str, photos), "--out", str(Path(tmp) / "scores.csv"), "--no-progress",
                                 "--engine", engine, "--workers", str(workers)])
        seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"rsfiqa score --engine {engine} failed with status {status}")
    return len(photos) / seconds


def throughput_part(photos: list[Path], workers: int) -> dict[str, float]:
    """Prints and returns photos/s of both engines and their ratio (``ratio``: ray / local)."""
    rates = {engine: measure_scoring(photos, engine, workers) for engine in ("local", "ray")}
    benchutil.print_header(f"rsfiqa score --engine ray vs local on {len(photos)} photos", torch.device("cpu"),
                           {"workers": workers, "model": "shipped default"})
    print(benchutil.markdown_table(("engine", "photos/s"), [(f"local --workers {workers}", rates["local"]),
                                                             (f"ray, {workers} actors", rates["ray"])]))
    print(f"ratio ray / local: {rates['ray'] / rates['local']:.2f}")
    return {**rates, "ratio": rates["ray"] / rates["local"]}


def report_part(sources: list[Path], counts: Sequence[int]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="rsfiqa-bench-report-") as tmp:
            folder = Path(tmp) / "photos"
            folder.mkdir()
            for i in range(count):
                source = sources[i % len(sources)]
                (folder / f"{i:06d}{source.suffix}").symlink_to(source)
            done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(folder), "--no-progress", "--out",
                                   str(Path(tmp) / "s.csv"), "--report", str(Path(tmp) / "report.html")],
                                  cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"report run on {count} photos failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((count, result["maxrss_kb"] / 1024 ** 2, result["children_maxrss_kb"] / 1024 ** 2,
                         result["seconds"]))
    benchutil.print_header("Peak memory of `rsfiqa score --report`, fresh process per count", torch.device("cpu"),
                           {"photos": "symbolic links to clive-dev photos"})
    print(benchutil.markdown_table(("photos", "peak RSS GB", "largest child GB", "wall s"), rows))
    growth = (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0]) * 1024 ** 2 if len(rows) > 1 else float("nan")
    print(f"growth of the peak between the counts: {growth:.1f} kB per photo; target {REPORT_TARGET_GB} GB at 5,000 "
          f"photos")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=str(DEFAULT_PHOTOS), help="a folder of photos")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=["throughput"])
    p.add_argument("--photos", type=int, default=48, help="photos of the throughput runs")
    p.add_argument("--workers", type=int, default=2, help="local annotation workers / Ray actors")
    p.add_argument("--report-photos", type=int, nargs="+", default=[300, 600], help="photo counts of the report runs")
    args = p.parse_args(argv)
    sources = sorted(Path(args.images).iterdir())
    if "throughput" in args.parts:
        throughput_part(sources[:args.photos], args.workers)
    if "report" in args.parts:
        report_part(sources, args.report_photos)


if __name__ == "__main__":
    main()
