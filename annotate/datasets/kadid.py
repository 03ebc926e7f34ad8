"""KADID-10k (Lin, Hosu, Saupe, 2019): 81 references x 25 distortions x 5 levels, synthetic.

``dmos.csv`` (``dist_img,ref_img,dmos,var``, e.g. ``I01_01_01.png,I01.png,4.57,0.496``) and all
images, distorted and reference, in ``images/``. Despite its name the ``dmos`` column is a 1-5
quality score, higher = better. Split by reference image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from annotate.datasets.base import DatasetAdapter, LabelRow, parse_records, to_float
from annotate.types import Skipped

LABEL_FILE = "dmos.csv"
IMAGE_FOLDER = "images"


class KADIDAdapter(DatasetAdapter):
    name = "kadid"
    layout = f"ROOT/{LABEL_FILE} (dist_img,ref_img,dmos,var) and ROOT/{IMAGE_FOLDER}/ (distorted and reference images)"
    higher_better = True
    authentic = False
    documented_range = (1.0, 5.0)
    image_folder = IMAGE_FOLDER

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(root / IMAGE_FOLDER, False)]

    def exempt_from_scan(self, root: Path, rows: Sequence[LabelRow]) -> set[Path]:
        """The reference images share ``images/`` with the distorted ones."""
        return {root / IMAGE_FOLDER / r.extra["ref_img"] for r in rows}

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        records, skipped = self.read_csv(root / LABEL_FILE, ("dist_img", "ref_img", "dmos", "var"))

        def parse(where: str, r: dict) -> LabelRow:
            return LabelRow(image_name=r["dist_img"], mos=to_float(r["dmos"]), where=where,
                            ref=Path(r["ref_img"]).stem, extra={"ref_img": r["ref_img"], "var": to_float(r["var"])})

        rows, bad = parse_records(records, parse)
        return rows, skipped + bad
