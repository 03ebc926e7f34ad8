"""Reading one sample: an image, its label map and region entries -> the model's input."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from rsfiqa.data import transforms
from rsfiqa_core import contract
from rsfiqa_core.imageio import decode_rgb


def model_input(rgb: np.ndarray, label_map: np.ndarray, regions: Sequence[Mapping[str, Any]],
                image_size: tuple[int, int], interpolation: str, text_parts: Sequence[str],
                text_dims: Sequence[str], flip: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(image [3,H,W], label map [H,W], region_valid [L], texts) of an upright RGB image and its
    annotation, for training, evaluation and scoring alike (see the data module's "one rule")."""
    rgb, label_map = transforms.resize_pair(rgb, label_map, image_size, interpolation)
    if flip:
        rgb, label_map = transforms.hflip_pair(rgb, label_map)
    image, labels = transforms.to_model_input(rgb, label_map)
    texts = [contract.region_text(r, text_parts, text_dims) for r in regions]
    valid = torch.tensor([bool(r.get("valid")) and t != "" for r, t in zip(regions, texts)])
    return image, labels, valid, texts


def coin_flip(seed: int, pass_: int, key: str) -> bool:
    """A fair coin fixed by (seed, pass, sample key): flips do not depend on worker layout."""
    return random.Random(f"{seed}/{pass_}/{key}").random() < 0.5



@dataclass(frozen=True)
class SampleReader:
    """Raw webdataset sample -> model input; keeps only ``split`` of ``split_tag`` (all for None)."""

    split_tag: str
    split: str | None
    num_regions: int
    image_size: tuple[int, int]
    interpolation: str
    text_parts: tuple[str, ...]
    text_dims: tuple[str, ...]
    hflip: bool = False
    seed: int = 0

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for raw in src:
            sample = contract.decode_sample(raw)
            record = sample["record"]
            if self.split is None or record["splits"].get(self.split_tag) == self.split:
                flip = self.hflip and coin_flip(self.seed, raw.get("__pass__", 0), sample["key"])
                yield self.item(sample, where=f"{raw.get('__url__', '?')}:{sample['key']}", flip=flip)

    def item(self, sample: dict, where: str, flip: bool) -> dict:
        """One decoded sample (``contract.decode_sample``) as model input; ``where`` names it in errors."""
        record = sample["record"]
        regions = record["regions"]
        if len(regions) != self.num_regions:
            raise contract.ContractError(f"{where}: record has {len(regions)} regions, num_regions is "
                                         f"{self.num_regions}")
        rgb, _ = decode_rgb(sample["image_bytes"], name=where)
        label_map = sample["label_map"]
        if label_map.shape != rgb.shape[:2]:
            raise contract.ContractError(f"{where}: label map {label_map.shape} does not match the upright image "
                                         f"{rgb.shape[:2]}")
        image, labels, valid, texts = model_input(rgb, label_map, regions, self.image_size, self.interpolation,
                                                  self.text_parts, self.text_dims, flip)
        return {"image": image, "label_map": labels, "region_valid": valid,
                "texts": texts, "mos_norm": float(record["mos_norm"]), "mos": float(record["mos"]),
                "key": sample["key"], "dataset": record["dataset"], "image_name": record["image"],
                "region_scores": torch.tensor([[_score(r, d) for d in contract.DIMENSIONS] for r in regions],
                                              dtype=torch.float32),
                "mos_range": torch.tensor(record["mos_range"], dtype=torch.float64),
                "higher_better": bool(record["higher_better"])}


def _score(region: dict, dim: str) -> float:
    value = (region.get("scores") or {}).get(dim)
    return float("nan") if value is None else float(value)


def collate(items: list[dict]) -> dict[str, Any]:
    """Batch dict of the data module (see :class:`ShardDataModule`)."""
    batch: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], float):
            batch[name] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(values[0], bool):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch
