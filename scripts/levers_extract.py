"""Cache pooled statistics of frozen backbone features for the clive-dev levers study (issue 12).

One backbone and one scale per call; every level of the backbone (timm out_indices 0..4, strides
2..32). Per image, level and channel: mean, std (population), 10/50/90 % quantiles of the feature
map. Images are decoded with rsfiqa_core.imageio.decode_rgb and normalised with
rsfiqa.data.transforms.to_model_input (the project's preprocessing); a scale != 1 resizes the
normalised tensor with torch bilinear interpolation, antialias=True (what a network module would
do). ``--flip`` adds the horizontally flipped image's statistics (keys with suffix ``_flip``).

    OMP_NUM_THREADS=1 python scripts/levers_extract.py --backbone efficientnet_lite0 --scale 1.0 \
        --out runs/levers-cache
Writes OUT/<backbone>_s<scale>.npz (keys L<i>_<stat>[_flip], arrays [N, C_i]; ``names``: image
column of labels.csv in row order).
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rsfiqa.data.transforms import to_model_input
from rsfiqa_core.imageio import decode_rgb
from rsfiqa.model.backbone import Backbone

QUANTILES = (0.1, 0.5, 0.9)


def pooled_stats(fmap: torch.Tensor) -> dict[str, np.ndarray]:
    """[1,C,H,W] -> {stat: [C]} (float32)."""
    x = fmap[0].flatten(1).float()
    q = torch.quantile(x, torch.tensor(QUANTILES), dim=1)
    return {"mean": x.mean(1).numpy(), "std": x.std(1, unbiased=False).numpy(),
            "q10": q[0].numpy(), "q50": q[1].numpy(), "q90": q[2].numpy()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "clive-dev"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--flip", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (timing)")
    ap.add_argument("--out", default="runs/levers-cache")
    a = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(a.data)
    names = [r["image"] for r in csv.DictReader(open(root / "labels.csv"))]
    if a.limit:
        names = names[:a.limit]
    bb = Backbone(a.backbone, "pypi", out_indices=(0, 1, 2, 3, 4), freeze=True, img_size=None).eval()
    store: dict[str, list] = {}
    t0 = time.time()
    views = [False, True] if a.flip else [False]
    with torch.inference_mode():
        for n, name in enumerate(names):
            rgb, _ = decode_rgb((root / "images" / name).read_bytes(), name)
            x, _ = to_model_input(rgb, np.zeros(rgb.shape[:2], np.int64))
            x = x[None]
            if a.scale != 1.0:
                h, w = x.shape[-2:]
                x = F.interpolate(x, size=(round(h * a.scale), round(w * a.scale)), mode="bilinear",
                                  align_corners=False, antialias=True)
            for flip in views:
                levels = bb(x.flip(-1) if flip else x)
                for i, fmap in enumerate(levels):
                    for k, v in pooled_stats(fmap).items():
                        store.setdefault(f"L{i}_{k}{'_flip' if flip else ''}", []).append(v)
            if n in (9, 99) or (n + 1) % 200 == 0:
                print(f"{n + 1} images {time.time() - t0:.1f} s", flush=True)
    wall = time.time() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{a.backbone}_s{a.scale:g}" + ("_limit" if a.limit else "")
    np.savez(out / f"{tag}.npz", names=np.array(names), wall_s=wall,
             **{k: np.stack(v) for k, v in store.items()})
    print(f"{tag}: {len(names)} images, views {len(views)}, {wall:.1f} s -> {out / tag}.npz", flush=True)


if __name__ == "__main__":
    main()
