"""Command line of the annotation stage (``python -m annotate`` / ``make annotate``).

    python -m annotate --dataset koniq --root /data/koniq10k --out shards/koniq \
        [--config configs/annotate/paper.yaml] [--part i/N] [--limit N] [--force-new] [--redo-changed] \
        [segmenter.checkpoint=/models/sam_vit_h_4b8939.pth batch_size=16 ...]

Exit status 0 when the run completes (skipped samples are reported, not fatal); 1 with a
one-line message for an expected error (missing label file, settings mismatch, bad config, full
disk); 130 with one line after Ctrl-C (finished shards are kept; the same command resumes).
``--debug`` shows the traceback instead (``rsfiqa_core.usererrors``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from omegaconf.errors import OmegaConfBaseException

from annotate.config import AnnotateError, load_config
from annotate.datasets import DatasetError
from annotate.describe.backends import MissingExtraError
from annotate.pipeline import annotate, parse_part
from rsfiqa_core.contract import ContractError
from rsfiqa_core.imageio import ImageError
from rsfiqa_core.usererrors import SettingError, pop_debug, run_reporting

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
    p.add_argument("--part", default="0/1", help="i/N: annotate every N-th sample from the i-th (default 0/1)")
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
                        "the shards are byte-identical whatever the number")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. segmenter.name=sam")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = pop_debug(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    def run() -> int:
        cfg = load_config(args.config, args.overrides)
        summary = annotate(args.dataset, args.root, args.out, cfg, part=parse_part(args.part), limit=args.limit,
                           force_new=args.force_new, progress=not args.no_progress,
                           redo_changed=args.redo_changed, workers=args.workers, drop_removed=args.drop_removed)
        print(summary.report())
        return 0

    return run_reporting("annotate", run, EXPECTED_ERRORS, EXIT_ERROR, debug, ON_INTERRUPT)
