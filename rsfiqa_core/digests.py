"""Digests of stored tensors: what the shipped model file, checkpoints and the feature cache verify
their content with (one rule for the bytes of a tensor, one for a state dict)."""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch
from torch import Tensor


def tensor_bytes(tensor: Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, any shape), copied to the CPU only where needed."""
    return memoryview(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())


def state_digest(state: Mapping[str, Tensor]) -> str:
    """BLAKE2b of every tensor's name, dtype, shape and bytes, in key order."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        tensor = state[name]
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()
