"""Levers study (issue 12): per-region statistics of the frozen Lite0 features, pooled by the label map.

For each clive-dev photo the annotation's label map (L regions) is reduced to every kept level's grid
by area (adaptive average pooling of the one-hot map, so partial cells count by their share), and
each region's area-weighted mean and std of the level's channels are taken. Regions are ordered by
area (largest first; an absent region contributes zeros). Rows, all ridge on centred raw features
with alpha by validation SRCC, on splits seed0..seed4 (scripts/levers_fit.py), paired with the anchor:

* ``regions``: per-region mean+std of levels 3-4 only;
* ``anchor + regions``: the anchor's global mean+std of levels 0-4 and the per-region statistics;
* ``anchor + region spread``: the anchor plus, per channel of levels 3-4, the area-weighted std of
  the region means (how unequal the regions are), a size-independent summary.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python scripts/levers_regions.py --shards /tmp/shards-clive
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rsfiqa.data.transforms import to_model_input
from rsfiqa.model.backbone import Backbone
from rsfiqa_core.contract import decode_sample
from rsfiqa_core.imageio import decode_rgb
from rsfiqa_core.tars import tar_members
from scripts.levers_fit import SPLITS, features, load_labels, metrics, run_ridge, split_masks

CACHE = Path("runs/levers-cache")
LEVELS = (3, 4)


def label_maps(shards: Path) -> dict[str, np.ndarray]:
    """image name -> label map [H, W] of every annotated sample."""
    samples: dict[str, dict] = {}
    for tar in sorted(shards.glob("*.tar")):
        for key, ext, read in tar_members(str(tar)):
            samples.setdefault(key, {"__key__": key})[ext] = read()
    maps = {}
    for sample in samples.values():
        decoded = decode_sample(sample)
        maps[decoded["record"]["image"]] = decoded["label_map"]
    return maps


def region_stats(fmap: torch.Tensor, labels: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """([L, 2C] per-region mean+std ordered by area, [C] area-weighted std of the region means)."""
    one_hot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), n_regions).permute(2, 0, 1)[None].float()
    w = F.adaptive_avg_pool2d(one_hot, fmap.shape[-2:])[0].flatten(1)  # [L, HW] share of each cell
    f = fmap[0].flatten(1)                                             # [C, HW]
    mass = w.sum(1)                                                    # [L]
    mean = (w @ f.T) / mass.clamp_min(1e-6)[:, None]                   # [L, C]
    var = (w @ (f.T ** 2)) / mass.clamp_min(1e-6)[:, None] - mean ** 2
    per_region = torch.cat([mean, var.clamp_min(0).sqrt()], 1) * (mass > 0)[:, None]
    order = torch.argsort(mass, descending=True)
    share = mass / mass.sum()
    spread = ((share[:, None] * (mean - (share[:, None] * mean).sum(0)) ** 2).sum(0)).sqrt()
    return per_region[order].numpy(), spread.numpy()


def extract(shards: Path, n_regions: int) -> dict[str, np.ndarray]:
    path = CACHE / "regions_lite0.npz"
    if path.exists():
        return dict(np.load(path))
    names, _ = load_labels()
    maps = label_maps(shards)
    missing = [n for n in names if n not in maps]
    if missing:
        raise SystemExit(f"{shards}: {len(missing)} photos have no annotation, e.g. {missing[:3]}")
    net = Backbone("efficientnet_lite0", "pypi", out_indices=(0, 1, 2, 3, 4), freeze=True).eval()
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "clive-dev" / "images"
    rows: dict[str, list] = {f"L{i}_{k}": [] for i in LEVELS for k in ("regions", "spread")}
    t0 = time.time()
    with torch.inference_mode():
        for n, name in enumerate(names):
            rgb, _ = decode_rgb((root / name).read_bytes(), name)
            x, _ = to_model_input(rgb, np.zeros(rgb.shape[:2], np.int64))
            levels = net(x[None])
            for i in LEVELS:
                per_region, spread = region_stats(levels[i], maps[name], n_regions)
                rows[f"L{i}_regions"].append(per_region.ravel())
                rows[f"L{i}_spread"].append(spread)
            if (n + 1) % 200 == 0:
                print(f"{n + 1} photos {time.time() - t0:.0f} s", flush=True)
    out = {k: np.stack(v) for k, v in rows.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(names), **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=Path, required=True)
    ap.add_argument("--num-regions", type=int, default=5)
    ap.add_argument("--out", default="runs/levers-regions.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    reg = extract(a.shards, a.num_regions)
    names, y = load_labels()
    anchor = features("l0@1:01234:mean,std", names)
    regions = np.concatenate([reg[f"L{i}_regions"] for i in LEVELS], 1).astype(np.float64)
    spread = np.concatenate([reg[f"L{i}_spread"] for i in LEVELS], 1).astype(np.float64)
    rows = {"anchor": anchor, "regions": regions, "anchor + regions": np.concatenate([anchor, regions], 1),
            "anchor + region spread": np.concatenate([anchor, spread], 1)}
    masks = split_masks(names)
    results = {}
    for row, X in rows.items():
        per = [metrics(run_ridge(X, y, masks[s], standardise=False)[0], y[masks[s]["test"]]) for s in SPLITS]
        results[row] = np.array(per)
    base = results["anchor"][:, 0]
    with open(a.out, "w") as f:
        for row, per in results.items():
            d = per[:, 0] - base
            line = {"row": row, "dim": rows[row].shape[1], "srcc": per[:, 0].tolist(), "plcc": per[:, 1].tolist()}
            f.write(json.dumps(line) + "\n")
            print(f"{row:<24} d={rows[row].shape[1]:<5} SRCC {per[:, 0].mean():.3f}±{per[:, 0].std(ddof=1):.3f} "
                  f"PLCC {per[:, 1].mean():.3f}±{per[:, 1].std(ddof=1):.3f} dSRCC {d.mean():+.3f}±{d.std(ddof=1):.3f} "
                  f"per-split {'/'.join(f'{v:.3f}' for v in per[:, 0])}")


if __name__ == "__main__":
    main()
