"""The demo's four steps (see :mod:`demo`) and its closing summary."""
from __future__ import annotations

import csv
import json
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from annotate.cli import main as annotate_main
from annotate.datasets.csv_folder import write_subset
from rsfiqa.cli import default_loggers
from rsfiqa.cli import main as rsfiqa_main
from rsfiqa.eval.plots import scatter_plot
from rsfiqa.inference.pretrained import DEFAULT_MODEL
from rsfiqa.inference.outputs import state_path
from rsfiqa.inference.report import correlations
from rsfiqa_core.contract import read_index

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
CONFIGS = (REPO / "configs" / "cpu.yaml", REPO / "configs" / "demo.yaml")
DEFAULT_OUT = Path("outputs/demo")
DATASET = "clive-demo"
LOGGER_NAME = "demo"
STEPS = ("score", "annotate", "train", "test")
# the csv adapter on demo/data: CLIVE's MOS scale is 0..100, higher = better
ANNOTATE_OVERRIDES = ("dataset.mos_range=[0,100]", f"dataset.dataset_name={DATASET}")
PIPELINE_NOTE = ("A pipeline check, not a result: a model trained for a minute on a few dozen photos, tested on "
                 "a handful.\nThe shipped model above is the result; how it was made: docs/MODEL_CARD.md")


@dataclass(frozen=True)
class Mode:
    """What a demo run annotates and how it trains (the full demo, or ``--quick``)."""

    name: str
    photos: int | None                       # the first N photos of labels.csv; None = all
    annotate_overrides: tuple[str, ...] = ()
    run_overrides: tuple[str, ...] = ()      # rsfiqa fit/test options on top of configs/demo.yaml


FULL = Mode("full", photos=None)
# --quick: a check that every step and output works, in seconds. 12 photos split 6/3/3 (the default
# 70/10/20 would leave one validation photo, on which SRCC is undefined), segmentation at 128 px,
# one epoch at 64x64 px. The model is the real offline one.
QUICK = Mode("quick", photos=12,
             annotate_overrides=("segmenter.long_side=128", "dataset.val_frac=0.25", "dataset.test_frac=0.25"),
             run_overrides=("--trainer.max_epochs", "1", "--model.t_max", "1", "--data.image_size", "64",
                            "--data.batch_size", "4", "--data.num_workers", "0"))


class StepFailed(RuntimeError):
    """A demo step that did not produce its outputs; the message names the step."""

    def __init__(self, step: str, reason: str):
        super().__init__(f"step {STEPS.index(step) + 1}/{len(STEPS)} ({step}) failed: {reason}")


@dataclass
class DemoResult:
    """Where every output of a demo run is, the metrics and the wall time of each step."""

    out: Path
    photos: int = 0
    model: str = ""
    shipped: dict[str, float] = field(default_factory=dict)   # PLCC/SRCC of the shipped model
    scores_csv: Path | None = None
    shipped_scatter: Path | None = None
    heatmaps: Path | None = None
    report: Path | None = None
    shards: Path | None = None
    checkpoint: Path | None = None
    run_dir: Path | None = None
    results_csv: Path | None = None
    results_md: Path | None = None
    scatter_plots: list[Path] = field(default_factory=list)
    metrics: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def result_outputs(self) -> list[tuple[str, Path]]:
        """(label, path) of the shipped model's outputs (step 1)."""
        return [("report (open in a browser)", self.report), ("scores", self.scores_csv),
                ("scatter plot (shipped model)", self.shipped_scatter), ("heatmaps folder", self.heatmaps)]

    def pipeline_outputs(self) -> list[tuple[str, Path]]:
        """(label, path) of the pipeline check's outputs (steps 2-4)."""
        return [("shards index", self.shards / "index.json"), ("checkpoint", self.checkpoint),
                ("training logs (TensorBoard, metrics.csv, curves.png)", self.run_dir),
                ("results table", self.results_csv), ("results table (markdown)", self.results_md),
                *[("scatter plot", p) for p in self.scatter_plots]]


