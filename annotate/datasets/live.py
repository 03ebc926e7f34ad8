"""LIVE Image Quality Assessment Database, Release 2 (Sheikh et al., 2006): 29 references, synthetic.

982 entries in the release's order: ``jp2k/`` (227) ``jpeg/`` (233) ``wn/`` (174) ``gblur/`` (174)
``fastfading/`` (174), each ``imgN.bmp``. Scores, first file present (or ``score_file=``):

* ``dmos_realigned.mat``: ``dmos_new`` (realigned DMOS, the usual choice), ``dmos_std``, ``orgs``;
* ``dmos.mat``: ``dmos`` (original DMOS), ``orgs``;
* ``live_iqa_scores.mat`` (LIVE lab's re-save, github.com/utlive/live_python_qa): ``scores`` =
  the original DMOS, ``orgs``.

``orgs == 1`` marks copies of the reference images: they are recorded as skipped. Reference names
come from ``refnames_all.mat`` (cell array ``refnames_all``, one per entry) or, when it is absent,
from each folder's ``info.txt`` (``"<refname> <imgname> <param>"`` per line). DMOS ~0-100,
lower = better. Split by reference image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annotate.datasets.base import NO_REF, REFERENCE, DatasetAdapter, LabelRow, mat_strings, mat_vector, parse_records
from annotate.types import Skipped

BLOCKS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
N_ENTRIES = sum(n for _, n in BLOCKS)
# score file -> (score variable, std variable or None, which DMOS it is)
SCORE_FILES = {
    "dmos_realigned.mat": ("dmos_new", "dmos_std", "realigned"),
    "dmos.mat": ("dmos", None, "original"),
    "live_iqa_scores.mat": ("scores", None, "original"),
}
REFNAMES_FILE = "refnames_all.mat"
INFO_FILE = "info.txt"


def live_image_names() -> list[str]:
    """The 982 entry names in the release's order: ``jp2k/img1.bmp`` ... ``fastfading/img174.bmp``."""
    return [f"{folder}/img{j}.bmp" for folder, n in BLOCKS for j in range(1, n + 1)]


class LIVEAdapter(DatasetAdapter):
    name = "live"
    layout = ("ROOT/dmos_realigned.mat (or dmos.mat, or live_iqa_scores.mat) with orgs; reference names in "
              "ROOT/refnames_all.mat or ROOT/<folder>/info.txt; images ROOT/{jp2k,jpeg,wn,gblur,fastfading}/imgN.bmp")
    higher_better = False
    authentic = False
    documented_range = (0.0, 100.0)

    def __init__(self, *, score_file: str | None = None, **common: Any) -> None:
        """``score_file``: one of SCORE_FILES to use; default the first present."""
        if score_file is not None and score_file not in SCORE_FILES:
            raise ValueError(f"live: score_file must be one of {sorted(SCORE_FILES)}, got {score_file!r}")
        self.score_file = score_file
        super().__init__(**common)

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(root / folder, False) for folder, _ in BLOCKS]

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        file = self.score_file or next((f for f in SCORE_FILES if (root / f).is_file()), next(iter(SCORE_FILES)))
        score_var, std_var, kind = SCORE_FILES[file]
        mat = self.read_mat(root / file, [score_var, "orgs"])
        scores, orgs = self.entries(root / file, mat, score_var), self.entries(root / file, mat, "orgs")
        stds = self.entries(root / file, mat, std_var) if std_var in mat else None
        refs, skipped = self.reference_names(root)
        rows = []
        for i, name in enumerate(live_image_names()):
            where = f"{file}[{i + 1}]"
            extra: dict[str, Any] = {"dmos_kind": kind, "distortion": name.split("/")[0]}
            if stds is not None:
                extra["dmos_std"] = float(stds[i])
            ref = refs.get(name)
            rows.append(LabelRow(image_name=name, mos=float(scores[i]), where=where, ref=ref, extra=extra,
                                 exclude=exclusion(name, where, ref, is_reference=orgs[i] == 1)))
        return rows, skipped

    def entries(self, path: Path, mat: dict[str, np.ndarray], var: str) -> np.ndarray:
        """MAT variable ``var`` as a flat vector of the 982 entries (else a clear error)."""
        values = mat_vector(mat[var])
        if values.size != N_ENTRIES:
            raise self.error(path, f"'{var}' has {values.size} entries, expected {N_ENTRIES} "
                                   f"({', '.join(f'{f} {n}' for f, n in BLOCKS)})")
        return values

    def reference_names(self, root: Path) -> tuple[dict[str, str], list[Skipped]]:
        """Entry name -> reference id (file stem), from refnames_all.mat or the info.txt files."""
        if (root / REFNAMES_FILE).is_file():
            mat = self.read_mat(root / REFNAMES_FILE, ["refnames_all"])
            names = mat_strings(mat["refnames_all"])
            if len(names) != N_ENTRIES:
                raise self.error(root / REFNAMES_FILE, f"'refnames_all' has {len(names)} entries, expected {N_ENTRIES}")
            return {img: Path(ref).stem for img, ref in zip(live_image_names(), names) if ref}, []
        missing = [folder for folder, _ in BLOCKS if not (root / folder / INFO_FILE).is_file()]
        if missing:
            raise self.error(root / REFNAMES_FILE, f"not found, and neither are the fallback info.txt files "
                                                   f"of {missing} (ROOT/<folder>/{INFO_FILE})")
        refs: dict[str, str] = {}
        skipped: list[Skipped] = []
        for folder, _ in BLOCKS:
            pairs, bad = parse_records(self.read_lines(root / folder / INFO_FILE), parse_info_line)
            refs.update({f"{folder}/{img}": ref for img, ref in pairs})
            skipped += [Skipped(f"{folder}/{s.item}", s.reason) for s in bad]
        return refs, skipped


def exclusion(name: str, where: str, ref: str | None, is_reference: bool) -> str | None:
    """Skip reason of an entry that is not a usable distorted image (None for one that is)."""
    if is_reference:
        return f"{REFERENCE} (orgs==1: a copy of reference {ref}; {where})"
    if not ref:
        return f"{NO_REF} ({name} has no reference name in {REFNAMES_FILE} or {INFO_FILE}; {where})"
    return None


def parse_info_line(where: str, line: str) -> tuple[str, str]:
    """(image name, reference id) of an info.txt line ``"<refname> <imgname> [<param>]"``."""
    fields = line.split()
    if len(fields) < 2:
        raise ValueError(f"expected '<refname> <imgname> <param>', got {line!r}")
    return fields[1], Path(fields[0]).stem
