"""The transformers Qwen2.5-VL describer path (``HFDescriber``) on a device, against the CPU.

Builds the tiny random Qwen2.5-VL of the tests (``tests/tiny_qwen.py``: transformers' real model
class, random weights, offline), runs the paper's eleven turns per region on two random images with
a left-half region, an empty region and the background, once on ``--device`` and once on the CPU,
and checks that on the device

* every valid region's ``scores`` (digit expectation at the score answer) and
  ``level_expectations`` (level-word expectation at the level answer) are Q-Align values in 1..5;
* they equal the CPU's within ``--tolerance`` (float32 on both, TF32 off);
* the answers (greedy, then seeded retries) are the CPU's, counted per region.

Prints the wall time of both runs. Exit status 1 on a failed check.

    python benchmarks/describer_gpu_check.py --device cuda
    python benchmarks/describer_gpu_check.py --device cpu      # the dry run the tests use
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/tiny_qwen.py

from annotate.describe import build_describer  # noqa: E402
from annotate.segment.postprocess import postprocess  # noqa: E402
from rsfiqa_core.contract import DIMENSIONS  # noqa: E402
from rsfiqa_core.device import resolve_device  # noqa: E402
from tests.tiny_qwen import tiny_processor, tiny_qwen  # noqa: E402

FIELDS = ("scores", "level_expectations")


def images_and_segs() -> tuple[list[np.ndarray], list[Any]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.integers(0, 255, (56, 72, 3), dtype=np.uint8)]
    segs = []
    for image in images:
        left = np.zeros(image.shape[:2], dtype=bool)
        left[:, : image.shape[1] // 2] = True
        segs.append(postprocess([left], [0.9], num_regions=3))
    return images, segs


def describe(device: str) -> tuple[list[list[dict]], float]:
    """Records of the tiny model's run on ``device`` and its wall time in seconds."""
    processor = tiny_processor()
    model = tiny_qwen(processor, seed=0, hidden_size=64)
    describer = build_describer({"name": "hf", "model": model, "processor": processor, "device": device,
                                 "image_long_side": 56, "max_retries": 1,
                                 "max_tokens": {"content": 6, "level": 6, "score": 6}})
    images, segs = images_and_segs()
    start = time.perf_counter()
    records = describer.describe(images, segs)
    if describer.backend.device.type == "cuda":
        torch.cuda.synchronize()
    return records, time.perf_counter() - start


def compare(device_records: list[list[dict]], cpu_records: list[list[dict]], tolerance: float) -> tuple[list[str], bool]:
    lines, ok, same_answers, regions, worst = [], True, 0, 0, 0.0
    for row_d, row_c in zip(device_records, cpu_records):
        for rec_d, rec_c in zip(row_d, row_c):
            if rec_c.get("missing_reason") == "empty region":
                ok &= rec_d == rec_c
                continue
            regions += 1
            if rec_d.get("score_source") != {d: "qalign" for d in DIMENSIONS}:
                ok = False
                lines.append(f"FAIL score_source {rec_d.get('score_source')}")
            for field in FIELDS:
                values = rec_d.get(field) or {}
                if set(values) != set(DIMENSIONS) or not all(1.0 <= v <= 5.0 for v in values.values()):
                    ok = False
                    lines.append(f"FAIL {field} {values}")
                    continue
                worst = max(worst, *(abs(values[d] - rec_c[field][d]) for d in DIMENSIONS))
            same_answers += (rec_d["content"], rec_d["levels"], rec_d["parsed_scores"]) == \
                (rec_c["content"], rec_c["levels"], rec_c["parsed_scores"])
    ok &= worst <= tolerance
    lines.append(f"{'OK' if worst <= tolerance else 'FAIL'} largest |device - cpu| over scores and level "
                 f"expectations: {worst:.2e} (tolerance {tolerance:g})")
    lines.append(f"regions whose parsed answers equal the CPU's: {same_answers}/{regions}")
    return lines, ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--tolerance", type=float, default=1e-2)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"## HF Qwen2.5-VL describer (tiny random model) on {name} vs the CPU; torch {torch.__version__}")
    device_records, device_s = describe(str(device))
    cpu_records, cpu_s = describe("cpu")
    print(f"wall: {device} {device_s:.2f} s, cpu {cpu_s:.2f} s (2 images x 2 valid regions, 11 turns)")
    lines, ok = compare(device_records, cpu_records, args.tolerance)
    print("\n".join(lines))
    print("result: " + ("OK" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
