"""How much do the region descriptions of an annotated dataset say about its MOS?

    .venv/bin/python scripts/clive_text_info.py shards/csv

Per image, the area-weighted mean over its valid regions of (1) the five numeric region scores,
(2) the describer's raw measures (measures describer only), (3) the region-text embeddings of the
pretrained MiniLM sentence encoder and (4) those of a random-init CLIP ViT-B-32 text tower
(seed 0); each feature set goes through a ridge regression (alpha picked by inner 5-fold CV) and
the script prints the 5-fold cross-validated SRCC with the MOS. Also prints the SRCC of each
area-weighted score with the MOS. docs/results/clive.md has the numbers for clive-dev.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.stats import spearmanr

from rsfiqa.model.text import TextEncoder
from rsfiqa_core.contract import DIMENSIONS, region_text
from rsfiqa_core.tars import tar_members

ALPHAS = np.logspace(-3, 4, 15)
FOLDS = 5


def read_records(shards: Path) -> list[dict]:
    records = []
    for tar in sorted(shards.glob("*.tar")):
        records += [json.loads(read()) for _, ext, read in tar_members(str(tar)) if ext == "json"]
    if not records:
        raise SystemExit(f"{shards}: no annotated samples (*.tar with .json records)")
    return records


def area_weighted(records: list[dict], feature: Callable[[dict], np.ndarray]) -> np.ndarray:
    """[images, dims]: mean of ``feature(region)`` over the valid regions, weighted by area."""
    rows = []
    for record in records:
        regions = [r for r in record["regions"] if r["valid"]]
        area = np.array([r["area"] for r in regions])
        rows.append((area[:, None] * np.stack([feature(r) for r in regions])).sum(0) / area.sum())
    return np.stack(rows)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    mean, std = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / std
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return lambda new: ((new - mean) / std) @ w + y.mean()


def folds(n: int, seed: int = 0) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), FOLDS)


def cv_predictions(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold ridge predictions; alpha chosen on each training part by inner CV (MSE)."""
    pred = np.zeros_like(y)
    for test in folds(len(y)):
        train = np.setdiff1d(np.arange(len(y)), test)

        def inner_error(alpha: float) -> float:
            errors = []
            for inner in folds(len(train), seed=1):
                fit = np.setdiff1d(np.arange(len(train)), inner)
                model = fit_ridge(x[train[fit]], y[train[fit]], alpha)
                errors.append(np.mean((model(x[train[inner]]) - y[train[inner]]) ** 2))
            return float(np.mean(errors))

        best = min(ALPHAS, key=inner_error)
        pred[test] = fit_ridge(x[train], y[train], best)(x[test])
    return pred


def text_features(records: list[dict], encoder: TextEncoder) -> np.ndarray:
    texts = sorted({region_text(r) for rec in records for r in rec["regions"] if r["valid"]})
    with torch.no_grad():
        emb = torch.cat([encoder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)]).float().numpy()
    lookup = dict(zip(texts, emb))
    return area_weighted(records, lambda r: lookup[region_text(r)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards", type=Path)
    args = p.parse_args()
    records = read_records(args.shards)
    mos = np.array([r["mos_norm"] for r in records])
    print(f"{len(records)} images; SRCC of each area-weighted region score with the MOS:")
    scores = area_weighted(records, lambda r: np.array([r["scores"][d] for d in DIMENSIONS], dtype=float))
    for i, dim in enumerate(DIMENSIONS):
        print(f"  {dim:9s} {spearmanr(scores[:, i], mos)[0]:+.3f}")
    features = {"numeric region scores (5)": scores}
    if all("measures" in r for rec in records for r in rec["regions"] if r["valid"]):
        names = sorted(records[0]["regions"][0]["measures"])
        features[f"raw measures ({', '.join(names)})"] = area_weighted(
            records, lambda r: np.array([r["measures"][k] for k in names], dtype=float))
    features["MiniLM region-text embeddings"] = text_features(records, TextEncoder("minilm").eval())
    torch.manual_seed(0)
    features["random-init CLIP ViT-B-32 region-text embeddings"] = text_features(
        records, TextEncoder("clip", "ViT-B-32", None).eval())
    print(f"ridge regression, {FOLDS}-fold cross-validated SRCC with the MOS:")
    for name, x in features.items():
        print(f"  {name:50s} {spearmanr(cv_predictions(x, mos), mos)[0]:.3f}")


if __name__ == "__main__":
    main()
