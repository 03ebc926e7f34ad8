"""What every dataset adapter shares: label-file readers, row checks, image lookup, skip records.

An adapter only knows its dataset's official layout: :meth:`DatasetAdapter.read_labels` turns
the label file(s) into :class:`LabelRow` s and :meth:`DatasetAdapter.locate` finds a row's image.
:meth:`DatasetAdapter.load` does the rest the same way for all datasets:

* label checks, in this order: non-UTF-8 name, duplicate name (the first row is kept), an entry
  the dataset's protocol excludes (reference copies, training images), MOS not finite / negative
  / outside the documented range, synthetic row without a reference id;
* seeded splits (:mod:`annotate.datasets.splits`) over the rows that pass those checks, grouped by
  reference id (synthetic datasets) or image (authentic ones), so a split does not depend on which
  image files happen to be on disk;
* an image that is not on disk, an image on disk that no label row names, and a broken symbolic
  link among the images become :class:`~annotate.types.Skipped` records too. Images are never
  opened here.

Every skip reason reads ``"<category> (<detail>)"``; the categories are the constants below.
A missing or unreadable label file raises :class:`DatasetError` naming the file and the layout.
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence, TypeVar

import numpy as np

from annotate.datasets.splits import seeded_splits
from annotate.types import Sample, Skipped
from rsfiqa_core.contract import IMAGE_EXTS
from rsfiqa_core.imageio import printable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Skip categories (the text before " (" in every reason).
MISSING_IMAGE = "image file not found"
NO_LABEL = "no label"
DUPLICATE = "duplicate image name"
INVALID_MOS = "invalid MOS"
MALFORMED = "malformed row"
NOT_UTF8 = "file name is not valid UTF-8"
REFERENCE = "reference image"
TRAINING = "training image"
NO_REF = "no reference id"
BROKEN_LINK = "broken symbolic link"


class DatasetError(RuntimeError):
    """A dataset folder or label file that cannot be read as the adapter's layout."""


class ImageNotFound(LookupError):
    """A label row's image is not on disk (the message says what was looked for)."""


@dataclass
class LabelRow:
    """One entry of a label file, before checks."""

    image_name: str                  # as the label file names it
    mos: float                       # raw score on the dataset's scale (may be bad: checked later)
    where: str                       # "file:line" (or sheet/row), for messages
    ref: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)  # official tags, e.g. {"official": "train"}
    exclude: str | None = None       # full skip reason when the protocol excludes this entry


# --------------------------------------------------------------------------- small helpers
def is_utf8(name: str) -> bool:
    """False for names holding undecodable bytes (``os.fsdecode`` surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_float(value: Any) -> float:
    """A number from a label cell; ``ValueError`` naming the value when it is none."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"not a number: {value!r}")


def cell_text(value: Any) -> str:
    """Spreadsheet cell as text; whole floats (Excel's 1600.0) lose the ``.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def mos_problem(mos: float, mos_range: Sequence[float]) -> str | None:
    """Why ``mos`` is not a usable score on ``mos_range`` (None when it is)."""
    lo, hi = float(mos_range[0]), float(mos_range[1])
    if not math.isfinite(mos):
        return f"not a finite number: {mos}"
    if mos < 0 <= lo:
        return f"negative score {mos:g} on a {lo:g}..{hi:g} scale"
    slack = 1e-9 * (hi - lo)  # float rounding of derived scores
    if not lo - slack <= mos <= hi + slack:
        return f"{mos:g} outside the documented range [{lo:g}, {hi:g}]"
    return None


def iter_image_files(folder: Path, recursive: bool) -> list[Path]:
    """Image files (by extension, ``rsfiqa_core.contract.IMAGE_EXTS``) in ``folder``, broken links with
    such a name included (they are reported), sorted."""
    if not folder.is_dir():
        return []
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    found = [Path(d) / f for d, _, files in walk for f in files
             if Path(f).suffix.lower().lstrip(".") in IMAGE_EXTS
             and ((Path(d) / f).is_file() or is_broken_link(Path(d) / f))]
    return sorted(found)


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target does not exist."""
    return path.is_symlink() and not path.exists()


def mat_vector(value: np.ndarray) -> np.ndarray:
    """A MATLAB numeric array (1xN or Nx1) as a flat float vector."""
    return np.asarray(value, dtype=np.float64).ravel()


