"""Scale of the RSA bias B (paper eq. 8) at initialisation, per region size, for every ``rsa_norm``.

The paper's configs run at 224 px: a 7x7 last-level grid, C = 256, 4 heads, L = 5. This script
builds freshly initialised RSA blocks (``RegionSemanticAttention``, as ``RSFIQANet`` builds it) on
that grid with five grid-aligned regions of 1, 4, 9, 12 and 23 cells, random LayerNorm-scale
tokens and unit-norm text embeddings (CLIP's are normalised), and prints per region size:

* ``std``: the standard deviation of B(p, q) over all pairs of the region's cells (diagonal included);
* ``diag``: the mean of B(p, p) over the region's cells (a large value pins a token to itself);
* ``off std``: the standard deviation of B(p, q), p != q, both in the region;
* ``self weight``: the mean softmax weight a token of the region gives itself in eq. (9)
  (without any bias it is about 1/49 = 0.02 on this grid);

and the standard deviation of the attention logits QK^T/sqrt(d_k). Every number is over
``--seeds`` initialisations and ``--batch`` token draws.

    python benchmarks/rsa_bias_scale.py            # CPU, a few seconds
"""
from __future__ import annotations

import argparse
from typing import Sequence

import torch

from rsfiqa.model.rsa import RSA_NORMS, RegionSemanticAttention, region_masks

GRID, CELL = 7, 32                     # 224 px input, stride-32 last level
REGION_CELLS = (1, 4, 9, 12, 23)       # region sizes in cells; they tile the 7x7 grid
PAPER_DIM, PAPER_HEADS, CLIP_DIM = 256, 4, 512


def grid_label_map(batch: int) -> torch.Tensor:
    """[batch, 224, 224] labels 0..4: regions of 1 (0,0), 4 (2x2), 9 (3x3), 12 (3x4) cells, rest 23."""
    cells = torch.full((GRID, GRID), 4)
    cells[0, 0] = 0
    cells[0:2, 1:3] = 1
    cells[0:3, 3:6] = 2
    cells[3:6, 0:4] = 3
    counts = torch.bincount(cells.flatten(), minlength=5).tolist()
    assert tuple(counts) == REGION_CELLS, counts
    return cells.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1).expand(batch, -1, -1).clone()


def measure(norm: str, seeds: int, batch: int, dim: int = PAPER_DIM, heads: int = PAPER_HEADS) -> dict[str, list[float]]:
    """Per region (in REGION_CELLS order): diag mean, off-diagonal std, self weight; plus the logits' std."""
    labels = grid_label_map(batch)
    masks = region_masks(labels, len(REGION_CELLS), (GRID, GRID))
    member = masks.argmax(1)  # [B, N]: the grid is aligned, every cell lies in one region
    valid = torch.ones(batch, len(REGION_CELLS), dtype=torch.bool)
    eye = torch.eye(GRID * GRID, dtype=torch.bool)
    every, diag, off, self_w = ([[] for _ in REGION_CELLS] for _ in range(4))
    logit_values = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        rsa = RegionSemanticAttention(dim, CLIP_DIM, heads, norm=norm)
        x = torch.randn(batch, GRID * GRID, dim)
        text = torch.nn.functional.normalize(torch.randn(batch, len(REGION_CELLS), CLIP_DIM), dim=-1)
        with torch.no_grad():
            bias = rsa.region_bias(x, masks, valid, text)
            logits = rsa.attn.logits(x)
            weights = (logits + bias.unsqueeze(1)).softmax(-1).mean(1)  # [B, N, N], heads averaged
        logit_values.append(logits.flatten())
        for i in range(len(REGION_CELLS)):
            inside = member == i
            pair = inside[:, :, None] & inside[:, None, :]
            every[i].append(bias[pair])
            diag[i].append(bias[pair & eye])
            off[i].append(bias[pair & ~eye])
            self_w[i].append(weights[pair & eye])
    cat = torch.cat
    return {"std": [spread(cat(e)) for e in every],
            "diag": [float(cat(d).mean()) for d in diag],
            "off_std": [spread(cat(o)) for o in off],
            "self_weight": [float(cat(s).mean()) for s in self_w],
            "logit_std": [float(cat(logit_values).std())]}


def spread(values: torch.Tensor) -> float:
    """Standard deviation; NaN for fewer than two values (a one-cell region has no off-diagonal pair)."""
    return float(values.std()) if values.numel() > 1 else float("nan")


def report(norms: Sequence[str], seeds: int, batch: int) -> str:
    lines = [f"RSA bias B at init: {GRID}x{GRID} grid (224 px), C={PAPER_DIM}, {PAPER_HEADS} heads, "
             f"text dim {CLIP_DIM} (unit norm), lambda=1, {seeds} seeds x {batch} samples",
             "| rsa_norm | region cells | B std, all pairs | B(p,p) mean | B(p,q) std, p!=q | self weight | logits std |",
             "|---|---|---|---|---|---|---|"]
    for norm in norms:
        m = measure(norm, seeds, batch)
        for i, n in enumerate(REGION_CELLS):
            lines.append(f"| {norm} | {n} | {m['std'][i]:.3g} | {m['diag'][i]:.3g} | {m['off_std'][i]:.3g} | "
                         f"{m['self_weight'][i]:.3f} | {m['logit_std'][0]:.3g} |")
    lines.append(f"no bias: self weight about 1/{GRID * GRID} = {1 / GRID ** 2:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=8, help="initialisations")
    p.add_argument("--batch", type=int, default=8, help="token draws per initialisation")
    args = p.parse_args(argv)
    print(report(RSA_NORMS, args.seeds, args.batch))


if __name__ == "__main__":
    main()
