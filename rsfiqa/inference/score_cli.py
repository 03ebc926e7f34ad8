"""``rsfiqa score PATH [PATH ...] [--model NAME | --ckpt CKPT]``: score images end to end
(:mod:`rsfiqa.inference.scorer`) with a shipped model (default) or a trained checkpoint.

Inputs. Each PATH is a file (scored whatever its name), a folder (searched recursively for the
image extensions of ``contract.IMAGE_EXTS``, case-insensitive) or a glob pattern (``**`` allowed;
matches filtered by the same extensions). Files are scored in the given order, folders and
globs in sorted order, each file once. Everything a folder holds is accounted for: a broken
symbolic link with an image extension is an error line; files with other extensions are named in
one ``note`` line; this run's ``--heatmap`` folder and ``--report`` thumbnails folder are never
scanned (a note says so), nor are files named ``*.heatmap.png`` met in a folder or glob (an earlier
run's heatmaps; one note names them), nor an earlier report's thumbnails (``<page>_files/000001.jpg``
beside ``<page>.html``). A ``--report`` whose thumbnails folder is or holds an input is refused.
``--labels`` rows are matched to the scored files by :mod:`rsfiqa.inference.labels`.

Output (``--out``; default: CSV on stdout). One entry per scored image; images that could not be
scored appear only on stderr. CSV, JSON lines, JSON or Parquet by the extension, each result
written as soon as it exists; an existing ``--out`` is continued (only images not yet in it are
scored), refused when its model or settings differ, and locked while a run writes it: see
:mod:`rsfiqa.inference.outputs`.

Engines. ``local`` (default) scores in this process (annotation in ``--workers`` processes beside
it); ``ray`` in ``--workers`` Ray actors (:mod:`rsfiqa.inference.ray_scoring`), results in
completion order. ``--report`` writes its thumbnails beside the page as photos are scored
(:mod:`rsfiqa.inference.report`).

Regions cost an annotation (segment + describe) per photo. They are computed when the model's score
reads them, or for ``--regions``, ``--report`` or ``--heatmap``; otherwise (the shipped model reads
the whole image only) nothing is annotated, the CSV has no ``regions`` column and JSON records
have ``"regions": null``. A report or heatmap of such a model says that its overlays are the
annotator's view, not what the score used.

``--heatmap DIR`` writes ``DIR/<path under the inputs' common folder>.heatmap.png`` per image
(``photos/sub/a.jpg`` -> ``DIR/sub/a.jpg.heatmap.png``): two inputs never share a heatmap. Outputs
never overwrite inputs: ``--out``, ``--report`` or a heatmap naming a scanned input (or ``--out``,
``--report`` naming the ``--labels`` file), and a
``--heatmap`` folder that is (or holds) a scanned folder, are refused before any work, and so are
output folders that are missing or not writable. A heatmap that cannot be written is that image's
error line (its score row is still written, with an empty ``heatmap``).

``score`` is on the MOS scale of the checkpoint's (first) training dataset, named in
``scale_dataset``; ``score_norm`` is the network's raw normalised prediction (not clipped).

Exit status: 0 every input scored; 1 nothing scored because of a setup problem (bad option,
checkpoint, unavailable annotator, no image found, an output that would overwrite an input) or an
output that failed part-way (a full disk), the reason in one line on stderr (``--debug``: the
traceback); 130 after Ctrl-C (the output, and the ``--report`` page if asked for, hold what was
scored); 2 some inputs could not be scored — one ``rsfiqa score: error: ...`` line each on
stderr — and the others were written.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from tqdm import tqdm

from rsfiqa.inference import pretrained
from rsfiqa.inference.heatmap import render_heatmap
from rsfiqa.inference.labels import LabelsError, match_labels, named, read_labels
from rsfiqa.inference.outputs import Output, open_output, output_columns, output_format
from rsfiqa.inference.ray_scoring import ScorerSpec, cluster_cpus, import_ray, iter_scored_on_ray, ray_session
from rsfiqa.inference.report import (ANNOTATOR_VIEW_NOTE, ReportWriter, is_report_thumbnail, relative_link,
                                     thumbnails_folder)
from rsfiqa.inference.scorer import (DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, Scored, Scorer, ScoringSetupError,
                                     check_token)
from rsfiqa_core import contract
from rsfiqa_core.imageio import printable
from rsfiqa_core.usererrors import (can_create_files, naming_the_file, one_line, pop_debug, run_reporting,
                                    warnings_as_lines)

PROG = "rsfiqa score"
EXIT_OK, EXIT_SETUP, EXIT_SOME_FAILED = 0, 1, 2
ENGINES = ("local", "ray")
GLOB_CHARS = set("*?[")
EXPECTED_ERRORS = (ScoringSetupError, LabelsError, pretrained.PretrainedError, OSError)  # a user's to fix: one line
ON_INTERRUPT = "the images scored so far are in the output"
HEATMAP_SUFFIX = ".heatmap.png"


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
    parser.add_argument("--report", metavar="HTML", help="also write an HTML page of the run (thumbnails in "
                                                         "<name>_files/ beside it): photos sorted by score, region "
                                                         "overlays and descriptions")
    parser.add_argument("--labels", metavar="CSV", help="known MOS (columns image, mos): added to the output, and "
                                                        "PLCC/SRCC with a scatter plot in the report")
    parser.add_argument("--out", help="scores.csv, .jsonl, .json or .parquet (default: CSV on stdout); an existing "
                                      "--out of an earlier run is continued: only images not yet in it are scored")
    parser.add_argument("--heatmap", metavar="DIR", help="write one quality heatmap PNG per image into DIR")
    parser.add_argument("--regions", action="store_true",
                        help="segment and describe every photo and keep its regions (CSV column `regions`) even "
                             "when the model's score does not read them (implied by --report and --heatmap)")
    parser.add_argument("--attn-token", type=grid_cell, metavar="R,C",
                        help="with --heatmap: add the RSA attention map of this token-grid cell as a second panel")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per segmenter/describer/model batch (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"local: processes that segment and describe while the network scores (0: all in one "
                             f"process; default {DEFAULT_WORKERS}, the CPU cores but one); --engine ray: scorer actors "
                             f"(default: one per CPU of the cluster)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process (default); ray: a pool of Ray Data actors, one scorer each "
                             "(needs pip install 'rsfiqa[ray]')")
    parser.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: the cluster to join (auto or "
                                                              "HOST:PORT; default RAY_ADDRESS, the last `ray start` "
                                                              "here, or a new local cluster)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    parser.add_argument("--segmenter-override", action="append", default=[], metavar="KEY=VAL",
                        help="change one option of the checkpoint's segmenter (repeat the flag for several), "
                             "e.g. checkpoint=/path/sam_vit_h.pth or name=classical")
    parser.add_argument("--describer-override", action="append", default=[], metavar="KEY=VAL",
                        help="change one option of the checkpoint's describer (repeatable), "
                             "e.g. model=/path/Qwen2.5-VL-7B-Instruct or name=measures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    return parser


# --------------------------------------------------------------------------- inputs
def is_image_name(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in contract.IMAGE_EXTS


def is_within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or inside it (real paths: links resolved)."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def broken_link_error(link: Path) -> str:
    return f"{link}: broken symbolic link (its target {os.readlink(link)} does not exist)"


class Scan:
    """What the PATHs name: image files to score, error lines, and what was passed over (notes)."""

    def __init__(self, exclude: Mapping[Path, str] | None = None):
        self.exclude = dict(exclude or {})  # output folder -> what it is
        self.files: list[Path] = []
        self.errors: list[str] = []
        self.other_files: list[Path] = []
        self.excluded: set[Path] = set()
        self.heatmaps: list[Path] = []     # *.heatmap.png of an earlier run, met in a folder: not photos
        self.thumbnails: list[Path] = []   # an earlier report's thumbnails (<page>_files/), likewise

    def add(self, path: Path) -> None:
        """One file or link met in a folder or glob: kept, an error, or noted (or passed over: an output folder)."""
        hidden_by = next((e for e in self.exclude if is_within(path, e)), None)
        if hidden_by is not None:
            self.excluded.add(hidden_by)
        elif path.is_symlink() and not path.exists():
            if is_image_name(path):
                self.errors.append(broken_link_error(path))
            else:
                self.other_files.append(path)
        elif path.name.endswith(HEATMAP_SUFFIX):
            self.heatmaps.append(path)
        elif is_report_thumbnail(path):
            self.thumbnails.append(path)
        elif path.is_file():
            (self.files if is_image_name(path) else self.other_files).append(path)

    def add_folder(self, folder: Path) -> None:
        for path in sorted(folder.rglob("*")):
            self.add(path)

    def notes(self) -> list[str]:
        notes = [f"not scanning {folder} (this run's {self.exclude[folder]})" for folder in sorted(self.excluded)]
        if self.heatmaps:
            notes.append(f"skipped {len(self.heatmaps)} heatmap(s) of an earlier run (*{HEATMAP_SUFFIX}): "
                         f"{named(self.heatmaps)} (name a file to score it anyway)")
        if self.thumbnails:
            notes.append(f"skipped {len(self.thumbnails)} thumbnail(s) of an earlier --report: "
                         f"{named(self.thumbnails)} (name a file to score it anyway)")
        if self.other_files:
            notes.append(f"skipped {len(self.other_files)} file(s) without an image extension: "
                         f"{named(self.other_files)} (scored extensions: {', '.join(contract.IMAGE_EXTS)}; name a "
                         f"file to score it anyway)")
        return notes


def scan_paths(paths: Iterable[str], exclude: Mapping[Path, str] | None = None) -> Scan:
    """The files to score, error lines and notes of ``paths`` (module docstring); ``exclude``: output folders
    (-> what they are, for the note)."""
    scan = Scan(exclude)
    for text in paths:
        path = Path(text)
        if path.is_dir():
            scan.add_folder(path)
        elif path.is_file():
            scan.files.append(path)
        elif path.is_symlink():
            scan.errors.append(broken_link_error(path))
        elif GLOB_CHARS & set(text):
            before = len(scan.files)
            for match in (Path(m) for m in sorted(glob.glob(text, recursive=True))):
                if match.is_dir():
                    scan.add_folder(match)
                elif is_image_name(match):
                    scan.add(match)
            if len(scan.files) == before:
                scan.errors.append(f"{text}: no image file matches this pattern")
        else:
            scan.errors.append(f"{text}: no such file or directory")
    scan.files = list(dict.fromkeys(scan.files))
    scored = set(scan.files)
    scan.other_files = [p for p in dict.fromkeys(scan.other_files) if p not in scored]  # named: scored
    return scan


# --------------------------------------------------------------------------- outputs
class HeatmapNamer:
    """``DIR/<path under the inputs' common folder>.heatmap.png``: one heatmap per input, never shared."""

    def __init__(self, folder: Path, files: Sequence[Path]):
        self.folder = folder
        self.base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]) if files else "."

    def __call__(self, image: str | Path) -> Path:
        return self.folder / (os.path.relpath(os.path.abspath(image), self.base) + HEATMAP_SUFFIX)


