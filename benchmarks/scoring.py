"""Scoring and annotation at the cost of the network: the four speed/memory targets of issue 16,
measured side by side in one run on real photos (``../shared/data/clive-dev``), with the machine.

1. ``scoring``: the shipped model (``Scorer.from_pretrained``) over ``--photos`` photos at the
   default batch size: without region output (the shipped model reads the image only, so nothing
   is annotated: issue 23, target >= 0.9), and with regions (``regions=True``, as ``--regions`` /
   ``--report``) annotated in this process (``workers=0``) and in worker processes (``--workers``,
   default the scorer's; issue 16, target >= 0.5), each run preceded by the bare backbones'
   forward pass over as many random images at the model's input size (the physical limit). Text
   embeddings are cleared before every run (each run is a user's first). Printed: photos/s, the
   ratio scoring / bare backbone and the per-stage split (decode, segment, describe, prepare =
   resize to the network's input, text, network, write = CSV rows); with worker processes segment
   and describe are the workers' seconds, which overlap the others.
2. ``heatmaps``: the same run with ``--heatmap``-style PNGs (rsfiqa.inference.heatmap): seconds per
   photo of drawing + writing them, and the wall-time difference per photo (target <= 0.1 s).
3. ``annotation``: ``annotate.pipeline.annotate`` (offline config) on ``--annotate-photos`` photos
   with 1 process, then with ``--annotate-workers`` (default one per core); the ratio,
   the byte-identity of the shards, and the 930-photo time extrapolated from the measured rate
   (target <= 120 s).
4. ``memory``: ``rsfiqa score`` on one ``--big-side``² image (a CLIVE photo upscaled, PNG and JPEG,
   written to a temporary folder) and on the 500-px original, each in a fresh process: peak RSS
   (target <= 2 GB) and wall time.

With worker processes the scorer overlaps batch k+1's annotation with batch k's network, so the
first batch's annotation and the last one's network run alone: with 4 batches (32 photos) that
fill costs about a fifth of the throughput, hence ``--photos 96``.

    python benchmarks/scoring.py                          # everything (about 6 min on 2 cores)
    python benchmarks/scoring.py --parts annotation --annotate-photos 100
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import benchutil

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "clive-dev"
CLIVE_OVERRIDES = ("dataset.mos_range=[0,100]",)
PARTS = ("scoring", "heatmaps", "annotation", "memory")
FULL_DATASET = 930  # clive-dev photos, for the annotation extrapolation
TARGETS = {"scoring": 0.5, "scoring_no_regions": 0.9, "heatmap_s": 0.1, "annotation_s": 120.0, "memory_gb": 2.0}
NO_REGIONS = "no region output (nothing annotated)"
# A fresh process runs `rsfiqa score ARGS` (its command-line arguments) and prints its peak RSS (kB), the
# largest peak of its child processes (annotation workers) and wall seconds. Linux's VmHWM is this
# process's own peak; ru_maxrss would include the benchmark's RSS at fork (kept across exec).
MEMORY_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from rsfiqa.commands import main  # the console script's entry
status = main(["score", *sys.argv[1:]])
try:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": status, "maxrss_kb": peak, "seconds": time.perf_counter() - t0,
                  "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="a csv-layout dataset of real photos (images/)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--model", default=None, help="shipped model (default: rsfiqa's default)")
    p.add_argument("--photos", type=int, default=96, help="photos per scoring run (the first batch's annotation and "
                                                          "the last one's network are not overlapped: use many)")
    p.add_argument("--batch", type=int, default=None, help="scoring batch (default: the scorer's)")
    p.add_argument("--workers", type=int, default=None, help="scoring's annotation processes (default: the scorer's)")
    p.add_argument("--reps", type=int, default=1, help="interleaved repetitions of each scoring variant")
    p.add_argument("--annotate-photos", type=int, default=48)
    p.add_argument("--annotate-workers", type=int, default=None, help="default: one per core")
    p.add_argument("--big-side", type=int, default=10000, help="side of the square memory-test image")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p


def photo_paths(root: str, count: int) -> list[Path]:
    files = sorted(p for p in (Path(root) / "images").iterdir() if p.is_file())
    if len(files) < count:
        raise SystemExit(f"{root}/images holds {len(files)} photos, fewer than the {count} asked for")
    return files[:count]


def machine() -> str:
    return f"{benchutil.device_name(torch.device('cpu'))}; load average {benchutil.load_average()}"


# --------------------------------------------------------------------------- 1 + 2: scoring, heatmaps
def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the annotation workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bare_backbones(net: Any, images: torch.Tensor) -> None:
    """The forward pass of every backbone of the net (the statistics path has two)."""
    for backbone in net.backbones:
        backbone(images)


def backbone_run(scorer: Any, images: int, batch: int) -> dict[str, float]:
    """Wall and CPU seconds of the bare backbones' forward pass over ``images`` random inputs in batches."""
    x = torch.rand(batch, 3, *scorer.image_size)
    with torch.inference_mode():
        bare_backbones(scorer.net, x[:1])  # warm-up
        t0, c0 = time.perf_counter(), cpu_seconds()
        for start in range(0, images, batch):
            bare_backbones(scorer.net, x[:min(batch, images - start)])
        return {"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0}


def scoring_run(scorer: Any, photos: list[Path], batch: int, workers: int, heatmaps: Path | None) -> dict[str, Any]:
    """One `rsfiqa score`-like pass: wall seconds, stage seconds (+ write, + heatmap)."""
    from rsfiqa.inference.heatmap import render_heatmap
    from rsfiqa.inference.outputs import CsvRows, output_columns
    from rsfiqa.inference.scorer import StageTimes

    scorer.workers, scorer.times = workers, StageTimes()
    if getattr(scorer.net, "text_encoder", None) is not None:
        scorer.net.text_encoder._cache.clear()  # every run encodes its descriptions, as a first run does
    columns = output_columns(mos=False, heatmaps=False, regions=scorer.annotates)
    writer, write_s, heatmap_s = CsvRows(io.StringIO(), columns, "<memory>"), 0.0, 0.0
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i, scored in enumerate(scorer.iter_scored(photos, batch, keep_arrays=heatmaps is not None)):
        if scored.record["error"] is not None:
            raise SystemExit(f"benchmark photo failed: {scored.record['error']}")
        if heatmaps is not None:
            t1 = time.perf_counter()
            render_heatmap(heatmaps / f"{i}.png", scored.rgb, scored.label_map, scored.record["regions"],
                           f"{scored.record['image']}: {scored.record['score']:.2f}")
            heatmap_s += time.perf_counter() - t1
        t1 = time.perf_counter()
        writer.write(scored.record)
        write_s += time.perf_counter() - t1
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0  # the workers have been joined: counted
    return {"wall": wall, "cpu": cpu, "stages": {**scorer.times.seconds, "write": write_s}, "heatmap": heatmap_s}


def scoring_parts(args: argparse.Namespace, parts: Sequence[str]) -> None:
    from rsfiqa.inference import pretrained
    from rsfiqa.inference.scorer import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, Scorer

    name = args.model or pretrained.DEFAULT_MODEL
    scorer, annotating = Scorer.from_pretrained(name), Scorer.from_pretrained(name, regions=True)
    batch, workers = args.batch or DEFAULT_BATCH_SIZE, DEFAULT_WORKERS if args.workers is None else args.workers
    photos = photo_paths(args.root, args.photos)
    variants = {NO_REGIONS: (scorer, 0, False),
                "regions, in-process annotation (workers=0)": (annotating, 0, False),
                f"regions, annotation in {workers} worker process(es)": (annotating, workers, False)}
    if "heatmaps" in parts:
        variants[f"workers={workers} + heatmaps"] = (annotating, workers, True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    bare: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="rsfiqa-bench-heatmaps-") as tmp:
        for warm in (scorer, annotating):
            scoring_run(warm, photos[:2], batch, 0, None)  # warm-up (imports, first-call allocations)
        for _ in range(args.reps):
            for name, (variant, w, with_heatmaps) in variants.items():
                bare.append(backbone_run(scorer, len(photos), batch))
                runs[name].append(scoring_run(variant, photos, batch, w, Path(tmp) if with_heatmaps else None))
    n = len(photos)
    bare_best = min(bare, key=lambda run: run["wall"])
    bare_rate, bare_cpu = n / bare_best["wall"], min(run["cpu"] for run in bare) / n
    benchutil.print_header("Scoring throughput vs the bare backbone (issue 16, targets 1 and 3; issue 23)",
                           torch.device("cpu"),
                           {"model": args.model or pretrained.DEFAULT_MODEL, "photos": n, "batch": batch,
                            "input": "x".join(map(str, scorer.image_size)), "reps": args.reps})
    best = {name: min(r, key=lambda run: run["wall"]) for name, r in runs.items()}
    rows = [("bare backbone forward", f"{bare_best['wall']:.1f}", f"{bare_rate:.2f}", "1.00x", f"{bare_cpu:.3f}",
             "1.00x")]
    rows += [(name, f"{run['wall']:.1f}", f"{n / run['wall']:.2f}", f"{n / run['wall'] / bare_rate:.2f}x",
              f"{run['cpu'] / n:.3f}", f"{bare_cpu / (run['cpu'] / n):.2f}x") for name, run in best.items()]
    print(benchutil.markdown_table(("run (best of reps)", "wall s", "photos/s", "vs bare backbone",
                                    "CPU s/photo (all processes)", "CPU: bare / this"), rows))
    print("CPU: bare / this = the throughput ratio on a machine whose cores are all kept busy (each process's "
          "CPU time hardly depends on the other jobs of a shared machine, its wall time does)")
    stages = list(next(iter(best.values()))["stages"])
    split = [(name, *(1000 * run["stages"][s] / n for s in stages)) for name, run in best.items()]
    print(benchutil.markdown_table(("ms per photo", *stages), split))
    for name, run in best.items():
        if "heatmaps" not in name:
            ratio = n / run["wall"] / bare_rate
            target = TARGETS["scoring_no_regions" if name == NO_REGIONS else "scoring"]
            verdict = "met" if ratio >= target else "NOT MET"
            print(f"ratio scoring ({name}) / bare backbone: {ratio:.2f}x (target >= {target}: {verdict})")
    if "heatmaps" in parts:
        with_maps, without = (best[f"workers={workers} + heatmaps"],
                              best[f"regions, annotation in {workers} worker process(es)"])
        drawing = with_maps["heatmap"] / n
        extra = (with_maps["wall"] - without["wall"]) / n
        verdict = "met" if drawing <= TARGETS["heatmap_s"] else "NOT MET"
        print(f"heatmap drawing + PNG: {drawing:.3f} s/photo (target <= {TARGETS['heatmap_s']}: {verdict}); "
              f"wall difference with/without heatmaps: {extra:+.3f} s/photo")
    print(f"machine after the runs: {machine()}")


# --------------------------------------------------------------------------- 3: annotation
def annotation_part(args: argparse.Namespace) -> None:
    from annotate.config import load_config
    from annotate.pipeline import annotate
    from annotate.writer import completed_shards

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    many = args.annotate_workers or cores
    cfg = load_config(None, list(CLIVE_OVERRIDES))
    walls: dict[int, float] = {}
    shards: dict[int, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="rsfiqa-bench-annotate-") as tmp:
        for workers in (1, many):
            out = Path(tmp) / f"w{workers}"
            summary = annotate("csv", args.root, out, cfg, limit=args.annotate_photos, progress=False, workers=workers)
            walls[workers] = summary.wall_seconds
            shards[workers] = {p.name: p.read_bytes() for p in completed_shards(out)}
    n = args.annotate_photos
    benchutil.print_header("Annotation with worker processes (issue 16, target 2)", torch.device("cpu"),
                           {"photos": n, "config": "configs/annotate/offline.yaml", "cores": cores})
    print(benchutil.markdown_table(("processes", "wall s", "photos/s", f"{FULL_DATASET} photos, extrapolated s"),
                                   [(w, walls[w], n / walls[w], FULL_DATASET * walls[w] / n) for w in walls]))
    identical = shards[1] == shards[many] and len(shards[1]) > 0
    projected = FULL_DATASET * walls[many] / n
    print(f"ratio {many} processes / 1 process (photos/s): {walls[1] / walls[many]:.2f}x; shards byte-identical: "
          f"{identical}")
    print(f"{FULL_DATASET} photos extrapolated from {n}: {projected:.0f} s (target <= {TARGETS['annotation_s']:.0f}: "
          f"{'met' if projected <= TARGETS['annotation_s'] else 'NOT MET'})")
    print(f"machine after the runs: {machine()}")


# --------------------------------------------------------------------------- 4: memory
def big_images(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """The 500-px original and it upscaled to ``--big-side``² as PNG and JPEG."""
    from PIL import Image

    source = photo_paths(args.root, 1)[0]
    big = Image.open(source).convert("RGB").resize((args.big_side, args.big_side), Image.BICUBIC)
    paths = {"original": source, "png": folder / "big.png", "jpeg": folder / "big.jpg"}
    big.save(paths["png"], compress_level=1)
    big.save(paths["jpeg"], quality=90)
    return paths


def memory_part(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsfiqa-bench-memory-") as tmp:
        for kind, path in big_images(args, Path(tmp)).items():
            done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), "--no-progress", "--out",
                                   str(Path(tmp) / f"{kind}.csv")],
                                  cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"memory run on {path} failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((kind, path.stat().st_size / 1e6, result["maxrss_kb"] / 1024 ** 2, result["seconds"]))
    benchutil.print_header("Peak memory of `rsfiqa score` on one image, fresh process (issue 16, target 4)",
                           torch.device("cpu"), {"big image": f"{args.big_side}x{args.big_side} "
                                                              f"({args.big_side ** 2 / 1e6:.0f} MP)"})
    print(benchutil.markdown_table(("image", "file MB", "peak RSS GB", "wall s (incl. start-up)"), rows))
    worst = max(r[2] for r in rows)
    print(f"peak RSS, largest of the runs: {worst:.2f} GB (target <= {TARGETS['memory_gb']}: "
          f"{'met' if worst <= TARGETS['memory_gb'] else 'NOT MET'}); the 500-px original's "
          f"{rows[0][2]:.2f} GB is the process's own (torch, model, text tower)")
    print(f"machine after the runs: {machine()}")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    if "scoring" in args.parts or "heatmaps" in args.parts:
        scoring_parts(args, args.parts)
    if "annotation" in args.parts:
        annotation_part(args)
    if "memory" in args.parts:
        memory_part(args)


if __name__ == "__main__":
    main(sys.argv[1:])
