"""LIVE In the Wild Image Quality Challenge (CLIVE; Ghadiyaram & Bovik, 2016): 1,162 authentic images.

``Data/AllImages_release.mat`` (cell array ``AllImages_release``), ``Data/AllMOS_release.mat``
(``AllMOS_release``) and the optional ``Data/AllStdDev_release.mat`` (``AllStdDev_release``), 1,169
entries in the same order. The first 7 are the training images t1..t7 (in ``Images/trainingImages/``),
which the dataset's protocol leaves out: they are recorded as skipped. Images: ``Images/``.
MOS 0-100, higher = better. Split by image.
"""
from __future__ import annotations

from pathlib import Path

from annotate.datasets.base import TRAINING, DatasetAdapter, LabelRow, mat_strings, mat_vector
from annotate.types import Skipped

IMAGES_MAT, IMAGES_VAR = "Data/AllImages_release.mat", "AllImages_release"
MOS_MAT, MOS_VAR = "Data/AllMOS_release.mat", "AllMOS_release"
STD_MAT, STD_VAR = "Data/AllStdDev_release.mat", "AllStdDev_release"
IMAGE_FOLDER = "Images"
N_TRAINING = 7


class CLIVEAdapter(DatasetAdapter):
    name = "clive"
    layout = f"ROOT/{IMAGES_MAT}, ROOT/{MOS_MAT} (optional ROOT/{STD_MAT}); images in ROOT/{IMAGE_FOLDER}/"
    higher_better = True
    authentic = True
    documented_range = (0.0, 100.0)
    image_folder = IMAGE_FOLDER

    def scan_folders(self, root: Path) -> list[tuple[Path, bool]]:
        return [(root / IMAGE_FOLDER, False)]  # not recursive: trainingImages/ holds the excluded t1..t7

    def read_labels(self, root: Path) -> tuple[list[LabelRow], list[Skipped]]:
        names = mat_strings(self.read_mat(root / IMAGES_MAT, [IMAGES_VAR])[IMAGES_VAR])
        mos = mat_vector(self.read_mat(root / MOS_MAT, [MOS_VAR])[MOS_VAR])
        std = mat_vector(self.read_mat(root / STD_MAT, [STD_VAR])[STD_VAR]) if (root / STD_MAT).is_file() else None
        for path, values in ((root / MOS_MAT, mos), (root / STD_MAT, std)):
            if values is not None and len(values) != len(names):
                raise self.error(path, f"has {len(values)} entries but {IMAGES_MAT} has {len(names)}")
        rows = []
        for i, name in enumerate(names):
            where = f"{Path(IMAGES_MAT).name}[{i + 1}]"
            exclude = (f"{TRAINING} (one of the first {N_TRAINING} entries, t1..t7 in {IMAGE_FOLDER}/trainingImages/, "
                       f"which CLIVE's protocol excludes; {where})") if i < N_TRAINING else None
            rows.append(LabelRow(image_name=name, mos=float(mos[i]), where=where, exclude=exclude,
                                 extra={} if std is None else {"mos_std": float(std[i])}))
        return rows, []
