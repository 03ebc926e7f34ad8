"""Shared pieces of the speed benchmarks: device naming, side-by-side timing, synthetic RSFIQA inputs.

Imports only torch, the standard library and :mod:`rsfiqa.model` / :mod:`rsfiqa_core.contract` (numpy +
PIL), so the GPU benchmarks run where webdataset, omegaconf and jsonargparse are not installed.

Timing rule of every benchmark: the compared variants are measured *interleaved* in one process
(one call of each in turn, repeated), after a warm-up, with ``torch.cuda.synchronize`` around
each call on a GPU; the reported figure is the median (and, where noted, the minimum).
Interleaving spreads the load changes of a shared machine over all variants alike, so their
*ratios* stay meaningful even when the absolute times drift.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Sequence

import torch
from torch import Tensor

from rsfiqa_core.contract import DIMENSIONS, LEVELS, region_text

TRANSFORMER_PREFIXES = ("swin", "vit", "deit", "beit", "eva")  # timm models that take ``img_size``
CONTENTS = ("large dark green textured region in the lower left", "small bright red smooth region in the centre",
            "medium grey flat region along the top", "the background")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """What a result was measured on: GPU name, or CPU model + torch threads + visible cores."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return (f"{cpu_model()}, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores "
            f"(torch {torch.__version__})")


def load_average() -> str:
    """1/5/15-minute load averages (a shared machine's measurements depend on them)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def autocast(device: torch.device, bf16: bool) -> ContextManager:
    """bf16 autocast on ``device`` when asked, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning and TF32 matmuls on GPUs (what a training run would enable)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- timing
def time_interleaved(calls: dict[str, Callable[[], object]], steps: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of every entry of ``calls``, measured in turn (see the module docstring).

    Each callable runs ``warmup`` times first (cuDNN autotuning, allocator, caches), then ``steps``
    rounds of one timed call each.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(steps):
        for name, fn in calls.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median_ms(seconds: Sequence[float]) -> float:
    return 1000.0 * statistics.median(seconds)


def best_ms(seconds: Sequence[float]) -> float:
    """The fastest call: on a shared machine other load only ever adds time, so the minimum is the
    steadier estimate of the uncontended cost (reported beside the median)."""
    return 1000.0 * min(seconds)


# --------------------------------------------------------------------------- models and inputs
def backbone_kwargs(backbone: str, image_size: int) -> dict:
    """RSFIQANet kwargs of the backbone; transformers get the input size (timm's ``img_size``)."""
    kwargs: dict = {"backbone": backbone, "pretrained": None}
    if backbone.startswith(TRANSFORMER_PREFIXES):
        kwargs["img_size"] = image_size
    return kwargs


BARE = dict(use_mhf=False, use_text=False, use_rsa=False, head_self_attn=False)  # the paper's baseline row


def region_texts(batch: int, num_regions: int, tag: str = "") -> list[list[str]]:
    """B lists of L realistic region descriptions (content + five level/score ratings, ~50 CLIP
    tokens); a different ``tag`` gives strings never seen before (a cold text cache)."""
    texts = []
    for b in range(batch):
        row = []
        for i in range(num_regions):
            levels = {d: LEVELS[(b + i + k) % 5] for k, d in enumerate(DIMENSIONS)}
            scores = {d: 1.0 + ((b * 7 + i * 3 + k) % 41) / 10 for k, d in enumerate(DIMENSIONS)}
            content = f"{CONTENTS[(b + i) % len(CONTENTS)]} {tag}{b}-{i}".strip()
            row.append(region_text({"content": content, "levels": levels, "scores": scores}))
        texts.append(row)
    return texts


def synthetic_batch(batch: int, image_size: int, num_regions: int, device: torch.device,
                    seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(images [B,3,S,S], label map [B,S,S] of blocky regions 0..L-1 at the image's resolution, as
    the data module gives it, region_valid [B,L] all True) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    cells = max(1, image_size // 32)
    label_map = torch.randint(0, num_regions, (batch, cells, cells), generator=g)
    label_map = torch.nn.functional.interpolate(label_map[:, None].float(), size=(image_size, image_size),
                                                mode="nearest")[:, 0].long()
    label_map[:, 0, :num_regions] = torch.arange(num_regions)  # every region present
    return images.to(device), label_map.to(device), torch.ones(batch, num_regions, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------- output
def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every model benchmark shares."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as a bf16-mixed training run)")
    parser.add_argument("--text", default="clip", choices=("clip", "minilm"),
                        help="text tower: CLIP ViT-B-32 (random init, timing only) or the offline MiniLM")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run / the GPU script)")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; floats get 3 significant digits or 1 decimal."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_header(title: str, device: torch.device, settings: dict) -> None:
    print(f"## {title}")
    print(f"device: {device_name(device)}; load average {load_average()}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
