"""Trainer callbacks that turn ``rsfiqa test`` and ``rsfiqa fit`` runs into files people read.

:class:`TestReport` (``rsfiqa test``): per test set (one dataloader per shard directory, see
``ShardDataModule``) the metrics, a per-image predictions CSV and a scatter plot; all sets in
``results.csv`` / ``results.md``. :class:`TrainingCurves` (``rsfiqa fit``): ``curves.png`` from the
CSV logger's ``metrics.csv``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from rsfiqa.eval import plots, report

CURVES_PNG = "curves.png"


def unique_names(names: list[str]) -> list[str]:
    """Dataset names made unique (a second ``live`` becomes ``live-2``) and safe as file names."""
    out: list[str] = []
    for name in names:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"
        candidate, k = safe, 1
        while candidate in out:
            k += 1
            candidate = f"{safe}-{k}"
        out.append(candidate)
    return out


class TestReport(Callback):
    """Write the results of ``rsfiqa test``: one row per test set, never pooled.

    Into ``out_dir`` (None = the run directory, ``trainer.log_dir``): ``results.csv`` (dataset, n,
    plcc, srcc, krcc, rmse), ``results.md`` (the paper's ``PLCC/SRCC`` format),
    ``predictions_<dataset>.csv`` and ``scatter_<dataset>.png`` (predicted vs true MOS, PLCC/SRCC in
    the title). Testing runs on one device: every rank would evaluate the whole set anyway.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, out_dir: str | None = None):
        self.out_dir = out_dir
        self.out: Path | None = None
        self._sets: dict[int, report.TestSetRecord] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "test":
            return
        if trainer.world_size > 1:
            raise RuntimeError(f"rsfiqa test runs on one device, this trainer has {trainer.world_size} processes: "
                               f"set --trainer.devices 1 --trainer.num_nodes 1")
        self.out = Path(self.out_dir or trainer.log_dir or trainer.default_root_dir)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sets = {}

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        # test_step returns nothing yet: the rows are predict_step's (one more forward pass per batch)
        rows = outputs if isinstance(outputs, list) else pl_module.predict_step(batch, batch_idx, dataloader_idx)
        self._sets.setdefault(dataloader_idx, report.TestSetRecord()).add(rows, batch["mos_norm"])

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or self.out is None:
            return
        sets = [self._sets[i] for i in sorted(self._sets)]
        names = unique_names([s.dataset for s in sets])
        rows = []
        for name, test_set in zip(names, sets):
            row = test_set.result_row(name)
            report.write_predictions(self.out / f"predictions_{name}.csv", test_set.rows)
            plots.scatter_plot([r["mos"] for r in test_set.rows], [r["pred_mos"] for r in test_set.rows],
                               f"{name} (n={row['n']}): PLCC {row['plcc']:.3f}  SRCC {row['srcc']:.3f}",
                               self.out / f"scatter_{name}.png")
            rows.append(row)
        config = pl_module.net.config
        model = f"RSFIQA, arch {config.arch} ({' + '.join(config.backbone_names)})"
        csv_path, md_path = report.write_results(self.out, rows, model, f"checkpoint: `{trainer.ckpt_path}`")
        rank_zero_info(f"wrote {csv_path}, {md_path} and per-dataset predictions/scatter plots")


class TrainingCurves(Callback):
    """At the end of ``fit``: ``curves.png`` (train/val loss and val SRCC/PLCC per epoch) beside the CSV
    logger's ``metrics.csv``. Without a CSV logger there is nothing to plot; that is reported."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if logger is None:
            rank_zero_info(f"{CURVES_PNG} not written: training curves are read from a CSVLogger, none is set")
            return
        logger.save()  # loggers are finalised only after on_fit_end
        metrics_csv = Path(logger.log_dir) / "metrics.csv"
        if not metrics_csv.is_file() or not plots.epoch_series(metrics_csv, plots.CURVES):
            rank_zero_info(f"{CURVES_PNG} not written: {metrics_csv} holds no per-epoch {', '.join(plots.CURVES)}")
            return
        path = plots.training_curves(metrics_csv, Path(logger.log_dir) / CURVES_PNG)
        rank_zero_info(f"wrote training curves to {path}")
