"""Annotation and data-loading throughput on real photos, plus SAM timing with random weights.

CPU part (one process, a sample of ``../shared/data/clive-dev``):

1. the annotation pipeline (``annotate.pipeline.annotate``, offline config: classical segmenter +
   measures describer) on ``--images`` photos into temporary shards; its per-stage clocks give the
   images/s of image decode (read + decode), segmentation, description and shard writing;
2. the training loader (``ShardDataModule.train_dataloader``) over those shards with 0 and 2
   workers, images/s over full epochs after a first, untimed one (worker start-up);
3. one full-RSFIQA training step at the same image size and batch on ``--device``
   (``train_step.py``), and the ratio loader images/s / step images/s — the loader must outpace
   the step. ``--step-img-s`` adds the ratio against another step rate (e.g. the GPU's, from
   gpu_check.sh).

SAM part (``--sam on``, or ``auto`` on a GPU): ``segment_anything`` models built WITHOUT a
checkpoint (random weights): image-encoder time per image at the encoder's input size (1024 px)
unbatched vs batched (fp32 — TF32 matmuls on a GPU — and bf16 autocast on a GPU), and the full
automatic mask generation per image through the pipeline's ``SamSegmenter``. Only the encoder time
is representative: with random weights the mask decoder's predicted IoUs are noise, so the number
of masks that survive the thresholds, and the post-processing work they cause, differ from a
trained SAM's.
``--sam-only`` skips the CPU part (the GPU image lacks webdataset and omegaconf).

    python benchmarks/annotation.py                         # CPU part (+ SAM when a GPU exists)
    python benchmarks/annotation.py --sam-only --sam on --sam-models vit_b vit_h --device cuda
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import benchutil
from rsfiqa_core.device import resolve_device

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "clive-dev"
CLIVE_OVERRIDES = ("dataset.mos_range=[0,100]",)  # CLIVE's MOS scale (its labels.csv has no range)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="a csv-layout dataset of real photos (labels.csv)")
    p.add_argument("--images", type=int, default=48, help="photos annotated (first ones in key order)")
    p.add_argument("--shard-size", type=int, default=8, help="samples per shard (several let workers share)")
    p.add_argument("--annotate-overrides", nargs="*", default=[], metavar="key=value",
                   help="annotation config overrides (configs/annotate/offline.yaml)")
    p.add_argument("--image-size", type=int, default=384, help="loader output and train-step input size")
    p.add_argument("--batch", type=int, default=16, help="loader and train-step batch")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to measure")
    p.add_argument("--loader-epochs", type=int, default=3, help="epochs per worker count (first one untimed)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone of the comparison train step")
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--step-img-s", type=float, default=None, help="also compare with this step rate (img/s)")
    p.add_argument("--sam", choices=("auto", "on", "off"), default="auto", help="auto: when a GPU is available")
    p.add_argument("--sam-only", action="store_true", help="only the SAM part")
    p.add_argument("--sam-models", nargs="+", default=["vit_b", "vit_h"],
                   help="vit_b / vit_l / vit_h (random init), or 'tiny' (a small random SAM for smoke runs)")
    p.add_argument("--sam-batch", type=int, default=4, help="images per batched encoder call")
    p.add_argument("--sam-steps", type=int, default=5, help="timed encoder calls per variant")
    p.add_argument("--sam-images", type=int, default=2, help="photos for the mask-generation timing")
    p.add_argument("--sam-points", type=int, default=32, help="points_per_side of the mask generator")
    benchutil.add_common_args(p)
    return p


# --------------------------------------------------------------------------- CPU part
def annotate_sample(args: argparse.Namespace, out: Path) -> dict[str, tuple[int, float]]:
    """Annotate ``args.images`` photos into ``out``; per stage (images, seconds) from the run summary."""
    from annotate.config import load_config
    from annotate.pipeline import STAGES, annotate

    overrides = [*CLIVE_OVERRIDES, f"shards.maxcount={args.shard_size}", *args.annotate_overrides]
    summary = annotate("csv", args.root, out, load_config(None, overrides), limit=args.images, progress=False)
    if summary.skipped:
        print(f"annotation skipped {len(summary.skipped)} item(s): {summary.skipped_by_reason()}")
    return {s: (summary.stage_images[s], summary.stage_seconds[s]) for s in STAGES}


def loader_throughput(shards: Path, workers: int, args: argparse.Namespace, epochs: int) -> tuple[float, int]:
    """(images/s of the train loader over ``epochs - 1`` timed epochs, train images per epoch)."""
    from rsfiqa.data.datamodule import ShardDataModule

    data = ShardDataModule(train_shards=[str(shards)], image_size=args.image_size, batch_size=args.batch,
                           num_workers=workers)
    data.setup("fit")
    loader = data.train_dataloader()
    images, seconds = 0, 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        count = sum(len(batch["key"]) for batch in loader)
        if epoch > 0:  # the first epoch pays for worker start-up
            images, seconds = images + count, seconds + time.perf_counter() - t0
    return images / seconds, data.num_train


def train_step_rate(args: argparse.Namespace) -> float:
    """Images/s of a full-RSFIQA training step at the loader's image size and batch on ``--device``
    (train_step.py)."""
    import train_step

    step_args = ["--backbone", args.backbone, "--batch", str(args.batch), "--image-size", str(args.image_size),
                 "--steps", str(args.train_steps), "--warmup", "1", "--text", args.text, "--device", args.device,
                 "--no-unfrozen", *(["--bf16"] if args.bf16 else []),
                 *(["--threads", str(args.threads)] if args.threads else [])]
    results = train_step.main(step_args)
    return results["full, frozen text (warm cache)"]["img_s"]


def cpu_part(args: argparse.Namespace) -> None:
    epochs = 2 if args.quick else args.loader_epochs
    with tempfile.TemporaryDirectory(prefix="rsfiqa-bench-") as tmp:
        stages = annotate_sample(args, Path(tmp))
        loaders = {w: loader_throughput(Path(tmp), w, args, epochs) for w in args.workers}
    step_img_s = train_step_rate(args)
    settings = {"root": args.root, "photos": args.images, "shard_size": args.shard_size,
                "overrides": " ".join([*CLIVE_OVERRIDES, *args.annotate_overrides]), "image_size": args.image_size,
                "batch": args.batch, "loader_epochs": f"{epochs} (first untimed)"}
    benchutil.print_header("Annotation stages and data loading (1 process)", torch.device("cpu"), settings)
    names = {"load": "image decode (read + decode)", "segment": "classical segmenter",
             "describe": "measures describer", "write": "shard writing (record + label map + tar)"}
    rows = [(names.get(s, s), n, sec, n / sec if sec > 0 else float("nan")) for s, (n, sec) in stages.items()]
    print(benchutil.markdown_table(("annotation stage", "images", "seconds", "img/s"), rows))
    rows = [(f"train loader, num_workers={w}", n, rate, f"{rate / step_img_s:.1f}x")
            for w, (rate, n) in loaders.items()]
    print(benchutil.markdown_table(("data loading", "train images/epoch", "img/s", "vs train step"), rows))
    print(f"train step (full RSFIQA, {args.backbone}, batch {args.batch}, {args.image_size} px): "
          f"{step_img_s:.2f} img/s")
    for w, (rate, _) in loaders.items():
        verdict = "ok" if rate > step_img_s else "LOADER SLOWER THAN THE STEP"
        print(f"ratio loader (num_workers={w}) / train step: {rate / step_img_s:.1f}x (must be > 1: {verdict})")
        if args.step_img_s:
            print(f"ratio loader (num_workers={w}) / given step rate {args.step_img_s:.0f} img/s: "
                  f"{rate / args.step_img_s:.2f}x")


# --------------------------------------------------------------------------- SAM part
def build_sam(name: str) -> torch.nn.Module:
    """A SAM with random weights (no checkpoint is loaded)."""
    from segment_anything import sam_model_registry

    from annotate.segment.sam import tiny_sam

    torch.manual_seed(0)
    return tiny_sam() if name == "tiny" else sam_model_registry[name]()


def sam_photos(root: str, count: int) -> tuple[list[np.ndarray], str]:
    """Real photos from ``root/images`` when there, else synthetic ones (said in the output)."""
    from rsfiqa_core.imageio import load_rgb

    folder = Path(root) / "images"
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file())[:count]
        return [load_rgb(p)[0] for p in files], f"real photos from {folder}"
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 1024, dtype=np.float32)[None, :, None] * np.ones((768, 1, 3), np.float32)
    photos = []
    for _ in range(count):
        img = base.copy()
        for _ in range(6):
            y, x = rng.integers(0, 600), rng.integers(0, 850)
            img[y:y + 160, x:x + 170] = rng.integers(0, 256, 3)
        photos.append(img.astype(np.uint8))
    return photos, f"synthetic 1024x768 images ({folder} not found)"


def encoder_input(model: torch.nn.Module, photo: np.ndarray, device: torch.device) -> torch.Tensor:
    """The encoder's input [3, S, S] for ``photo``: long side resized to S, normalised, padded (SAM's own
    ``ResizeLongestSide`` + ``Sam.preprocess``)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(photo)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).float()
    return model.preprocess(x[None])[0]


