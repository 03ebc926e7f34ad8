"""``rsfiqa probe``: does the region guidance of a trained run do anything? (RSA, eqs. 6-9)

    rsfiqa probe runs/clive/d_full/csv/seed0 [--max-batches N]

Reads a split folder of ``rsfiqa splits`` / ``rsfiqa ablate`` (its ``config.yaml`` and the best
checkpoint named in ``fit_done.json``), runs the test split and prints

* lambda, the standard deviation of the non-zero entries of the eq. (8) bias B and of the logits
  QK^T/sqrt(d_k) of eq. (9), and their ratio: a bias far below the logits cannot steer attention;
* the mean total-variation distance between the attention rows with and without B;
* test PLCC/SRCC of the full model, with B removed (lambda = 0), with the region descriptions
  rotated by one image within each batch (each image gets another image's descriptions), and with
  every description replaced by the placeholder ``"Answer."``. Equal numbers mean the
  descriptions (or the bias) do not reach the prediction.
"""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import yaml
from torch import Tensor
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.experiments.splits import FIT_DONE
from rsfiqa.model.rsa import RegionSemanticAttention
from rsfiqa.module import RSFIQAModule
from rsfiqa_core.contract import PLACEHOLDER_TEXT

VARIANTS = ("full", "no_bias", "rotated_text", "placeholder_text")


@contextmanager
def bias_removed(rsa: RegionSemanticAttention) -> Iterator[None]:
    """lambda = 0 for the duration of the block (log lambda = -inf), restored afterwards."""
    saved = rsa.log_lambda.detach().clone()
    rsa.log_lambda.data.fill_(float("-inf"))
    try:
        yield
    finally:
        rsa.log_lambda.data.copy_(saved)


def bias_statistics(rsa: RegionSemanticAttention, inputs: Sequence[Any]) -> dict[str, float]:
    """Scale of B against the logits, and how far B moves the attention rows, for one batch of
    RSA inputs (tokens, masks, validity, text)."""
    x, masks, valid, text = inputs[:4]
    bias = rsa.region_bias(x, masks, valid, text)
    logits = rsa.attn.logits(x)
    nonzero = bias[bias != 0]
    moved = 0.5 * ((logits + bias[:, None]).softmax(-1) - logits.softmax(-1)).abs().sum(-1).mean()
    return {"bias_std": float(nonzero.std()) if nonzero.numel() > 1 else 0.0,
            "logits_std": float(logits.std()), "attention_tv": float(moved)}


def rotated(texts: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each image gets the descriptions of the next image in the batch (a batch of one keeps its own)."""
    texts = [list(t) for t in texts]
    return texts[1:] + texts[:1]


@torch.no_grad()
def probe(module: RSFIQAModule, batches: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of the module docstring over ``batches`` (needs a model with RSA and text)."""
    rsa = module.net.rsa
    if rsa is None or module.net.text_encoder is None:
        raise ValueError("rsfiqa probe needs a model with RSA and region text (use_rsa and use_text true)")
    module.eval()
    captured: dict[str, Any] = {}
    hook = rsa.register_forward_hook(lambda _m, args, _out: captured.__setitem__("inputs", args))
    preds: dict[str, list[Tensor]] = {v: [] for v in VARIANTS}
    stats, targets = [], []
    try:
        for batch in batches:
            preds["full"].append(module(batch))
            stats.append(bias_statistics(rsa, captured["inputs"]))
            with bias_removed(rsa):
                preds["no_bias"].append(module(batch))
            preds["rotated_text"].append(module({**batch, "texts": rotated(batch["texts"])}))
            placeholder = [[PLACEHOLDER_TEXT] * len(t) for t in batch["texts"]]
            preds["placeholder_text"].append(module({**batch, "texts": placeholder}))
            targets.append(batch["mos_norm"])
    finally:
        hook.remove()
    if not targets:
        raise ValueError("no test batches to probe")
    target = torch.cat(targets).float()
    result: dict[str, Any] = {"lambda": float(rsa.lam), "images": len(target)}
    for key in stats[0]:
        result[key] = sum(s[key] for s in stats) / len(stats)
    result["bias_to_logits"] = result["bias_std"] / result["logits_std"]
    for variant, values in preds.items():
        pred = torch.cat(values).float()
        result[variant] = {"plcc": float(pearson_corrcoef(pred, target)),
                           "srcc": float(spearman_corrcoef(pred, target))}
    return result


def load_run(split_dir: Path, max_batches: int | None) -> tuple[RSFIQAModule, list[dict[str, Any]]]:
    """The best checkpoint of a split folder and its test batches (same data settings as the run)."""
    done = split_dir / FIT_DONE
    if not done.is_file():
        raise FileNotFoundError(f"{done}: not a finished split folder of rsfiqa splits/ablate")
    config = yaml.safe_load((split_dir / "config.yaml").read_text())
    module = RSFIQAModule.load_from_checkpoint(json.loads(done.read_text())["best_ckpt"], map_location="cpu")
    data = ShardDataModule(**{**config["data"], "num_workers": 0})
    data.setup("test")
    batches = []
    for i, batch in enumerate(data.test_dataloader()):
        if max_batches is not None and i >= max_batches:
            break
        batches.append(batch)
    return module, batches


def format_report(result: dict[str, Any]) -> str:
    lines = [f"lambda {result['lambda']:.4f}; {result['images']} test images",
             f"bias std (non-zero entries) {result['bias_std']:.4f}, logits std {result['logits_std']:.4f}, "
             f"ratio {result['bias_to_logits']:.3f}",
             f"attention moved by the bias (mean total variation per row) {result['attention_tv']:.4f}"]
    lines += [f"{v:17s} PLCC {result[v]['plcc']:.4f}  SRCC {result[v]['srcc']:.4f}" for v in VARIANTS]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="rsfiqa probe", description=__doc__.split("\n\n")[0])
    p.add_argument("split_dir", type=Path, help="a split folder, e.g. runs/clive/d_full/csv/seed0")
    p.add_argument("--max-batches", type=int, default=None, help="probe only the first N test batches")
    args = p.parse_args(argv)
    try:
        result = probe(*load_run(args.split_dir, args.max_batches))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"rsfiqa probe: error: {err}") from err
    print(format_report(result))
    return result
