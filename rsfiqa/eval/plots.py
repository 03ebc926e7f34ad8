"""PNG figures of the evaluation: predicted vs true MOS per test set, and training curves per epoch
from the CSV logger's ``metrics.csv``.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): they render with the Agg
canvas, need no display and leave matplotlib's global backend alone.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LOSS_CURVES = ("train/loss", "val/loss")
CORRELATION_CURVES = ("val/srcc", "val/plcc")
CURVES = (*LOSS_CURVES, *CORRELATION_CURVES)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def scatter_plot(mos: Sequence[float], pred: Sequence[float], title: str, path: Path) -> Path:
    """Predicted vs true MOS (both on the dataset's own scale), with the identity line, as a PNG."""
    return _save(scatter_figure(mos, pred, title), path)


def scatter_figure(mos: Sequence[float], pred: Sequence[float], title: str) -> Figure:
    """The figure of :func:`scatter_plot`."""
    fig = Figure(figsize=(4.5, 4.5), dpi=120)
    ax = fig.add_subplot()
    ax.scatter(mos, pred, s=8, alpha=0.6, edgecolors="none")
    values = [v for v in (*mos, *pred) if math.isfinite(v)]
    lo, hi = min(values, default=0.0), max(values, default=1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("MOS")
    ax.set_ylabel("predicted MOS")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def epoch_series(metrics_csv: Path, columns: Sequence[str]) -> dict[str, dict[int, float]]:
    """Per column of ``metrics_csv``: epoch -> the epoch's (last) logged value; columns never logged
    are left out."""
    series: dict[str, dict[int, float]] = {c: {} for c in columns}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for column in columns:
                if row.get(column):
                    series[column][int(float(row["epoch"]))] = float(row[column])
    return {c: s for c, s in series.items() if s}


def training_curves(metrics_csv: Path, path: Path) -> Path:
    """Two panels per epoch: train/val loss (eq. 11's MSE), and validation SRCC/PLCC."""
    series = epoch_series(metrics_csv, CURVES)
    if not series:
        raise ValueError(f"{metrics_csv}: no per-epoch values of {', '.join(CURVES)}")
    fig = Figure(figsize=(9, 3.6), dpi=120)
    for i, (names, ylabel) in enumerate(((LOSS_CURVES, "MSE loss"), (CORRELATION_CURVES, "correlation"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name in names:
            if name in series:
                epochs = sorted(series[name])
                ax.plot(epochs, [series[name][e] for e in epochs], marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    best = series.get("val/srcc")
    if best:
        epoch = max(best, key=lambda e: (best[e], -e))
        fig.suptitle(f"best val SRCC {best[epoch]:.3f} at epoch {epoch}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
