"""``rsfiqa score PATH [PATH ...] [--model NAME | --ckpt CKPT]``: score images end to end
(:mod:`rsfiqa.inference.scorer`) with a shipped model (default) or a trained checkpoint.

Inputs. Each PATH is a file (scored whatever its name), a folder (searched recursively for the
image extensions of ``contract.IMAGE_EXTS``, case-insensitive) or a glob pattern (``**`` allowed;
matches filtered by the same extensions). Files are scored in the given order, folders and
globs in sorted order, each file once.

Output (``--out``; default: CSV on stdout). One entry per scored image; images that could not be
scored appear only on stderr.

* ``.csv``: one row per image with columns ``image, score, score_norm, scale_dataset, regions``
  (+ ``heatmap`` with ``--heatmap``); ``regions`` is the JSON list of the image's region records.
* ``.json``: a list of the records of :meth:`rsfiqa.inference.scorer.Scorer.score` (regions nested).

``score`` is on the MOS scale of the checkpoint's (first) training dataset, named in
``scale_dataset``; ``score_norm`` is the network's raw normalised prediction (not clipped).

Exit status: 0 every input scored; 1 nothing scored because of a setup problem (bad option,
checkpoint, unavailable annotator, no image found), the reason on stderr; 2 some inputs could not
be scored — one ``rsfiqa score: error: ...`` line each on stderr — and the others were written.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from tqdm import tqdm

from rsfiqa.inference import pretrained
from rsfiqa.inference.heatmap import render_heatmap
from rsfiqa.inference.report import relative_link, report_entry, write_report
from rsfiqa.inference.scorer import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, Scored, Scorer, ScoringSetupError
from rsfiqa_core import contract

PROG = "rsfiqa score"
EXIT_OK, EXIT_SETUP, EXIT_SOME_FAILED = 0, 1, 2
CSV_COLUMNS = ("image", "score", "score_norm", "scale_dataset", "regions")
OUTPUT_FORMATS = (".csv", ".json")
GLOB_CHARS = set("*?[")


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with status 1, so that 2 always means "some images failed"."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(EXIT_SETUP, f"{self.prog}: error: {message}\n")


def grid_cell(text: str) -> tuple[int, int]:
    """``"R,C"`` -> (R, C)."""
    try:
        row, col = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (two integers), got {text!r}") from None
    return row, col


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Score images end to end with a shipped RSFIQA model or a trained checkpoint.",
                     epilog="Exit status: 0 all scored, 1 setup problem (nothing scored), "
                            "2 some images failed (one stderr line each; the rest written).")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", default=pretrained.DEFAULT_MODEL, metavar="NAME",
                       help="a shipped model (`rsfiqa models`; default %(default)s when --ckpt is not given)")
    model.add_argument("--ckpt", help="a checkpoint written by `rsfiqa fit` instead of a shipped model")
    parser.add_argument("--report", metavar="HTML", help="also write one self-contained HTML page of the run: photos "
                                                         "sorted by score, region overlays and descriptions")
    parser.add_argument("--labels", metavar="CSV", help="known MOS (columns image, mos): added to the output, and "
                                                        "PLCC/SRCC with a scatter plot in the report")
    parser.add_argument("--out", help="scores.csv or scores.json (default: CSV on stdout)")
    parser.add_argument("--heatmap", metavar="DIR", help="write one quality heatmap PNG per image into DIR")
    parser.add_argument("--attn-token", type=grid_cell, metavar="R,C",
                        help="with --heatmap: add the RSA attention map of this token-grid cell as a second panel")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per segmenter/describer/model batch (default %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="processes that segment and describe while the network scores (0: all in one "
                             "process; default %(default)s, the CPU cores but one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    parser.add_argument("--segmenter-override", action="append", default=[], metavar="KEY=VAL",
                        help="change one option of the checkpoint's segmenter (repeat the flag for several), "
                             "e.g. checkpoint=/path/sam_vit_h.pth or name=classical")
    parser.add_argument("--describer-override", action="append", default=[], metavar="KEY=VAL",
                        help="change one option of the checkpoint's describer (repeatable), "
                             "e.g. model=/path/Qwen2.5-VL-7B-Instruct or name=measures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------- inputs
def is_image_name(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in contract.IMAGE_EXTS


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))


def expand_paths(paths: Iterable[str]) -> tuple[list[Path], list[str]]:
    """(image files to score, one error line per PATH that names nothing); see the module docstring."""
    files: list[Path] = []
    errors: list[str] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = folder_images(path)
        elif path.is_file():
            found = [path]
        elif GLOB_CHARS & set(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            found = [f for m in matches for f in (folder_images(m) if m.is_dir() else [m] if is_image_name(m) else [])]
            if not found:
                errors.append(f"{text}: no image file matches this pattern")
        else:
            errors.append(f"{text}: no such file or directory")
            continue
        files += found
    return list(dict.fromkeys(files)), errors


# --------------------------------------------------------------------------- outputs
class ResultWriter:
    """Writes scored records as CSV rows (streamed) or as one JSON list (at close)."""

    def __init__(self, stream: TextIO, fmt: str, heatmaps: bool, mos: bool = False):
        self.stream, self.fmt = stream, fmt
        self.records: list[dict[str, Any]] = []
        columns = CSV_COLUMNS + (("mos",) if mos else ()) + (("heatmap",) if heatmaps else ())
        self.csv = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore") if fmt == ".csv" else None
        if self.csv is not None:
            self.csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self.csv is None:
            self.records.append(record)
            return
        self.csv.writerow({**record, "regions": json.dumps(record["regions"], ensure_ascii=False)})
        self.stream.flush()

    def close(self) -> None:
        if self.csv is None:
            json.dump(self.records, self.stream, indent=1, ensure_ascii=False)
            self.stream.write("\n")


def output_format(out: str | None) -> str:
    if out is None:
        return ".csv"
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ScoringSetupError(f"--out {out}: the file name must end in {' or '.join(OUTPUT_FORMATS)}")
    return suffix


class HeatmapNamer:
    """``<stem>.png`` per image in the heatmap folder; a repeated stem gets ``_2``, ``_3`` ..."""

    def __init__(self, folder: Path):
        self.folder, self.seen = folder, {}

    def __call__(self, image: str) -> Path:
        stem = Path(image).stem
        self.seen[stem] = self.seen.get(stem, 0) + 1
        return self.folder / (f"{stem}.png" if self.seen[stem] == 1 else f"{stem}_{self.seen[stem]}.png")


def caption(record: dict[str, Any], scorer: Scorer) -> str:
    lo, hi = scorer.scale.mos_range
    direction = "higher" if scorer.scale.higher_better else "lower"
    return (f"{Path(record['image']).name}: predicted quality {record['score']:.2f}\n"
            f"on the '{record['scale_dataset']}' MOS scale {lo:g}..{hi:g} ({direction} = better; "
            f"normalised {record['score_norm']:.3f})")


def write_heatmap(scored: Scored, path: Path, scorer: Scorer, attn_token: tuple[int, int] | None) -> str:
    render_heatmap(path, scored.rgb, scored.label_map, scored.record["regions"], caption(scored.record, scorer),
                   scored.attention, attn_token)
    return str(path)


# --------------------------------------------------------------------------- main
def report_error(message: str) -> None:
    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Score ``args.paths``; the exit status of the module docstring."""
    fmt = output_format(args.out)
    if args.attn_token is not None and args.heatmap is None:
        raise ScoringSetupError("--attn-token draws into the heatmaps: add --heatmap DIR")
    if args.batch_size < 1:
        raise ScoringSetupError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ScoringSetupError(f"--workers must be >= 0, got {args.workers}")
    if args.report is not None:
        check_report_path(Path(args.report))
    mos = read_labels(Path(args.labels)) if args.labels else None
    files, failures = expand_paths(args.paths)
    for message in failures:
        report_error(message)
    if not files:
        raise ScoringSetupError(f"no image file found in {args.paths} (extensions: {', '.join(contract.IMAGE_EXTS)})")
    scorer = load_scorer(args)
    scorer.workers = args.workers
    print(f"{PROG}: {scorer.scale.describe()}", file=sys.stderr)
    heatmap_path = HeatmapNamer(Path(args.heatmap)) if args.heatmap else None
    scored_items = scorer.iter_scored(files, args.batch_size, progress=not args.no_progress,
                                      attn_token=args.attn_token,
                                      keep_arrays=heatmap_path is not None or args.report is not None)
    entries = []
    with ExitStack() as stack:
        stream = stack.enter_context(open(args.out, "w", newline="", encoding="utf-8")) if args.out else sys.stdout
        writer = ResultWriter(stream, fmt, heatmaps=heatmap_path is not None, mos=mos is not None)
        for scored in scored_items:
            record = scored.record
            if record["error"] is not None:
                report_error(record["error"])
                failures.append(record["error"])
                continue
            if mos is not None:
                record["mos"] = mos.get(Path(record["image"]).name)
            if heatmap_path is not None:
                record["heatmap"] = write_heatmap(scored, heatmap_path(record["image"]), scorer, args.attn_token)
            if args.report is not None:
                link = relative_link(record["heatmap"], args.report) if "heatmap" in record else None
                entries.append(report_entry(record, scored.rgb, scored.label_map, record.get("mos"), link))
            writer.write(record)
        writer.close()
    if args.report is not None:
        page = write_report(args.report, entries, f"RSFIQA scores of {len(entries)} photos", scorer.scale.describe(),
                            model_description(args, scorer), failures)
        print(f"{PROG}: report: {page}", file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def load_scorer(args: argparse.Namespace) -> Scorer:
    """The checkpoint's scorer with ``--ckpt``, else the shipped model ``--model`` (or the default)."""
    if args.ckpt is not None:
        return Scorer.from_checkpoint(args.ckpt, args.device, args.segmenter_override, args.describer_override)
    return Scorer.from_pretrained(args.model, args.device, args.segmenter_override, args.describer_override)


def model_description(args: argparse.Namespace, scorer: Scorer) -> str:
    if args.ckpt is not None:
        return f"model: checkpoint {args.ckpt}"
    card = scorer.card
    return (f"model: {card.get('name')} (shipped; trained on {card.get('training_data', {}).get('photos')} "
            f"CLIVE photos, created {card.get('created')})")


def check_report_path(path: Path) -> None:
    """An HTML file name in an existing, writable folder, checked before any scoring work."""
    if path.suffix.lower() not in (".html", ".htm"):
        raise ScoringSetupError(f"--report {path}: the file name must end in .html")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ScoringSetupError(f"--report {path}: folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ScoringSetupError(f"--report {path}: {folder} is not writable (choose another folder)")


def read_labels(path: Path) -> dict[str, float]:
    """``--labels``: image file name -> MOS, from a CSV with columns ``image`` and ``mos``."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ScoringSetupError(f"--labels {path}: cannot be read ({err})") from err
    if not rows or not {"image", "mos"} <= set(rows[0]):
        raise ScoringSetupError(f"--labels {path}: needs the columns 'image' and 'mos'")
    try:
        return {Path(row["image"]).name: float(row["mos"]) for row in rows}
    except ValueError as err:
        raise ScoringSetupError(f"--labels {path}: a 'mos' value is not a number ({err})") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rsfiqa score`` (``argv`` without the command name); returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("rsfiqa", "annotate")]  # the scorer's and its annotator's
    for logger in loggers:
        logger.addHandler(handler)
    try:
        return run(args)
    except (ScoringSetupError, pretrained.PretrainedError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_SETUP
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
