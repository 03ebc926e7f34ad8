"""Where the batch-1 inference time of full RSFIQA goes, block by block, and what compiling the
MHF + RSA + head block changes.

At batch 1 on a GPU the blocks after the backbone (MHF eqs. 1-4, RSA eqs. 6-9, head eq. 10) are
many small kernels: their time is mostly launch overhead, not arithmetic. This script measures,
in eval mode under ``torch.inference_mode`` (bf16 autocast with ``--bf16``), on one synthetic
image with L = 5 and a warm text cache:

* per block (text cache lookup, backbone, MHF, region masks + RSA, head): median ms and the
  number of device kernels (CUDA) or ATen operators (CPU) it launches (``torch.profiler``);
* the bare backbone baseline and the full model, and their ratio (the target: <= 1.5x);
* with ``--compile``: the same full forward with the post-backbone block compiled by
  ``torch.compile(mode=...)`` (default "reduce-overhead": CUDA graphs replay the block's
  kernels as one launch), checked to give the eager model's score, and its ratio to the bare one.

    python benchmarks/block_profile.py                       # CPU, efficientnet_lite0, 224 px, no compile
    python benchmarks/block_profile.py --backbone swin_tiny_patch4_window7_224 --device cuda --bf16 --compile
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

import benchutil
from rsfiqa.model import NetConfig, RSFIQANet
from rsfiqa.model.rsa import pool_region_masks
from rsfiqa_core.device import resolve_device

NUM_REGIONS = 5


class PostBackbone(nn.Module):
    """MHF + region masks + RSA + head of ``net`` as one module (what ``--compile`` compiles); the
    same operations as ``RSFIQANet.forward_features`` after the backbone."""

    def __init__(self, net: RSFIQANet) -> None:
        super().__init__()
        self.fusion, self.rsa, self.head, self.num_regions = net.fusion, net.rsa, net.head, net.num_regions

    def forward(self, levels: list[Tensor], label_map: Tensor, valid: Tensor, text: Tensor) -> Tensor:
        tokens = self.fusion(levels)
        masks = pool_region_masks(label_map, self.num_regions, tuple(levels[-1].shape[-2:]))
        tokens, _ = self.rsa(tokens, masks, valid, text)
        return self.head(tokens)


def timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds of ``fn`` over ``steps`` synchronised calls after ``warmup`` ones."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(steps):
        benchutil.synchronize(device)
        t0 = time.perf_counter()
        fn()
        benchutil.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(seconds)


def launches(fn: Callable[[], object], device: torch.device) -> int:
    """Device kernels (CUDA) or ATen operators (CPU) one call of ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        benchutil.synchronize(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::"))


def run(args: argparse.Namespace) -> list[str]:
    device = resolve_device(args.device)
    benchutil.configure_backends(device)
    kwargs = benchutil.backbone_kwargs(args.backbone, args.image_size)
    torch.manual_seed(0)
    full = RSFIQANet(NetConfig(**kwargs, num_regions=NUM_REGIONS, text_encoder=args.text)).to(device).eval()
    bare = RSFIQANet(NetConfig(**kwargs, num_regions=NUM_REGIONS, **benchutil.BARE)).to(device).eval()
    images, label_map, valid = benchutil.synthetic_batch(1, args.image_size, NUM_REGIONS, device)
    texts = benchutil.region_texts(1, NUM_REGIONS)
    post = PostBackbone(full)

    def ctx():
        return torch.inference_mode(), benchutil.autocast(device, args.bf16)

    def call(fn: Callable[[], object]) -> Callable[[], object]:
        def wrapped() -> object:
            a, b = ctx()
            with a, b:
                return fn()
        return wrapped

    with torch.inference_mode():
        text, text_valid = full.encode_region_texts(texts, valid)  # warms the cache
        with benchutil.autocast(device, args.bf16):
            levels = full.backbone(images)
            tokens = full.fusion(levels)
            grid = tuple(levels[-1].shape[-2:])
            masks = pool_region_masks(label_map, NUM_REGIONS, grid)
            rsa_tokens, _ = full.rsa(tokens, masks, text_valid, text)
    blocks = {
        "text (cache hit)": call(lambda: full.encode_region_texts(texts, valid)),
        "backbone": call(lambda: full.backbone(images)),
        "MHF (eqs. 1-4)": call(lambda: full.fusion(levels)),
        "masks + RSA (eqs. 6-9)": call(lambda: full.rsa(tokens, pool_region_masks(label_map, NUM_REGIONS, grid),
                                                        text_valid, text)),
        "head (eq. 10)": call(lambda: full.head(rsa_tokens)),
        "post-backbone block (eager)": call(lambda: post(levels, label_map, text_valid, text)),
        "full model": call(lambda: full(images, label_map, valid, texts)),
        "bare backbone baseline": call(lambda: bare(images, label_map, valid, texts)),
    }
    rows = [(name, timed(fn, args.steps, args.warmup, device), launches(fn, device)) for name, fn in blocks.items()]
    unit = "kernels" if device.type == "cuda" else "aten ops"
    lines = [f"## Batch-1 inference by block: {args.backbone}, {args.image_size} px, L={NUM_REGIONS}, "
             f"bf16={args.bf16}, text={args.text} (random weights)",
             f"device: {benchutil.device_name(device)}; load average {benchutil.load_average()}",
             benchutil.markdown_table(["block", "median ms", unit], rows)]
    ms = {name: t for name, t, _ in rows}
    lines.append(f"ratio full / bare, batch 1, eager: {ms['full model'] / ms['bare backbone baseline']:.2f}x "
                 f"(target <= 1.5x)")
    if args.compile:
        lines += compiled(full, post, images, label_map, valid, texts, ms, args, device, call)
    return lines


def compiled(full: RSFIQANet, post: PostBackbone, images: Tensor, label_map: Tensor, valid: Tensor,
             texts: list[list[str]], ms: dict[str, float], args: argparse.Namespace, device: torch.device,
             call: Callable) -> list[str]:
    """The full forward with the post-backbone block compiled; same score as eager, and its time."""
    options = {"mode": args.compile_mode} if args.compile_backend == "inductor" else {}
    block = torch.compile(post, backend=args.compile_backend, **options)

    def forward() -> Tensor:
        text, text_valid = full.encode_region_texts(texts, valid)
        return block(full.backbone(images), label_map, text_valid, text)

    t0 = time.perf_counter()
    score = call(forward)()
    benchutil.synchronize(device)
    compile_s = time.perf_counter() - t0
    eager = call(lambda: full(images, label_map, valid, texts))()
    difference = float((score.float() - eager.float()).abs().max())
    fast = timed(call(forward), args.steps, args.warmup, device)
    mode = f", mode={args.compile_mode}" if options else ""
    return [f"compiled post-backbone block (torch.compile backend={args.compile_backend}{mode}): first call {compile_s:.1f} s, "
            f"full model {fast:.2f} ms vs eager {ms['full model']:.2f} ms; |score - eager score| = {difference:.2e}",
            f"ratio full (compiled block) / bare, batch 1: {fast / ms['bare backbone baseline']:.2f}x (target <= 1.5x)"]


def main(argv: Sequence[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time the post-backbone block compiled")
    p.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode (CUDA graphs: reduce-overhead)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend ('eager': a quick dry run)")
    benchutil.add_common_args(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = run(args)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
