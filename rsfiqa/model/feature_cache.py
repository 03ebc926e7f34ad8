"""Disk caches of frozen encoders: the backbone's multi-level features F_1..F_n (inputs of paper
eq. 1) and the text encoder's region-description embeddings E (input of eqs. 6-7).

A frozen encoder is a fixed function of its input, so its output can be computed once per distinct
input and read back in every later epoch and run: a CPU experiment then pays for the trainable
parts (MHF, RSA, head) only. This is a speed option; it changes no result beyond the rounding of
the stored dtype (backbone features: float16 by default; text embeddings: float32, exact).

Keys. A backbone entry is addressed by the content of the exact backbone input: a BLAKE2b digest
of the image tensor's shape, dtype and bytes, so a flipped, resized or differently normalised image
is a different entry (a sample key alone could not tell a flipped view apart) and a stale entry
cannot be hit. A text entry is addressed by the digest of the string. Entries live under
``<directory>/<namespace>-<kind>/``, where the namespace is a digest of the encoder's identity
(class, settings and every weight), taken from the weights it holds when first used and again after
each ``load_state_dict``; encoders with other weights never share entries. One file per entry,
written to a temporary name and renamed (atomic), so several runs may fill one directory at once.

Verification. Each entry stores a BLAKE2b digest of its address and its tensors (:func:`entry_digest`);
an entry that is empty, truncated, bit-flipped or copied under another address is a
:class:`CacheEntryError` naming the file and saying to delete it, never a silent NaN. Entries of the
earlier, undigested format live under another namespace (:data:`ENTRY_FORMAT`) and are never read.

Attaching. ``attach`` replaces a method of the encoder *instance* (``Backbone.forward``,
``TextEncoder.encode``; the pattern of ``accelerate``'s module hooks): parameter names, checkpoints
and the rest of :class:`~rsfiqa.model.net.RSFIQANet` stay untouched.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from rsfiqa_core.digests import tensor_bytes

from .backbone import Backbone
from .text import TextEncoder

STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
NAMESPACE_CHARS = 16
ENTRY_FORMAT = "entry/2"  # entries hold {"tensors", "digest"}; part of the namespace


class CacheEntryError(RuntimeError):
    """A cache entry that cannot be used; the message names the file and says to delete it."""


def input_digest(image: Tensor) -> str:
    """Content address of one backbone input [3,H,W]: BLAKE2b of its shape, dtype and bytes."""
    h = hashlib.blake2b(f"{tuple(image.shape)}|{image.dtype}|".encode(), digest_size=20)
    h.update(tensor_bytes(image))
    return h.hexdigest()


def text_digest(text: str) -> str:
    """Content address of one region description."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=20).hexdigest()


def entry_digest(address: str, tensors: Sequence[Tensor]) -> str:
    """BLAKE2b of an entry's address and each tensor's dtype, shape and bytes."""
    h = hashlib.blake2b(f"{address}|".encode(), digest_size=16)
    for tensor in tensors:
        h.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()


def module_namespace(module: nn.Module, identity: str) -> str:
    """Digest of ``identity`` (class and settings) and every tensor of the module's state dict."""
    h = hashlib.blake2b(f"{identity}|".encode(), digest_size=16)
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()[:NAMESPACE_CHARS]


