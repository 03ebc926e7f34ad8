"""Gradients of the RSA bias (eq. 8) through PyTorch's SDPA kernels against the explicit softmax.

RSA adds the float bias B to the attention logits (eq. 9). ``Attention`` runs
``F.scaled_dot_product_attention(attn_mask=B)`` in training and an explicit softmax when the
weights are asked for. On Hopper, PyTorch may choose cuDNN attention for a float mask, and a
kernel whose backward ignores the mask's gradient would leave lambda and the region maps
untrained without any error. This check runs one forward/backward of a freshly initialised RSA
block at the paper's sizes (7x7 grid, C = 256, 4 heads, L = 5) under bf16 autocast through each
SDPA backend (``torch.nn.attention.sdpa_kernel``; "default" = PyTorch's own choice, what training
uses) and through the explicit path, and prints the relative difference of the gradients of
log(lambda), of B itself and of the region key map. A backend that cannot run this input is
reported as unavailable, not as a failure. Exit status 1 when an available backend differs by
more than ``--tolerance``.

    python benchmarks/rsa_grad_check.py                        # CPU, float32 (no autocast)
    python benchmarks/rsa_grad_check.py --device cuda --bf16   # the GPU check
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
from torch import Tensor

from rsfiqa.model.rsa import RegionSemanticAttention, region_masks
from rsfiqa_core.device import resolve_device

GRID, CELL, DIM, HEADS, REGIONS, TEXT_DIM = 7, 32, 256, 4, 5, 512
BACKENDS = ("default", "MATH", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION")


def inputs(batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(tokens [B,49,C], masks [B,L,49], valid [B,L], text [B,L,512]) with regions that cross cells."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, REGIONS, (batch, 5, 5), generator=g).float()
    labels = torch.nn.functional.interpolate(labels[:, None], size=(GRID * CELL, GRID * CELL), mode="nearest")
    masks = region_masks(labels[:, 0].long(), REGIONS, (GRID, GRID))
    x = torch.randn(batch, GRID * GRID, DIM, generator=g)
    text = torch.nn.functional.normalize(torch.randn(batch, REGIONS, TEXT_DIM, generator=g), dim=-1)
    valid = torch.ones(batch, REGIONS, dtype=torch.bool)
    return x.to(device), masks.to(device), valid.to(device), text.to(device)


def gradients(rsa: RegionSemanticAttention, data: tuple[Tensor, ...], explicit: bool, bf16: bool,
              backend: str) -> dict[str, Tensor]:
    """One forward/backward of eq. (9) with the bias kept: grads of log(lambda), B and W_k."""
    x, masks, valid, text = data
    rsa.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16), kernel(backend):
        bias = rsa.region_bias(x, masks, valid, text).unsqueeze(1)
        bias.retain_grad()
        update = rsa.attn(x, bias=bias, return_weights=explicit)
        out = x + (update[0] if explicit else update)
    out.float().square().mean().backward()
    return {"log_lambda": grad_or_zero(rsa.log_lambda), "bias B": grad_or_zero(bias),
            "region_key": grad_or_zero(rsa.region_key.weight)}


def grad_or_zero(t: Tensor) -> Tensor:
    """``t``'s gradient; zeros where none reached it (a kernel that drops the mask's gradient)."""
    return torch.zeros_like(t) if t.grad is None else t.grad.detach().clone()


def kernel(backend: str):
    """``sdpa_kernel`` restricted to one backend, or no restriction for "default"."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    return nullcontext() if backend == "default" else sdpa_kernel([getattr(SDPBackend, backend)])


def relative_difference(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check(device: torch.device, bf16: bool, batch: int, tolerance: float,
          backends: Sequence[str] = BACKENDS) -> tuple[list[str], bool]:
    """Report lines and whether every available backend matched the explicit path."""
    torch.manual_seed(0)
    rsa = RegionSemanticAttention(DIM, TEXT_DIM, HEADS, norm="region").to(device)
    data = inputs(batch, device)
    reference = gradients(rsa, data, explicit=True, bf16=bf16, backend="default")
    lines = [f"explicit softmax: |grad log_lambda| = {float(reference['log_lambda'].abs()):.3g}, "
             f"|grad B| = {float(reference['bias B'].norm()):.3g}"]
    ok = float(reference["bias B"].norm()) > 0 and float(reference["log_lambda"].abs()) > 0
    if not ok:
        lines.append("MISMATCH explicit path: the bias gets no gradient")
    for backend in backends:
        try:
            grads = gradients(rsa, data, explicit=False, bf16=bf16, backend=backend)
        except RuntimeError as err:  # "No available kernel": this backend cannot take this input here
            lines.append(f"{backend}: unavailable ({str(err).splitlines()[0][:100]})")
            continue
        diffs = {k: relative_difference(grads[k], reference[k]) for k in reference}
        verdict = "OK" if max(diffs.values()) <= tolerance else "MISMATCH"
        ok &= verdict == "OK"
        lines.append(f"{verdict} {backend}: relative gradient difference to the explicit path "
                     + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return lines, ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as bf16-mixed training")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest relative difference accepted (default 5e-2 with --bf16, 1e-4 without)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    tolerance = args.tolerance if args.tolerance is not None else (5e-2 if args.bf16 else 1e-4)
    print(f"## RSA bias gradient: SDPA backends vs the explicit softmax ({device}, bf16={args.bf16}, "
          f"torch {torch.__version__}, batch {args.batch}, tolerance {tolerance:g})")
    lines, ok = check(device, args.bf16, args.batch, tolerance)
    print("\n".join(lines))
    print("result: " + ("all available backends match" if ok else "MISMATCH (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