def mat_strings(value: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings, as ``scipy.io.loadmat`` returns it, as a list of str.

    loadmat gives an object array whose cells are 1-element ``<U`` arrays (``squeeze_me=False``).
    """
    return [str(np.asarray(cell).ravel()[0]) if np.asarray(cell).size else "" for cell in np.asarray(value).ravel()]


def malformed(where: str, problem: Exception | str) -> Skipped:
    """The skip record of a label row whose fields cannot be parsed."""
    return Skipped(where, f"{MALFORMED} ({problem})")


def complete_records(raw: Iterable[tuple[str, dict[str, Any]]], required: Sequence[str]
                     ) -> tuple[list[tuple[str, dict[str, Any]]], list[Skipped]]:
    """Records with every required value present; the others as malformed-row skips."""
    good, bad = [], []
    for where, rec in raw:
        empty = [c for c in required if rec.get(c) is None or (isinstance(rec[c], str) and not rec[c].strip())]
        if None in rec:  # csv.DictReader puts surplus fields under the key None
            bad.append(malformed(where, f"more fields than the header: {rec[None]!r}"))
        elif empty:
            bad.append(malformed(where, f"empty or missing field(s) {empty}"))
        else:
            good.append((where, rec))
    return good, bad


def parse_records(records: Iterable[tuple[str, Any]], parse: Callable[[str, Any], T]
                  ) -> tuple[list[T], list[Skipped]]:
    """``parse(where, record)`` on every record; a ``ValueError`` makes that row a malformed skip."""
    rows, bad = [], []
    for where, rec in records:
        try:
            rows.append(parse(where, rec))
        except ValueError as e:
            bad.append(malformed(where, e))
    return rows, bad


# --------------------------------------------------------------------------- adapter base
class DatasetAdapter(ABC):
    """Reads one dataset's official layout into Samples (see the module docstring)."""

    name: ClassVar[str]                        # registry name, lower case
    layout: ClassVar[str]                      # expected folder layout, for README and errors
    higher_better: bool = True
    authentic: bool = True                     # splits by image (True) or by reference id (False)
    documented_range: tuple[float, float]     # the dataset's published score scale
    image_folder: str = ""                     # images' folder under the root (default locate)
    case_insensitive: bool = False             # match image names case-insensitively

    def __init__(self, *, mos_range: Sequence[float] | None = None, n_splits: int = 10, seed: int = 0,
                 test_frac: float = 0.2, val_frac: float = 0.1) -> None:
        """``mos_range`` overrides the documented scale; the rest configure the seeded splits."""
        if mos_range is not None and not (len(mos_range) == 2 and float(mos_range[1]) > float(mos_range[0])):
            raise ValueError(f"{self.name}: mos_range must be [low, high] with high > low, got {mos_range}")
        self.mos_range_option = None if mos_range is None else (float(mos_range[0]), float(mos_range[1]))
        self.split_options = {"n_splits": n_splits, "seed": seed, "test_frac": test_frac, "val_frac": val_frac}
        seeded_splits([], **self.split_options)  # validates the split options now, not mid-run
        self.mos_range: tuple[float, float] | None = self.mos_range_option
        self._root = Path(".")
        self._listings: dict[Path, dict[str, list[str]]] = {}

    # ---- what each dataset implements
    @abstractmethod
    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        """The label file(s) under ``root`` as rows, plus rows too malformed to be rows."""

    def locate(self, root: Path, row: LabelRow) -> Path:
        """The image file of ``row``; raises :class:`ImageNotFound`."""
        return self.find_file(root / self.image_folder, row.image_name)

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        """(folder, recursive) pairs whose image files must all be labelled."""
        return []

    def exempt_from_scan(self, root: Path, rows: Sequence[LabelRow]) -> set[Path]:
        """Files in the scanned folders that are legitimately unlabelled (e.g. references)."""
        return set()

    def resolve_mos_range(self, rows: Sequence[LabelRow]) -> tuple[float, float]:
        """The scale the MOS are checked against and normalised with."""
        return self.mos_range_option or self.documented_range

    @property
    def dataset_name(self) -> str:
        """``Sample.dataset`` of this adapter's samples."""
        return self.name

    # ---- the shared pipeline
    def load(self, root: str | bytes | os.PathLike) -> tuple[list[Sample], list[Skipped]]:
        """Samples of the dataset at ``root`` and every label row / image file that was skipped."""
        root = Path(os.fsdecode(root))
        if not root.is_dir():
            raise self.error(root, "dataset folder not found")
        self._root, self._listings = root, {}
        rows, skipped = self.read_labels(root)
        self.mos_range = self.resolve_mos_range(rows)
        located = [self._try_locate(root, row) for row in rows]
        usable = self._check_rows(rows, skipped)
        groups = [rows[i].image_name if self.authentic else str(rows[i].ref) for i in usable]
        samples = []
        for i, tags in zip(usable, seeded_splits(groups, **self.split_options)):
            row, path = rows[i], located[i]
            if isinstance(path, ImageNotFound):
                skipped.append(Skipped(printable(row.image_name), f"{MISSING_IMAGE} ({path}; row {row.where})"))
                continue
            samples.append(Sample(dataset=self.dataset_name, image_name=row.image_name, image_path=path,
                                  mos=float(row.mos), mos_range=self.mos_range, higher_better=self.higher_better,
                                  ref=row.ref, splits={**row.splits, **tags}, extra=dict(row.extra)))
        known = [p for p in located if isinstance(p, Path)] + sorted(self.exempt_from_scan(root, rows))
        skipped += self._unlabelled(root, {Path(os.path.normpath(p)) for p in known})
        self._log_summary(root, samples, skipped)
        return samples, skipped

    def _try_locate(self, root: Path, row: LabelRow) -> Path | ImageNotFound:
        try:
            return self.locate(root, row)
        except ImageNotFound as e:
            return e

    def _check_rows(self, rows: Sequence[LabelRow], skipped: list[Skipped]) -> list[int]:
        """Indices of the rows that pass the label checks; the others are appended to ``skipped``."""
        first_seen: dict[str, str] = {}
        usable = []
        for i, row in enumerate(rows):
            reason = self._row_problem(row, first_seen)
            if reason is None:
                usable.append(i)
            else:
                skipped.append(Skipped(printable(row.image_name), reason))
        return usable

    def _row_problem(self, row: LabelRow, first_seen: dict[str, str]) -> str | None:
        if not is_utf8(row.image_name):
            return f"{NOT_UTF8} (row {row.where})"
        key = row.image_name.casefold() if self.case_insensitive else row.image_name
        if key in first_seen:
            return f"{DUPLICATE} (row {row.where}; first listed at {first_seen[key]}, which is kept)"
        first_seen[key] = row.where
        if row.exclude:
            return row.exclude
        problem = mos_problem(row.mos, self.mos_range)
        if problem:
            return f"{INVALID_MOS} ({problem}; row {row.where})"
        if not self.authentic and not row.ref:
            return f"{NO_REF} (row {row.where}; needed to split by reference image)"
        return None

    def _unlabelled(self, root: Path, known: set[Path]) -> list[Skipped]:
        out = []
        for folder, recursive in self.scan_folders(root):
            for path in iter_image_files(folder, recursive):
                if Path(os.path.normpath(path)) in known:
                    continue
                rel = printable(os.path.relpath(path, root))
                if is_broken_link(path):
                    out.append(Skipped(rel, f"{BROKEN_LINK} (its target {printable(os.readlink(path))} does not exist)"))
                    continue
                category = NO_LABEL if is_utf8(path.name) else NOT_UTF8
                out.append(Skipped(rel, f"{category} (image on disk without a usable label row)"))
        return out

    def _log_summary(self, root: Path, samples: list[Sample], skipped: list[Skipped]) -> None:
        counts = Counter(s.reason.split(" (")[0] for s in skipped)
        log.info("%s at %s: %d samples, %d skipped %s", self.name, root, len(samples), len(skipped), dict(counts))

    # ---- image lookup
    def find_file(self, folder: Path, name: str) -> Path:
        """``folder/name`` on disk; case-insensitively when the adapter says so (unique match only)."""
        path = folder / name
        rel = printable(os.path.relpath(path, self._root))
        try:
            if path.is_file():
                return path
        except (OSError, ValueError) as e:  # e.g. an embedded NUL or an over-long name
            raise ImageNotFound(f"unusable path {rel}: {e}") from e
        if self.case_insensitive:
            matches = self._listing(path.parent).get(path.name.casefold(), [])
            if len(matches) == 1:
                return path.parent / matches[0]
            if matches:
                raise ImageNotFound(f"{len(matches)} files match {rel} case-insensitively: {sorted(matches)}")
        raise ImageNotFound(f"expected {rel}")

    def _listing(self, folder: Path) -> dict[str, list[str]]:
        if folder not in self._listings:
            names = os.listdir(folder) if folder.is_dir() else []
            index: dict[str, list[str]] = {}
            for n in names:
                index.setdefault(n.casefold(), []).append(n)
            self._listings[folder] = index
        return self._listings[folder]

    # ---- label-file readers (errors name the file and the expected layout)
    def error(self, path: Path, problem: str) -> DatasetError:
        """A :class:`DatasetError` naming ``path``, the problem and this adapter's layout."""
        return DatasetError(f"{printable(str(path))}: {problem}.\nExpected layout for '{self.name}': {self.layout}")

    def require_file(self, path: Path) -> Path:
        """``path`` if it is a file, else a :class:`DatasetError`."""
        if not path.is_file():
            raise self.error(path, "label file not found")
        return path

    def read_csv(self, path: Path, required: Sequence[str]) -> tuple[list[tuple[str, dict[str, Any]]], list[Skipped]]:
        """CSV rows as (where, row); rows lacking a required value or with extra fields are skipped."""
        self.require_file(path)
        try:
            with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                missing = [c for c in required if c not in header]
                if missing:
                    raise self.error(path, f"missing column(s) {missing}; the header is {header}")
                raw = [(f"{path.name}:{reader.line_num}", row) for row in reader]
        except (OSError, csv.Error) as e:
            raise self.error(path, f"unreadable CSV ({e})") from e
        return complete_records(raw, required)

    def read_xlsx(self, path: Path, required: Sequence[str], prefer_sheet: str | None = None,
                  header_search_rows: int = 20) -> tuple[list[tuple[str, dict[str, Any]]], list[Skipped]]:
        """Rows under the first header row (within ``header_search_rows``) that has ``required``.

        Sheets are tried ``prefer_sheet`` first, then in workbook order. Uses openpyxl's
        read-only mode (``iter_rows(values_only=True)``).
        """
        import openpyxl

        self.require_file(path)
        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:  # openpyxl raises zipfile/KeyError/InvalidFileException on non-xlsx data
            raise self.error(path, f"unreadable spreadsheet ({type(e).__name__}: {e})") from e
        try:
            names = sorted(wb.sheetnames, key=lambda n: n != prefer_sheet)
            for sheet in names:
                rows = wb[sheet].iter_rows(values_only=True)
                for number, values in enumerate(itertools.islice(rows, header_search_rows), 1):
                    header = [cell_text(v) if v is not None else "" for v in values]
                    if all(c in header for c in required):
                        columns = {c: j for j, c in enumerate(header) if c}
                        raw = [(f"{path.name}[{sheet}]:{n}", {c: vals[j] if j < len(vals) else None
                                                               for c, j in columns.items()})
                               for n, vals in enumerate(rows, number + 1) if any(v is not None for v in vals)]
                        return complete_records(raw, required)
        finally:
            wb.close()
        raise self.error(path, f"no sheet has a header row with the columns {list(required)}")

    def read_lines(self, path: Path) -> list[tuple[str, str]]:
        """Non-blank lines of a text label file as (where, stripped line); CRLF or LF."""
        self.require_file(path)
        try:
            text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
        except OSError as e:
            raise self.error(path, f"unreadable ({e})") from e
        return [(f"{path.name}:{n}", line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]

    def read_mat(self, path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
        """Variables of a MATLAB (v5/v7) file via ``scipy.io.loadmat``; ``required`` must be there."""
        import scipy.io

        self.require_file(path)
        try:
            data = scipy.io.loadmat(path)
        except NotImplementedError as e:  # scipy's message for v7.3 (HDF5) files
            raise self.error(path, f"MATLAB v7.3 files are not supported, re-save with -v7 ({e})") from e
        except Exception as e:  # scipy raises ValueError/TypeError/MatReadError on corrupt files
            raise self.error(path, f"unreadable MAT file ({type(e).__name__}: {e})") from e
        missing = [k for k in required if k not in data]
        if missing:
            found = sorted(k for k in data if not k.startswith("__"))
            raise self.error(path, f"missing variable(s) {missing}; the file has {found}")
        return data

