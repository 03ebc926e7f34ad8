"""Levers study (issue 12): fine-tune the last stages of EfficientNet-Lite0 on cached stride-16 maps.

Lite0's blocks 0-4 stay frozen; their output (level 3, stride 16, 112 channels) is computed once per
photo and cached (float16, runs/levers-cache/ft_<backbone>_b4.pt) together with the mean+std of
levels 0-3. Per split, blocks 5-6 (level 4, stride 32) are trained with a linear head on
[frozen mean+std of levels 0-3, mean+std of the trained level 4], the head initialised with the
validation-selected ridge solution on the initial features (epoch 0 is the ridge). MSE on z-scored
MOS, AdamW, horizontal flips of the cached map as augmentation, BatchNorm kept in eval mode; the
epoch is chosen by validation SRCC only. Splits, anchor and metrics as scripts/levers_fit.py.

    OMP_NUM_THREADS=1 python scripts/levers_finetune.py --splits seed0,seed1 --epochs 12
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from rsfiqa.data.transforms import to_model_input
from rsfiqa.model.backbone import Backbone
from rsfiqa_core.imageio import decode_rgb
from scripts.levers_fit import ALPHAS, DATA, SPLITS, load_labels, metrics, ridge_fit_predict, split_masks

CACHE = Path("runs/levers-cache")
FROZEN_BLOCKS = 5  # blocks[0..4] frozen -> cached map = output of blocks[4]


def extract(backbone: str) -> dict:
    """Cached stride-16 maps and frozen level statistics for every clive-dev photo (labels.csv order)."""
    path = CACHE / f"ft_{backbone}_b4.pt"
    if path.exists():
        return torch.load(path)
    names, _ = load_labels()
    net = Backbone(backbone, "pypi", out_indices=(0, 1, 2, 3, 4), freeze=True).model.eval()
    maps, stats, t0 = [], [], time.time()
    with torch.inference_mode():
        for n, name in enumerate(names):
            rgb, _ = decode_rgb((DATA / "images" / name).read_bytes(), name)
            x, _ = to_model_input(rgb, np.zeros(rgb.shape[:2], np.int64))
            x = net.bn1(net.conv_stem(x[None]))
            pooled = []
            for i in range(FROZEN_BLOCKS):
                x = net.blocks[i](x)
                if i in (0, 1, 2, 4):
                    f = x[0].flatten(1)
                    pooled += [f.mean(1), f.std(1, unbiased=False)]
            maps.append(x[0].half())
            stats.append(torch.cat(pooled))
            if (n + 1) % 100 == 0:
                print(f"{n + 1} photos {time.time() - t0:.0f} s", flush=True)
    out = {"names": names, "maps": maps, "stats": torch.stack(stats)}  # maps differ in size
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


class TunedTail(nn.Module):
    """Blocks 5-6 of the backbone + linear head on [frozen stats, mean+std of level 4] (standardised)."""

    def __init__(self, backbone: str, mu: torch.Tensor, sd: torch.Tensor) -> None:
        super().__init__()
        net = Backbone(backbone, "pypi", out_indices=(0, 1, 2, 3, 4)).model
        self.blocks = nn.Sequential(*[copy.deepcopy(net.blocks[i]) for i in range(FROZEN_BLOCKS, len(net.blocks))])
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(mu.numel(), 1)  # resized once the feature width is known

    def raw_features(self, fmaps: list[torch.Tensor], frozen: torch.Tensor) -> torch.Tensor:
        """[B, D] unstandardised features; one map at a time (photos differ in size)."""
        tuned = []
        for fmap in fmaps:
            f = self.blocks(fmap[None].float()).flatten(2)
            tuned.append(torch.cat([f.mean(2), f.std(2, unbiased=False)], 1))
        return torch.cat([frozen, torch.cat(tuned)], 1)

    def forward(self, fmaps: list[torch.Tensor], frozen: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop((self.raw_features(fmaps, frozen) - self.mu) / self.sd)).squeeze(1)

    def train(self, mode: bool = True) -> "TunedTail":
        super().train(mode)
        for m in self.blocks.modules():  # BatchNorm statistics stay ImageNet's
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


@torch.no_grad()
def predict(model: TunedTail, maps: list[torch.Tensor], stats: torch.Tensor, flip_tta: bool,
            bs: int = 32) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(maps), bs):
        m, s = maps[i:i + bs], stats[i:i + bs]
        p = model(m, s)
        if flip_tta:
            p = (p + model([x.flip(-1) for x in m], s)) / 2
        out.append(p)
    return torch.cat(out).numpy()


def run_split(data: dict, y: np.ndarray, mask: dict, a: argparse.Namespace) -> dict:
    torch.manual_seed(a.seed)
    tr, va, te = (torch.from_numpy(np.flatnonzero(mask[p])) for p in ("train", "val", "test"))
    maps, stats = data["maps"], data["stats"]
    model = TunedTail(a.backbone, torch.zeros(1), torch.ones(1))
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.raw_features(maps[i:i + 32], stats[i:i + 32])
                           for i in range(0, len(maps), 32)]).double()
    mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
    model.mu, model.sd = mu.float(), sd.float()
    model.head = nn.Linear(feats.shape[1], 1)
    z = ((feats - mu) / sd).numpy()
    ym, ys = y[tr.numpy()].mean(), y[tr.numpy()].std()
    yz = (y - ym) / ys
    pv, = ridge_fit_predict(z[tr.numpy()], yz[tr.numpy()], [z[va.numpy()]])
    best_alpha = int(np.nanargmax([spearmanr(p, y[va.numpy()])[0] for p in pv]))
    ztr = z[tr.numpy()]
    A = ztr.T @ ztr + ALPHAS[best_alpha] * (np.linalg.svd(ztr, compute_uv=False) ** 2).mean() * np.eye(z.shape[1])
    w = np.linalg.solve(A, ztr.T @ (yz[tr.numpy()] - yz[tr.numpy()].mean()))
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(w).float()[None])
        model.head.bias.fill_(float(yz[tr.numpy()].mean()))
    opt = torch.optim.AdamW([{"params": model.blocks.parameters(), "lr": a.lr},
                             {"params": model.head.parameters(), "lr": a.lr_head}], weight_decay=a.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs)
    target = torch.from_numpy(yz).float()
    history, best = [], None
    for epoch in range(a.epochs + 1):
        if epoch:
            model.train()
            order = tr[torch.randperm(len(tr))]
            for i in range(0, len(order), a.batch):
                idx = order[i:i + a.batch]
                flip = (torch.rand(len(idx)) < 0.5).tolist()
                m = [maps[j].flip(-1) if f else maps[j] for j, f in zip(idx.tolist(), flip)]
                loss = ((model(m, stats[idx]) - target[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        v_srcc = metrics(predict(model, [maps[j] for j in va], stats[va], a.tta), y[va.numpy()])[0]
        t_srcc, t_plcc = metrics(predict(model, [maps[j] for j in te], stats[te], a.tta), y[te.numpy()])
        history.append({"epoch": epoch, "val_srcc": v_srcc, "test_srcc": t_srcc, "test_plcc": t_plcc})
        print(f"  epoch {epoch} val {v_srcc:.3f} test {t_srcc:.3f}/{t_plcc:.3f}", flush=True)
        if best is None or v_srcc > best["val_srcc"]:
            best = history[-1]
    return {"best": best, "ridge_init": history[0], "history": history}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tta", action="store_true", help="average with the flipped map at evaluation")
    ap.add_argument("--out", default="runs/levers-finetune.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = extract(a.backbone)
    names, y = load_labels()
    assert data["names"] == names
    masks = split_masks(names)
    for s in a.splits.split(","):
        t0 = time.time()
        print(f"{s}:", flush=True)
        res = run_split(data, y, masks[s], a)
        row = {"split": s, **{k: v for k, v in vars(a).items() if k not in ("splits", "out")},
               **res, "wall_s": round(time.time() - t0, 1)}
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{s}: best epoch {res['best']['epoch']} test SRCC {res['best']['test_srcc']:.3f} "
              f"(ridge init {res['ridge_init']['test_srcc']:.3f}) {row['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
