"""``python -m demo`` (see :mod:`demo`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import demo
from demo.run import DEFAULT_OUT, FULL, QUICK, StepFailed, run_demo, summary
from rsfiqa.inference.pretrained import DEFAULT_MODEL, MODELS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=demo.__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: configs/demo.yaml's)")
    parser.add_argument("--quick", action="store_true", help="12 photos, 64 px, 1 epoch: a check in seconds")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS),
                        help="the shipped model of step 1 (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit status 0 when every step succeeded, 1 at the first failed step."""
    args = build_parser().parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        build_parser().error(f"--epochs must be >= 1, got {args.epochs}")
    mode = QUICK if args.quick else FULL
    try:
        result = run_demo(args.out, mode, args.epochs, args.model)
    except StepFailed as err:
        print(f"\ndemo: error: {err}", file=sys.stderr)
        return 1
    print("\n" + summary(result, mode))
    return 0