def prepare_heatmap_folder(folder: Path, paths: Sequence[str]) -> Path:
    """Create ``--heatmap DIR``; refused when it is (or holds) a scanned folder or cannot be written."""
    for text in paths:
        if Path(text).is_dir() and is_within(Path(text), folder):
            raise ScoringSetupError(f"--heatmap {folder}: is or holds the scanned folder {text}, so heatmaps would "
                                    f"mix with the photos; choose a separate folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScoringSetupError(f"--heatmap {folder}: cannot be created ({one_line(err)}); choose another "
                                f"folder") from err
    if not can_create_files(folder):
        raise ScoringSetupError(f"--heatmap {folder}: not writable; choose another folder")
    return folder


def check_thumbnails_folder(folder: Path, paths: Sequence[str]) -> Path:
    """``--report``'s thumbnails folder, refused when it is or holds an input PATH (the report replaces
    the thumbnails in it)."""
    for text in paths:
        if is_within(Path(text), folder):
            raise ScoringSetupError(f"--report: its thumbnails folder {folder} is or holds the input {text}; choose "
                                    f"another report name")
    return folder


def check_writable_file(option: str, path: Path) -> None:
    """An output file in an existing, writable folder (checked before any scoring work)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ScoringSetupError(f"{option} {path}: folder {folder} does not exist (create it first)")
    if not can_create_files(folder) or (path.exists() and not os.access(path, os.W_OK)):
        raise ScoringSetupError(f"{option} {path}: {folder} is not writable (choose another folder)")


def check_not_inputs(outputs: Iterable[tuple[str, Path]], files: Sequence[Path]) -> None:
    """Refuse an output path that is one of the scanned inputs (it would be overwritten)."""
    inputs = {os.path.realpath(f): f for f in files}
    for option, path in outputs:
        if os.path.realpath(path) in inputs:
            raise ScoringSetupError(f"{option}: {path} is one of the images to score ({inputs[os.path.realpath(path)]})"
                                    f" and would be overwritten; choose another output name")


def check_not_labels(outputs: Iterable[tuple[str, str]], labels: str | None) -> None:
    """Refuse an output path that is the ``--labels`` file (it would be overwritten)."""
    for option, path in outputs:
        if labels is not None and os.path.realpath(path) == os.path.realpath(labels):
            raise ScoringSetupError(f"{option} {path}: is the --labels file and would be overwritten; choose another "
                                    f"output name")


def caption(record: dict[str, Any], scorer: Scorer) -> str:
    lo, hi = scorer.scale.mos_range
    direction = "higher" if scorer.scale.higher_better else "lower"
    return (f"{Path(record['image']).name}: predicted quality {record['score']:.2f}\n"
            f"on the '{record['scale_dataset']}' MOS scale {lo:g}..{hi:g} ({direction} = better; "
            f"normalised {record['score_norm']:.3f})" + (f"\n{overlay_note(scorer)}" if overlay_note(scorer) else ""))


def add_heatmap(scored: Scored, path: Path, scorer: Scorer, attn_token: tuple[int, int] | None) -> str | None:
    """Write the image's heatmap and put its path in the record; when that fails the record keeps an
    empty ``heatmap`` (its score stays) and the error line is returned."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        render_heatmap(path, scored.rgb, scored.label_map, scored.record["regions"], caption(scored.record, scorer),
                       scored.attention, attn_token)
    except OSError as err:
        scored.record["heatmap"] = ""
        return f"{scored.record['image']}: heatmap not written ({one_line(err)}); its score is in the output"
    scored.record["heatmap"] = str(path)
    return None