def sam_encoder_times(model: torch.nn.Module, photos: list[np.ndarray], args: argparse.Namespace,
                      device: torch.device, bf16: bool, steps: int) -> tuple[float, float]:
    """(ms per image unbatched, ms per image in batches of ``--sam-batch``)."""
    inputs = [encoder_input(model, photos[i % len(photos)], device) for i in range(args.sam_batch)]
    batched = torch.stack(inputs)

    def encode(x: torch.Tensor) -> None:
        with torch.inference_mode(), benchutil.autocast(device, bf16):
            model.image_encoder(x)

    times = benchutil.time_interleaved({"single": lambda: encode(batched[:1]), "batched": lambda: encode(batched)},
                                       steps, 1, device)
    return benchutil.median_ms(times["single"]), benchutil.median_ms(times["batched"]) / args.sam_batch


def mask_generation_ms(model: torch.nn.Module, photos: list[np.ndarray], args: argparse.Namespace,
                       device: torch.device) -> tuple[float, float]:
    """(ms per image of the pipeline's SamSegmenter, fp32, after one warm-up image; mean masks)."""
    from annotate.segment.sam import SamSegmenter

    segmenter = SamSegmenter(model=model, device=str(device), points_per_side=args.sam_points,
                             encoder_batch_size=args.sam_batch)
    segmenter.segment(photos[0])
    benchutil.synchronize(device)
    t0 = time.perf_counter()
    segs = segmenter.segment_batch(photos)
    benchutil.synchronize(device)
    return 1000.0 * (time.perf_counter() - t0) / len(photos), float(np.mean([s.info["num_masks"] for s in segs]))


