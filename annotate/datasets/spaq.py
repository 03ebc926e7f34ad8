"""SPAQ (Fang et al., CVPR 2020): 11,125 smartphone photos with MOS and five attribute scores.

``Annotations/MOS and Image attribute scores.xlsx`` (``Image name, MOS, Brightness, Colorfulness,
Contrast, Noisiness, Sharpness``); a CSV export of it with the same name and header is accepted when
the spreadsheet is absent. Images ``TestImage/00001.jpg`` ... (full phone resolution: the annotation
pipeline downscales). MOS 0-100, higher = better; the attributes are kept in ``extra``. Split by image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from annotate.datasets.base import DatasetAdapter, LabelRow, cell_text, parse_records, to_float
from annotate.types import Skipped

LABEL_FILE = "Annotations/MOS and Image attribute scores.xlsx"
IMAGE_FOLDER = "TestImage"
ATTRIBUTES = ("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")


class SPAQAdapter(DatasetAdapter):
    name = "spaq"
    layout = f"ROOT/{LABEL_FILE} (or the same name with .csv); images in ROOT/{IMAGE_FOLDER}/"
    higher_better = True
    authentic = True
    documented_range = (0.0, 100.0)
    image_folder = IMAGE_FOLDER

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(root / IMAGE_FOLDER, False)]

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        xlsx, csv_export = root / LABEL_FILE, (root / LABEL_FILE).with_suffix(".csv")
        required = ("Image name", "MOS")
        if xlsx.is_file() or not csv_export.is_file():
            records, skipped = self.read_xlsx(xlsx, required)
        else:
            records, skipped = self.read_csv(csv_export, required)
        rows, bad = parse_records(records, parse_row)
        return rows, skipped + bad


def parse_row(where: str, r: dict[str, Any]) -> LabelRow:
    """One SPAQ row; attributes present in the file go to ``extra`` (lower-case keys)."""
    extra = {a.lower(): to_float(r[a]) for a in ATTRIBUTES if r.get(a) not in (None, "")}
    return LabelRow(image_name=cell_text(r["Image name"]), mos=to_float(r["MOS"]), where=where, extra=extra)
