"""Command line of the annotation stage (``python -m annotate`` / ``make annotate``).

    python -m annotate --dataset koniq --root /data/koniq10k --out shards/koniq \
        [--config configs/annotate/paper.yaml] [--part i/N] [--limit N] [--force-new] [--redo-changed] \
        [--workers N] [--engine local|ray] [--ray-address auto|HOST:PORT] \
        [segmenter.checkpoint=/models/sam_vit_h_4b8939.pth batch_size=16 ...]

Without ``--part``, a SLURM job step takes its part from ``SLURM_ARRAY_TASK_ID`` /
``SLURM_ARRAY_TASK_COUNT`` (an array job; ids counted from ``SLURM_ARRAY_TASK_MIN``), else from
``SLURM_PROCID`` / ``SLURM_NTASKS`` (``srun`` tasks), and says so in its first line.

Exit status 0 when the run completes (skipped samples are reported, not fatal); 1 with a
one-line message for an expected error (missing label file, settings mismatch, bad config, full
disk); 130 with one line after Ctrl-C (finished shards are kept; the same command resumes).
``--debug`` shows the traceback instead (``rsfiqa_core.usererrors``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Sequence

from omegaconf.errors import OmegaConfBaseException

from annotate.config import AnnotateError, ConfigError, load_config
from annotate.datasets import DatasetError
from annotate.describe.backends import MissingExtraError
from annotate.pipeline import Engine, LocalEngine, annotate, parse_part
from rsfiqa_core.contract import ContractError
from rsfiqa_core.imageio import ImageError
from rsfiqa_core.usererrors import SettingError, pop_debug, run_reporting, warnings_as_lines

# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
EXIT_ERROR = 1
ON_INTERRUPT = "finished shards are kept; rerun the same command to resume"
EXPECTED_ERRORS = (AnnotateError, DatasetError, MissingExtraError, ContractError, ImageError,
                   OmegaConfBaseException, SettingError, OSError)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m annotate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="adapter name, case-insensitive (koniq, kadid, live, csiq, "
                                                    "tid2013, clive, spaq, csv)")
    p.add_argument("--root", required=True, help="the dataset's folder, in its official layout")
    p.add_argument("--out", required=True, help="shard directory (created; a rerun resumes it)")
    p.add_argument("--config", default=None, help="annotation YAML (default configs/annotate/offline.yaml; "
                                                   "relative paths are also looked up in the repository)")
    p.add_argument("--part", default=None, help="i/N: annotate every N-th sample from the i-th (default: from "
                                                 "SLURM's array or task variables, else 0/1)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N samples in key order (trials)")
    p.add_argument("--force-new", action="store_true",
                   help="delete the shards already in --out instead of refusing other settings")
    p.add_argument("--redo-changed", action="store_true",
                   help="annotate finished samples again whose labels or image bytes changed, instead of refusing")
    p.add_argument("--drop-removed", action="store_true",
                   help="take finished samples whose label row or image file is gone out of the shards, instead "
                        "of refusing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes that segment and describe (default: one per CPU core; 1 with a GPU model); "
                        "the shards are byte-identical whatever the number; with --engine ray: actors per stage "
                        "(default: as many as the cluster holds)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine; ray: Ray Data actor pools on a Ray cluster (pip install 'rsfiqa[ray]')")
    p.add_argument("--ray-address", default=None,
                   help="with --engine ray: auto (a cluster started with `ray start`) or HOST:PORT "
                        "(default: RAY_ADDRESS, else a local cluster for this run)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. segmenter.name=sam")
    return p


SLURM_PARTS = (("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"), ("SLURM_PROCID", "SLURM_NTASKS"))


def slurm_part(environ: Mapping[str, str]) -> tuple[tuple[int, int], str] | None:
    """(i, N) and the variables it came from, for a SLURM array task or ``srun`` task; None outside SLURM."""
    for index_var, count_var in SLURM_PARTS:
        if index_var in environ and count_var in environ:
            first = int(environ.get("SLURM_ARRAY_TASK_MIN", 0)) if index_var == "SLURM_ARRAY_TASK_ID" else 0
            i, n = int(environ[index_var]) - first, int(environ[count_var])
            if not 0 <= i < n:
                raise ConfigError(f"{index_var}={environ[index_var]} with {count_var}={n} is no part i/N (use a "
                                  f"contiguous --array=0-{n - 1}, or pass --part)")
            return (i, n), f"{index_var}/{count_var}"
    return None


def choose_part(text: str | None, environ: Mapping[str, str]) -> tuple[int, int]:
    """``--part``, else the SLURM part (announced on stdout), else 0/1."""
    if text is not None:
        return parse_part(text)
    found = slurm_part(environ)
    if found is None:
        return 0, 1
    (i, n), source = found
    print(f"annotate: part {i}/{n} from {source} (pass --part to choose another)", flush=True)
    return i, n


def make_engine(args: argparse.Namespace) -> Engine:
    if args.engine == "ray":
        from annotate.ray_engine import RayEngine  # Ray is an optional extra, imported only when asked for

        return RayEngine(args.ray_address, args.workers)
    if args.ray_address is not None:
        raise ConfigError("--ray-address needs --engine ray")
    return LocalEngine(args.workers)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; options and ``key=value`` overrides in any order (``make annotate ARGS=...``)."""
    return build_parser().parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = pop_debug(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)

    def run() -> int:
        part = choose_part(args.part, os.environ)
        cfg = load_config(args.config, args.overrides)
        summary = annotate(args.dataset, args.root, args.out, cfg, part=part, limit=args.limit,
                           force_new=args.force_new, progress=not args.no_progress,
                           redo_changed=args.redo_changed, drop_removed=args.drop_removed, engine=make_engine(args))
        print(summary.report())
        return 0

    with warnings_as_lines("annotate", ("annotate",)):
        return run_reporting("annotate", run, EXPECTED_ERRORS, EXIT_ERROR, debug, ON_INTERRUPT)