# --------------------------------------------------------------------------- helpers
@contextmanager
def timed_step(step: str, result: DemoResult) -> Iterator[None]:
    """Announce a step, time it, and turn any failure inside it into :class:`StepFailed`."""
    number = f"[{STEPS.index(step) + 1}/{len(STEPS)}]"
    print(f"\n{number} {step} ...", flush=True)
    start = time.perf_counter()
    try:
        yield
    except StepFailed:
        raise
    except SystemExit as err:  # argument errors of the CLIs exit
        raise StepFailed(step, f"the command exited with status {err.code} (its message is above)") from err
    except Exception as err:
        traceback.print_exc()
        raise StepFailed(step, f"{type(err).__name__}: {err}") from err
    result.seconds[step] = time.perf_counter() - start
    print(f"{number} {step} done in {result.seconds[step]:.0f} s", flush=True)


def require_file(step: str, path: Path, what: str) -> Path:
    """``path`` if the step wrote it, else :class:`StepFailed`."""
    if not path.is_file():
        raise StepFailed(step, f"{what} was not written: {path}")
    return path


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def photo_subset(n: int, folder: Path) -> Path:
    """A dataset folder (``labels.csv`` + ``images/``) with the first ``n`` demo photos, for ``--quick``."""
    write_subset(DATA, folder, lambda i, row: i < n, link=False)
    return folder


def rsfiqa(args: list[str]) -> Any:
    """``rsfiqa ARGS`` in this process (its return value: the LightningCLI, or an exit status).

    The demo's own options are hidden from ``sys.argv`` meanwhile: LightningCLI warns when it is
    given ``args`` while the process has command-line arguments of its own.
    """
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        return rsfiqa_main(args)
    finally:
        sys.argv = saved


def demo_loggers(runs: Path) -> str:
    """The CSV and TensorBoard loggers of ``configs/demo.yaml``, writing under ``runs``, as a CLI value."""
    loggers = default_loggers(LOGGER_NAME)
    for logger in loggers:
        logger["init_args"]["save_dir"] = str(runs)
    return json.dumps(loggers)


# --------------------------------------------------------------------------- the steps
def annotate_photos(root: Path, shards: Path, mode: Mode, result: DemoResult) -> None:
    """Step 1: ``python -m annotate --dataset csv`` (resumes a finished or interrupted run)."""
    status = annotate_main(["--dataset", "csv", "--root", str(root), "--out", str(shards),
                            *ANNOTATE_OVERRIDES, *mode.annotate_overrides])
    if status != 0:
        raise StepFailed("annotate", f"python -m annotate exited with status {status} (its message is above)")
    count = read_index(shards)["count"]
    expected = len(read_csv_rows(root / "labels.csv"))
    if count != expected:
        raise StepFailed("annotate", f"{shards} holds {count} annotated photos, {root / 'labels.csv'} lists "
                                     f"{expected} (the skipped ones are reported above)")
    result.photos, result.shards = count, shards


def lightning_args(result: DemoResult, mode: Mode, epochs: int | None) -> list[str]:
    """Configs and options shared by ``rsfiqa fit`` and ``rsfiqa test``."""
    args = [a for config in CONFIGS for a in ("--config", str(config))]
    args += ["--data.train_shards", str(result.shards), "--model.feature_cache", str(result.out / "cache"),
             *mode.run_overrides]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs), "--model.t_max", str(epochs)]
    return args


def train(result: DemoResult, mode: Mode, epochs: int | None) -> None:
    """Step 2: ``rsfiqa fit``; keeps the best checkpoint (validation SRCC) and the run directory."""
    runs = result.out / "runs"
    cli = rsfiqa(["fit", *lightning_args(result, mode, epochs), "--trainer.default_root_dir", str(runs),
                  "--trainer.logger", demo_loggers(runs)])
    best = cli.trainer.checkpoint_callback.best_model_path
    if not best:
        raise StepFailed("train", "no checkpoint was saved (is the validation split empty?)")
    result.checkpoint = require_file("train", Path(best), "the best checkpoint")
    result.run_dir = Path(cli.trainer.log_dir)


def evaluate(result: DemoResult, mode: Mode, epochs: int | None) -> None:
    """Step 3: ``rsfiqa test`` of the checkpoint on the split's test photos; reports (and the command's
    config.yaml) into ``OUT/test``."""
    report_dir = result.out / "test"
    rsfiqa(["test", *lightning_args(result, mode, epochs), "--ckpt_path", str(result.checkpoint),
            "--trainer.default_root_dir", str(report_dir), "--trainer.logger", "false",
            "--test_report.out_dir", str(report_dir)])
    result.results_csv = require_file("test", report_dir / "results.csv", "the results table")
    result.results_md = require_file("test", report_dir / "results.md", "the markdown results table")
    result.metrics = read_csv_rows(result.results_csv)
    result.scatter_plots = [require_file("test", report_dir / f"scatter_{row['dataset']}.png", "the scatter plot")
                            for row in result.metrics]


