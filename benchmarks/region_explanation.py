"""Does a per-region explanation of the shipped statistics model rank regions sensibly? (issue 23, item 4)

Trials on sharp CLIVE photos (the ``--photos`` of highest MOS in ``labels.csv``): each photo is
segmented by the shipped model's annotator (``Scorer.from_pretrained(regions=True)``); then, for
every valid region covering at least ``--min-area`` of the photo, that region alone is Gaussian-
blurred (``--sigma`` px, the rest of the photo untouched) and the explanation is computed on the
blurred photo with the original label map. A trial passes when the blurred region comes out worst
among the valid regions. Methods (``--methods``):

* ``region``: :func:`region_scores`, the score the same head gives each region's statistics (each
  backbone level's map restricted to the region's cells; one backbone pass per photo, then L head
  evaluations); worst = lowest score;
* ``occlusion``: the change of the image's score when each region is blurred in turn (L+1
  passes); a region already blurred loses the least, so worst = smallest drop;
* ``occlusion_per_area``: that drop divided by the region's area (large regions move the image's
  score more whatever their quality).

Printed per method: the pass rate over the trials, and the rate at which the same region is
already worst on the unblurred photo (how much of the pass rate the blur explains), with the
machine. Target (issue 23): a pass rate >= 0.9.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/region_explanation.py   # 40 trials, ~5 min on 2 cores
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

import benchutil
from rsfiqa.inference.scorer import Scorer
from rsfiqa.model.backbone import Backbone
from rsfiqa.model.rsa import pool_region_masks
from rsfiqa.model.stats import StatsNet

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "clive-dev"
METHODS = ("region", "occlusion", "occlusion_per_area")
TARGET = 0.9


def sharpest_photos(root: Path, count: int) -> list[Path]:
    """The ``count`` photos of highest MOS in ``root/labels.csv``."""
    with open(root / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: -float(r["mos"]))
    return [root / "images" / r["image"] for r in rows[:count]]


def region_map_statistics(level: Tensor, weights: Tensor) -> Tensor:
    """[B, C, H, W] and region weights [B, L, H*W] (each cell's area fraction of the region) -> [B, L, 2C]:
    ``stats.map_statistics`` of every region, each position weighted by its fraction (all weights 1
    give the whole map's statistics). A region absent from the map gets NaN."""
    features = level.flatten(2).unsqueeze(1)                      # [B, 1, C, N]
    w = weights.unsqueeze(2)                                      # [B, L, 1, N]
    area = w.sum(-1)                                              # [B, L, 1]
    mean = (w * features).sum(-1) / area                          # [B, L, C]
    std = ((w * (features - mean.unsqueeze(-1)) ** 2).sum(-1) / area).sqrt()
    return torch.cat([mean, std], dim=-1)


def region_scores(net: StatsNet, images: Tensor, label_map: Tensor) -> Tensor:
    """[B,3,H,W] and label map [B,H,W] (values 0..L-1) -> [B, L]: the score the head gives each
    region's statistics alone (``StatsNet.image_statistics`` with every level's map restricted to the
    region's cells: the label map's area fractions pooled to that level's grid), from one pass of
    each backbone; NaN for a region absent from the image."""
    stats = []
    for backbone in net.backbones:
        for level in Backbone.forward(backbone, images):  # the maps, not StatisticsBackbone's statistics
            stats.append(region_map_statistics(level, pool_region_masks(label_map, net.num_regions, level.shape[-2:])))
    x = torch.cat(stats, dim=-1)
    return net.head(x.flatten(0, 1))["score"].view(x.shape[:2])


def blur_region(rgb: np.ndarray, label_map: np.ndarray, region: int, sigma: float) -> np.ndarray:
    """``rgb`` with the pixels of ``region`` (label map at the image's size) Gaussian-blurred."""
    blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))
    return np.where((label_map == region)[..., None], blurred, rgb)


@torch.inference_mode()
def region_explanations(scorer: Scorer, rgb: np.ndarray, label_map: np.ndarray, regions: list[dict],
                        methods: list[str], sigma: float) -> dict[str, np.ndarray]:
    """Per method, [L] quality of each region (lower = worse); NaN for invalid regions. The
    occlusion methods share their L+1 passes."""
    image, labels, valid, _ = scorer.model_input(rgb, label_map, regions)
    scores = {}
    if "region" in methods:
        scores["region"] = region_scores(scorer.net, image[None], labels[None])[0]
    if {"occlusion", "occlusion_per_area"} & set(methods):
        variants = [image] + [scorer.model_input(blur_region(rgb, label_map, r, sigma), label_map, regions)[0]
                              for r in range(len(regions))]
        full = scorer.net(torch.stack(variants))
        scores["occlusion"] = full[0] - full[1:]  # the drop: a region that loses little is "worse"
        scores["occlusion_per_area"] = scores["occlusion"] / torch.tensor([max(r["area"], 1e-6) for r in regions])
    return {m: torch.where(valid, scores[m].float(), torch.nan).numpy() for m in methods}


def worst(values: np.ndarray) -> int:
    """Index of the lowest value, NaN (invalid regions) ignored."""
    return int(np.nanargmin(values))


def photo_trials(scorer: Scorer, path: Path, methods: list[str], min_area: float, sigma: float) -> list[dict]:
    """One trial per valid region of ``path`` covering at least ``min_area``: blur it, explain, compare."""
    scored = next(scorer.iter_scored([str(path)], keep_arrays=True))
    rgb, label_map, regions = scored.rgb, scored.label_map, scored.record["regions"]
    before = region_explanations(scorer, rgb, label_map, regions, methods, sigma)
    trials = []
    for region in [r["index"] for r in regions if r["valid"] and r["area"] >= min_area]:
        after = region_explanations(scorer, blur_region(rgb, label_map, region, sigma), label_map, regions,
                                    methods, sigma)
        trial = {"photo": path.name, "blurred": region, "area": regions[region]["area"]}
        for m in methods:
            trial[m] = {"pass": worst(after[m]) == region, "worst_before": worst(before[m]) == region,
                        "after": np.round(after[m], 4).tolist()}
        trials.append(trial)
    return trials


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the trials and print the rates; returns the trials."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--photos", type=int, default=15)
    parser.add_argument("--min-area", type=float, default=0.05)
    parser.add_argument("--sigma", type=float, default=3.0, help="Gaussian blur radius (px, PIL)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--json", type=Path, help="write the trials here (JSON lines)")
    args = parser.parse_args(argv)
    scorer = Scorer.from_pretrained(regions=True)
    scorer.workers = 0
    start = time.perf_counter()
    trials = [t for path in sharpest_photos(args.root, args.photos)
              for t in photo_trials(scorer, path, args.methods, args.min_area, args.sigma)]
    seconds = time.perf_counter() - start
    print(f"machine: {benchutil.device_name(torch.device('cpu'))}; load {benchutil.load_average()}")
    print(f"{len(trials)} trials on the {args.photos} photos of highest MOS, regions >= {args.min_area:.0%} of "
          f"the photo, Gaussian blur radius {args.sigma:g} px; {seconds:.0f} s")
    for m in args.methods:
        passed = sum(t[m]["pass"] for t in trials)
        already = np.mean([t[m]["worst_before"] for t in trials])
        print(f"{m}: blurred region worst in {passed / len(trials):.3f} ({passed}/{len(trials)}; target >= {TARGET}); "
              f"already worst before the blur: {already:.3f}")
    if args.json:
        args.json.write_text("\n".join(json.dumps(t) for t in trials) + "\n")
    return trials


if __name__ == "__main__":
    main()
