"""Levers study on cached frozen-backbone statistics (issue 12): ridge / MLP heads, 5 seeded splits.

Protocol: clive-dev, splits seed0..seed4 exactly as annotate.datasets.splits.seeded_splits assigns
them (groups = the ``image`` column of labels.csv, as CSVFolderAdapter with authentic=True does),
70/10/20 train/val/test. Every hyperparameter (ridge alpha, MLP epoch) is chosen by validation
SRCC only; test SRCC/PLCC (PLCC: plain Pearson, no logistic mapping) are reported per split, as
mean ± std (ddof 1) and as the paired difference against the anchor row.

Feature spec: "+"-joined parts "<bb>@<scale>:<levels>:<stats>", e.g. "l0@1:01234:mean,std"
(bb l0 = efficientnet_lite0, l2 = efficientnet_lite2; levels = timm out_indices 0..4 (strides
2..32); stats from mean,std,q10,q50,q90). Caches come from scripts/levers_extract.py.

    OMP_NUM_THREADS=1 python scripts/levers_fit.py --rows all --out docs/results/levers_rows.jsonl
    OMP_NUM_THREADS=1 python scripts/levers_fit.py --demo      # 882 -> 48 demo photos
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from annotate.datasets.splits import seeded_splits

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "clive-dev"
DEMO = REPO / "demo" / "data" / "labels.csv"
CACHE = Path("runs/levers-cache")
BB = {"l0": "efficientnet_lite0", "l2": "efficientnet_lite2"}
SPLITS = [f"seed{k}" for k in range(5)]
ALPHAS = np.logspace(-4, 4, 33)  # relative to mean eigenvalue of the train Gram matrix


# ---------------------------------------------------------------- data
def load_labels() -> tuple[list[str], np.ndarray]:
    rows = list(csv.DictReader(open(DATA / "labels.csv")))
    return [r["image"] for r in rows], np.array([float(r["mos"]) for r in rows])


_cache: dict[str, dict] = {}


def cache_file(bb: str, scale: str) -> dict:
    key = f"{BB[bb]}_s{float(scale):g}"
    if key not in _cache:
        _cache[key] = dict(np.load(CACHE / f"{key}.npz"))
    return _cache[key]


def spec_blocks(spec: str, flip: bool = False) -> list[tuple[str, np.ndarray]]:
    """(statistic, [N, C] cached array) per part x level x statistic of ``spec``, in column order."""
    blocks = []
    for part in spec.split("+"):
        head, levels, stats = part.split(":")
        bb, scale = head.split("@")
        z = cache_file(bb, scale)
        for lv in levels:
            for st in stats.split(","):
                blocks.append((st, z[f"L{lv}_{st}" + ("_flip" if flip else "")]))
    return blocks


def features(spec: str, names: list[str], flip: bool = False) -> np.ndarray:
    """[N, D] feature matrix in the order of ``names`` (flip: the flipped view's statistics)."""
    for part in spec.split("+"):
        z = cache_file(*part.split(":")[0].split("@"))
        assert list(z["names"]) == names, "cache rows are not in labels.csv order"
    return np.concatenate([array for _, array in spec_blocks(spec, flip)], 1).astype(np.float64)


def has_flip(spec: str) -> bool:
    return all("L0_mean_flip" in cache_file(*p.split(":")[0].split("@")) for p in spec.split("+"))


def split_masks(names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    tags = seeded_splits(names, n_splits=5, seed=0)
    out = {}
    for s in SPLITS:
        part = np.array([t[s] for t in tags])
        out[s] = {p: part == p for p in ("train", "val", "test")}
    return out


def metrics(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return float(spearmanr(pred, y)[0]), float(pearsonr(pred, y)[0])


# ---------------------------------------------------------------- heads
def preprocess(Xtr, others, standardise: bool, logstd_cols=None):
    if logstd_cols is not None:
        Xtr = Xtr.copy(); others = [o.copy() for o in others]
        for M in [Xtr] + others:
            M[:, logstd_cols] = np.log(M[:, logstd_cols] + 1e-3)
    mu = Xtr.mean(0)
    sd = Xtr.std(0) + 1e-8 if standardise else np.ones(Xtr.shape[1])
    return (Xtr - mu) / sd, [(o - mu) / sd for o in others]


def ridge_fit_predict(Xtr, ytr, Xev_list, alphas=ALPHAS):
    """Predictions for each alpha: list over Xev of [n_alpha, n_ev]. X already centred."""
    ym = ytr.mean()
    U, S, Vt = np.linalg.svd(Xtr, full_matrices=False)
    scale = (S ** 2).mean()
    Uy = U.T @ (ytr - ym)
    outs = []
    for Xev in Xev_list:
        P = Xev @ Vt.T  # [n, r]
        preds = []
        for a in alphas:
            w = S / (S ** 2 + a * scale) * Uy
            preds.append(P @ w + ym)
        outs.append(np.array(preds))
    return outs


def run_ridge(X, y, m, standardise, Xflip=None, flip_train=False, logstd_cols=None):
    tr, va, te = m["train"], m["val"], m["test"]
    Xtr, ytr = X[tr], y[tr]
    if flip_train and Xflip is not None:
        Xtr, ytr = np.concatenate([Xtr, Xflip[tr]]), np.concatenate([ytr, ytr])
    ev = [X[va], X[te]] + ([Xflip[va], Xflip[te]] if Xflip is not None else [])
    Xtr, ev = preprocess(Xtr, ev, standardise, logstd_cols)
    outs = ridge_fit_predict(Xtr, ytr, ev)
    pv, pt = outs[0], outs[1]
    if Xflip is not None:  # flip test-time averaging
        pv, pt = (pv + outs[2]) / 2, (pt + outs[3]) / 2
    vs = [spearmanr(p, y[va])[0] for p in pv]
    best = int(np.nanargmax(vs))
    return pt[best], {"alpha": float(ALPHAS[best]), "val_srcc": float(vs[best])}


def plcc_loss(p, t):
    p = p - p.mean(); t = t - t.mean()
    return 1 - (p * t).sum() / (p.norm() * t.norm() + 1e-8)


def rank_loss(p, t):
    dp = p[:, None] - p[None, :]
    dt = torch.sign(t[:, None] - t[None, :])
    mask = dt != 0
    return torch.nn.functional.softplus(-dt[mask] * dp[mask]).mean()


def run_mlp(X, y, m, loss="mse", hidden=256, dropout=0.3, wd=0.05, lr=1e-3, epochs=150, seeds=(0,),
            batch=64, Xflip=None, eval_every=5):
    """MLP on standardised features; epoch chosen by val SRCC of the seed-averaged prediction."""
    tr, va, te = m["train"], m["val"], m["test"]
    Xtr_raw = X[tr]
    ev_raw = [X[va], X[te]] + ([Xflip[va], Xflip[te]] if Xflip is not None else [])
    Xtr, ev = preprocess(Xtr_raw, ev_raw, True)
    ymu, ysd = y[tr].mean(), y[tr].std()
    ytr = torch.tensor((y[tr] - ymu) / ysd, dtype=torch.float32)
    Xtr_t = torch.tensor(Xtr, dtype=torch.float32)
    if Xflip is not None:  # train on both views
        _, (Xf,) = preprocess(Xtr_raw, [Xflip[tr]], True)  # the flipped views, standardised like the train set
        Xtr_t = torch.cat([Xtr_t, torch.tensor(Xf, dtype=torch.float32)])
        ytr = torch.cat([ytr, ytr])
    ev_t = [torch.tensor(e, dtype=torch.float32) for e in ev]
    n_ckpt = epochs // eval_every
    pv_all = np.zeros((len(seeds), n_ckpt, va.sum()))
    pt_all = np.zeros((len(seeds), n_ckpt, te.sum()))
    for si, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Dropout(dropout / 2), torch.nn.Linear(X.shape[1], hidden),
                                  torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        n = len(ytr)
        for ep in range(epochs):
            net.train()
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - batch // 2, batch):
                idx = perm[i:i + batch]
                p = net(Xtr_t[idx]).squeeze(1)
                t = ytr[idx]
                L = torch.nn.functional.mse_loss(p, t)
                if loss == "mse+plcc":
                    L = L + plcc_loss(p, t)
                elif loss == "mse+rank":
                    L = L + rank_loss(p, t)
                elif loss == "plcc+rank":
                    L = plcc_loss(p, t) + rank_loss(p, t)
                opt.zero_grad(); L.backward(); opt.step()
            sched.step()
            if (ep + 1) % eval_every == 0:
                net.eval()
                with torch.no_grad():
                    o = [net(e).squeeze(1).numpy() for e in ev_t]
                if Xflip is not None:
                    o = [(o[0] + o[2]) / 2, (o[1] + o[3]) / 2]
                c = (ep + 1) // eval_every - 1
                pv_all[si, c], pt_all[si, c] = o[0], o[1]
    pv, pt = pv_all.mean(0), pt_all.mean(0)
    vs = [spearmanr(p, y[va])[0] for p in pv]
    best = int(np.nanargmax(vs))
    return pt[best] * ysd + ymu, {"epoch": (best + 1) * eval_every, "val_srcc": float(vs[best])}


# ---------------------------------------------------------------- rows
def logstd_columns(spec: str) -> np.ndarray:
    """Indices of the columns that hold a standard deviation."""
    widths = [(st, a.shape[1]) for st, a in spec_blocks(spec)]
    starts = np.cumsum([0] + [w for _, w in widths])
    return np.array([c for (st, w), s0 in zip(widths, starts) if st == "std" for c in range(s0, s0 + w)])


def block_ids(spec: str) -> np.ndarray:
    """Column -> block index (one block per part x level x statistic)."""
    return np.concatenate([np.full(a.shape[1], b) for b, (_, a) in enumerate(spec_blocks(spec))])


def block_scale(Xtr, others, ids):
    """Centred features, each block divided by its RMS column norm: every block has unit average
    column variance (blocks weigh by their width, levels no longer by their raw magnitude)."""
    mu = Xtr.mean(0)
    Xtr, others = Xtr - mu, [o - mu for o in others]
    sc = np.ones(Xtr.shape[1])
    for b in np.unique(ids):
        c = ids == b
        sc[c] = np.sqrt((Xtr[:, c] ** 2).mean()) + 1e-8
    return Xtr / sc, [o / sc for o in others]


def run_kernel(X, y, m, ids=None, gammas=(0.25, 0.5, 1.0, 2.0)):
    """RBF kernel ridge on z-scored (or block-scaled) features; (gamma, alpha) by val SRCC."""
    tr, va, te = m["train"], m["val"], m["test"]
    if ids is not None:
        Xtr, (Xva, Xte) = block_scale(X[tr], [X[va], X[te]], ids)
    else:
        Xtr, (Xva, Xte) = preprocess(X[tr], [X[va], X[te]], True)
    def sq(A, B):
        return (A ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None] - 2 * A @ B.T
    Dtr, Dva, Dte = sq(Xtr, Xtr), sq(Xva, Xtr), sq(Xte, Xtr)
    med = np.median(Dtr[np.triu_indices(len(Xtr), 1)])
    ym = y[tr].mean()
    best = (-2, None, None)
    for g in gammas:
        K = np.exp(-g * Dtr / med)
        ev, V = np.linalg.eigh(K)
        ev = np.clip(ev, 0, None)
        Vy = V.T @ (y[tr] - ym)
        Kva, Kte = np.exp(-g * Dva / med) @ V, np.exp(-g * Dte / med) @ V
        for a in ALPHAS:
            c = Vy / (ev + a * ev.mean())
            sv = spearmanr(Kva @ c + ym, y[va])[0]
            if sv > best[0]:
                best = (sv, Kte @ c + ym, {"gamma": g, "alpha": float(a), "val_srcc": float(sv)})
    return best[1], best[2]


def evaluate(row: dict, names, y, masks) -> dict:
    spec, head = row["features"], row.get("head", "ridge")
    X = features(spec, names)
    flip = row.get("flip", False)
    Xf = features(spec, names, flip=True) if flip else None
    res = {"row": row["name"], "features": spec, "dim": X.shape[1], "config": row, "splits": {}}
    t0 = time.time()
    for s in SPLITS:
        m = masks[s]
        ts = time.time()
        if head == "kernel":
            pred, info = run_kernel(X, y, m, block_ids(spec) if row.get("block") else None)
        elif head == "ridge" and row.get("block"):
            tr, va, te = m["train"], m["val"], m["test"]
            Xtr, (Xva, Xte) = block_scale(X[tr], [X[va], X[te]], block_ids(spec))
            pv, pt = ridge_fit_predict(Xtr, y[tr], [Xva, Xte])
            vs = [spearmanr(p, y[va])[0] for p in pv]
            b = int(np.nanargmax(vs))
            pred, info = pt[b], {"alpha": float(ALPHAS[b]), "val_srcc": float(vs[b])}
        elif head == "ridge":
            pred, info = run_ridge(X, y, m, row.get("standardise", False), Xf, row.get("flip_train", False),
                                   logstd_columns(spec) if row.get("logstd") else None)
        else:
            kw = {k: row[k] for k in ("loss", "hidden", "dropout", "wd", "lr", "epochs", "batch") if k in row}
            pred, info = run_mlp(X, y, m, seeds=tuple(range(row.get("n_seeds", 1))), Xflip=Xf, **kw)
            if head == "ridge+mlp":  # average with the anchor-style ridge on the same features
                pr, ir = run_ridge(X, y, m, False, Xf, row.get("flip_train", False))
                yt = y[m["test"]]
                info = {**info, "ridge_alpha": ir["alpha"], "mlp_test_srcc": metrics(pred, yt)[0],
                        "ridge_test_srcc": metrics(pr, yt)[0]}
                pred = (pred + pr) / 2
        sr, pl = metrics(pred, y[m["test"]])
        res["splits"][s] = {"srcc": sr, "plcc": pl, "fit_s": time.time() - ts, **info}
    res["wall_s"] = time.time() - t0
    return res


ROWS: list[dict] = [
    # anchor: Lite0 native, mean+std of every level, ridge on centred features
    {"name": "anchor", "features": "l0@1:01234:mean,std"},
    {"name": "l0 z-score", "features": "l0@1:01234:mean,std", "standardise": True},
    {"name": "l0 z-score log-std", "features": "l0@1:01234:mean,std", "standardise": True, "logstd": True},
    {"name": "l0 levels 1-4", "features": "l0@1:1234:mean,std"},
    {"name": "l0 levels 2-4", "features": "l0@1:234:mean,std"},
    {"name": "l2", "features": "l2@1:01234:mean,std"},
    {"name": "l2 z-score", "features": "l2@1:01234:mean,std", "standardise": True},
    {"name": "l0+l2", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std"},
    {"name": "l0+l2 z-score", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std", "standardise": True},
    {"name": "l0 quantiles", "features": "l0@1:01234:mean,std,q10,q50,q90"},
    {"name": "l0 quantiles z-score", "features": "l0@1:01234:mean,std,q10,q50,q90", "standardise": True},
    {"name": "l0 s0.5", "features": "l0@0.5:01234:mean,std"},
    {"name": "l0 s1+s0.5", "features": "l0@1:01234:mean,std+l0@0.5:01234:mean,std"},
    {"name": "l0 s1+s0.5 z-score", "features": "l0@1:01234:mean,std+l0@0.5:01234:mean,std", "standardise": True},
    {"name": "l2 s0.5", "features": "l2@0.5:01234:mean,std"},
    {"name": "l2 s1+s0.5", "features": "l2@1:01234:mean,std+l2@0.5:01234:mean,std"},
    {"name": "l2 s1+s0.5 z-score", "features": "l2@1:01234:mean,std+l2@0.5:01234:mean,std", "standardise": True},
    {"name": "l0+l2 s1+s0.5 z-score",
     "features": "l0@1:01234:mean,std+l0@0.5:01234:mean,std+l2@1:01234:mean,std+l2@0.5:01234:mean,std",
     "standardise": True},
    # rows added while the study ran (same protocol)
    {"name": "l0 mlp mse", "features": "l0@1:01234:mean,std", "head": "mlp", "loss": "mse"},
    {"name": "l0 mlp mse+plcc", "features": "l0@1:01234:mean,std", "head": "mlp", "loss": "mse+plcc"},
    {"name": "l0 mlp mse+rank", "features": "l0@1:01234:mean,std", "head": "mlp", "loss": "mse+rank"},
    {"name": "l0 s1+s0.5 quantiles",
     "features": "l0@1:01234:mean,std,q10,q50,q90+l0@0.5:01234:mean,std,q10,q50,q90"},
    {"name": "l0 block-scaled", "features": "l0@1:01234:mean,std", "block": True},
    {"name": "l0 s1+s0.5 block-scaled", "features": "l0@1:01234:mean,std+l0@0.5:01234:mean,std", "block": True},
    {"name": "l0 kernel rbf", "features": "l0@1:01234:mean,std", "head": "kernel"},
    {"name": "l0 kernel rbf block-scaled", "features": "l0@1:01234:mean,std", "head": "kernel", "block": True},
    {"name": "l0 mlp mse+plcc x3 seeds + ridge", "features": "l0@1:01234:mean,std", "head": "ridge+mlp",
     "loss": "mse+plcc", "n_seeds": 3, "epochs": 100},
    {"name": "l0 mlp mse+plcc x3 seeds", "features": "l0@1:01234:mean,std", "head": "mlp", "loss": "mse+plcc",
     "n_seeds": 3, "epochs": 100},
    {"name": "l2 quantiles", "features": "l2@1:01234:mean,std,q10,q50,q90"},
    {"name": "l2 levels 1-4", "features": "l2@1:1234:mean,std"},
    {"name": "l2 kernel rbf block-scaled", "features": "l2@1:01234:mean,std", "head": "kernel", "block": True},
    {"name": "l0+l2 block-scaled", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std", "block": True},
    {"name": "l0+l2 quantiles", "features": "l0@1:01234:mean,std,q10,q50,q90+l2@1:01234:mean,std,q10,q50,q90"},
    {"name": "l0+l2 levels 1-4", "features": "l0@1:1234:mean,std+l2@1:1234:mean,std"},
    {"name": "l0+l2 s1+s0.5",
     "features": "l0@1:01234:mean,std+l0@0.5:01234:mean,std+l2@1:01234:mean,std+l2@0.5:01234:mean,std"},
    {"name": "l0+l2 mlp mse+plcc x3 seeds + ridge", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std",
     "head": "ridge+mlp", "loss": "mse+plcc", "n_seeds": 3, "epochs": 100},
    {"name": "l0+l2 mlp mse x3 seeds + ridge", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std",
     "head": "ridge+mlp", "loss": "mse", "n_seeds": 3, "epochs": 100},
    {"name": "l0 s1.5", "features": "l0@1.5:01234:mean,std"},
    {"name": "l0 s1+s1.5", "features": "l0@1:01234:mean,std+l0@1.5:01234:mean,std"},
    {"name": "l0+l2 + l0 s1.5", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std+l0@1.5:01234:mean,std"},
    {"name": "anchor flip tta", "features": "l0@1:01234:mean,std", "flip": True},
    {"name": "anchor flip tta + train", "features": "l0@1:01234:mean,std", "flip": True, "flip_train": True},
    {"name": "l0+l2 flip tta + train", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std", "flip": True,
     "flip_train": True},
    {"name": "l0+l2 mlp mse x3 seeds + ridge hidden 128 flip tta + train",
     "features": "l0@1:01234:mean,std+l2@1:01234:mean,std", "head": "ridge+mlp", "loss": "mse", "n_seeds": 3,
     "epochs": 100, "hidden": 128, "flip": True, "flip_train": True},
    {"name": "l0+l2 mlp mse x3 seeds + ridge hidden 128", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std",
     "head": "ridge+mlp", "loss": "mse", "n_seeds": 3, "epochs": 100, "hidden": 128},
    {"name": "l0+l2 mlp mse+rank x3 seeds + ridge", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std",
     "head": "ridge+mlp", "loss": "mse+rank", "n_seeds": 3, "epochs": 100},
    {"name": "l0+l2 mlp mse x3 seeds", "features": "l0@1:01234:mean,std+l2@1:01234:mean,std",
     "head": "mlp", "loss": "mse", "n_seeds": 3,
     "epochs": 100},
    {"name": "l0+l2 quantiles mlp mse x3 seeds + ridge",
     "features": "l0@1:01234:mean,std,q10,q50,q90+l2@1:01234:mean,std,q10,q50,q90",
     "head": "ridge+mlp", "loss": "mse", "n_seeds": 3, "epochs": 100},
]


def summarise(res: dict, anchor: dict | None) -> str:
    sr = np.array([res["splits"][s]["srcc"] for s in SPLITS])
    pl = np.array([res["splits"][s]["plcc"] for s in SPLITS])
    def sd(values: np.ndarray) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    line = (f"{res['row']:<40} d={res['dim']:<6} SRCC {sr.mean():.3f}±{sd(sr):.3f} "
            f"PLCC {pl.mean():.3f}±{sd(pl):.3f}")
    if anchor:
        a = np.array([anchor["splits"][s]["srcc"] for s in SPLITS])
        d = sr - a
        line += f"  dSRCC {d.mean():+.3f}±{sd(d):.3f}"
    return line + f"  [{res['wall_s']:.1f}s]  per-split " + "/".join(f"{v:.3f}" for v in sr)


def demo_masks(names: list[str]) -> dict[str, np.ndarray]:
    """Train/val = 90/10 of the 882 clive-dev photos not bundled as demo photos (seeded_splits with
    test_frac 0, val_frac 0.1, tag seed0, grouped by image); test = the 48 demo photos."""
    demo = {r["image"] for r in csv.DictReader(open(DEMO))}
    rest = [n for n in names if n not in demo]
    tag = {n: t["seed0"] for n, t in zip(rest, seeded_splits(rest, n_splits=1, seed=0, test_frac=0.0,
                                                             val_frac=0.1))}
    part = np.array(["test" if n in demo else tag[n] for n in names])
    return {p: part == p for p in ("train", "val", "test")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", action="store_true", help="882 -> 48 demo photos instead of the 5 splits")
    ap.add_argument("--rows", default="all", help="'all' or comma-separated row names")
    ap.add_argument("--extra", default="", help="JSON list of extra row dicts")
    ap.add_argument("--out", default="docs/results/levers_rows.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    names, y = load_labels()
    masks = split_masks(names)
    if a.demo:
        global SPLITS
        SPLITS = ["demo"]
        masks = {"demo": demo_masks(names)}
        print("demo protocol:", {k: int(v.sum()) for k, v in masks["demo"].items()})
    rows = ROWS if a.rows == "all" else [r for r in ROWS if r["name"] in a.rows.split(",")] if a.rows else []
    rows = rows + (json.loads(a.extra) if a.extra else [])
    out = Path(a.out)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[r["row"]] = r
    for row in rows:
        if row["name"] in done and done[row["name"]]["config"] == row:
            res = done[row["name"]]
        else:
            try:
                res = evaluate(row, names, y, masks)
            except FileNotFoundError as e:
                print(f"{row['name']}: skipped ({e})", flush=True)
                continue
            with out.open("a") as f:
                f.write(json.dumps(res) + "\n")
            done[row["name"]] = res
        print(summarise(res, done.get("anchor")), flush=True)


if __name__ == "__main__":
    main()
