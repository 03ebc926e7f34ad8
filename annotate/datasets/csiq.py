"""CSIQ (Larson & Chandler, 2010): 30 references, 866 distorted images, DMOS 0-1 (lower = better).

Label sources, tried in this order (or ``label_file=`` one of them):

* ``csiq.DMOS.xlsx`` (the current official download) and ``csiq.beta.xlsx`` (an earlier name of
  the same spreadsheet): the sheet ``all_by_image`` (any sheet with the columns is accepted) with
  ``image,dst_idx,dst_type,dst_lev,dmos_std,dmos`` below a header that need not be in row 1;
* ``csiq_label.txt``: the widely used text form ``<dist_name> <dmos>``, e.g. ``1600.AWGN.1.png 0.061989``.

Images: ``dst_imgs/<type>/<ref>.<TYPE>.<lvl>.png`` (``dst_imgs_all/`` flattened is accepted too).
Type spellings differ between folder names, file names and the spreadsheet ("awgn"/"AWGN"/"noise",
"jpeg2000"/"jpeg 2000"), so files are matched on (ref, canonical type, level), case-insensitively.
The spreadsheet rows get the file-name spelling of the release, so both sources give the same
image names. Split by reference image (the part of the name before the first dot).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from annotate.datasets.base import (
    DatasetAdapter,
    ImageNotFound,
    LabelRow,
    cell_text,
    iter_image_files,
    parse_records,
    to_float,
)
from annotate.types import Skipped
from rsfiqa_core.imageio import printable

LABEL_FILES = ("csiq.DMOS.xlsx", "csiq.beta.xlsx", "csiq_label.txt")
SHEET = "all_by_image"
SHEET_COLUMNS = ("image", "dst_type", "dst_lev", "dmos")
IMAGE_FOLDERS = ("dst_imgs", "dst_imgs_all")
# canonical distortion -> its spelling in the release's file names
FILE_TOKEN = {"awgn": "AWGN", "jpeg": "JPEG", "jpeg2000": "jpeg2000", "fnoise": "fnoise", "blur": "BLUR",
              "contrast": "contrast"}
ALIASES = {"noise": "awgn"}

Key = tuple[str, str, int]


def canonical_type(text: str) -> str:
    """"jpeg 2000" / "JPEG2000" -> "jpeg2000", "noise" / "AWGN" -> "awgn"; ValueError if unknown."""
    token = "".join(text.lower().split()).replace("_", "").replace("-", "")
    token = ALIASES.get(token, token)
    if token not in FILE_TOKEN:
        raise ValueError(f"unknown CSIQ distortion type {text!r}")
    return token


def parse_image_name(name: str) -> Key:
    """(ref, canonical type, level) of ``<ref>.<TYPE>.<lvl>.<ext>``; ValueError otherwise."""
    parts = name.rsplit(".", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        raise ValueError(f"image name {name!r} does not follow <ref>.<TYPE>.<level>.png")
    return parts[0].lower(), canonical_type(parts[1]), int(parts[2])


class CSIQAdapter(DatasetAdapter):
    name = "csiq"
    layout = ("ROOT/csiq.DMOS.xlsx (or csiq.beta.xlsx; sheet all_by_image) or ROOT/csiq_label.txt "
              "('<dist_name> <dmos>'); images in ROOT/dst_imgs/<type>/<ref>.<TYPE>.<level>.png")
    higher_better = False
    authentic = False
    documented_range = (0.0, 1.0)

    def __init__(self, *, label_file: str | None = None, **common: Any) -> None:
        """``label_file``: one of LABEL_FILES to use; default the first present."""
        if label_file is not None and label_file not in LABEL_FILES:
            raise ValueError(f"csiq: label_file must be one of {LABEL_FILES}, got {label_file!r}")
        self.label_file = label_file
        self._index: dict[Key, list[Path]] = {}
        super().__init__(**common)

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        self._index = self.index_images(root)
        name = self.label_file or next((n for n in LABEL_FILES if (root / n).is_file()), LABEL_FILES[0])
        path = root / name
        if path.suffix == ".txt":
            return parse_records(self.read_lines(path), self.parse_text_line)
        records, skipped = self.read_xlsx(path, SHEET_COLUMNS, prefer_sheet=SHEET)
        rows, bad = parse_records(records, self.parse_sheet_row)
        return rows, skipped + bad

    @staticmethod
    def parse_text_line(where: str, line: str) -> LabelRow:
        """``"1600.AWGN.1.png 0.061989"``."""
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"expected '<dist_name> <dmos>', got {line!r}")
        ref, dist, level = parse_image_name(fields[0])
        return LabelRow(image_name=fields[0], mos=to_float(fields[1]), where=where, ref=fields[0].split(".")[0],
                        extra={"distortion": dist, "level": level})

    @staticmethod
    def parse_sheet_row(where: str, r: dict[str, Any]) -> LabelRow:
        """A spreadsheet row, named as the release names its file."""
        ref, dist, level = cell_text(r["image"]), canonical_type(cell_text(r["dst_type"])), int(to_float(r["dst_lev"]))
        extra: dict[str, Any] = {"distortion": dist, "level": level}
        if r.get("dmos_std") is not None:
            extra["dmos_std"] = to_float(r["dmos_std"])
        return LabelRow(image_name=f"{ref}.{FILE_TOKEN[dist]}.{level}.png", mos=to_float(r["dmos"]), where=where,
                        ref=ref, extra=extra)

    def index_images(self, root: Path) -> dict[Key, list[Path]]:
        """(ref, type, level) -> files, over every image under the image folders."""
        index: dict[Key, list[Path]] = {}
        for path in (p for folder in IMAGE_FOLDERS for p in iter_image_files(root / folder, recursive=True)):
            try:
                index.setdefault(parse_image_name(path.name), []).append(path)
            except ValueError:
                continue  # not a CSIQ distorted-image name: reported by the unlabelled-file scan
        return index

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(root / folder, True) for folder in IMAGE_FOLDERS]

    def locate(self, root: Path, row: LabelRow) -> Path:
        key = parse_image_name(row.image_name)
        matches = self._index.get(key, [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ImageNotFound(f"{len(matches)} files match: {[printable(os.path.relpath(p, root)) for p in matches]}")
        raise ImageNotFound(f"expected dst_imgs/<type>/{row.image_name}")
