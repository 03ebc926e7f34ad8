"""``rsfiqa score --labels CSV``: known MOS matched to the scored photos exactly.

The CSV has the columns ``image`` and ``mos``. A row's ``image`` is the photo's path relative to the
scanned folder (``sub/a.jpg``), written with ``/``; it names the scored photo whose path ends in those
components, so ``a/x.jpg`` never takes ``b/x.jpg``'s row. A bare file name (``x.jpg``) also names a
photo in a subfolder, but only when no other scored photo has that name (the summary line counts
these base-name matches). Names are compared in Unicode NFC, so a name stored decomposed (NFD, as some
file systems and editors write it) matches. Refused, naming the rows: a name listed twice (after
normalisation), a MOS that is not a finite number, and a row that fits several scored photos.
"""
from __future__ import annotations

import csv
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

NOTED_NAMES = 5  # names shown in a note line


def named(items: Sequence[object]) -> str:
    """The first :data:`NOTED_NAMES` items, and how many more (a note line's list of names)."""
    more = f" and {len(items) - NOTED_NAMES} more" if len(items) > NOTED_NAMES else ""
    return ", ".join(str(item) for item in items[:NOTED_NAMES]) + more


class LabelsError(ValueError):
    """A ``--labels`` file that cannot be used; the message names the file, the rows and the fix."""


def normal_name(text: str) -> str:
    """A label or file path as compared: NFC, ``/``-separated, without a leading ``./``."""
    name = unicodedata.normalize("NFC", text).replace(os.sep, "/")
    while name.startswith("./"):
        name = name[2:]
    return name


@dataclass(frozen=True)
class LabelRow:
    name: str       # normalised (:func:`normal_name`)
    mos: float
    line: int       # line of the CSV file


def read_labels(path: Path) -> dict[str, LabelRow]:
    """The rows of ``path`` by normalised name; duplicate names, non-numbers and non-finite MOS refused."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            raw = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LabelsError(f"--labels {path}: cannot be read ({err})") from err
    if not raw or not {"image", "mos"} <= set(raw[0][1]):
        raise LabelsError(f"--labels {path}: needs the columns 'image' and 'mos'")
    rows: dict[str, LabelRow] = {}
    for line, row in raw:
        name = normal_name(row["image"] or "")
        try:
            mos = float(row["mos"])
        except (TypeError, ValueError) as err:
            raise LabelsError(f"--labels {path}: line {line}: 'mos' is not a number ({row['mos']!r})") from err
        if not math.isfinite(mos):
            raise LabelsError(f"--labels {path}: line {line}: MOS {row['mos']!r} of {name!r} is not a finite number; "
                              f"fix or remove the row")
        if name in rows:
            raise LabelsError(f"--labels {path}: {name!r} is listed twice (lines {rows[name].line} and {line}); "
                              f"keep one row")
        rows[name] = LabelRow(name, mos, line)
    return rows


def path_tails(file: Path) -> list[str]:
    """The file's trailing paths, longest first: ``/p/sub/a.jpg`` -> ``p/sub/a.jpg``, ``sub/a.jpg``, ``a.jpg``."""
    parts = [normal_name(part) for part in Path(os.path.abspath(file)).parts[1:]]
    return ["/".join(parts[i:]) for i in range(len(parts))]


@dataclass
class LabelMatch:
    """The MOS of each matched photo and what was left over."""

    mos: dict[Path, float]
    by_base_name: int
    photos_without_row: list[Path]
    rows_without_photo: list[LabelRow]

    def summary(self, path: Path) -> str:
        """One line: matched, by base name, unmatched photos and rows (the first few named)."""
        def listed(items: Sequence[object]) -> str:
            return f" ({named(items)})" if items else ""
        return (f"--labels {path}: {len(self.mos)} photo(s) matched ({self.by_base_name} by base name only); "
                f"{len(self.photos_without_row)} scored photo(s) without a row{listed(self.photos_without_row)}; "
                f"{len(self.rows_without_photo)} row(s) naming no scored photo"
                f"{listed([r.name for r in self.rows_without_photo])}")


def match_labels(rows: dict[str, LabelRow], files: Sequence[Path], path: Path) -> LabelMatch:
    """Each file's row (module docstring); a row fitting several files is refused, naming them."""
    taken: dict[str, list[Path]] = {}
    base_counts: dict[str, int] = {}
    for file in files:
        base = normal_name(Path(file).name)
        base_counts[base] = base_counts.get(base, 0) + 1
    common = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]) if files else "."
    mos, without, by_base = {}, [], 0
    for file in files:
        tails = path_tails(file)
        in_subfolder = os.path.dirname(os.path.relpath(os.path.abspath(file), common)) != ""
        row = next((rows[t] for t in (tails[:-1] if in_subfolder else tails) if t in rows), None)
        if row is None and tails[-1] in rows and base_counts[tails[-1]] == 1:
            row = rows[tails[-1]]
            by_base += 1
        if row is None:
            without.append(file)
            continue
        taken.setdefault(row.name, []).append(file)
        mos[file] = row.mos
    for name, fits in taken.items():
        if len(fits) > 1:
            raise LabelsError(f"--labels {path}: line {rows[name].line}: {name!r} fits {len(fits)} scored photos "
                              f"({named(fits)}); write each photo's path relative to the scanned folder")
    unused = [row for name, row in rows.items() if name not in taken]
    return LabelMatch(mos, by_base, without, unused)
