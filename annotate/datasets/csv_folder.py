"""A generic "folder + CSV" dataset, the shape a user's own data has (e.g. ``../data/clive-dev``).

``ROOT/labels.csv`` (option ``csv``) with an image column and a score column; image paths are
relative to the CSV's folder or its ``images/`` subfolder. Other columns are kept in ``extra``
(numbers as floats; a column named like a contract record field, e.g. ``dataset``, is stored as
``csv_<name>`` so it cannot clash with the record). ``mos_range=None`` takes the observed min/max
of the finite, non-negative scores, with a warning, and records that in
``extra["mos_range_source"]``. ``authentic=True`` splits by image, ``False`` by the reference
column ``ref_col``. Image files in those folders that no row names are reported as skipped
("no label").
"""
from __future__ import annotations

import csv
import inspect
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from annotate.datasets.base import DatasetAdapter, ImageNotFound, LabelRow, parse_records, to_float
from annotate.types import Skipped
from rsfiqa_core.contract import make_record
from rsfiqa_core.imageio import printable

log = logging.getLogger(__name__)
IMAGE_SUBFOLDER = "images"
# keys a shard record sets itself (rsfiqa_core.contract.make_record, annotate.pipeline.build_sample);
# extra columns must not reuse them
RECORD_KEYS = frozenset(inspect.signature(make_record).parameters) - {"extra"} | {"mos_norm", "contract_version",
                                                                                   "image_info"}


class CSVFolderAdapter(DatasetAdapter):
    name = "csv"
    layout = "ROOT/<csv> (image and score columns) with images beside it or in ROOT/images/"

    def __init__(self, *, csv: str = "labels.csv", image_col: str = "image", score_col: str = "mos",
                 ref_col: str | None = None, mos_range: Sequence[float] | None = None, higher_better: bool = True,
                 authentic: bool = True, dataset_name: str = "csv", **common: Any) -> None:
        """Column names, scale and split grouping of the user's CSV (see the module docstring)."""
        if not authentic and ref_col is None:
            raise ValueError("csv: authentic=False splits by reference image, so ref_col must name a column")
        self.csv, self.image_col, self.score_col, self.ref_col = csv, image_col, score_col, ref_col
        self.higher_better, self.authentic = bool(higher_better), bool(authentic)
        self._dataset_name = dataset_name.lower()
        super().__init__(mos_range=mos_range, **common)

    @property
    def dataset_name(self) -> str:
        return self._dataset_name

    def csv_dir(self, root: Path) -> Path:
        return (root / self.csv).parent

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        required = [self.image_col, self.score_col] + ([self.ref_col] if self.ref_col else [])
        records, skipped = self.read_csv(root / self.csv, required)
        rows, bad = parse_records(records, self.parse_row)
        return rows, skipped + bad

    def parse_row(self, where: str, r: dict[str, Any]) -> LabelRow:
        """One CSV row; the columns other than image/score/ref go to ``extra``."""
        used = {self.image_col, self.score_col, self.ref_col}
        extra = {f"csv_{k}" if k in RECORD_KEYS else k: number_or_text(v)
                 for k, v in r.items() if k not in used and v is not None}
        return LabelRow(image_name=r[self.image_col], mos=to_float(r[self.score_col]), where=where,
                        ref=r[self.ref_col] if self.ref_col else None, extra=extra)

    def resolve_mos_range(self, rows: Sequence[LabelRow]) -> tuple[float, float]:
        """The ``mos_range`` option, else the observed min/max of the finite, non-negative scores.

        Negative scores are left out of the observed range (and then skipped as invalid), so one
        corrupt row cannot stretch the scale; a scale with negative scores needs ``mos_range``.
        """
        if self.mos_range_option:
            source, (lo, hi) = "option mos_range", self.mos_range_option
        else:
            usable = [r.mos for r in rows if math.isfinite(r.mos) and r.mos >= 0]
            if len(set(usable)) < 2:
                raise self.error(self._root / self.csv, "cannot infer mos_range from fewer than two distinct "
                                                        "valid scores; set the mos_range option")
            source, lo, hi = "observed min/max", min(usable), max(usable)
            log.warning("csv: no mos_range given; normalising %s with the observed range [%g, %g]", self.csv, lo, hi)
        for r in rows:
            r.extra["mos_range_source"] = source
        return lo, hi

    def locate(self, root: Path, row: LabelRow) -> Path:
        base = self.csv_dir(root)
        try:
            return self.find_file(base, row.image_name)
        except ImageNotFound:
            try:
                return self.find_file(base / IMAGE_SUBFOLDER, row.image_name)
            except ImageNotFound as e:
                rel = printable(os.path.relpath(base, root))
                raise ImageNotFound(f"expected {rel}/{printable(row.image_name)} or "
                                    f"{rel}/{IMAGE_SUBFOLDER}/{printable(row.image_name)}") from e

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(self.csv_dir(root), False), (self.csv_dir(root) / IMAGE_SUBFOLDER, True)]


def number_or_text(value: str) -> float | str:
    """A CSV cell as float when it is one, else as printable text."""
    try:
        return to_float(value)
    except ValueError:
        return printable(value)


def write_subset(source: Path, folder: Path, keep: Callable[[int, dict[str, str]], bool],
                 csv_name: str = "labels.csv", link: bool = True) -> list[dict[str, str]]:
    """A dataset folder in this adapter's layout (``folder/labels.csv`` + ``folder/images/``) with the
    rows of ``source/labels.csv`` that ``keep(row_number, row)`` accepts; images linked (or copied)
    from ``source/images/``. Returns the kept rows."""
    with open(source / csv_name, newline="", encoding="utf-8") as f:
        rows = [row for i, row in enumerate(csv.DictReader(f)) if keep(i, row)]
    (folder / IMAGE_SUBFOLDER).mkdir(parents=True, exist_ok=True)
    with open(folder / csv_name, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        target, image = folder / IMAGE_SUBFOLDER / row["image"], (source / IMAGE_SUBFOLDER / row["image"]).resolve()
        if target.exists():
            continue
        if link:
            os.symlink(image, target)
        else:
            shutil.copy2(image, target)
    return rows