# --------------------------------------------------------------------------- main
def report_error(message: str) -> None:
    tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Score ``args.paths``; the exit status of the module docstring."""
    output_format(args.out)
    check_options(args)
    if args.report is not None:
        check_report_path(Path(args.report))
    if args.out is not None:
        check_writable_file("--out", Path(args.out))
    labels = read_labels(Path(args.labels)) if args.labels else None
    check_not_labels([(o, p) for o, p in (("--out", args.out), ("--report", args.report)) if p], args.labels)
    heatmap_dir = prepare_heatmap_folder(Path(args.heatmap), args.paths) if args.heatmap else None
    outputs = {heatmap_dir: "--heatmap folder"} if heatmap_dir else {}
    if args.report is not None:
        outputs[check_thumbnails_folder(thumbnails_folder(args.report), args.paths)] = "--report thumbnails folder"
    scan = scan_paths(args.paths, exclude=outputs)
    files, failures = scan.files, list(scan.errors)
    for message in failures:
        report_error(message)
    for note in scan.notes():
        tqdm.write(f"{PROG}: note: {note}", file=sys.stderr)
    if not files:
        raise ScoringSetupError(f"no image file found in {args.paths} (extensions: {', '.join(contract.IMAGE_EXTS)})")
    heatmap_path = HeatmapNamer(heatmap_dir, files) if heatmap_dir else None
    check_not_inputs([(o, Path(p)) for o, p in (("--out", args.out), ("--report", args.report)) if p]
                     + [("--heatmap", heatmap_path(f)) for f in files if heatmap_path], files)
    mos = None
    if labels is not None:
        matched = match_labels(labels, files, Path(args.labels))
        tqdm.write(f"{PROG}: note: {matched.summary(Path(args.labels))}", file=sys.stderr)
        mos = matched.mos
    scorer = load_scorer(args)
    scorer.workers = DEFAULT_WORKERS if args.workers is None else args.workers
    if args.attn_token is not None:
        check_token(args.attn_token, scorer.token_grid())
    print(f"{PROG}: {scorer.scale.describe()}", file=sys.stderr)
    columns = output_columns(mos is not None, heatmap_path is not None, scorer.annotates)
    report = (ReportWriter(args.report, scorer.scale.describe(), overlay_note(scorer)) if args.report is not None
              else None)
    with open_output(args.out, columns, run_settings(args, columns)) as output:
        todo = [f for f in files if printable(str(f)) not in output.done]
        if output.done:
            print(f"{PROG}: continuing {args.out}: {len(files) - len(todo)} of the {len(files)} images are in it "
                  f"already, scoring the other {len(todo)}", file=sys.stderr)
        with ray_session(args.ray_address) if args.engine == "ray" and todo else nullcontext():
            stream = scored_stream(args, scorer, todo, keep_arrays=heatmap_path is not None or report is not None)
            try:
                failures += write_results(stream, output, scorer, args, mos, heatmap_path, report,
                                          {printable(str(f)): f for f in todo})
            except KeyboardInterrupt:  # what was scored stays a valid file, and is in the report
                finish_report(args, scorer, report, failures)
                raise
    finish_report(args, scorer, report, failures)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def finish_report(args: argparse.Namespace, scorer: Scorer, report: ReportWriter | None, failures: list[str]) -> None:
    """Write ``--report`` (if asked for) for the images scored."""
    if report is not None:
        page = report.write(f"RSFIQA scores of {report.count} photos", model_description(args, scorer), failures)
        print(f"{PROG}: report: {page}", file=sys.stderr)


def check_options(args: argparse.Namespace) -> None:
    """Option combinations and values, checked before any work."""
    if args.attn_token is not None and args.heatmap is None:
        raise ScoringSetupError("--attn-token draws into the heatmaps: add --heatmap DIR")
    if args.batch_size < 1:
        raise ScoringSetupError(f"--batch-size must be >= 1, got {args.batch_size}")
    least = 1 if args.engine == "ray" else 0
    if args.workers is not None and args.workers < least:
        raise ScoringSetupError(f"--workers must be >= {least} with --engine {args.engine}, got {args.workers}")
    if args.ray_address is not None and args.engine != "ray":
        raise ScoringSetupError("--ray-address names a Ray cluster: add --engine ray")
    if args.engine == "ray":
        import_ray()


def scored_stream(args: argparse.Namespace, scorer: Scorer, files: Sequence[Path], keep_arrays: bool) -> Iterator[Scored]:
    """The scored files: by ``scorer`` here, or by Ray actors (``--engine ray``; a progress bar here)."""
    if args.engine == "local":
        return scorer.iter_scored(files, args.batch_size, progress=not args.no_progress, attn_token=args.attn_token,
                                  keep_arrays=keep_arrays)
    actors = cluster_cpus() if args.workers is None else args.workers
    num_gpus = 1 if args.device.startswith("cuda") else 0
    stream = iter_scored_on_ray(scorer_spec(args), files, args.batch_size, actors, args.attn_token, keep_arrays,
                                num_gpus)
    return iter(tqdm(stream, total=len(files), unit="img", desc="score", disable=args.no_progress))


def write_results(stream: Iterable[Scored], output: Output, scorer: Scorer, args: argparse.Namespace,
                  mos: dict[str, float] | None, heatmap_path: HeatmapNamer | None, report: ReportWriter | None,
                  by_name: dict[str, Path]) -> list[str]:
    """Each scored image into the output (and its heatmap and report card) as it arrives; the error lines."""
    failures = []
    try:
        for scored in stream:
            record = scored.record
            if record["error"] is not None:
                report_error(record["error"])
                failures.append(record["error"])
                continue
            if mos is not None:
                record["mos"] = mos.get(by_name.get(record["image"]))
            if heatmap_path is not None:
                source = by_name.get(record["image"], Path(record["image"]))
                problem = add_heatmap(scored, heatmap_path(source), scorer, args.attn_token)
                if problem is not None:
                    report_error(problem)
                    failures.append(problem)
            if report is not None:
                link = relative_link(record["heatmap"], args.report) if record.get("heatmap") else None
                report.add(record, scored.rgb, scored.label_map, record.get("mos"), link)
            output.write(record)
    except KeyboardInterrupt:  # what was scored stays a valid file
        output.close()
        raise
    output.close()
    return failures


def load_scorer(args: argparse.Namespace) -> Scorer:
    """The checkpoint's scorer with ``--ckpt``, else the shipped model ``--model`` (or the default)."""
    return scorer_spec(args).build()


