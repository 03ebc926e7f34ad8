"""KonIQ-10k (Hosu et al., 2020): 10,073 authentic images, official train/validation/test split.

Label files, as distributed:

* ``koniq10k_scores_and_distributions.csv``: ``image_name,c1..c5,c_total,MOS,SD,MOS_zscore``
  with vote counts c1..c5, MOS on the 1-5 ACR scale and MOS_zscore on ~0-100;
* ``koniq10k_distributions_sets.csv`` (github.com/subpic/koniq, ``metadata/``):
  ``image_name,c1..c5,c_total,MOS,SD,set`` where c1..c5 are vote *fractions*, MOS is the 0-100
  z-score MOS and ``set`` is training/validation/test (7,058 / 1,000 / 2,015).

With both files the scores come from the first and the official split from the second; the sets
file alone is enough (its 1-5 MOS is recovered as sum_i i*c_i / sum_i c_i, which holds for counts
and fractions alike). ``mos_scale="zscore"`` (default) uses the 0-100 MOS_zscore, the score most
KonIQ-10k IQA code trains on (e.g. hyperIQA's loader); ``"acr"`` uses the 1-5 MOS. Both are kept
in ``extra``. Images: ``1024x768/`` (default) or ``512x384/``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from annotate.datasets.base import DatasetAdapter, LabelRow, parse_records, to_float
from annotate.types import Skipped

log = logging.getLogger(__name__)

SCORES_FILE = "koniq10k_scores_and_distributions.csv"
SETS_FILE = "koniq10k_distributions_sets.csv"
SCORES_COLUMNS = ("image_name", "MOS", "SD", "MOS_zscore")
SETS_COLUMNS = ("image_name", "c1", "c2", "c3", "c4", "c5", "MOS", "SD", "set")
OFFICIAL_SET = {"training": "train", "validation": "val", "test": "test"}
MOS_SCALES = {"zscore": (0.0, 100.0), "acr": (1.0, 5.0)}
RESOLUTIONS = ("1024x768", "512x384")


def acr_mean(votes: Sequence[float]) -> float:
    """Mean opinion score on the 1-5 ACR scale from the c1..c5 votes (counts or fractions)."""
    total = sum(votes)
    if not total > 0:
        raise ValueError(f"vote distribution c1..c5 sums to {total}")
    return sum(i * v for i, v in enumerate(votes, 1)) / total


def official_split(set_value: str) -> str:
    """The split value of KonIQ's ``set`` column (training/validation/test)."""
    if set_value not in OFFICIAL_SET:
        raise ValueError(f"unknown set value {set_value!r}, expected one of {sorted(OFFICIAL_SET)}")
    return OFFICIAL_SET[set_value]


class KonIQAdapter(DatasetAdapter):
    name = "koniq"
    layout = (f"ROOT/{SCORES_FILE} and/or ROOT/{SETS_FILE} (official 'set' column); "
              "images in ROOT/1024x768/ (or ROOT/512x384/ with resolution='512x384')")
    higher_better = True
    authentic = True

    def __init__(self, *, mos_scale: str = "zscore", resolution: str = "1024x768", **common: Any) -> None:
        """``mos_scale``: "zscore" (0-100, default) or "acr" (1-5); ``resolution``: the image folder."""
        if mos_scale not in MOS_SCALES:
            raise ValueError(f"koniq: mos_scale must be one of {sorted(MOS_SCALES)}, got {mos_scale!r}")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"koniq: resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.mos_scale, self.image_folder = mos_scale, resolution
        self.documented_range = MOS_SCALES[mos_scale]
        super().__init__(**common)

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(root / self.image_folder, False)]

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        scores, sets = root / SCORES_FILE, root / SETS_FILE
        if scores.is_file():
            records, skipped = self.read_csv(scores, SCORES_COLUMNS)
            official = self.read_official_sets(sets) if sets.is_file() else {}
            if not official:
                log.warning("koniq: %s not found, so there is no 'official' split tag", sets)

            def parse(where: str, r: dict) -> LabelRow:
                set_value = official.get(r["image_name"])
                return self.label_row(where, r["image_name"], acr=to_float(r["MOS"]),
                                      zscore=to_float(r["MOS_zscore"]), sd=to_float(r["SD"]), set_value=set_value)
        elif sets.is_file():
            records, skipped = self.read_csv(sets, SETS_COLUMNS)

            def parse(where: str, r: dict) -> LabelRow:
                return self.label_row(where, r["image_name"], acr=acr_mean([to_float(r[f"c{i}"]) for i in range(1, 6)]),
                                      zscore=to_float(r["MOS"]), sd=to_float(r["SD"]), set_value=r["set"])
        else:
            raise self.error(scores, f"label file not found (nor {SETS_FILE})")
        rows, bad = parse_records(records, parse)
        if no_official := sum("official" not in r.splits for r in rows):
            log.warning("koniq: %d label rows have no official split assignment", no_official)
        return rows, skipped + bad

    def label_row(self, where: str, name: str, *, acr: float, zscore: float, sd: float,
                  set_value: str | None) -> LabelRow:
        """One KonIQ row; the MOS is the ``mos_scale`` one, both scales kept in ``extra``."""
        return LabelRow(image_name=name, mos=zscore if self.mos_scale == "zscore" else acr, where=where,
                        extra={"mos_zscore": zscore, "mos_acr": acr, "sd_acr": sd},
                        splits={} if set_value is None else {"official": official_split(set_value)})

    def read_official_sets(self, path: Path) -> dict[str, str]:
        """image_name -> raw ``set`` value of ``koniq10k_distributions_sets.csv``."""
        records, _ = self.read_csv(path, ("image_name", "set"))
        return {r["image_name"]: r["set"] for _, r in records}
