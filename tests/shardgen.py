"""Write small synthetic shard directories that follow the shard contract (rsfiqa_core/contract.py).

Each image is a smooth gradient with L-1 coloured rectangles (regions 0..L-2) on a background
(region L-1). Its quality is tied to its MOS: the normalised score ``q`` sets the amount of
Gaussian blur and noise, so a model has a real training signal. Region descriptions are made up
from ``q`` the way the describer would phrase them.

Two kinds of imperfect regions are included on purpose, as the annotator produces them:
every fifth sample has a region whose description is missing (``content: null`` with a
``missing_reason``), every seventh an empty region (no pixels, ``valid: false``).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import webdataset as wds
from PIL import Image, ImageFilter

from rsfiqa_core import contract

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
           "purple": (140, 50, 160), "cyan": (40, 190, 200), "orange": (230, 130, 30)}
ANNOTATOR = {"segmenter": {"name": "synthetic"}, "describer": {"name": "synthetic"}, "versions": {"shardgen": 1}}
SPLIT_FRACTIONS = (0.6, 0.2)  # train, val; the rest is test


def _split_assignment(n: int, seed: int) -> list[str]:
    """Per-sample split values for one split tag: a seeded 60/20/20 partition."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = max(1, round(n * SPLIT_FRACTIONS[0]))
    n_val = max(1, round(n * SPLIT_FRACTIONS[1]))
    values = ["test"] * n
    for rank, i in enumerate(order):
        values[i] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return values


def _draw_image(rng: np.random.Generator, q: float, size: tuple[int, int], num_regions: int,
                empty_region: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(RGB uint8 image, uint8 label map, colour names of the rectangles) for quality ``q``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w * 120 + 60, yy / h * 120 + 60, np.full((h, w), 110.0)], axis=-1)
    label = np.full((h, w), num_regions - 1, dtype=np.uint8)
    names = list(rng.choice(sorted(COLOURS), size=num_regions - 1))
    for r, name in enumerate(names):
        if r == empty_region:
            continue
        rh, rw = int(rng.integers(h // 6, h // 3)), int(rng.integers(w // 6, w // 3))
        y0, x0 = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
        base[y0:y0 + rh, x0:x0 + rw] = COLOURS[name]
        label[y0:y0 + rh, x0:x0 + rw] = r
    if empty_region is not None:  # a later rectangle may not leave stray pixels of an empty region
        label[label == empty_region] = num_regions - 1
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3.0 * (1.0 - q)))
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 30.0 * (1.0 - q), size=(h, w, 3))
    return noisy.clip(0, 255).astype(np.uint8), label, names


def _region_records(rng: np.random.Generator, q: float, label: np.ndarray, names: list[str],
                    missing: int | None) -> list[dict]:
    """Contract region records: content, levels and 1..5 scores derived from ``q``."""
    num_regions = len(names) + 1
    regions = []
    for r in range(num_regions):
        area = float((label == r).mean())
        region = contract.empty_region(r, area=area, seg_score=None if r == num_regions - 1 else 0.9,
                                       valid=area > 0)
        if r == missing:
            region["missing_reason"] = "synthetic: description withheld"
        elif area > 0:
            scores = {d: float(np.clip(1.0 + 4.0 * q + rng.normal(0.0, 0.2), 1.0, 5.0)) for d in contract.DIMENSIONS}
            region.update(content="the background" if r == num_regions - 1 else f"{names[r]} rectangle",
                          scores=scores,
                          levels={d: contract.LEVELS[int(round(s)) - 1] for d, s in scores.items()})
            region["text"] = contract.region_text(region)
        regions.append(region)
    return regions


def _encode_image(rgb: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG" if ext == "png" else "JPEG", quality=92)
    return buf.getvalue()


def write_shards(dir: str | Path, n: int, num_regions: int = 5, image_size: tuple[int, int] = (96, 96),
                 dataset: str = "synth", seed: int = 0, split_tags: Sequence[str] = ("seed0",),
                 samples_per_shard: int = 8, mos_range: tuple[float, float] = (1.0, 5.0),
                 higher_better: bool = True) -> Path:
    """Write ``n`` synthetic samples as shards of ``samples_per_shard`` (the last one shorter) plus
    ``index.json`` into ``dir``; returns the directory. ``image_size`` is (height, width)."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {tag: _split_assignment(n, seed + 1 + k) for k, tag in enumerate(split_tags)}
    shard_names = []
    for start in range(0, n, samples_per_shard):
        shard_names.append(f"{dataset}-{start // samples_per_shard:06d}.tar")
        with wds.TarWriter(str(out / shard_names[-1])) as sink:
            for i in range(start, min(n, start + samples_per_shard)):
                q = float(rng.uniform(0.0, 1.0))
                rgb, label, names = _draw_image(rng, q, image_size, num_regions,
                                                empty_region=num_regions - 2 if i % 7 == 5 else None)
                ext = "png" if i % 4 == 0 else "jpg"
                name = f"img_{i:04d}.{ext}"
                lo, hi = mos_range
                record = contract.make_record(
                    dataset=dataset, image=name, mos=lo + (q if higher_better else 1.0 - q) * (hi - lo),
                    mos_range=mos_range, higher_better=higher_better, ref=None,
                    splits={tag: values[i] for tag, values in splits.items()},
                    regions=_region_records(rng, q, label, names, missing=1 if i % 5 == 3 else None),
                    annotator=ANNOTATOR)
                sink.write(contract.encode_sample(contract.sample_key(dataset, name), _encode_image(rgb, ext),
                                                  name, label, record))
    contract.write_index(out, shard_names, n, dataset, ANNOTATOR)
    return out
