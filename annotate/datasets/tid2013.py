"""TID2013 (Ponomarenko et al., 2015): 25 references x 24 distortions x 5 levels, synthetic.

``mos_with_names.txt``: ``"<mos> <name>"`` per line (3,000 lines, CRLF); the optional
``mos_std.txt`` holds one standard deviation per line in the same order. Images in
``distorted_images/``. The release spells file names inconsistently (``I01_11_1.BMP`` vs
``i01_01_2.bmp``), so names are matched case-insensitively. MOS 0-9, higher = better; the
reference id is the ``iXX`` prefix, lower-cased. Split by reference image.
"""
from __future__ import annotations

import re
from pathlib import Path

from annotate.datasets.base import DatasetAdapter, LabelRow, parse_records, to_float
from annotate.types import Skipped

LABEL_FILE = "mos_with_names.txt"
STD_FILE = "mos_std.txt"
IMAGE_FOLDER = "distorted_images"
NAME_PATTERN = re.compile(r"^(i\d+)_\d+_\d+\.bmp$", re.IGNORECASE)


def tid_reference(name: str) -> str:
    """``"i01"`` from ``"I01_11_1.BMP"``; ``ValueError`` for names outside the iXX_YY_Z.bmp pattern."""
    match = NAME_PATTERN.match(name)
    if not match:
        raise ValueError(f"image name {name!r} does not follow iXX_YY_Z.bmp")
    return match.group(1).lower()


class TID2013Adapter(DatasetAdapter):
    name = "tid2013"
    layout = f"ROOT/{LABEL_FILE} ('<mos> <name>' per line), optional ROOT/{STD_FILE}, images in ROOT/{IMAGE_FOLDER}/"
    higher_better = True
    authentic = False
    documented_range = (0.0, 9.0)
    image_folder = IMAGE_FOLDER
    case_insensitive = True

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(root / IMAGE_FOLDER, False)]

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        lines = self.read_lines(root / LABEL_FILE)
        stds = self.read_std(root / STD_FILE, len(lines)) if (root / STD_FILE).is_file() else [None] * len(lines)

        def parse(where: str, item: tuple[str, float | None]) -> LabelRow:
            line, std = item
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"expected '<mos> <name>', got {line!r}")
            extra = {} if std is None else {"mos_std": std}
            return LabelRow(image_name=fields[1], mos=to_float(fields[0]), where=where,
                            ref=tid_reference(fields[1]), extra=extra)

        return parse_records(((where, (line, std)) for (where, line), std in zip(lines, stds)), parse)

    def read_std(self, path: Path, count: int) -> list[float]:
        """``mos_std.txt``: one value per label line, in the same order."""
        lines = self.read_lines(path)
        if len(lines) != count:
            raise self.error(path, f"has {len(lines)} values but {LABEL_FILE} has {count} lines")
        try:
            return [to_float(line) for _, line in lines]
        except ValueError as e:
            raise self.error(path, str(e)) from e