def sam_part(args: argparse.Namespace, device: torch.device) -> None:
    steps = 2 if args.quick else args.sam_steps
    photos, source = sam_photos(args.root, max(args.sam_images, 1))
    full = "tf32" if device.type == "cuda" else "fp32"  # configure_backends allows TF32 matmuls on GPUs
    precisions = [full, "bf16"] if device.type == "cuda" else [full]
    encoder_rows, amg_rows = [], []
    for name in args.sam_models:
        model = build_sam(name).to(device).eval()
        for precision in precisions:
            single, batched = sam_encoder_times(model, photos, args, device, precision == "bf16", steps)
            encoder_rows.append((name, precision, model.image_encoder.img_size, single, batched,
                                 f"{single / batched:.2f}x"))
        amg_ms, masks = mask_generation_ms(model, photos[:args.sam_images], args, device)
        amg_rows.append((name, full, amg_ms, f"{masks:.0f}"))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    settings = {"images": source, "encoder_batch": args.sam_batch, "steps": steps,
                "points_per_side": args.sam_points}
    benchutil.print_header("SAM with RANDOM weights (no checkpoint)", device, settings)
    print(benchutil.markdown_table(("model", "precision", "input px", "encoder ms/img unbatched",
                                    f"encoder ms/img batched ({args.sam_batch})", "batching speed-up"), encoder_rows))
    print(benchutil.markdown_table(("model", "precision", "automatic mask generation ms/img", "masks/img"),
                                   amg_rows))
    print("honest for the image-encoder time only: with random weights the predicted IoUs are noise, so how many "
          "masks survive and their post-processing differ from a trained SAM (automatic mask generation: "
          f"encoder + {args.sam_points}x{args.sam_points} prompts + post-processing, per image)")


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    benchutil.configure_backends(device)
    if not args.sam_only:
        cpu_part(args)
    if args.sam == "on" or (args.sam == "auto" and device.type == "cuda"):
        sam_part(args, device)


def main(argv: Sequence[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
