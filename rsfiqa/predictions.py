"""Trainer callbacks of the ``rsfiqa`` CLI."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any, Sequence

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

PREDICTION_COLUMNS = ("key", "dataset", "image", "pred_norm", "pred_mos", "mos")


class PredictionWriter(BasePredictionWriter):
    """Write one CSV row per predicted image (columns :data:`PREDICTION_COLUMNS`), batch by batch.

    ``output_path`` None = ``predictions.csv`` in the run directory (the trainer's log dir).
    Every rank predicts the whole set (see ``ShardDataModule``), so only global rank 0 writes.
    """

    def __init__(self, output_path: str | None = None):
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self._file: IO[str] | None = None
        self._writer: Any = None
        self.path: Path | None = None

    def resolve_path(self, trainer: Trainer) -> Path:
        if self.output_path is not None:
            return Path(self.output_path)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.path = self.resolve_path(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=PREDICTION_COLUMNS)
        self._writer.writeheader()

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: list[dict[str, Any]],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if self._writer is not None:
            self._writer.writerows(prediction)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._writer = None, None
            print(f"wrote predictions to {self.path}")