def scorer_spec(args: argparse.Namespace) -> ScorerSpec:
    """The model and options every scorer of this run is built from (here and on Ray actors); annotating
    when the model reads regions or the output shows them."""
    regions = args.regions or args.report is not None or args.heatmap is not None
    return ScorerSpec(args.model, args.ckpt, args.device, tuple(args.segmenter_override),
                      tuple(args.describer_override), regions)


def overlay_note(scorer: Scorer) -> str:
    """:data:`~rsfiqa.inference.report.ANNOTATOR_VIEW_NOTE` when the model's score does not read regions."""
    return "" if scorer.net.config.consumes else ANNOTATOR_VIEW_NOTE


def run_settings(args: argparse.Namespace, columns: Sequence[str]) -> dict[str, Any]:
    """What shapes the records, kept beside ``--out`` so that a rerun continues it only with the same
    (the model file's SHA-256, the overrides, the columns); engine, workers, batch size and device may change."""
    path = Path(args.ckpt) if args.ckpt is not None else pretrained.model_entry(args.model).path
    with naming_the_file(path), open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"model": f"checkpoint {Path(args.ckpt).resolve()}" if args.ckpt is not None else args.model,
            "model_sha256": digest, "segmenter_override": args.segmenter_override,
            "describer_override": args.describer_override, "columns": list(columns), "attn_token": args.attn_token}


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
    check_writable_file("--report", path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rsfiqa score`` (``argv`` without the command name); returns the exit status."""
    argv, debug = pop_debug(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    with warnings_as_lines(PROG):  # the scorer's and its annotator's
        return run_reporting(PROG, lambda: run(args), EXPECTED_ERRORS, EXIT_SETUP, debug, ON_INTERRUPT)


if __name__ == "__main__":
    sys.exit(main())