class DiskCache:
    """Content-addressed store of lists of tensors for one frozen encoder (see the module docstring).

    ``identity`` names the encoder's class and settings, ``weights`` is the module whose state dict
    enters the namespace, ``kind`` ends the directory name (the store dtype, or ``text``).
    """

    def __init__(self, directory: str | Path, weights: nn.Module, identity: str, kind: str,
                 store_dtype: torch.dtype) -> None:
        self.directory = Path(directory)
        self.weights = weights
        self.identity = identity
        self.kind = kind
        self.store_dtype = store_dtype
        self._root: Path | None = None
        self.hits = 0
        self.misses = 0
        weights.register_load_state_dict_post_hook(self.forget_namespace)

    @property
    def root(self) -> Path:
        """``<directory>/<namespace>-<kind>``, from the weights the encoder holds when first used
        (a checkpoint is loaded after the model is built, before its first forward)."""
        if self._root is None:
            namespace = module_namespace(self.weights, f"{ENTRY_FORMAT}|{self.identity}")
            self._root = self.directory / f"{namespace}-{self.kind}"
        return self._root

    def forget_namespace(self, module: object = None, incompatible_keys: object = None) -> None:
        """New weights were loaded: the namespace is recomputed at the next use."""
        self._root = None

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.pt"

    def load(self, digest: str) -> list[Tensor] | None:
        """The stored tensors of one input (verified against their digest), or None when absent."""
        path = self.path(digest)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            intact = entry["digest"] == entry_digest(digest, entry["tensors"])
        except Exception as err:  # noqa: BLE001 -- empty, truncated or foreign bytes raise many types
            raise CacheEntryError(f"cache entry {path} cannot be read ({type(err).__name__}); delete it to have it "
                                  f"recomputed") from err
        if not intact:
            raise CacheEntryError(f"cache entry {path} does not match its digest (damaged on disk); delete it to "
                                  f"have it recomputed")
        return entry["tensors"]

    def store(self, digest: str, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Write one input's tensors, rounded to the store dtype, atomically (temporary file, then
        rename); returns the rounded tensors, so a result never depends on whether the entry existed."""
        rounded = [t.detach().to("cpu", self.store_dtype).clone() for t in tensors]
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({"tensors": rounded, "digest": entry_digest(digest, rounded)}, f)
        os.replace(tmp, path)
        return rounded

    def lookup(self, digests: list[str], compute: Callable[[list[int]], list[Tensor]]) -> list[list[Tensor]]:
        """Per digest its stored tensors; the missing ones come from ``compute(missing indices)`` —
        a list of batched tensors, row j for the j-th missing input — and are stored."""
        found = [self.load(d) for d in digests]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            with torch.no_grad():
                computed = compute(missing)
            for j, i in enumerate(missing):
                found[i] = self.store(digests[i], [t[j] for t in computed])
        self.hits += len(digests) - len(missing)
        self.misses += len(missing)
        return found


class FeatureCache(DiskCache):
    """Cache of the levels of one frozen :class:`Backbone`; a trainable one is a ``ValueError`` (its
    features change at every optimiser step). ``store_dtype``: ``float16`` halves disk and memory
    traffic, ``float32`` stores the levels bit-exactly."""

    def __init__(self, directory: str | Path, backbone: Backbone, store_dtype: str = "float16") -> None:
        if not backbone.frozen:
            raise ValueError("feature_cache needs freeze_backbone=True: a trainable backbone's features change "
                             "at every optimiser step and cannot be cached")
        if store_dtype not in STORE_DTYPES:
            raise ValueError(f"feature cache store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
        super().__init__(directory, backbone.model, backbone.cache_identity,
                         store_dtype, STORE_DTYPES[store_dtype])
        self.backbone = backbone

    def levels(self, images: Tensor, compute: Callable[[Tensor], list[Tensor]]) -> list[Tensor]:
        """Levels of a batch [B,3,H,W] (float32, on the images' device); missing entries are
        computed together by ``compute`` (the backbone's own forward) and stored."""
        found = self.lookup([input_digest(image) for image in images], lambda missing: compute(images[missing]))
        return [torch.stack([entry[k] for entry in found]).to(images.device, torch.float32)
                for k in range(len(found[0]))]

    def attach(self) -> "FeatureCache":
        """Route ``backbone(images)`` through the cache (instance-level ``forward``); returns self."""
        self.backbone.forward = CachedCall(self.levels, self.backbone.forward)
        return self


class TextCache(DiskCache):
    """Cache of the embeddings of one frozen :class:`TextEncoder` (float32, exact); a trainable
    encoder is a ``ValueError``."""

    def __init__(self, directory: str | Path, encoder: TextEncoder) -> None:
        if not encoder.frozen:
            raise ValueError("a text embedding cache needs freeze_text=True: a trainable encoder's embeddings "
                             "change at every optimiser step")
        super().__init__(directory, encoder.model, f"text|{encoder.kind}|{type(encoder.model).__name__}", "text",
                         torch.float32)
        self.encoder = encoder

    def embeddings(self, texts: list[str], compute: Callable[[list[str]], Tensor]) -> Tensor:
        """[N] non-empty strings -> [N, dim] on the encoder's device; missing ones encoded together."""
        found = self.lookup([text_digest(t) for t in texts], lambda missing: [compute([texts[i] for i in missing])])
        return torch.stack([entry[0] for entry in found]).to(self.encoder.device)

    def attach(self) -> "TextCache":
        """Route the encoder's ``encode`` through the cache (instance-level); returns self."""
        self.encoder.encode = CachedCall(self.embeddings, self.encoder.encode)
        return self


class CachedCall:
    """Callable standing in for an encoder method: ``lookup(inputs, original_method)``. Not an
    ``nn.Module``, so it adds no parameters or state-dict keys."""

    def __init__(self, lookup: Callable, compute: Callable) -> None:
        self.lookup = lookup
        self.compute = compute

    def __call__(self, inputs):
        return self.lookup(inputs, self.compute)