def score_shipped(root: Path, result: DemoResult) -> None:
    """Step 1: ``rsfiqa score`` of every photo with the shipped model: scores with their MOS, heatmaps,
    the HTML report; then PLCC/SRCC and a scatter plot of predicted vs true MOS."""
    scores, heatmaps, report = result.out / "scores.csv", result.out / "heatmaps", result.out / "report.html"
    result.out.mkdir(parents=True, exist_ok=True)
    for earlier in (scores, state_path(scores)):  # a rerun scores afresh (rsfiqa score would continue the file)
        earlier.unlink(missing_ok=True)
    status = rsfiqa(["score", str(root / "images"), "--model", result.model, "--labels", str(root / "labels.csv"),
                     "--out", str(scores), "--heatmap", str(heatmaps), "--report", str(report), "--device", "cpu"])
    if status != 0:
        raise StepFailed("score", f"rsfiqa score exited with status {status} (its messages are above)")
    result.scores_csv = require_file("score", scores, "the scores table")
    result.report = require_file("score", report, "the HTML report")
    rows = read_csv_rows(scores)
    if len(rows) != len(read_csv_rows(root / "labels.csv")):
        raise StepFailed("score", f"{scores} has {len(rows)} rows for {len(read_csv_rows(root / 'labels.csv'))} photos")
    mos, predicted = [float(r["mos"]) for r in rows], [float(r["score"]) for r in rows]
    result.photos, result.shipped = len(rows), {**correlations(mos, predicted), "n": len(rows)}
    result.shipped_scatter = scatter_plot(mos, predicted, f"shipped model '{result.model}' on {len(rows)} demo "
                                          f"photos: SRCC {result.shipped['srcc']:.3f}", result.out / "scatter.png")
    result.heatmaps = heatmaps


def run_demo(out: Path, mode: Mode = FULL, epochs: int | None = None, model: str = DEFAULT_MODEL) -> DemoResult:
    """Score with the shipped model, then annotate, train and test into ``out``; raises
    :class:`StepFailed` at the first failure."""
    result = DemoResult(out=Path(out), model=model)
    root = DATA if mode.photos is None else photo_subset(mode.photos, result.out / "photos")
    with timed_step("score", result):
        score_shipped(root, result)
    with timed_step("annotate", result):
        annotate_photos(root, result.out / "shards", mode, result)
    with timed_step("train", result):
        train(result, mode, epochs)
    with timed_step("test", result):
        evaluate(result, mode, epochs)
    return result


# --------------------------------------------------------------------------- summary
def summary(result: DemoResult, mode: Mode) -> str:
    """The closing report: the shipped model's result first, then the pipeline check; every output."""
    total = sum(result.seconds.values())
    shipped = result.shipped
    lines = [f"RSFIQA demo ({mode.name}, {result.photos} photos) in {total:.0f} s ("
             + ", ".join(f"{step} {result.seconds[step]:.0f} s" for step in STEPS) + ")", "",
             f"RESULT  shipped model '{result.model}' on {shipped['n']} photos it never saw: "
             f"SRCC {shipped['srcc']:.3f}  PLCC {shipped['plcc']:.3f}",
             *[f"  {label}: {path}" for label, path in result.result_outputs()], "",
             "PIPELINE CHECK  annotate -> train -> test on the same photos (split seed0):"]
    lines += [f"  {row['dataset']} (n={row['n']}): PLCC {float(row['plcc']):.3f}  SRCC {float(row['srcc']):.3f}  "
              f"KRCC {float(row['krcc']):.3f}  RMSE {float(row['rmse']):.3f} (RMSE on the [0, 1] scale)"
              for row in result.metrics]
    lines += [PIPELINE_NOTE, "", "Outputs:",
              *[f"  {label}: {path}" for label, path in result.result_outputs() + result.pipeline_outputs()], ""]
    lines += ["Next:", "  rsfiqa score YOUR_PHOTOS --report report.html        (the shipped model)",
              f"  rsfiqa score YOUR_PHOTOS --ckpt {result.checkpoint}   (the model trained here)",
              f"  tensorboard --logdir {result.out / 'runs'}"]
    return "\n".join(lines)
