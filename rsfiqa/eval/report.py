"""Result tables of the evaluation protocols: per-dataset metrics of one test run, mean ± std over
splits, and the paper's ``PLCC/SRCC`` cell format (Tables 1-6).

Metrics are the module's own (:func:`rsfiqa.module.quality_metrics`: torchmetrics PLCC (eq. 12),
SRCC, KRCC and RMSE, on the normalised [0, 1] MOS scale), fed with the same predictions and in the
same batches as the module's test metrics. Each dataset keeps its own numbers; nothing is pooled.
Spread over splits is the sample standard deviation (ddof = 1); with one split there is none.

Files are written atomically (temporary name, then rename): an existing ``results.csv`` always is
a complete one, which is what the split protocol's resumption relies on.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from rsfiqa.module import METRIC_NAMES, quality_metrics
from rsfiqa.predictions import PREDICTION_COLUMNS

RESULT_COLUMNS: tuple[str, ...] = ("dataset", "n", *METRIC_NAMES)
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
STD_NOTE = "± is the sample standard deviation (ddof = 1) over the splits"
RMSE_NOTE = "RMSE is on the normalised MOS scale [0, 1] (higher = better quality)"


class ReportError(ValueError):
    """A result file that is missing columns or unreadable."""


# --------------------------------------------------------------------------- one test set
@dataclass
class TestSetRecord:
    """Predictions of one test dataloader, batch by batch (per-image rows plus metric inputs)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    batches: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def add(self, rows: list[dict[str, Any]], mos_norm: Tensor) -> None:
        """One batch: prediction rows (``PREDICTION_COLUMNS``) and the normalised true MOS [B]."""
        pred = torch.tensor([row["pred_norm"] for row in rows], dtype=torch.float32)
        self.rows.extend(rows)
        self.batches.append((pred, mos_norm.detach().float().cpu()))

    @property
    def dataset(self) -> str:
        return self.rows[0]["dataset"]

    def metrics(self) -> dict[str, float]:
        """PLCC, SRCC, KRCC, RMSE of this set (the module's torchmetrics collection)."""
        collection = quality_metrics("", sync=False)
        for pred, target in self.batches:
            collection.update(pred, target)
        values = collection.compute()
        return {name: float(values[name]) for name in METRIC_NAMES}

    def result_row(self, name: str) -> dict[str, Any]:
        return {"dataset": name, "n": len(self.rows), **self.metrics()}


# --------------------------------------------------------------------------- formatting
def fmt(value: float, std: float | None = None) -> str:
    """``0.900`` or, with a spread, ``0.900±0.013`` (3 decimals, as in the paper)."""
    if std is None or math.isnan(std):
        return f"{value:.3f}"
    return f"{value:.3f}±{std:.3f}"


def plcc_srcc(row: Mapping[str, Any]) -> str:
    """The paper's cell ``PLCC/SRCC`` of a result row, with ``±std`` where the row has ``*_std``."""
    return "/".join(fmt(float(row[m]), _std(row, m)) for m in ("plcc", "srcc"))


def _std(row: Mapping[str, Any], metric: str) -> float | None:
    value = row.get(f"{metric}_std")
    return None if value in (None, "") else float(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def results_markdown(rows: Sequence[Mapping[str, Any]], model: str, source: str) -> str:
    """A test run's results: the paper's layout (datasets as columns, ``PLCC/SRCC``), then all metrics."""
    paper = markdown_table(["model", *(r["dataset"] for r in rows)], [[model, *(plcc_srcc(r) for r in rows)]])
    detail = markdown_table(["dataset", "n", "PLCC/SRCC", "KRCC", "RMSE"],
                            [[r["dataset"], r["n"], plcc_srcc(r), fmt(r["krcc"]), fmt(r["rmse"])] for r in rows])
    return f"# {model}\n\n{source}\n\n{paper}\n\n{detail}\n\n{RMSE_NOTE}.\n"


# --------------------------------------------------------------------------- files
def write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """CSV with ``columns`` (numbers as written by Python's ``repr``: reread exactly)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def write_results(out_dir: Path, rows: Sequence[Mapping[str, Any]], model: str, source: str) -> tuple[Path, Path]:
    """``results.md`` and ``results.csv`` (one row per dataset: ``RESULT_COLUMNS``) in ``out_dir``; the
    CSV last, as it marks a finished test."""
    markdown = write_text_atomic(out_dir / RESULTS_MD, results_markdown(rows, model, source))
    return write_csv(out_dir / RESULTS_CSV, rows, RESULT_COLUMNS), markdown


def write_predictions(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Per-image predictions (``PREDICTION_COLUMNS``, as ``rsfiqa predict`` writes them)."""
    return write_csv(path, rows, PREDICTION_COLUMNS)


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv`` with numbers parsed; a clear error naming the file otherwise."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ReportError(f"{path}: cannot read results ({err})") from err
    missing = set(RESULT_COLUMNS) - set(rows[0] if rows else RESULT_COLUMNS)
    if not rows or missing:
        raise ReportError(f"{path}: not a results file (no rows, or missing columns {sorted(missing)})")
    try:
        return [{"dataset": r["dataset"], "n": int(r["n"]), **{m: float(r[m]) for m in METRIC_NAMES}} for r in rows]
    except ValueError as err:
        raise ReportError(f"{path}: unreadable number ({err})") from err


# --------------------------------------------------------------------------- over splits
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset (in first-seen order): number of splits, mean test size, mean and std of each metric."""
    by_dataset: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
    summary = []
    for dataset, group in by_dataset.items():
        out: dict[str, Any] = {"dataset": dataset, "splits": len(group),
                               "n": statistics.fmean(float(r["n"]) for r in group)}
        for metric in METRIC_NAMES:
            out[metric], out[f"{metric}_std"] = mean_std([float(r[metric]) for r in group])
        summary.append(out)
    return summary


SUMMARY_COLUMNS: tuple[str, ...] = ("dataset", "splits", "n", *(f"{m}{s}" for m in METRIC_NAMES for s in ("", "_std")))


def summary_markdown(summary: Sequence[Mapping[str, Any]], title: str) -> str:
    """``mean±std`` per dataset: ``PLCC/SRCC`` in the paper's format, then KRCC and RMSE."""
    table = markdown_table(
        ["dataset", "splits", "test images", "PLCC/SRCC", "KRCC", "RMSE"],
        [[s["dataset"], s["splits"], f"{s['n']:.0f}", plcc_srcc(s), fmt(s["krcc"], s["krcc_std"]),
          fmt(s["rmse"], s["rmse_std"])] for s in summary])
    return f"# {title}\n\n{table}\n\n{STD_NOTE}; {RMSE_NOTE}.\n"
